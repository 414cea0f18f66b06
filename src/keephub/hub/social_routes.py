"""HTTP handlers for likes and collections (hub/social.py) and gated repos' access requests (hub/gating.py): parse,
call `Social` or `Gates` in a worker thread, render."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from keephub.hub.gating import Gates
from keephub.hub.routes import actor_of, call, hub_of, read_json_object, repo_params
from keephub.hub.social import Social
from keephub.wire.params import int_param

MAX_COLLECTIONS_LIMIT = 10_000


def social_of(request: Request) -> Social:
    return Social(hub_of(request).db)


async def like(request: Request) -> JSONResponse:
    """POST likes, DELETE unlikes (the client has `unlike` only: the Hub takes likes from its web pages)."""
    actor = await actor_of(request)
    await call(social_of(request).set_like, actor, *repo_params(request), request.method == "POST")
    return JSONResponse({})


async def likers(request: Request) -> JSONResponse:
    actor = await actor_of(request)
    return JSONResponse(await call(social_of(request).likers_of, actor, *repo_params(request)))


async def user_likes(request: Request) -> JSONResponse:
    actor = await actor_of(request)
    return JSONResponse(await call(social_of(request).likes_of, actor, request.path_params["user"]))


def _slug(request: Request) -> str:
    return f"{request.path_params['namespace']}/{request.path_params['slug']}"


async def collections(request: Request) -> JSONResponse:
    actor = await actor_of(request)
    if request.method == "POST":
        return JSONResponse(await call(social_of(request).create, actor, await read_json_object(request)))
    query = request.query_params
    limit = int_param(query, "limit", minimum=0, maximum=MAX_COLLECTIONS_LIMIT)
    return JSONResponse(await call(social_of(request).list, actor, query.get("owner"), query.get("item"), limit))


async def collection(request: Request) -> JSONResponse:
    actor = await actor_of(request)
    if request.method == "DELETE":
        await call(social_of(request).delete, actor, _slug(request))
        return JSONResponse({})
    if request.method == "PATCH":
        body = await read_json_object(request)
        return JSONResponse({"data": await call(social_of(request).update, actor, _slug(request), body)})
    return JSONResponse(await call(social_of(request).get, actor, _slug(request)))


async def collection_items(request: Request) -> JSONResponse:
    actor = await actor_of(request)
    body = await read_json_object(request)
    return JSONResponse(await call(social_of(request).add, actor, _slug(request), body))


async def collection_item(request: Request) -> JSONResponse:
    actor = await actor_of(request)
    if request.method == "PATCH":
        body = await read_json_object(request)
        await call(social_of(request).update_item, actor, _slug(request), request.path_params["item"], body)
        return JSONResponse({})
    await call(social_of(request).remove, actor, _slug(request), request.path_params["item"])
    return JSONResponse({})


def gates_of(request: Request) -> Gates:
    return Gates(hub_of(request).db)


async def ask_access(request: Request) -> JSONResponse:
    """A user asks for a gated repo's files (the Hub takes this from its pages; the client has no call for it)."""
    actor = await actor_of(request)
    body = await read_json_object(request)
    return JSONResponse(await call(gates_of(request).ask, actor, *repo_params(request), body))


async def access_requests(request: Request) -> JSONResponse:
    actor = await actor_of(request)
    return JSONResponse(await call(gates_of(request).list, actor, *repo_params(request), request.path_params["status"]))


async def handle_access_request(request: Request) -> JSONResponse:
    actor = await actor_of(request)
    body = await read_json_object(request)
    await call(gates_of(request).handle, actor, *repo_params(request), body)
    return JSONResponse({})


async def grant_access(request: Request) -> JSONResponse:
    actor = await actor_of(request)
    body = await read_json_object(request)
    await call(gates_of(request).grant, actor, *repo_params(request), body)
    return JSONResponse({})


def routes() -> list[BaseRoute]:
    """Ahead of the repo routes: `/api/collections/...` and `/api/users/...` would match `/api/{type}/{repo}`."""
    table: list[BaseRoute] = [
        Route("/api/collections", collections, methods=["GET", "POST"]),
        Route("/api/collections/{namespace}/{slug}", collection, methods=["GET", "PATCH", "DELETE"]),
        Route("/api/collections/{namespace}/{slug}/items", collection_items, methods=["POST"]),
        Route("/api/collections/{namespace}/{slug}/items/{item}", collection_item, methods=["PATCH", "DELETE"]),
        Route("/api/users/{user}/likes", user_likes, methods=["GET"]),
        Route("/api/{plural}/{namespace}/{name}/like", like, methods=["POST", "DELETE"]),
        Route("/api/{plural}/{namespace}/{name}/likers", likers, methods=["GET"]),
        Route("/api/{plural}/{namespace}/{name}/ask-access", ask_access, methods=["POST"]),
        Route("/api/{plural}/{namespace}/{name}/user-access-request/handle", handle_access_request, methods=["POST"]),
        Route("/api/{plural}/{namespace}/{name}/user-access-request/grant", grant_access, methods=["POST"]),
        Route("/api/{plural}/{namespace}/{name}/user-access-request/{status}", access_requests, methods=["GET"]),
    ]
    return table
