"""HTML pages: sign-in and settings, the home page, namespaces, the repo browser, buckets, jobs with their live
log and training curves.

Pages read the caller from a browser session (see sessions.py) or, like the API, from `Authorization: Bearer`.
Handlers stay thin: what a page shows is read by browse.py, joblog.py and the services.
"""

from __future__ import annotations

import asyncio
import functools
import json
import mimetypes
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from urllib.parse import quote, unquote

from markdown_it import MarkdownIt
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import TextLexer, get_lexer_for_filename
from pygments.util import ClassNotFound
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from keephub.accounts import AccountError, Actor, NamespaceTarget, RepoTarget, allowed
from keephub.hub.naming import URL_PREFIX
from keephub.hub.routes import actor_of, call, hub_of
from keephub.jobs.logs import LogCursor, LogPosition
from keephub.jobs.service import TERMINAL
from keephub.storage.gitobjects import ShaKeyedCache
from keephub.web import browse, curves, joblog
from keephub.web.sessions import (
    NEW_TOKEN_COOKIE,
    NEW_TOKEN_SECONDS,
    SESSION_COOKIE,
    SESSION_LIFETIME,
    SIGN_IN_COOKIE,
    BrowserSession,
    csrf_matches,
    open_new_token,
    seal_new_token,
)
from keephub.wire import BadRequest, Forbidden, HubError, Unauthorized
from keephub.wire.errors import NotFound

_HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(_HERE / "templates"))
_markdown = MarkdownIt("commonmark", {"html": False}).enable("table")
# A page of the job log: its last lines, but no more bytes than this (lines can be 64 KiB each).
PAGE_LINES = 500
PAGE_BYTES = 1024 * 1024
# How often the live log looks for new lines (a new line shows within this, plus the network).
LIVE_POLL_SECONDS = 0.25
KEEPALIVE_SECONDS = 15.0
# The client's own rule for a model card's YAML block (huggingface_hub.repocard.REGEX_YAML_BLOCK).
_FRONT_MATTER = re.compile(r"^(\s*---(?:\r\n|\r|\n))([\S\s]*?)((?:\r\n|\r|\n)---[ \t]*(\r\n|\n|$))")
_IMAGE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp"}  # never SVG: it can carry script
_formatter = HtmlFormatter(cssclass="highlight")
# No inline script anywhere: even markup that escaped escaping could not run.
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
CSRF_REFUSAL = ("this form's CSRF token is missing or out of date (forms are accepted only from keephub's own "
                "pages); reload the page and submit it again")


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"


def quote_revision(revision: str) -> str:
    """A revision as one URL path segment (`rescue/job-1` -> `rescue%2Fjob-1`)."""
    return quote(revision, safe="")


templates.env.globals.update(human_size=human_size, quote_revision=quote_revision, quote_path=quote,
                             pygments_css=_formatter.get_style_defs(".highlight"))


def render_readme(raw: bytes) -> str:
    """README.md as HTML without its YAML block, which is metadata for tools even when it does not parse. Raw
    HTML in the card is shown as text, and markdown-it refuses javascript: and data: links."""
    return _markdown.render(_FRONT_MATTER.sub("", raw.decode("utf-8", "replace"), count=1))


def _wants_json(request: Request) -> bool:
    return request.query_params.get("format") == "json" or "application/json" in request.headers.get("accept", "")


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


# -- who is asking -------------------------------------------------------------------------------------------
_UNREAD = object()  # request.state.browser_session before the caller has been looked up


async def current(request: Request) -> BrowserSession | None:
    """The caller: a token in `Authorization` (no CSRF token: such requests are not a browser's ambient
    credential) or the session cookie."""
    if getattr(request.state, "browser_session", _UNREAD) is _UNREAD:
        found: BrowserSession | None = None
        actor = await actor_of(request)
        if actor is not None:
            found = BrowserSession(actor, "")
        elif secret := request.cookies.get(SESSION_COOKIE):
            found = await call(request.app.state.sessions.find, secret)
        request.state.browser_session = found
    return request.state.browser_session


async def page_actor(request: Request) -> Actor | None:
    found = await current(request)
    return found.actor if found else None


async def checked_form(request: Request) -> tuple[Actor, FormData]:
    """The form of a signed-in browser, if it carries the session's CSRF token; otherwise 403, changing nothing."""
    found = await current(request)
    if found is None:
        raise Unauthorized("sign in first: this form works only for a signed-in browser")
    form = await request.form()
    token = form.get("csrf_token")
    if not csrf_matches(found.csrf_token, token if isinstance(token, str) else None):
        raise Forbidden(CSRF_REFUSAL)
    return found.actor, form


def render(request: Request, template: str, context: dict, status_code: int = 200) -> Response:
    browser = getattr(request.state, "browser_session", None)
    response = templates.TemplateResponse(request, template, {
        "me": browser.actor if browser else None, "csrf_token": browser.csrf_token if browser else "",
        **context}, status_code=status_code)
    response.headers["Content-Security-Policy"] = _CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    return response


def page(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """A page handler whose refusals a browser sees as a page (with a way to sign in when that would help);
    other clients keep the API's JSON errors."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            await current(request)
            return await handler(request)
        except HubError as exc:
            if not _wants_html(request) or _wants_json(request):
                raise
            signed_in = getattr(request.state, "browser_session", None) is not None
            return render(request, "error.html", {
                "status": exc.status_code, "message": str(exc.args[0]) if exc.args else "",
                "sign_in": not signed_in and exc.status_code in (401, 403, 404),
                "next": request.url.path}, status_code=exc.status_code)

    return wrapped


_LOCAL_PATH = re.compile(r"/(?![/\\])[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*")


def _safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this server only. Anything else, such as `//host`, or a tab or
    backslash that browsers would drop or turn into a slash, goes to the home page instead."""
    return target if target and _LOCAL_PATH.fullmatch(target) else "/"


# -- sign-in, sign-out, settings -----------------------------------------------------------------------------
async def login_page(request: Request) -> Response:
    sessions = request.app.state.sessions
    if request.method == "GET":
        return _login_form(request, "", 200)
    form = await request.form()
    expected = request.cookies.get(SIGN_IN_COOKIE, "")
    given = form.get("csrf_token")
    if not expected or not csrf_matches(expected, given if isinstance(given, str) else None):
        return _login_form(request, CSRF_REFUSAL, 403)
    fields = {key: value if isinstance(value := form.get(key), str) else "" for key in ("username", "password",
                                                                                        "token", "next")}
    address = request.client.host if request.client else ""
    try:
        secret = await call(sessions.sign_in, fields["username"], fields["password"], fields["token"], address)
    except HubError as exc:
        return _login_form(request, str(exc.args[0]), exc.status_code, fields["username"])
    response = RedirectResponse(_safe_next(fields["next"]), status_code=303)
    response.set_cookie(SESSION_COOKIE, secret, max_age=int(SESSION_LIFETIME.total_seconds()), httponly=True,
                        samesite="lax", secure=request.url.scheme == "https")
    response.delete_cookie(SIGN_IN_COOKIE)
    return response


def _login_form(request: Request, error: str, status_code: int, username: str = "") -> Response:
    """The sign-in form, with a fresh double-submit CSRF token (there is no session to keep one in yet)."""
    token = secrets.token_urlsafe(32)
    response = render(request, "login.html", {"error": error, "username": username, "form_token": token,
                                              "next": _safe_next(request.query_params.get("next"))},
                      status_code=status_code)
    response.set_cookie(SIGN_IN_COOKIE, token, max_age=3600, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
    return response


@page
async def logout(request: Request) -> Response:
    await checked_form(request)
    if secret := request.cookies.get(SESSION_COOKIE):
        await call(request.app.state.sessions.sign_out, secret)
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


@page
async def tokens_page(request: Request) -> Response:
    """The signed-in user's access tokens: name, role, last use; create one or revoke one. A created token's
    secret is shown once, on the page the form redirects to (so reloading it creates nothing and shows nothing)."""
    actor = await page_actor(request)
    if actor is None:
        raise Unauthorized("sign in to see your access tokens")
    box = request.app.state.jobs.box
    session_secret = request.cookies.get(SESSION_COOKIE, "")
    error = ""
    if request.method == "POST":
        actor, form = await checked_form(request)
        name, role = str(form.get("name") or "").strip(), str(form.get("role") or "read")
        if not name or len(name) > 100:
            error = "give the token a name of 1 to 100 characters (what it is for, e.g. 'laptop')"
        else:
            try:
                created = await call(request.app.state.hub.accounts.create_token, actor.name, name, role)
            except AccountError as exc:
                error = str(exc)
            else:
                redirect = RedirectResponse("/settings/tokens", status_code=303)
                redirect.set_cookie(NEW_TOKEN_COOKIE, seal_new_token(box, session_secret, created),
                                    max_age=NEW_TOKEN_SECONDS, path="/settings/tokens", httponly=True,
                                    samesite="strict", secure=request.url.scheme == "https")
                return redirect
    sealed = request.cookies.get(NEW_TOKEN_COOKIE)
    created = open_new_token(box, session_secret, sealed) if sealed and request.method == "GET" else None
    tokens = await call(request.app.state.sessions.tokens_of, actor.user_id)
    response = render(request, "tokens.html", {"tokens": tokens, "created": created, "error": error},
                      status_code=400 if error else 200)
    response.headers["Cache-Control"] = "no-store"
    if sealed:
        response.delete_cookie(NEW_TOKEN_COOKIE, path="/settings/tokens", httponly=True, samesite="strict")
    return response


@page
async def revoke_token(request: Request) -> Response:
    actor, _ = await checked_form(request)
    try:
        await call(request.app.state.sessions.revoke_token, actor.user_id, request.path_params["token_id"])
    except AccountError as exc:
        raise NotFound(str(exc)) from None
    return RedirectResponse("/settings/tokens", status_code=303)


# -- home, namespaces, buckets -------------------------------------------------------------------------------
async def _repos_of(request: Request, actor: Actor | None, author: str | None, limit: int | None) -> list[dict]:
    hub = hub_of(request)
    found = []
    for repo_type in ("model", "dataset", "space"):
        for repo in await call(hub.list_repos, actor, repo_type, author, None, limit):
            found.append({**repo, "type": repo_type, "url": f"/{URL_PREFIX[repo_type]}{repo['id']}"})
    return found


@page
async def index_page(request: Request) -> Response:
    """Signed in: the user's recent jobs and the repos of their namespaces. Otherwise: repos anyone may read."""
    actor = await page_actor(request)
    if _wants_json(request):
        hub = hub_of(request)
        found = []
        for repo_type in ("model", "dataset", "space"):
            found += await call(hub.list_repos, actor, repo_type, None, None, 100)
        return JSONResponse(found)
    if actor is None:
        return render(request, "home.html", {"repos": await _repos_of(request, None, None, 100), "jobs": []})
    repos = []
    for namespace in [actor.name, *actor.org_roles]:
        repos += await _repos_of(request, actor, namespace, 100)
    repos.sort(key=lambda r: r.get("lastModified") or "", reverse=True)
    jobs = (await call(request.app.state.jobs.list, actor, actor.name, [], []))[:10]
    return render(request, "home.html", {"repos": repos[:30], "jobs": jobs})


@page
async def namespace_page(request: Request) -> Response:
    actor = await page_actor(request)
    hub = hub_of(request)
    namespace = request.path_params["namespace"]
    account = await call(hub.accounts.find, namespace)
    if account is None:
        raise NotFound(f"there is no user or organization named {namespace!r} on this keephub")
    found = []
    for repo_type in ("model", "dataset", "space"):
        found += await call(hub.list_repos, actor, repo_type, namespace, None, None)
    found += await call(request.app.state.buckets.list_buckets, actor, namespace, None)  # entries with "type": "bucket"
    if _wants_json(request):
        return JSONResponse(found)
    members = None
    if account.kind == "org" and actor is not None and actor.namespace_role(namespace) == "admin":
        members = await call(hub.accounts.members, namespace)
    return render(request, "namespace.html", {
        "namespace": namespace, "account": account, "repos": found, "members": members,
        "sees_jobs": allowed(actor, "jobs.read", NamespaceTarget(namespace))})


@page
async def bucket_page(request: Request) -> Response:
    """A bucket: its size, file count and last change, and its files (the first page of a recursive listing)."""
    actor = await page_actor(request)
    buckets = request.app.state.buckets
    namespace, name = request.path_params["namespace"], request.path_params["name"]
    info = await call(buckets.info, actor, namespace, name)
    files, more = await call(buckets.tree, actor, namespace, name, "", True, None)
    if _wants_json(request):
        return JSONResponse({**info, "files": files})
    return render(request, "bucket.html", {"bucket": info, "files": files, "more": more is not None})


# -- repos -------------------------------------------------------------------------------------------------
def _repo_args(request: Request) -> tuple[str, str, str]:
    return request.path_params["repo_type"], request.path_params["namespace"], request.path_params["name"]


def _revision(request: Request, key: str = "revision") -> str:
    revision = unquote(request.path_params.get(key) or "main")
    if "\x00" in revision:
        raise BadRequest("the revision in the URL is malformed; pick one from the branch menu")
    return revision


def _repo_base(repo_type: str, namespace: str, name: str) -> str:
    return f"/{URL_PREFIX[repo_type]}{namespace}/{name}"


@page
async def repo_page(request: Request) -> Response:
    """The repo at a revision: a folder's files in natural order, the model card at the top level, and the
    training curves when the repo holds a trainer_state.json."""
    actor = await page_actor(request)
    hub = hub_of(request)
    repo_type, namespace, name = _repo_args(request)
    if _wants_json(request):
        info = await call(hub.repo_info, actor, repo_type, namespace, name, None, True)
        return JSONResponse(info, headers={"Link": f'<{request.url.path}?format=json>; rel="alternate"'})
    revision = _revision(request)
    path = unquote(request.path_params.get("path") or "").strip("/")
    try:
        start = int(request.query_params.get("start", "0"))
    except ValueError:
        raise BadRequest("start must be a whole number; use the folder page's links") from None
    folder = await call(browse.read_folder, hub, actor, repo_type, namespace, name, revision, path, start)
    state = None
    if not path:
        state = await call(browse.trainer_state, hub, actor, repo_type, namespace, name, folder.sha)
    return render(request, "repo.html", {
        "view": folder, "repo": folder.repo, "base": _repo_base(repo_type, namespace, name),
        "readme_html": render_readme(folder.readme) if folder.readme is not None else "",
        "crumbs": _crumbs(path), "page_size": browse.FOLDER_PAGE, "curve_panels": curves.panels_with_data(state[1]["log_history"]) if state else [],
        "curve_source": state[0] if state else None,
        "curve_steps": curves.logged_steps(state[1]["log_history"]) if state else 0})


def _crumbs(path: str) -> list[tuple[str, str]]:
    """(name, path) of each folder from the top to `path`."""
    parts = [p for p in path.split("/") if p]
    return [(part, "/".join(parts[:index + 1])) for index, part in enumerate(parts)]


@page
async def commit_page(request: Request) -> Response:
    """One commit: its message and the files it added, changed or deleted."""
    actor = await page_actor(request)
    repo_type, namespace, name = _repo_args(request)
    view = await call(browse.commit_changes, hub_of(request), actor, repo_type, namespace, name,
                      _revision(request, "sha"))
    return render(request, "commit.html", {"view": view, "repo": view.repo,
                                           "base": _repo_base(repo_type, namespace, name)})


@page
async def history_page(request: Request) -> Response:
    actor = await page_actor(request)
    repo_type, namespace, name = _repo_args(request)
    revision = _revision(request)
    try:
        page_number = int(request.query_params.get("page", "0"))
    except ValueError:
        raise BadRequest("page must be a whole number; use the links of the history page") from None
    repo, commits, more, branches, tags = await call(browse.history, hub_of(request), actor, repo_type, namespace,
                                                     name, revision, page_number)
    return render(request, "history.html", {
        "repo": repo, "commits": commits, "more": more, "page": page_number, "revision": revision,
        "branches": branches, "tags": tags, "base": _repo_base(repo_type, namespace, name)})


def _discussion_number(request: Request) -> int:
    num = request.path_params["num"]
    if not 0 < num < 2**31:
        raise NotFound(f"there is no discussion or pull request #{num}; numbers start at 1 (see the discussions page)")
    return num


@page
async def discussions_page(request: Request) -> Response:
    actor = await page_actor(request)
    repo_type, namespace, name = _repo_args(request)
    repo, found = await call(browse.discussions_of_repo, hub_of(request), request.app.state.discussions, actor,
                             repo_type, namespace, name)
    return render(request, "discussions.html", {"repo": repo, "discussions": found,
                                                "base": _repo_base(repo_type, namespace, name)})


@page
async def discussion_page(request: Request) -> Response:
    """A discussion or pull request (the `url` the API answers with): its events, the files a pull request
    changes, and a merge button for those who may write the repo."""
    actor = await page_actor(request)
    repo_type, namespace, name = _repo_args(request)
    view = await call(browse.discussion, hub_of(request), request.app.state.discussions, actor, repo_type,
                      namespace, name, _discussion_number(request))
    return render(request, "discussion.html", {"view": view, "repo": view.repo, "item": view.details,
                                               "base": _repo_base(repo_type, namespace, name)})


@page
async def merge_pull_request(request: Request) -> Response:
    actor, _ = await checked_form(request)
    repo_type, namespace, name = _repo_args(request)
    num = _discussion_number(request)
    await call(request.app.state.discussions.merge, actor, repo_type, namespace, name, num, {})
    return RedirectResponse(f"{_repo_base(repo_type, namespace, name)}/discussions/{num}", status_code=303)


async def _requested_file(request: Request) -> tuple[browse.File, str, str]:
    """The file the URL names, as the signed-in caller may read it, with the revision and path it was named by."""
    actor = await page_actor(request)
    revision, path = _revision(request), unquote(request.path_params["path"])
    file = await call(browse.read_file, hub_of(request), actor, *_repo_args(request), revision, path)
    return file, revision, path


@page
async def blob_page(request: Request) -> Response:
    """One file: highlighted text, an image, or a safetensors summary read from the file's header alone."""
    file, revision, path = await _requested_file(request)
    hub = hub_of(request)
    base = _repo_base(*_repo_args(request))
    raw_url = f"{base}/raw/{quote_revision(revision)}/{quote(path)}"
    kind, content, summary = "binary", "", None
    media_type = mimetypes.guess_type(path)[0] or ""
    if path.endswith(".safetensors"):
        kind, summary = "safetensors", await call(browse.safetensors_summary, hub, file)
    elif media_type in _IMAGE_TYPES:
        kind = "image"
    elif file.inline is not None and b"\x00" not in file.inline[:8192]:
        kind, content = "text", _highlighted.get_or_compute(
            f"{file.entry.sha}:{path.rsplit('/', 1)[-1]}",
            lambda: _highlight(path, file.inline.decode("utf-8", "replace")))
    elif file.entry.lfs_oid is None and file.entry.size > browse.MAX_SHOWN_TEXT:
        kind = "large"
    return render(request, "file.html", {
        "file": file, "repo": file.repo, "base": base, "path": path, "crumbs": _crumbs(path)[:-1], "kind": kind,
        "content": content, "summary": summary, "raw_url": raw_url})


# A file's highlighted HTML, by blob and file name (which picks the lexer): highlighting costs more than the page.
_highlighted: ShaKeyedCache[str, str] = ShaKeyedCache(64)


def _highlight(path: str, text: str) -> str:
    try:
        lexer = get_lexer_for_filename(path, stripnl=False)
    except ClassNotFound:
        lexer = TextLexer(stripnl=False)
    return highlight(text, lexer, _formatter)


@page
async def raw_file(request: Request) -> Response:
    """A file's bytes for a signed-in browser (the API's resolve URL wants a token header a browser lacks)."""
    file, _, path = await _requested_file(request)
    hub = hub_of(request)
    media_type = mimetypes.guess_type(path)[0]
    inline = media_type in _IMAGE_TYPES
    filename = quote(path.rsplit("/", 1)[-1], safe="")
    headers = {"Content-Disposition": f"{'inline' if inline else 'attachment'}; filename*=UTF-8''{filename}",
               "X-Content-Type-Options": "nosniff", "Content-Security-Policy": "default-src 'none'",
               "Content-Length": str(file.entry.file_size)}
    media = media_type if inline else "application/octet-stream"
    if file.entry.lfs_oid is None:
        data = file.inline if file.inline is not None else await call(browse.file_bytes, hub, file, 0,
                                                                      file.entry.size)
        return Response(data, media_type=media, headers=headers)
    chunks = await call(hub.large_file, file.entry.lfs_oid)

    async def stream() -> AsyncIterator[bytes]:
        iterator = iter(chunks)
        while (chunk := await call(next, iterator, None)) is not None:
            yield chunk

    return StreamingResponse(stream(), media_type=media, headers=headers)


@page
async def repo_curve(request: Request) -> Response:
    actor = await page_actor(request)
    repo_type, namespace, name = _repo_args(request)
    state = await call(browse.trainer_state, hub_of(request), actor, repo_type, namespace, name, _revision(request))
    return _curve_response(request.path_params["panel"], state[1]["log_history"] if state else [])


def _curve_response(panel: str, log_history: list) -> Response:
    if panel not in curves.PANELS:
        raise NotFound(f"no chart named {panel!r}; the charts are {', '.join(curves.PANELS)}")
    svg = curves.render(log_history, panel, curves.PANELS[panel])
    return Response(svg, media_type="image/svg+xml", headers={
        "Cache-Control": "no-cache", "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
        "X-Content-Type-Options": "nosniff"})


# -- jobs ------------------------------------------------------------------------------------------------------
@page
async def jobs_page(request: Request) -> Response:
    """A namespace's jobs, newest first, filtered by status and label (`key=value`)."""
    actor = await page_actor(request)
    namespace = request.path_params["namespace"]
    status = request.query_params.get("status", "").strip()
    label = request.query_params.get("label", "").strip()
    found = await call(request.app.state.jobs.list, actor, namespace, [status] if status else [],
                       [label] if label else [])
    return render(request, "jobs.html", {"namespace": namespace, "jobs": found, "status": status, "label": label,
                                         "stages": ["SCHEDULING", "RUNNING", *TERMINAL]})


@page
async def job_page(request: Request) -> Response:
    """The page behind the job URL clients print: status, attempts, durability verdict and pushes, preflight,
    the curves and the log's newest lines, which then grow live. Older lines come a page at a time
    (`?before=POSITION`), so a huge log costs no more to show than a small one."""
    actor = await page_actor(request)
    namespace, job_id = request.path_params["namespace"], request.path_params["job_id"]
    jobs = request.app.state.jobs
    info = await call(jobs.get, actor, namespace, job_id)
    if _wants_json(request):
        return JSONResponse(info)
    before = request.query_params.get("before")
    try:
        position = LogPosition.parse(before) if before is not None else None
    except ValueError as exc:
        raise BadRequest(f"{exc}; use the 'Older lines' link of the job page") from None
    cursor = LogCursor(jobs.jobs_dir, job_id)
    end = await call(joblog.log_end, cursor) if position is None else None
    if position is None and end is None:
        events, older = [], None
    else:
        events, older = await call(cursor.page_before, position or end, PAGE_LINES, PAGE_BYTES)
    record = await call(jobs.load, namespace, job_id)
    durability = info.get("durability") or {}
    rescue = [p["revision"] for p in durability.get("pushes", []) if p["revision"].startswith("rescue/")]
    branch = durability.get("verdict", {}).get("branch") or (rescue[-1] if rescue else None)
    return render(request, "job.html", {
        "job": info, "lines": [event["data"] for event in events], "older": older, "paged": position is not None,
        "live_after": str(end) if end is not None else "0.0", "finished": info["status"]["stage"] in TERMINAL,
        "preflight": record.spec.get("preflightNotes") or [], "rescue_branch": branch,
        "may_cancel": allowed(actor, "jobs.manage", NamespaceTarget(namespace)),
        "rescue_offer": await _rescue_offer(request, actor, durability, branch),
        "curve_panels": list(curves.PANELS) if durability.get("targetRepo") else []})


async def _rescue_offer(request: Request, actor: Actor | None, durability: dict, branch: str | None) -> str | None:
    """"offer" when the job was rescued and the caller may write its repo, "merged" when main already holds the
    rescue branch (nothing left to offer), None otherwise."""
    target = durability.get("targetRepo")
    if (durability.get("verdict", {}).get("status") != "rescued" or not target or not branch
            or not allowed(actor, "repo.write", RepoTarget("model", *target.split("/", 1)))):
        return None
    try:
        merged = await call(browse.rescue_merged, hub_of(request), actor, target, branch)
    except HubError:  # the repo or the branch is gone
        return None
    return "merged" if merged else "offer"


@page
async def job_events(request: Request) -> Response:
    """The job's new log lines as server-sent events from a position (the page's end, or the last event id a
    reconnecting browser sends), and its stage whenever it changes; ends when the job does."""
    actor = await page_actor(request)
    namespace, job_id = request.path_params["namespace"], request.path_params["job_id"]
    jobs = request.app.state.jobs
    await call(jobs.get, actor, namespace, job_id)
    raw = request.headers.get("last-event-id") or request.query_params.get("after") or "0.0"
    try:
        after = LogPosition.parse(raw)
    except ValueError as exc:
        raise BadRequest(f"{exc}; reload the job page") from None
    cursor = LogCursor(jobs.jobs_dir, job_id)
    await call(joblog.resume_after, cursor, after)

    async def stream() -> AsyncIterator[bytes]:
        stage, quiet = None, 0.0
        while True:
            job = (await call(jobs.load, namespace, job_id)).job
            finished = job.stage in TERMINAL
            sent = False
            while lines := await call(cursor.read_page):
                sent = True
                events = [b"data: " + line + b"\n\n" for line in lines]
                if (at := joblog.cursor_position(cursor)) is not None:
                    events[-1] = f"id: {at}\n".encode() + events[-1]
                yield b"".join(events)
            if job.stage != stage:
                stage = job.stage
                yield b"event: stage\ndata: " + json.dumps({"stage": stage, "message": job.message}).encode() + b"\n\n"
            if finished:
                yield b"event: end\ndata: {}\n\n"
                return
            quiet = 0.0 if sent else quiet + LIVE_POLL_SECONDS
            if quiet >= KEEPALIVE_SECONDS:
                quiet = 0.0
                yield b": keep-alive\n\n"
            await asyncio.sleep(LIVE_POLL_SECONDS)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@page
async def cancel_job(request: Request) -> Response:
    actor, _ = await checked_form(request)
    namespace, job_id = request.path_params["namespace"], request.path_params["job_id"]
    await call(request.app.state.jobs.cancel, actor, namespace, job_id)
    await call(request.app.state.scheduler.request_cancel, job_id)
    return RedirectResponse(f"/jobs/{namespace}/{job_id}", status_code=303)


@page
async def offer_rescue(request: Request) -> Response:
    """The job's rescue branch offered as a pull request into main (the same one when asked again)."""
    actor, _ = await checked_form(request)
    job = await call(request.app.state.jobs.get, actor, request.path_params["namespace"],
                     request.path_params["job_id"])
    offered = await call(request.app.state.discussions.offer_rescue, actor, job)
    return RedirectResponse(f"/{offered['repo']}/discussions/{offered['num']}", status_code=303)


async def _job_training_state(request: Request) -> tuple[str, dict] | None:
    """The newest trainer_state.json the job pushed: at the commit of its latest push (main or its rescue
    branch)."""
    actor = await page_actor(request)
    namespace, job_id = request.path_params["namespace"], request.path_params["job_id"]
    info = await call(request.app.state.jobs.get, actor, namespace, job_id)
    durability = info.get("durability") or {}
    pushes = [p for p in durability.get("pushes", []) if p["commit"]]
    if not durability.get("targetRepo") or not pushes:
        return None
    repo_namespace, _, repo_name = durability["targetRepo"].partition("/")
    try:
        return await call(browse.trainer_state, hub_of(request), actor, "model", repo_namespace, repo_name,
                          pushes[-1]["commit"])
    except HubError:  # the repo was deleted, or the caller may see the job but not the repo
        return None


@page
async def job_curves(request: Request) -> Response:
    """How far the job's pushed training log has got (the page redraws its charts when this moves)."""
    state = await _job_training_state(request)
    history = state[1]["log_history"] if state else []
    return JSONResponse({"steps": curves.logged_steps(history), "source": state[0] if state else None,
                         "panels": curves.panels_with_data(history)})


@page
async def job_curve(request: Request) -> Response:
    state = await _job_training_state(request)
    return _curve_response(request.path_params["panel"], state[1]["log_history"] if state else [])


# -- routing ---------------------------------------------------------------------------------------------------
def _repo_routes(prefix: str, repo_type: str) -> list[Route]:
    def typed(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def bound(request: Request) -> Response:
            request.path_params["repo_type"] = repo_type
            return await handler(request)
        return bound

    base = f"{prefix}/{{namespace}}/{{name}}"
    table = [("", repo_page), ("/tree/{revision}", repo_page), ("/tree/{revision}/{path:path}", repo_page),
             ("/blob/{revision}/{path:path}", blob_page), ("/raw/{revision}/{path:path}", raw_file),
             ("/commits/{revision}", history_page), ("/commit/{sha}", commit_page),
             ("/curves/{revision}/{panel}.svg", repo_curve), ("/discussions", discussions_page),
             ("/discussions/{num:int}", discussion_page)]
    return [Route(base + suffix, typed(handler), methods=["GET"], name=f"{handler.__name__}_{repo_type}{suffix}")
            for suffix, handler in table] + [
        Route(base + "/discussions/{num:int}/merge", typed(merge_pull_request), methods=["POST"],
              name=f"merge_pull_request_{repo_type}")]


def routes() -> list[BaseRoute]:
    table: list[BaseRoute] = [
        Route("/", index_page, methods=["GET"]),
        Mount("/static", StaticFiles(directory=str(_HERE / "static")), name="static"),
        Route("/login", login_page, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/settings/tokens", tokens_page, methods=["GET", "POST"]),
        Route("/settings/tokens/{token_id:int}/revoke", revoke_token, methods=["POST"]),
        Route("/jobs/{namespace}", jobs_page, methods=["GET"]),
        Route("/jobs/{namespace}/{job_id}", job_page, methods=["GET"]),
        Route("/jobs/{namespace}/{job_id}/events", job_events, methods=["GET"]),
        Route("/jobs/{namespace}/{job_id}/cancel", cancel_job, methods=["POST"]),
        Route("/jobs/{namespace}/{job_id}/rescue-pr", offer_rescue, methods=["POST"]),
        Route("/jobs/{namespace}/{job_id}/curves.json", job_curves, methods=["GET"]),
        Route("/jobs/{namespace}/{job_id}/curves/{panel}.svg", job_curve, methods=["GET"]),
        Route("/buckets/{namespace}/{name}", bucket_page, methods=["GET"]),
    ]
    for prefix, repo_type in (("/datasets", "dataset"), ("/spaces", "space"), ("", "model")):
        table += _repo_routes(prefix, repo_type)
    table.append(Route("/{namespace}", namespace_page, methods=["GET"]))
    return table
