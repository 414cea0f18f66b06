"""The Hub tools an agent needs around a training run, named as the Hugging Face MCP server names its own:
who am I, search repos, a repo's details, and one small text file. Reads go through the Hub service with the
caller's rights, so a public repo needs no token and a private one answers "not found" as the API does."""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from keephub.accounts import access_token_info
from keephub.hub.naming import REPO_TYPES, split_repo_id
from keephub.hub.service import Hub
from keephub.jobs.describe import durability_summary
from keephub.mcp.jobs_tool import UNAUTHENTICATED, Services, call, table
from keephub.mcp.tools import Args, ToolError
from keephub.wire import Unauthorized

MAX_REPOS = 10
MAX_FILES_SHOWN = 100
MAX_FILE_BYTES = 256 * 1024


async def whoami(services: Services, arguments: dict[str, Any]) -> str:
    Args(arguments, "hf_whoami", frozenset())
    actor = await services.actor()
    if actor is None:
        raise Unauthorized(UNAUTHENTICATED)
    token = access_token_info(actor)
    writes = "nothing (a read token)" if actor.token_role != "write" else (
        ", ".join(str(scope) for scope in actor.scopes) if actor.scopes is not None
        else f"every repo of {actor.name} and of the organizations where you have the write role")
    lines = [f"You are {actor.name}" + (f" ({actor.fullname})" if actor.fullname else "")
             + f" on the keephub at {services.base_url}.",
             f"Token '{token['displayName']}' ({token['role']}): writes {writes}."]
    if actor.org_roles:
        lines.append("Organizations: " + ", ".join(f"{org} ({role})" for org, role in sorted(actor.org_roles.items())))
    lines.append(f"Jobs run in namespace {actor.name} unless a call names another.")
    return "\n".join(lines)


def _search(repo_type: str) -> Callable[[Services, dict[str, Any]], Awaitable[str]]:
    async def search(services: Services, arguments: dict[str, Any]) -> str:
        args = Args(arguments, f"{repo_type}_search", frozenset({"query", "author", "limit"}))
        query, author = args.text("query"), args.text("author")
        limit = args.integer("limit", 20, 1, 100)
        found = await services.read(services.hub.list_repos, repo_type, author, query, limit)
        what = f"{repo_type}s" + (f" matching {query!r}" if query else "") + (f" by {author}" if author else "")
        if not found:
            return f"No {what} that you can read on this keephub."
        rows = [[info["id"], "private" if info["private"] else "public", info["lastModified"][:19].replace("T", " ")]
                for info in found]
        return f"{what[0].upper()}{what[1:]}: {len(found)}\n" + table(["REPO", "VISIBILITY", "LAST MODIFIED"], rows)

    return search


async def repo_details(services: Services, arguments: dict[str, Any]) -> str:
    args = Args(arguments, "hub_repo_details", frozenset({"repo_ids", "repo_type"}))
    repo_ids = args.strings("repo_ids")
    if not repo_ids or len(repo_ids) > MAX_REPOS:
        raise ToolError(f"hub_repo_details: 'repo_ids' must be a repo id (namespace/name) or a list of 1 to "
                        f"{MAX_REPOS} of them")
    repo_type = _repo_type(args)
    return "\n\n".join([await _details(services, repo_type, repo_id) for repo_id in repo_ids])


async def _details(services: Services, repo_type: str, repo_id: str) -> str:
    namespace, name = split_repo_id(repo_id)
    hub = services.hub
    info = await services.read(hub.repo_info, repo_type, namespace, name, None, True)
    refs = await services.read(hub.refs, repo_type, namespace, name)
    last = (await services.read(hub.commits, repo_type, namespace, name, "main"))[0]
    files = sorted(info["siblings"], key=lambda item: item["rfilename"])
    lines = [f"{repo_id} ({repo_type}, {'private' if info['private'] else 'public'}): {info['url']}",
             f"   last commit {last['id'][:12]} \"{last['title']}\" by {last['authors'][0]['user']}, {last['date']}",
             "   branches: " + ", ".join(_branch(ref["name"]) for ref in refs["branches"]),
             "   tags: " + (", ".join(ref["name"] for ref in refs["tags"]) or "none"),
             f"   files ({len(files)}, {info['usedStorage']:,} bytes):"]
    lines += [f"   {item['size']:>14,}  {item['rfilename']}" for item in files[:MAX_FILES_SHOWN]]
    if len(files) > MAX_FILES_SHOWN:
        lines.append(f"   ... and {len(files) - MAX_FILES_SHOWN} more")
    if repo_type == "model":
        job = await services.read(services.jobs.latest_guarding, repo_id)
        if job is not None:
            lines += [f"produced by job {job['id']} ({job['status']['stage']}): {services.base_url}/jobs/"
                      f"{job['owner']['name']}/{job['id']}", durability_summary(job)]
    return "\n".join(lines)


def _branch(name: str) -> str:
    job = name.removeprefix("rescue/")
    return f"{name} (what job {job} saved when it failed)" if job != name else name


async def repo_file(services: Services, arguments: dict[str, Any]) -> str:
    args = Args(arguments, "hub_repo_file", frozenset({"repo_id", "path", "repo_type", "revision"}))
    namespace, name = split_repo_id(args.required("repo_id"))
    path, revision = args.required("path"), args.text("revision") or "main"
    hub = services.hub
    target = await services.read(hub.file_target, _repo_type(args), namespace, name, revision, path)
    if target.size > MAX_FILE_BYTES:
        raise ToolError(f"{path} is {target.size:,} bytes; hub_repo_file returns text files up to "
                        f"{MAX_FILE_BYTES:,} bytes (download it with hf_hub_download)")
    data = target.inline if target.inline is not None else await call(_read_large, hub, target.etag)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or "\x00" in text:
        raise ToolError(f"{path} is not a text file (it is not UTF-8 text); download it with hf_hub_download")
    return f"{namespace}/{name}/{path} at {revision} (commit {target.commit_sha[:12]}, {len(data):,} bytes):\n\n{text}"


def _read_large(hub: Hub, oid: str) -> bytes:
    return b"".join(hub.large_file(oid))


def _repo_type(args: Args) -> str:
    repo_type = args.text("repo_type") or "model"
    if repo_type not in REPO_TYPES:
        raise ToolError(f"{args.where}: 'repo_type' must be one of {', '.join(REPO_TYPES)}, not {repo_type!r}")
    return repo_type


model_search = _search("model")
dataset_search = _search("dataset")
