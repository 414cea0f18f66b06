"""HTTP handlers of discussions, pull requests and webhooks: each parses, calls `Discussions` or `Webhooks` in a
worker thread, and renders. Mounted before the Hub's routes, whose `/api/{plural}/{namespace}/{name}` would
otherwise take `/api/settings/webhooks/<id>` for a repo."""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from keephub.hub.discussions import Discussions
from keephub.hub.routes import actor_of, call, following_moves, read_json_object, repo_params
from keephub.hub.webhooks import Webhooks
from keephub.wire import BadRequest
from keephub.wire.errors import NotFound
from keephub.wire.params import int_param

MAX_PAGE = 100_000


def discussions_of(request: Request) -> Discussions:
    return request.app.state.discussions


def webhooks_of(request: Request) -> Webhooks:
    return request.app.state.webhooks


def number_param(request: Request) -> int:
    raw = request.path_params["num"]
    if not raw.isdigit() or not 0 < int(raw) < 2**31:
        raise NotFound(f"{raw!r} is not a discussion or pull request number; numbers start at 1 "
                       "(list them with HfApi().get_repo_discussions(...))")
    return int(raw)


# -- discussions and pull requests -----------------------------------------------------------------------------
async def list_discussions(request: Request) -> JSONResponse:
    actor = await actor_of(request)
    query = request.query_params
    page = int_param(query, "p", minimum=0, maximum=MAX_PAGE, default=0) or 0
    found = await call(discussions_of(request).list, actor, *repo_params(request), query.get("type", "all"),
                       query.get("status", "all"), query.get("author"), page)
    return JSONResponse(found)


async def create_discussion(request: Request) -> JSONResponse:
    actor = await actor_of(request)
    body = await read_json_object(request)
    return JSONResponse(await call(discussions_of(request).create, actor, *repo_params(request), body))


async def discussion_details(request: Request) -> JSONResponse:
    actor = await actor_of(request)
    with_diff = request.query_params.get("diff", "").lower() in ("1", "true")
    found = await call(discussions_of(request).details, actor, *repo_params(request), number_param(request),
                       with_diff)
    return JSONResponse(found)


async def _change_discussion(request: Request, change: Callable[..., dict], *path_args: str) -> JSONResponse:
    """Runs a `Discussions` change on the discussion the URL names: the caller, the repo, its number, then
    `path_args` and the JSON body."""
    actor = await actor_of(request)
    body = await read_json_object(request)
    return JSONResponse(await call(change, actor, *repo_params(request), number_param(request), *path_args, body))


async def comment(request: Request) -> JSONResponse:
    return await _change_discussion(request, discussions_of(request).comment)


async def edit_comment(request: Request) -> JSONResponse:
    return await _change_discussion(request, discussions_of(request).edit_comment,
                                    request.path_params["comment_id"])


async def hide_comment(request: Request) -> JSONResponse:
    actor = await actor_of(request)
    return JSONResponse(await call(discussions_of(request).hide_comment, actor, *repo_params(request),
                                   number_param(request), request.path_params["comment_id"]))


async def rename(request: Request) -> JSONResponse:
    return await _change_discussion(request, discussions_of(request).rename)


async def change_status(request: Request) -> JSONResponse:
    return await _change_discussion(request, discussions_of(request).change_status)


async def merge(request: Request) -> JSONResponse:
    return await _change_discussion(request, discussions_of(request).merge)


async def offer_rescue(request: Request) -> JSONResponse:
    """keephub's own: a pull request from a rescued job's `rescue/<job-id>` branch into main."""
    actor = await actor_of(request)
    job = await call(request.app.state.jobs.get, actor, request.path_params["namespace"],
                     request.path_params["job_id"])
    return JSONResponse(await call(discussions_of(request).offer_rescue, actor, job))


# -- webhooks ---------------------------------------------------------------------------------------------------
async def webhooks(request: Request) -> JSONResponse:
    actor = await actor_of(request)
    if request.method == "GET":
        return JSONResponse(await call(webhooks_of(request).list, actor))
    body = await read_json_object(request)
    return JSONResponse({"webhook": await call(webhooks_of(request).create, actor, body)})


async def webhook(request: Request) -> JSONResponse:
    actor = await actor_of(request)
    webhook_id = request.path_params["webhook_id"]
    service = webhooks_of(request)
    if request.method == "GET":
        return JSONResponse({"webhook": await call(service.get, actor, webhook_id)})
    if request.method == "DELETE":
        await call(service.delete, actor, webhook_id)
        return JSONResponse({})
    body = await read_json_object(request)
    return JSONResponse({"webhook": await call(service.update, actor, webhook_id, body)})


async def switch_webhook(request: Request) -> JSONResponse:
    actor = await actor_of(request)
    switch = request.path_params["switch"]
    if switch not in ("enable", "disable"):
        raise BadRequest(f"no such webhook action {switch!r}; use enable or disable")
    found = await call(webhooks_of(request).set_disabled, actor, request.path_params["webhook_id"],
                       switch == "disable")
    return JSONResponse({"webhook": found})


async def webhook_deliveries(request: Request) -> JSONResponse:
    actor = await actor_of(request)
    return JSONResponse(await call(webhooks_of(request).deliveries, actor, request.path_params["webhook_id"]))


def repo_route(path: str, endpoint: Callable, methods: list[str]) -> Route:
    """A route naming a repo: a moved repo's old id is redirected to its new one, as the Hub routes do."""
    return Route(path, following_moves(endpoint), methods=methods, name=endpoint.__name__)


def routes() -> list[BaseRoute]:
    discussion = "/api/{plural}/{namespace}/{name}/discussions/{num}"
    return [
        Route("/api/settings/webhooks", webhooks, methods=["GET", "POST"]),
        Route("/api/settings/webhooks/{webhook_id}", webhook, methods=["GET", "POST", "DELETE"]),
        Route("/api/settings/webhooks/{webhook_id}/deliveries", webhook_deliveries, methods=["GET"]),
        Route("/api/settings/webhooks/{webhook_id}/{switch}", switch_webhook, methods=["POST"]),
        Route("/api/jobs/{namespace}/{job_id}/rescue-pr", offer_rescue, methods=["POST"]),
        repo_route("/api/{plural}/{namespace}/{name}/discussions", list_discussions, ["GET"]),
        repo_route("/api/{plural}/{namespace}/{name}/discussions", create_discussion, ["POST"]),
        repo_route(discussion, discussion_details, ["GET"]),
        repo_route(discussion + "/comment", comment, ["POST"]),
        repo_route(discussion + "/comment/{comment_id}/edit", edit_comment, ["POST"]),
        repo_route(discussion + "/comment/{comment_id}/hide", hide_comment, ["POST"]),
        repo_route(discussion + "/title", rename, ["POST"]),
        repo_route(discussion + "/status", change_status, ["POST"]),
        repo_route(discussion + "/merge", merge, ["POST"]),
    ]
