"""HTML pages: the repo a training script prints the URL of, a bucket, a namespace's repos and buckets, and the
front page."""

from __future__ import annotations

import re
from pathlib import Path

from markdown_it import MarkdownIt
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.templating import Jinja2Templates

from keephub.hub.routes import actor_of, call, hub_of
from keephub.jobs.logs import LogCursor, LogPosition
from keephub.wire import BadRequest, EntryNotFound
from keephub.wire.errors import NotFound

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
_markdown = MarkdownIt("commonmark", {"html": False}).enable("table")
# A page of the job log: its last lines, but no more bytes than this (lines can be 64 KiB each).
PAGE_LINES = 500
PAGE_BYTES = 1024 * 1024
# The client's own rule for a model card's YAML block (huggingface_hub.repocard.REGEX_YAML_BLOCK).
_FRONT_MATTER = re.compile(r"^(\s*---(?:\r\n|\r|\n))([\S\s]*?)((?:\r\n|\r|\n)---[ \t]*(\r\n|\n|$))")


def _wants_json(request: Request) -> bool:
    return request.query_params.get("format") == "json" or "application/json" in request.headers.get("accept", "")


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"


def render_readme(raw: bytes) -> str:
    """README.md as HTML without its YAML block, which is metadata for tools even when it does not parse."""
    return _markdown.render(_FRONT_MATTER.sub("", raw.decode("utf-8", "replace"), count=1))


async def repo_page(request: Request) -> Response:
    actor = await actor_of(request)
    hub = hub_of(request)
    repo_type = request.path_params["repo_type"]
    namespace, name = request.path_params["namespace"], request.path_params["name"]
    revision = request.path_params.get("sha")  # a commit URL shows the repo as of that commit
    info = await call(hub.repo_info, actor, repo_type, namespace, name, revision, True)
    if _wants_json(request):
        return JSONResponse(info, headers={"Link": f'<{request.url.path}?format=json>; rel="alternate"'})
    # Files, history and README all from info's commit, so a push landing meanwhile cannot mix two versions.
    history = await call(hub.commits, actor, repo_type, namespace, name, info["sha"])
    try:
        target = await call(hub.file_target, actor, repo_type, namespace, name, info["sha"], "README.md")
        readme_html = render_readme(target.inline) if target.inline is not None else ""
    except EntryNotFound:
        readme_html = ""
    prefix = {"model": "", "dataset": "datasets/", "space": "spaces/"}[repo_type]
    return templates.TemplateResponse(request, "repo.html", {
        "info": info,
        "repo_type": repo_type,
        "files": sorted(info["siblings"], key=lambda s: s["rfilename"]),
        "latest": history[0] if history else None,
        "revision": revision,
        "commit_count": len(history),
        "readme_html": readme_html,
        "human_size": human_size,
        "download_base": f"/{prefix}{info['id']}/resolve/{revision or 'main'}/",
    })


async def namespace_page(request: Request) -> Response:
    actor = await actor_of(request)
    hub = hub_of(request)
    namespace = request.path_params["namespace"]
    if await call(hub.accounts.find, namespace) is None:
        raise NotFound(f"there is no user or organization named {namespace!r} on this keephub")
    found = []
    for repo_type in ("model", "dataset", "space"):
        found += await call(hub.list_repos, actor, repo_type, namespace, None, None)
    found += await call(request.app.state.buckets.list_buckets, actor, namespace, None)  # entries with "type": "bucket"
    if _wants_json(request):
        return JSONResponse(found)
    return templates.TemplateResponse(request, "namespace.html", {"namespace": namespace, "repos": found})


async def bucket_page(request: Request) -> Response:
    """A bucket: its size, file count and last change, and its files (the first page of a recursive listing)."""
    actor = await actor_of(request)
    buckets = request.app.state.buckets
    namespace, name = request.path_params["namespace"], request.path_params["name"]
    info = await call(buckets.info, actor, namespace, name)
    files, more = await call(buckets.tree, actor, namespace, name, "", True, None)
    if _wants_json(request):
        return JSONResponse({**info, "files": files})
    return templates.TemplateResponse(request, "bucket.html", {
        "bucket": info, "files": files, "more": more is not None, "human_size": human_size})


async def index_page(request: Request) -> Response:
    actor = await actor_of(request)
    hub = hub_of(request)
    found = []
    for repo_type in ("model", "dataset", "space"):
        found += await call(hub.list_repos, actor, repo_type, None, None, 100)
    if _wants_json(request):
        return JSONResponse(found)
    return templates.TemplateResponse(request, "namespace.html", {"namespace": None, "repos": found})


def _repo_route(prefix: str, repo_type: str, suffix: str = "") -> Route:
    async def page(request: Request) -> Response:
        request.path_params["repo_type"] = repo_type
        return await repo_page(request)

    return Route(f"{prefix}/{{namespace}}/{{name}}{suffix}", page, methods=["GET"], name=f"repo_{repo_type}{suffix}")


async def job_page(request: Request) -> Response:
    """The page behind the job URL clients print: status, attempts, durability record and the latest log lines,
    with older lines a page at a time (`?before=POSITION`), so a huge log costs no more to show than a small one."""
    actor = await actor_of(request)
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
    events, older = await call(LogCursor(jobs.jobs_dir, job_id).page_before, position, PAGE_LINES, PAGE_BYTES)
    return templates.TemplateResponse(request, "job.html", {
        "job": info, "lines": [event["data"] for event in events], "older": older, "paged": position is not None})


def routes() -> list[BaseRoute]:
    table: list[BaseRoute] = [Route("/", index_page, methods=["GET"]),
                              Route("/jobs/{namespace}/{job_id}", job_page, methods=["GET"]),
                              Route("/buckets/{namespace}/{name}", bucket_page, methods=["GET"])]
    for prefix, repo_type in (("/datasets", "dataset"), ("/spaces", "space"), ("", "model")):
        table.append(_repo_route(prefix, repo_type))
        table.append(_repo_route(prefix, repo_type, "/commit/{sha}"))
    table.append(Route("/{namespace}", namespace_page, methods=["GET"]))
    return table
