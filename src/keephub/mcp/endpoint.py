"""keephub's MCP server over streamable HTTP, at `/mcp` of every keephub: the tools run in the server process,
over its services, as the caller's token allows them (`Authorization: Bearer`, exactly as the Hub API).

Stateless, with JSON answers: each POST is one whole exchange, so nothing is kept between calls and any
number of agents (or a restarted server) need no session bookkeeping.
"""

from __future__ import annotations

import json
import logging
from contextlib import AbstractAsyncContextManager
from typing import Any, Awaitable, Callable

import mcp_types as types
from mcp.server import Server, ServerRequestContext
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from starlette.requests import Request
from starlette.routing import BaseRoute, Route
from starlette.types import Message, Receive, Scope, Send

from keephub import __version__
from keephub.hub.routes import credentials_of, hub_of
from keephub.mcp import hub_tools, jobs_tool
from keephub.mcp.caller import Caller
from keephub.mcp.jobs_tool import TOKEN_HINT, Services
from keephub.mcp.tools import HF_JOBS, INSTRUCTIONS, TOOL_NAMES, TOOLS, ToolError
from keephub.wire import Unauthorized
from keephub.wire.errors import HubError

log = logging.getLogger("keephub.mcp")
_CALLER = "mcp_caller"
# The Jobs API words a few things for its own clients; an agent calls the tool, so its answers say the tool's.
_TOOL_WORDING = {"`hf jobs ps`": 'hf_jobs("ps", {"all": true})', "'environment'": "'env'",
                 "the label keephub.preflight=override": 'the label "keephub.preflight": "override" (in "labels")'}

Handler = Callable[[Services, dict[str, Any]], Awaitable[str]]
_HANDLERS: dict[str, Handler] = {
    HF_JOBS: jobs_tool.hf_jobs, "hf_whoami": hub_tools.whoami, "model_search": hub_tools.model_search,
    "dataset_search": hub_tools.dataset_search, "hub_repo_details": hub_tools.repo_details,
    "hub_repo_file": hub_tools.repo_file,
}
# The schemas the SDK checks a call's `Mcp-Param-*` headers against: those of tools that mirror an argument
# into such a header (`x-mcp-header`). keephub's mirror none, so no call has a header to check; handing the SDK
# a schema anyway made it walk the whole schema on every call to find nothing to compare.
_HEADER_SCHEMAS = {tool.name: tool.input_schema for tool in TOOLS
                   if "x-mcp-header" in json.dumps(tool.input_schema)}


class Endpoint:
    """The ASGI app at /mcp: lets the SDK serve the call, and refuses it with a 401 if its token is present but
    unknown, as anywhere in the API (no token is an anonymous caller, who may read public repos).

    A tools/call is authenticated by the tool's first service call, in the same worker-thread hop (see
    caller.py), and its answer is held until the caller is known: a refused token gets the 401, never the answer,
    and nothing ran as anyone. Other requests (tools/list, an SSE stream) are authenticated before the SDK sees
    them."""

    def __init__(self) -> None:
        self.server: Server[Any] = Server("keephub", version=__version__, instructions=INSTRUCTIONS,
                                          on_list_tools=_list_tools, on_call_tool=_call_tool,
                                          get_tool_input_schema=_input_schema)
        # The SDK's default OpenTelemetry middleware makes a span per message; keephub exports none.
        self.server.middleware = []
        # No DNS-rebinding check: every call that is not an anonymous read needs a bearer token, which a page
        # that rebinds a name cannot hold (the Hub API beside it takes the same requests).
        security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
        self.manager = StreamableHTTPSessionManager(self.server, json_response=True, stateless=True,
                                                    security_settings=security)

    def routes(self) -> list[BaseRoute]:
        return [Route("/mcp", self)]

    def running(self) -> AbstractAsyncContextManager[None]:
        """The SDK's task group; entered by the app's lifespan."""
        return self.manager.run()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        caller = Caller(hub_of(request).accounts, credentials_of(request))
        scope.setdefault("state", {})[_CALLER] = caller
        if caller.settled or request.method != "POST" or request.headers.get("mcp-method") != "tools/call":
            await caller.settle()
            await self.manager.handle_request(scope, receive, send)
            return
        # The SDK checks that Mcp-Method names the body's method, and answers a tools/call with one JSON body.
        held: list[Message] = []

        async def hold(message: Message) -> None:
            held.append(message)

        await self.manager.handle_request(scope, receive, hold)
        await caller.settle()
        for message in held:
            await send(message)


async def _list_tools(ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
                      ) -> types.ListToolsResult:
    return types.ListToolsResult(tools=TOOLS)


def _input_schema(name: str) -> dict[str, Any] | None:
    """A tool's schema for the SDK's `Mcp-Param-*` header check, None when it declares no such header (nothing to
    check). Without this lookup the SDK would run tools/list on every call to find the schema."""
    return _HEADER_SCHEMAS.get(name)


async def _call_tool(ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams) -> types.CallToolResult:
    """Every failure of a known tool is its answer (isError, with the problem and the fix), never a crash."""
    handler = _HANDLERS.get(params.name)
    if handler is None:
        raise MCPError(types.INVALID_PARAMS, f"unknown tool {params.name!r}; keephub serves {', '.join(TOOL_NAMES)}")
    request = ctx.request
    assert isinstance(request, Request)
    state = request.app.state
    services = Services(state.hub, state.jobs, state.scheduled_jobs, state.scheduler, request.scope["state"][_CALLER])
    try:
        return result(await handler(services, params.arguments or {}))
    except ToolError as exc:
        return result(str(exc), error=True)
    except HubError as exc:
        return result(_explain(exc), error=True)
    except Exception:
        log.exception("MCP tool %s failed", params.name)
        return result(f"keephub failed while running {params.name} (an internal error, logged on the server); "
                      "nothing more is known here, so retry once, then report it", error=True)


def result(text: str, error: bool = False) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=text)], is_error=error)


def _explain(exc: HubError) -> str:
    """The service's refusal as the tool's answer: its message and long text (a checklist), said for the tool."""
    text = exc.message if exc.detail is None else f"{exc.message}\n{exc.detail}"
    for api_words, tool_words in _TOOL_WORDING.items():
        text = text.replace(api_words, tool_words)
    if isinstance(exc, Unauthorized) and TOKEN_HINT not in text:
        text += f"\n{TOKEN_HINT}"
    return text
