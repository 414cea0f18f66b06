"""`keephub mcp`: the same tools over stdio, for agents that launch their tools as subprocesses.

It holds no tool logic: each call goes to a keephub server's `/mcp` over HTTP with the user's token, so what a
call may do is decided there, once. What only the agent's machine can do happens here: a `script` that names a
local file (`"script": "train.py"`, as the reference writes it) is read and sent inline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError

from keephub import __version__
from keephub.durability.script import MAX_INLINE_SCRIPT_BYTES
from keephub.mcp.tools import HF_JOBS, INSTRUCTIONS, TOOLS, ToolError, is_script_path, split_call

# A non-detached submission waits ~10 s for the job's first lines; a call may take that and more.
TIMEOUT = httpx2.Timeout(30.0, read=300.0)


def serve_stdio(endpoint: str, token: str | None) -> None:
    """Serve MCP on stdin/stdout until the agent closes it; calls go to `endpoint` (keephub's base URL)."""
    anyio.run(_serve, endpoint.rstrip("/"), token)


async def _serve(endpoint: str, token: str | None) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def list_tools(ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
                         ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=TOOLS)

    async def call_tool(ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
                        ) -> types.CallToolResult:
        refusals: list[httpx2.Response] = []

        async def note_refusal(response: httpx2.Response) -> None:
            """The SDK reports an HTTP error as a bare "error response"; keephub's answer says which and why."""
            if response.status_code >= 400:
                refusals.append(response)

        try:
            arguments = with_local_script(params.arguments or {}) if params.name == HF_JOBS else params.arguments
            async with (httpx2.AsyncClient(headers=headers, timeout=TIMEOUT,
                                           event_hooks={"response": [note_refusal]}) as http,
                        Client(streamable_http_client(f"{endpoint}/mcp", http_client=http), cache=None) as remote):
                return await remote.call_tool(params.name, arguments)
        except ToolError as exc:
            return _error(str(exc))
        except Exception as exc:  # noqa: BLE001 - whatever kept the call from keephub is said, not raised
            cause = _first_cause(exc)
            if isinstance(cause, MCPError) and not (refusals and refusals[-1].status_code == 401):
                raise cause from None  # keephub's own protocol error (an unknown tool) stays one
            if refusals:
                return _error(_refused(endpoint, token, refusals[-1]))
            return _error(f"cannot reach keephub at {endpoint} ({type(cause).__name__}: {cause}); check that it is "
                          "running, or point HF_ENDPOINT / --endpoint at it")

    server: Server[Any] = Server("keephub", version=__version__, instructions=INSTRUCTIONS, on_list_tools=list_tools,
                                 on_call_tool=call_tool)
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


def with_local_script(arguments: dict[str, Any]) -> dict[str, Any]:
    """The call with a local script file's code in place of its path (the server cannot read the agent's files);
    the job is named after the file unless its labels name it."""
    operation, values = split_call(arguments)
    script = values.get("script")
    if operation not in ("uv", "scheduled uv") or not isinstance(script, str) or not is_script_path(script):
        return arguments
    path = Path(script).expanduser()
    if not path.is_file():
        raise ToolError(f"script {script!r} is not a file here (relative to {Path.cwd()}); pass an existing path, "
                        "the script's code itself, its URL, or a repo file hf://NAMESPACE/NAME/PATH")
    size = path.stat().st_size
    if size > MAX_INLINE_SCRIPT_BYTES:
        raise ToolError(f"script {script} is {size:,} bytes; at most {MAX_INLINE_SCRIPT_BYTES:,} travel inline. "
                        "Upload it to a repo and pass hf://NAMESPACE/NAME/PATH or its URL")
    values = {**values, "script": path.read_text(encoding="utf-8", errors="replace")}
    labels = values.get("labels") or {}
    if isinstance(labels, dict):  # anything else is left for the server to refuse, naming the field
        values["labels"] = {"name": path.name, **labels}
    return {"operation": operation, "args": values}


def _first_cause(exc: BaseException) -> BaseException:
    """The error inside the exception groups that anyio's task groups wrap it in."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _refused(endpoint: str, token: str | None, response: httpx2.Response) -> str:
    said = response.headers.get("X-Error-Message") or response.reason_phrase
    if response.status_code == 401:
        which = "the token from --token or HF_TOKEN" if token else "the call without a token"
        return (f"keephub at {endpoint} refused {which} (401: {said}): set HF_TOKEN or --token to a valid token "
                "(keephub token create USER --role write)")
    return f"keephub at {endpoint} answered {response.status_code}: {said}"


def _error(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=text)], is_error=True)
