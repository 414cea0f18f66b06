"""HTTP handlers of the Buckets API as huggingface_hub 2.4 calls it. Each one parses, calls `Buckets` in a
worker thread, and renders.

The client quotes a tree prefix and a resolve path whole (`quote(path, safe="")`), so they are read from the
raw request path: decoding them once, exactly, keeps a file named `a%2Fb` apart from `a/b`.
"""

from __future__ import annotations

from urllib.parse import quote, unquote, urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from keephub.buckets.service import MAX_BATCH_BYTES, Buckets
from keephub.hub.routes import actor_of, call, hub_of, read_json_object
from keephub.wire import BadRequest, headers
from keephub.wire.bodies import read_body
from keephub.wire.errors import NotFound
from keephub.wire.ranges import requested_span

BUCKET = "/api/buckets/{namespace}/{name}"


def buckets_of(request: Request) -> Buckets:
    return request.app.state.buckets


def bucket_params(request: Request) -> tuple[str, str]:
    return request.path_params["namespace"], request.path_params["name"]


def root_url(request: Request) -> str:
    """The URL the client reached keephub at (`public_url` when set): huggingface_hub parses the bucket URL it
    gets back against its own endpoint, and refuses one on another host."""
    return (hub_of(request).settings.public_url or str(request.base_url)).rstrip("/")


def raw_tail(request: Request, segments: int) -> str:
    """The request path after its first `segments` segments, percent-decoded exactly once."""
    raw = request.scope.get("raw_path") or request.url.path.encode()
    parts = raw.split(b"?", 1)[0].decode("latin-1").split("/", segments + 1)
    try:
        return unquote(parts[segments + 1], errors="strict") if len(parts) > segments + 1 else ""
    except UnicodeDecodeError:
        raise BadRequest("the path in the URL is not percent-encoded UTF-8")


def is_true(request: Request, name: str) -> bool:
    return request.query_params.get(name, "").lower() in ("1", "true")


async def create(request: Request) -> JSONResponse:
    actor = await actor_of(request)
    body = await read_json_object(request)
    return JSONResponse(await call(buckets_of(request).create, actor, *bucket_params(request), body,
                                   root_url(request)))


async def info(request: Request) -> JSONResponse:
    actor = await actor_of(request)
    return JSONResponse(await call(buckets_of(request).info, actor, *bucket_params(request)))


async def delete(request: Request) -> JSONResponse:
    actor = await actor_of(request)
    await call(buckets_of(request).delete, actor, *bucket_params(request))
    return JSONResponse({})


async def list_buckets(request: Request) -> JSONResponse:
    actor = await actor_of(request)
    found = await call(buckets_of(request).list_buckets, actor, request.path_params["namespace"],
                       request.query_params.get("search"))
    return JSONResponse(found)


async def settings(request: Request) -> JSONResponse:
    actor = await actor_of(request)
    body = await read_json_object(request)
    return JSONResponse(await call(buckets_of(request).update_settings, actor, *bucket_params(request), body))


async def move(request: Request) -> JSONResponse:
    """`POST /api/repos/move` serves repos and, with `"type": "bucket"`, buckets (`move_bucket`)."""
    actor = await actor_of(request)
    body = await read_json_object(request)
    if body.get("type") == "bucket":
        return JSONResponse(await call(buckets_of(request).move, actor, body, root_url(request)))
    return JSONResponse(await call(hub_of(request).move_repo, actor, body))


async def tree(request: Request) -> JSONResponse:
    actor = await actor_of(request)
    prefix = raw_tail(request, 5)  # /api/buckets/{namespace}/{name}/tree/{prefix}
    recursive = is_true(request, "recursive")
    entries, cursor = await call(buckets_of(request).tree, actor, *bucket_params(request), prefix, recursive,
                                 request.query_params.get("cursor"))
    link = {}
    if cursor is not None:
        namespace, name = bucket_params(request)
        tail = "/" + quote(prefix, safe="") if prefix else ""
        query = urlencode({"recursive": str(recursive).lower(), "cursor": cursor})
        link["Link"] = f'<{root_url(request)}/api/buckets/{namespace}/{name}/tree{tail}?{query}>; rel="next"'
    return JSONResponse(entries, headers=link)


async def paths_info(request: Request) -> JSONResponse:
    actor = await actor_of(request)
    body = await read_json_object(request)
    return JSONResponse(await call(buckets_of(request).paths_info, actor, *bucket_params(request),
                                   body.get("paths")))


async def batch(request: Request) -> JSONResponse:
    actor = await actor_of(request)
    body = await read_body(request, MAX_BATCH_BYTES, "; send at most 1000 operations per batch, as the client does")
    return JSONResponse(await call(buckets_of(request).batch, actor, *bucket_params(request), body))


async def xet_token(request: Request) -> JSONResponse:
    """`xet-read-token` / `xet-write-token` of a bucket (no revision): JSON for hf_xet, headers for the client."""
    access = request.path_params["access"]
    if access not in ("read", "write"):
        raise NotFound(f"no such endpoint: xet-{access}-token; use xet-read-token or xet-write-token")
    actor = await actor_of(request)
    answer = await call(buckets_of(request).xet_token, actor, *bucket_params(request), access)
    return JSONResponse(answer, headers={
        headers.X_XET_CAS_URL: answer["casUrl"],
        headers.X_XET_ACCESS_TOKEN: answer["accessToken"],
        headers.X_XET_EXPIRATION: str(answer["exp"]),
    })


async def resolve(request: Request) -> Response:
    """A bucket file: HEAD gives what `get_bucket_file_metadata` reads (Xet hash, size, token route); GET the
    bytes, rebuilt from the xorbs, with Range, for browsers and clients without hf_xet."""
    actor = await actor_of(request)
    path = raw_tail(request, 4)  # /buckets/{namespace}/{name}/resolve/{path}
    buckets = buckets_of(request)
    ref, row = await call(buckets.file, actor, *bucket_params(request), path)
    refresh = f"{buckets.settings.base_url}/api/buckets/{ref.bucket_id}/xet-read-token"
    answer = {
        "ETag": f'"{row.xet_hash}"',
        headers.X_LINKED_ETAG: f'"{row.xet_hash}"',
        headers.X_LINKED_SIZE: str(row.size),
        headers.X_XET_HASH: row.xet_hash,
        headers.X_XET_REFRESH_ROUTE: refresh,
        "Link": f'<{refresh}>; rel="xet-auth"',
        "Accept-Ranges": "bytes",
        "Content-Disposition": f"inline; filename*=UTF-8''{quote(path.rsplit('/', 1)[-1], safe='')}",
    }
    status, start, length = 200, 0, row.size
    span = requested_span(request.headers.get("range"), row.size)
    if span is not None:
        status, start, length = 206, span[0], span[1] - span[0] + 1
        answer["Content-Range"] = f"bytes {span[0]}-{span[1]}/{row.size}"
    answer["Content-Length"] = str(length)
    media_type = row.content_type or "application/octet-stream"
    if request.method == "HEAD":
        return Response(status_code=status, headers=answer, media_type=media_type)
    content = await call(buckets.content, row, start, length)
    return StreamingResponse(content, status_code=status, headers=answer, media_type=media_type)


def routes() -> list[BaseRoute]:
    """Listed before the Hub's routes: `/api/repos/move` is shared, and `/api/{type}/...` would match buckets."""
    return [
        Route("/api/repos/move", move, methods=["POST"]),
        Route("/api/buckets/{namespace}", list_buckets, methods=["GET"]),
        Route(BUCKET, info, methods=["GET"]),
        Route(BUCKET, create, methods=["POST"]),
        Route(BUCKET, delete, methods=["DELETE"]),
        Route(BUCKET + "/settings", settings, methods=["PUT"]),
        Route(BUCKET + "/tree", tree, methods=["GET"]),
        Route(BUCKET + "/tree/{prefix:path}", tree, methods=["GET"]),
        Route(BUCKET + "/paths-info", paths_info, methods=["POST"]),
        Route(BUCKET + "/batch", batch, methods=["POST"]),
        Route(BUCKET + "/xet-{access:str}-token", xet_token, methods=["GET"]),
        Route("/buckets/{namespace}/{name}/resolve/{path:path}", resolve, methods=["GET", "HEAD"]),
    ]
