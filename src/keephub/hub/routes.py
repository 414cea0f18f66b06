"""HTTP handlers of the Hub API. Each one parses, calls `Hub` in a worker thread, and renders.

Revisions arrive URL-quoted (`refs%2Fpr%2F1`, `rescue%2Fjob-1`); `EncodedSlashes` keeps `%2F`
encoded while routing so a branch name with a slash stays one path segment.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any, Callable
from urllib.parse import quote, unquote, urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from keephub.accounts import INVALID_CREDENTIALS, Actor, access_token_info
from keephub.hub import lfs, modelcard, naming, snapshots
from keephub.hub.repos import RepoMoved
from keephub.hub.service import FileTarget, Hub
from keephub.wire import BadRequest, Unauthorized, headers
from keephub.wire.errors import HubError, NotFound, RepoNotFound
from keephub.wire.bodies import read_body, receive_into, spool_body
from keephub.wire.origin import through_unix_socket
from keephub.wire.params import int_param
from keephub.wire.ranges import requested_span
from keephub.wire.text import first_invalid_string

JSON_LIMIT = 8 * 1024 * 1024
MAX_LIST_LIMIT = 100_000
MAX_TREE_CURSOR = 10**9
EXPANDED_TREE_PAGE_SIZE = 50


class EncodedSlashes:
    """Route on the raw path with `%2F` left encoded, so quoted revisions stay one segment."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = scope.get("raw_path")
        if scope["type"] == "http" and raw and b"%2f" in raw.lower():
            path = raw.split(b"?", 1)[0].decode("latin-1")
            path = re.sub("%2[fF]", "%252F", path)
            scope = dict(scope, path=unquote(path))
        await self.app(scope, receive, send)


def hub_of(request: Request) -> Hub:
    return request.app.state.hub


def credentials_of(request: Request) -> str | None:
    """The token in `Authorization: Bearer <token>`, or in HTTP Basic as the password (git and git-lfs send what a
    credential helper gives them); None without the header, 401 for one that holds no token."""
    value = request.headers.get("authorization")
    if not value:
        return None
    scheme, _, secret = value.partition(" ")
    if scheme.lower() == "basic":
        secret = basic_password(secret)
    elif scheme.lower() != "bearer":
        raise Unauthorized(INVALID_CREDENTIALS)
    if not secret.strip():
        raise Unauthorized(INVALID_CREDENTIALS)
    return secret.strip()


async def actor_of(request: Request) -> Actor | None:
    """The caller (see `credentials_of`); a token that is present but unknown is a 401."""
    secret = credentials_of(request)
    return None if secret is None else await run_in_threadpool(hub_of(request).accounts.authenticate, secret)


async def call_as(request: Request, fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(caller, *args)` for a request that only reads: the caller is authenticated in the same trip to a worker
    thread (each trip costs tens of microseconds, more when threads contend) and in the same database session."""
    secret = credentials_of(request)
    hub = hub_of(request)

    def as_caller() -> Any:
        actor, mark_due = None, False
        try:
            with hub.db.one_read():
                if secret is not None:
                    actor, mark_due = hub.accounts.check_token(secret)
                return fn(actor, *args)
        finally:
            if mark_due:
                hub.accounts.mark_used(actor)

    return await run_in_threadpool(as_caller)


def basic_password(credentials: str) -> str:
    """The token in HTTP Basic credentials: the password, or the user name when there is no password."""
    try:
        user, _, password = base64.b64decode(credentials.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise Unauthorized("the Basic credentials are not base64 of USER:TOKEN; use your access token as the password")
    return password or user


async def read_json(request: Request, invalid_text: type[HubError] = BadRequest) -> Any:
    """The JSON body, every string in it storable text (see wire/text.py); a string that is not is refused
    with `invalid_text` (the Jobs API answers 422 for a bad field, the Hub API 400) naming its field."""
    body = await read_body(request, JSON_LIMIT)
    if not body.strip():
        return {}
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting too deep for the parser
        raise BadRequest(f"the request body is not valid JSON: {exc}")
    invalid = first_invalid_string(parsed)
    if invalid is not None:
        field, problem = invalid
        raise invalid_text(f"the field {field or '(the whole body)'!r} of the request body {problem}; "
                           "send UTF-8 text without NUL bytes")
    return parsed


async def read_json_object(request: Request) -> dict:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def repo_params(request: Request) -> tuple[str, str, str]:
    params = request.path_params
    repo_type = naming.repo_type_from_plural(params["plural"]) if "plural" in params else params["repo_type"]
    return repo_type, params["namespace"], params["name"]


def revision_param(request: Request, key: str = "revision") -> str:
    revision = unquote(request.path_params[key])
    if not revision or "\x00" in revision:
        raise BadRequest("the revision in the URL is empty or malformed")
    return revision


def creates_pr(request: Request) -> bool:
    """Whether the client asks to open a pull request (`create_pr=1`) rather than write to the revision."""
    return request.query_params.get("create_pr") in ("1", "true")


def call(fn: Callable[..., Any], *args: Any) -> Any:
    return run_in_threadpool(fn, *args)


# -- account ---------------------------------------------------------------------------------------
async def whoami(request: Request) -> JSONResponse:
    accounts = hub_of(request).accounts

    def with_org_names(actor: Actor | None) -> tuple[Actor | None, dict[str, str]]:
        # Most callers belong to no organization: they skip the query for org names.
        return actor, accounts.org_fullnames(list(actor.org_roles)) if actor and actor.org_roles else {}

    actor, orgs = await call_as(request, with_org_names)
    if actor is None:
        raise Unauthorized(INVALID_CREDENTIALS)
    return JSONResponse({
        "type": "user",
        "id": str(actor.user_id),
        "name": actor.name,
        "fullname": actor.fullname,
        "email": None,
        "emailVerified": False,
        "isPro": False,
        "canPay": False,
        "avatarUrl": "",
        "orgs": [{"type": "org", "name": n, "fullname": orgs.get(n, n), "roleInOrg": r}
                 for n, r in actor.org_roles.items()],
        "auth": {"type": "access_token", "accessToken": access_token_info(actor)},
    })


async def auth_check(request: Request) -> JSONResponse:
    """`HfApi.auth_check`: 200 when the caller's token may read (or, under /write, write) the repo."""
    actor = await actor_of(request)
    await call(hub_of(request).auth_check, actor, *repo_params(request), request.url.path.endswith("/write"))
    return JSONResponse({})


# -- repos ------------------------------------------------------------------------------------------
async def create_repo(request: Request) -> JSONResponse:
    actor = await actor_of(request)
    return JSONResponse(await call(hub_of(request).create_repo, actor, await read_json_object(request)))


async def delete_repo(request: Request) -> Response:
    actor = await actor_of(request)
    await call(hub_of(request).delete_repo, actor, await read_json_object(request))
    return JSONResponse({})


async def move_repo(request: Request) -> JSONResponse:
    actor = await actor_of(request)
    return JSONResponse(await call(hub_of(request).move_repo, actor, await read_json_object(request)))


async def repo_settings(request: Request) -> JSONResponse:
    actor = await actor_of(request)
    body = await read_json_object(request)
    return JSONResponse(await call(hub_of(request).update_settings, actor, *repo_params(request), body))


async def repo_info(request: Request) -> Response:
    revision = revision_param(request) if "revision" in request.path_params else None
    with_metadata = request.query_params.get("blobs", "").lower() in ("1", "true")
    body = await call_as(request, hub_of(request).repo_info_json, *repo_params(request), revision, with_metadata)
    return Response(body, media_type="application/json")


async def list_repos(request: Request) -> JSONResponse:
    actor = await actor_of(request)
    repo_type = naming.repo_type_from_plural(request.path_params["plural"])
    query = request.query_params
    limit = int_param(query, "limit", minimum=0, maximum=MAX_LIST_LIMIT)
    found = await call(hub_of(request).list_repos, actor, repo_type, query.get("author"), query.get("search"),
                       limit)
    return JSONResponse(found)


async def tree(request: Request) -> Response:
    # The client quotes the whole folder path (`a%2Fb`), which EncodedSlashes leaves encoded.
    path = re.sub("%2[fF]", "/", request.path_params.get("path", "")).strip("/")
    if path:
        path = naming.check_path(path)
    recursive = request.query_params.get("recursive", "").lower() in ("1", "true")
    expand = request.query_params.get("expand", "").lower() in ("1", "true")
    start = int_param(request.query_params, "cursor", minimum=0, maximum=MAX_TREE_CURSOR, default=0,
                      hint="; pass the cursor from the Link header of the previous page") or 0
    hub, repo = hub_of(request), repo_params(request)
    revision = revision_param(request)
    size = hub.settings.tree_page_size
    if expand:  # as on the Hub, expanded pages are small: each entry costs a walk back through history
        size = min(size, EXPANDED_TREE_PAGE_SIZE)

        def expanded_page(actor: Actor | None) -> tuple[str, int, bytes]:
            sha, entries = hub.tree(actor, *repo, revision, path, recursive)
            page = hub.last_commits(actor, *repo, sha, entries[start : start + size])
            return sha, len(entries), snapshots.encode(page)

        sha, total, body = await call_as(request, expanded_page)
    else:
        sha, total, body = await call_as(request, hub.tree_page_json, *repo, revision, path, recursive, start, size)
    link_headers = {}
    if start + size < total:
        repo_type, namespace, name = repo
        params = urlencode({"recursive": str(recursive).lower(), "expand": str(expand).lower(),
                            "cursor": start + size})
        next_url = (f"{hub.settings.base_url}/api/{repo_type}s/{namespace}/{name}/tree/{sha}/"
                    f"{quote(path)}?{params}")
        link_headers["Link"] = f'<{next_url}>; rel="next"'
    return Response(body, headers=link_headers, media_type="application/json")


async def paths_info(request: Request) -> JSONResponse:
    if request.headers.get("content-type", "").startswith("application/json"):
        body = await read_json_object(request)
        paths, expand = body.get("paths"), body.get("expand")
    else:
        form = await request.form()
        paths, expand = form.getlist("paths"), form.get("expand")
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise BadRequest("'paths' must be a list of file or folder paths")
    result = await call_as(request, hub_of(request).paths_info, *repo_params(request), revision_param(request),
                           paths, str(expand).lower() in ("1", "true"))
    return JSONResponse(result)


async def list_commits(request: Request) -> JSONResponse:
    actor = await actor_of(request)
    formatted = "formatted" in request.query_params.getlist("expand[]")
    found = await call(hub_of(request).commits, actor, *repo_params(request), revision_param(request), formatted)
    return JSONResponse(found)


async def list_refs(request: Request) -> JSONResponse:
    actor = await actor_of(request)
    return JSONResponse(await call(hub_of(request).refs, actor, *repo_params(request)))


async def branch(request: Request) -> JSONResponse:
    actor = await actor_of(request)
    name = revision_param(request, "branch")
    if request.method == "DELETE":
        await call(hub_of(request).delete_branch, actor, *repo_params(request), name)
    else:
        body = await read_json_object(request)
        starting_point = body.get("startingPoint")
        if starting_point is not None and not isinstance(starting_point, str):
            raise BadRequest("'startingPoint' must be a branch, tag or commit id")
        await call(hub_of(request).create_branch, actor, *repo_params(request), name, starting_point)
    return JSONResponse({})


async def tag(request: Request) -> JSONResponse:
    actor = await actor_of(request)
    if request.method == "DELETE":
        await call(hub_of(request).delete_tag, actor, *repo_params(request), revision_param(request))
        return JSONResponse({})
    body = await read_json_object(request)
    if not isinstance(body.get("tag"), str):
        raise BadRequest("the body must name the new tag: {\"tag\": \"v1.0\"}")
    await call(hub_of(request).create_tag, actor, *repo_params(request), revision_param(request), body["tag"])
    return JSONResponse({})


async def preupload(request: Request) -> JSONResponse:
    actor = await actor_of(request)
    body = await read_json_object(request)
    return JSONResponse(await call(hub_of(request).preupload, actor, *repo_params(request), revision_param(request),
                                   body, creates_pr(request)))


async def commit(request: Request) -> JSONResponse:
    actor = await actor_of(request)
    # Spooled, and parsed line by line from there: a commit of many regular files costs little memory.
    body = await spool_body(request, hub_of(request).settings.max_commit_body_bytes,
                            "; split the files over several commits (regular files travel inside the commit body)")
    # create_pr=1 opens a pull request holding the commit (hub/discussions.py) instead of moving the branch.
    make = request.app.state.discussions.commit_as_pr if creates_pr(request) else hub_of(request).commit
    with body:
        return JSONResponse(await call(make, actor, *repo_params(request), revision_param(request), body))


async def super_squash(request: Request) -> JSONResponse:
    actor = await actor_of(request)
    body = await read_json_object(request)
    sha = await call(hub_of(request).super_squash, actor, *repo_params(request), revision_param(request), body)
    return JSONResponse({"commitOid": sha})


async def lfs_files(request: Request) -> JSONResponse:
    actor = await actor_of(request)
    return JSONResponse(await call(hub_of(request).lfs_files, actor, *repo_params(request)))


async def delete_lfs_files(request: Request) -> JSONResponse:
    actor = await actor_of(request)
    await call(hub_of(request).delete_lfs_files, actor, *repo_params(request), await read_json_object(request))
    return JSONResponse({})


async def validate_yaml(request: Request) -> JSONResponse:
    body = await read_json_object(request)
    content = body.get("content")
    if content is not None and not isinstance(content, str):
        raise BadRequest("'content' must be the README text")
    if body.get("repoType") is not None:
        naming.check_repo_type(body["repoType"])
    modelcard.check_metadata(content or "")
    return JSONResponse({"errors": [], "warnings": []})


# -- LFS --------------------------------------------------------------------------------------------
async def lfs_batch(request: Request) -> JSONResponse:
    actor = await actor_of(request)
    body = await read_json(request)
    result = await call(hub_of(request).lfs_batch, actor, *repo_params(request), body)
    return JSONResponse(result, media_type="application/vnd.git-lfs+json")


async def lfs_verify(request: Request) -> JSONResponse:
    hub = hub_of(request)
    body = await read_json(request)
    if "sig" in request.query_params:  # the signed URL of a batch answer (git-lfs sends it no credentials)
        oid = body.get("oid") if isinstance(body, dict) else None
        grant = lfs.check_grant(hub.settings, str(oid), dict(request.query_params))
        await call(hub.check_upload_grant, grant)
        await call(hub.lfs_verify_granted, grant, body)
        return JSONResponse({})
    actor = await actor_of(request)
    await call(hub.lfs_verify, actor, *repo_params(request), body)
    return JSONResponse({})


async def lfs_download(request: Request) -> Response:
    actor = await actor_of(request)
    oid = request.path_params["oid"]
    hub = hub_of(request)
    size = await call(hub.lfs_object, actor, *repo_params(request), oid)
    direct = await call(hub.large_file_url, oid) if may_redirect(request, actor) else None
    if direct is not None:
        return RedirectResponse(direct, status_code=302)
    return StreamingResponse(await call(hub.large_file, oid), headers={"Content-Length": str(size)},
                             media_type="application/octet-stream")


async def lfs_upload(request: Request) -> Response:
    """Single PUT of a whole object (basic transfer), or POST completing a multipart upload."""
    hub = hub_of(request)
    oid = request.path_params["oid"]
    grant = lfs.check_grant(hub.settings, oid, dict(request.query_params))
    await call(hub.check_upload_grant, grant)
    if request.method == "POST":
        await call(lfs.complete_multipart, hub.blobs, grant, await read_body(request, JSON_LIMIT))
    else:
        pending = hub.blobs.begin(oid)
        try:
            await receive_into(request, pending, grant.size)
            await call(lfs.commit_upload, pending, grant)
        finally:
            await call(pending.abort)
    await call(hub.check_upload_grant, grant)
    await call(lfs.link, hub.db, hub.blobs, grant)
    return JSONResponse({})


async def lfs_upload_part(request: Request) -> Response:
    hub = hub_of(request)
    grant = lfs.check_grant(hub.settings, request.path_params["oid"], dict(request.query_params))
    await call(hub.check_upload_grant, grant)
    number = request.path_params["part"]
    chunk_size = hub.settings.lfs_multipart_chunk_bytes
    if number < 1 or (number - 1) * chunk_size >= max(grant.size, 1):
        raise BadRequest(f"part number {number} is outside this upload")
    pending = await call(hub.blobs.begin_part, grant.upload_id, number)
    try:
        await receive_into(request, pending, chunk_size)
        etag = pending.sha256
        await call(pending.commit_verified)  # parts are re-hashed against their ETags when the upload completes
    finally:
        await call(pending.abort)
    return Response(status_code=200, headers={"ETag": f'"{etag}"'})


# -- files ------------------------------------------------------------------------------------------
async def xet_token(request: Request) -> JSONResponse:
    """`xet-read-token` / `xet-write-token`: hf_xet reads the JSON body, huggingface_hub the headers; send both."""
    access = request.path_params["access"]
    if access not in ("read", "write"):
        raise NotFound(f"no such endpoint: xet-{access}-token; use xet-read-token or xet-write-token")
    actor = await actor_of(request)
    answer = await call(hub_of(request).xet_token, actor, *repo_params(request), access, revision_param(request),
                        creates_pr(request))
    return JSONResponse(answer, headers={
        headers.X_XET_CAS_URL: answer["casUrl"],
        headers.X_XET_ACCESS_TOKEN: answer["accessToken"],
        headers.X_XET_EXPIRATION: str(answer["exp"]),
    })


def may_redirect(request: Request, actor: Actor | None) -> bool:
    """Whether a download may be sent to the blob store (S3) instead of served: not for jobs, whose sandboxes
    reach keephub alone, through its Unix socket on this machine or, from a Slurm node, through their agent
    (whose requests carry the job's own token)."""
    return not through_unix_socket(request) and not (actor is not None and actor.is_job_token)


async def resolve(request: Request) -> Response:
    hub = hub_of(request)
    repo, revision, path = repo_params(request), revision_param(request), request.path_params["path"]

    def target_and_redirect(actor: Actor | None) -> tuple[FileTarget, str | None]:
        """The file, and the blob store's URL for it when the answer is a redirect there (see below)."""
        target = hub.file_target(actor, *repo, revision, path, with_content=request.method != "HEAD")
        return target, (hub.large_file_url(target.etag) if target.is_lfs and may_redirect(request, actor) else None)

    target, direct = await call_as(request, target_and_redirect)
    # RFC 5987 percent-encoding: a raw non-latin-1 file name cannot go into a header at all.
    filename = quote(path.rsplit("/", 1)[-1], safe="")
    base_headers = {
        headers.X_REPO_COMMIT: target.commit_sha,
        "ETag": f'"{target.etag}"',
        "Accept-Ranges": "bytes",
        "Content-Disposition": f"inline; filename*=UTF-8''{filename}",
    }
    if target.is_lfs:
        base_headers[headers.X_LINKED_ETAG] = f'"{target.etag}"'
        base_headers[headers.X_LINKED_SIZE] = str(target.size)
    if target.xet_hash is not None:
        repo_type, namespace, name = repo_params(request)
        refresh = (f"{hub.settings.base_url}/api/{repo_type}s/{namespace}/{name}"
                   f"/xet-read-token/{target.commit_sha}")
        base_headers[headers.X_XET_HASH] = target.xet_hash
        base_headers[headers.X_XET_REFRESH_ROUTE] = refresh
        base_headers["Link"] = f'<{refresh}>; rel="xet-auth"'
    status, start, length = 200, 0, target.size
    range_header = request.headers.get("range")
    if range_header and target.size > 0:
        span = requested_span(range_header, target.size)
        if span is not None:
            status, start, length = 206, span[0], span[1] - span[0] + 1
            base_headers["Content-Range"] = f"bytes {span[0]}-{span[1]}/{target.size}"
    base_headers["Content-Length"] = str(length)
    media_type = "application/octet-stream"
    if direct is not None:
        # As the Hub does with its CDN: huggingface_hub reads X-Linked-Size/-Etag and X-Repo-Commit from this
        # response (a HEAD stops here, the Location being another origin) and fetches Location without the
        # Authorization header, which a presigned URL must not carry. A Range is re-sent there.
        kept = {k: v for k, v in base_headers.items()
                if k not in ("Content-Length", "Content-Range", "Accept-Ranges", "Content-Disposition")}
        return Response(status_code=302, headers={**kept, "Location": direct})
    if request.method == "HEAD":
        return Response(status_code=status, headers=base_headers, media_type=media_type)
    if target.inline is not None:
        return Response(target.inline[start : start + length], status_code=status, headers=base_headers,
                        media_type=media_type)
    content = await call(hub.large_file, target.etag, start, length)
    return StreamingResponse(content, status_code=status, headers=base_headers, media_type=media_type)


async def repo_without_namespace(request: Request) -> Response:
    """`gpt2`, `bert-base-uncased`: ids without a namespace, which the Hub keeps for its oldest repos. keephub has
    none; the answer is the RepoNotFound the client reads as "no such repo" (`repo_exists` is False)."""
    repo_type, name = request.path_params["repo_type"], request.path_params["name"]
    raise RepoNotFound(f"{repo_type.capitalize()} repository {name!r} not found: repo ids on keephub are "
                       f"namespace/name, e.g. alice/{name}")


def following_moves(endpoint: Callable) -> Callable:
    """Requests that name a moved repo by its old id are redirected to its new id; 307 keeps method and body."""

    async def endpoint_following_moves(request: Request) -> Response:
        try:
            return await endpoint(request)
        except RepoMoved as moved:
            old = f"/{request.path_params['namespace']}/{request.path_params['name']}"
            path = request.scope["raw_path"].decode("latin-1").split("?", 1)[0]
            query = request.scope.get("query_string", b"").decode("latin-1")
            target = path.replace(old, f"/{moved.repo.repo_id}", 1) + (f"?{query}" if query else "")
            return RedirectResponse(target, status_code=307)

    return endpoint_following_moves


def _typed(prefix: str, repo_type: str, path: str, endpoint: Callable, methods: list[str]) -> Route:
    async def bound(request: Request) -> Response:
        request.path_params["repo_type"] = repo_type
        return await endpoint(request)

    return Route(f"{prefix}{path}", bound, methods=methods, name=f"{endpoint.__name__}_{repo_type}")


def routes() -> list[BaseRoute]:
    api = "/api/{plural}/{namespace}/{name}"
    table: list[BaseRoute] = [
        Route("/api/whoami-v2", whoami, methods=["GET"]),
        Route("/api/repos/create", create_repo, methods=["POST"]),
        Route("/api/repos/delete", delete_repo, methods=["DELETE"]),
        Route("/api/repos/move", move_repo, methods=["POST"]),
        Route("/api/validate-yaml", validate_yaml, methods=["POST"]),
        Route("/api/lfs/objects/{oid}", lfs_upload, methods=["PUT", "POST"]),
        Route("/api/lfs/objects/{oid}/parts/{part:int}", lfs_upload_part, methods=["PUT"]),
        Route("/api/{plural}", list_repos, methods=["GET"]),
        Route(api, repo_info, methods=["GET"]),
        Route(api + "/revision/{revision}", repo_info, methods=["GET"]),
        Route(api + "/settings", repo_settings, methods=["PUT"]),
        Route(api + "/auth-check", auth_check, methods=["GET"]),
        Route(api + "/auth-check/write", auth_check, methods=["GET"]),
        Route(api + "/tree/{revision}", tree, methods=["GET"]),
        Route(api + "/tree/{revision}/{path:path}", tree, methods=["GET"]),
        Route(api + "/paths-info/{revision}", paths_info, methods=["POST"]),
        Route(api + "/commits/{revision}", list_commits, methods=["GET"]),
        Route(api + "/refs", list_refs, methods=["GET"]),
        Route(api + "/branch/{branch}", branch, methods=["POST", "DELETE"]),
        Route(api + "/tag/{revision}", tag, methods=["POST", "DELETE"]),
        Route(api + "/preupload/{revision}", preupload, methods=["POST"]),
        Route(api + "/commit/{revision}", commit, methods=["POST"]),
        Route(api + "/xet-{access:str}-token/{revision}", xet_token, methods=["GET"]),
        Route(api + "/super-squash/{revision}", super_squash, methods=["POST"]),
        Route(api + "/lfs-files", lfs_files, methods=["GET"]),
        Route(api + "/lfs-files/batch", delete_lfs_files, methods=["POST"]),
    ]
    for repo_type, prefix in (("dataset", "/datasets"), ("space", "/spaces"), ("model", "")):
        table += [
            _typed(prefix, repo_type, "/{namespace}/{name}.git/info/lfs/objects/batch", lfs_batch, ["POST"]),
            _typed(prefix, repo_type, "/{namespace}/{name}.git/info/lfs/objects/verify", lfs_verify, ["POST"]),
            _typed(prefix, repo_type, "/{namespace}/{name}.git/info/lfs/objects/{oid}", lfs_download, ["GET"]),
            _typed(prefix, repo_type, "/{namespace}/{name}/resolve/{revision}/{path:path}", resolve, ["GET", "HEAD"]),
        ]
    table = [Route(r.path, following_moves(r.endpoint), methods=r.methods, name=r.name) if isinstance(r, Route) else r
             for r in table]
    for repo_type, prefix in (("dataset", "/datasets"), ("space", "/spaces"), ("model", "")):
        table += [
            _typed(f"/api/{repo_type}s", repo_type, "/{name}", repo_without_namespace, ["GET"]),
            _typed(f"/api/{repo_type}s", repo_type, "/{name}/revision/{revision}", repo_without_namespace, ["GET"]),
            _typed(prefix, repo_type, "/{name}/resolve/{revision}/{path:path}", repo_without_namespace,
                   ["GET", "HEAD"]),
        ]
    return table

