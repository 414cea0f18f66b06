"""HTTP endpoints of the CAS, under `/cas` (the `casUrl` the token endpoints hand out).

Every endpoint but the xorb fetch takes `Authorization: Bearer <CAS token>`; the fetch URLs sign
their own byte range, because hf_xet sends them without credentials. Newer protocol routes this
CAS does not serve (xorb grants, v2 shards) answer 404, which makes hf_xet use the v1 ones.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from keephub.wire import BadRequest, RangeNotSatisfiable
from keephub.wire.bodies import read_body, receive_into
from keephub.wire.origin import through_unix_socket
from keephub.wire.ranges import parse_range
from keephub.xet import formats, hashing, tokens
from keephub.xet.store import Cas

TELEMETRY_LIMIT = 1024 * 1024


def cas_of(request: Request) -> Cas:
    return request.app.state.hub.cas


async def grant_of(request: Request, needed: str) -> tokens.CasGrant:
    """The request's CAS grant, checked against the present on every request: the Hub token behind it still
    valid (a job's token is revoked when the job ends), the same repo or bucket, the user's rights on it now."""
    grant = tokens.decode(cas_of(request).settings, request.headers.get("authorization"))
    tokens.require(grant, needed)
    owner = request.app.state.buckets if grant.kind == tokens.BUCKET else request.app.state.hub
    await run_in_threadpool(owner.check_cas_grant, grant)
    return grant


def hash_param(request: Request, key: str = "hash") -> str:
    value = request.path_params[key]
    if not hashing.is_hash_string(value):
        raise BadRequest(f"{value!r} is not a Xet hash: expected 64 lowercase hex digits")
    return value


async def upload_xorb(request: Request) -> JSONResponse:
    grant = await grant_of(request, tokens.WRITE)
    xorb = hash_param(request)
    cas = cas_of(request)
    upload = await run_in_threadpool(cas.begin_xorb, xorb, grant)
    try:
        if upload.ticket is not None:
            await upload.ticket.take_turn()
        await receive_into(request, upload, formats.MAX_XORB_BYTES,
                           "a serialized xorb may be at most {limit} bytes; nothing was stored")
        inserted = await run_in_threadpool(cas.store_xorb, upload)
    finally:
        await run_in_threadpool(upload.abort)
    return JSONResponse({"was_inserted": inserted})


async def upload_shard(request: Request) -> JSONResponse:
    grant = await grant_of(request, tokens.WRITE)
    body = await read_body(request, formats.MAX_SHARD_BYTES, "; split the upload into several shards")
    result = await run_in_threadpool(cas_of(request).register_shard, grant, body)
    return JSONResponse({"result": result})


async def query_chunk(request: Request) -> Response:
    """Global dedup. Only uploads need it, so it takes a write token: a read token (anyone's, for a public
    repo) cannot be used to probe whether some content exists on this server."""
    await grant_of(request, tokens.WRITE)
    shard = await run_in_threadpool(cas_of(request).dedup_query, hash_param(request))
    if shard is None:
        return Response(status_code=404)
    return Response(shard, media_type="application/octet-stream")


async def reconstruction(request: Request) -> JSONResponse:
    grant = await grant_of(request, tokens.READ)
    cas = cas_of(request)
    entry = await run_in_threadpool(cas.readable_file, grant, request.path_params["hash"])
    first, last = cas.byte_range(entry, request.headers.get("range"))
    version = 2 if request.url.path.startswith("/cas/v2/") else 1
    # hf_xet in a job's sandbox reaches keephub alone: its fetch URLs stay keephub's own.
    direct = not through_unix_socket(request)
    return JSONResponse(await run_in_threadpool(cas.reconstruction, entry, first, last, version, direct))


async def fetch_xorb(request: Request) -> Response:
    """Serve a signed byte range of a xorb; the Range header may ask for all of it or a part, never more."""
    cas = cas_of(request)
    xorb = hash_param(request)
    first, last = tokens.check_fetch(cas.settings, xorb, dict(request.query_params))
    wanted = request.headers.get("range")
    if wanted:
        try:
            asked = parse_range(wanted)
        except ValueError:
            asked = None
        if asked is None or asked.first is None or asked.last is None:
            raise BadRequest(f"Range {wanted!r} is malformed; send the 'bytes=<first>-<last>' the URL was issued for")
        if asked.first < first or asked.last > last or asked.first > asked.last:
            raise RangeNotSatisfiable(f"Range {wanted!r} is outside the bytes {first}-{last} this URL grants")
        first, last = asked.first, asked.last
    entry = await run_in_threadpool(cas.xorb, xorb)
    if entry is None or last >= entry.stored_bytes:
        raise RangeNotSatisfiable(f"xorb {xorb} does not hold bytes {first}-{last}")
    content = await run_in_threadpool(cas.read_xorb_range, xorb, first, last)
    return StreamingResponse(content, status_code=206, media_type="application/octet-stream", headers={
        "Content-Length": str(last - first + 1),
        "Content-Range": f"bytes {first}-{last}/{entry.stored_bytes}",
    })


async def telemetry(request: Request) -> Response:
    """Accepted and dropped: keephub collects no client telemetry."""
    await read_body(request, TELEMETRY_LIMIT)
    return JSONResponse({})


def routes() -> list[BaseRoute]:
    return [
        Route("/cas/v1/xorbs/{prefix}/{hash}", upload_xorb, methods=["POST"]),
        Route("/cas/v1/shards", upload_shard, methods=["POST"]),
        Route("/cas/v1/chunks/{prefix}/{hash}", query_chunk, methods=["GET"]),
        Route("/cas/v1/reconstructions/{hash}", reconstruction, methods=["GET"]),
        Route("/cas/v2/reconstructions/{hash}", reconstruction, methods=["GET"]),
        Route("/cas/v1/telemetry", telemetry, methods=["POST"]),
        # hf_xet posts telemetry to the Hub endpoint itself, not to casUrl.
        Route("/v1/telemetry", telemetry, methods=["POST"]),
        Route("/cas/fetch/{hash}", fetch_xorb, methods=["GET"]),
    ]
