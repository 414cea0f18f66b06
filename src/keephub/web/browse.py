"""What the repo pages show, each read in one database transaction so a push landing meanwhile cannot mix two
versions: a folder, a file, the branches and tags, history with each commit's changed files, the training state.

Everything here costs what one folder or one file costs, never what the whole repo costs (a repo can hold tens
of thousands of files).
"""

from __future__ import annotations

import itertools
import json
import re
import stat
import struct
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from math import prod
from typing import ClassVar

from dulwich.diff_tree import tree_changes
from dulwich.graph import can_fast_forward, find_merge_base
from dulwich.objects import Commit, ShaFile
from sqlalchemy import select

from keephub.accounts import Actor, allowed
from keephub.hub import repos
from keephub.hub.discussions import Discussions, pr_ref
from keephub.hub.service import Hub
from keephub.storage import gitobjects
from keephub.storage.schema import Job
from keephub.wire import BadRequest, EntryNotFound

_DIGITS = re.compile(r"(\d+)")
# Headers of safetensors files larger than this are not read for the page (the format allows 100 MB).
MAX_SAFETENSORS_HEADER = 16 * 1024 * 1024
# Text files up to this size are shown (highlighted); larger ones are offered for download.
MAX_SHOWN_TEXT = 512 * 1024
TRAINER_STATE = "trainer_state.json"
# The branch the sidecar pushes a job's rescue to is this and the job's id.
RESCUE_PREFIX = "rescue/"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# The commits a history page lists at once.
HISTORY_PAGE = 50
# Entries a folder page lists at once, and changed files a commit page lists.
FOLDER_PAGE = 200
CHANGES_SHOWN = 1000


def natural_key(name: str) -> list[str | int]:
    """Sort key putting `checkpoint-50` before `checkpoint-100`: runs of digits compare as numbers. Splitting on
    digit runs leaves text at even places and numbers at odd ones, so two keys always compare like with like."""
    parts: list[str | int] = list(_DIGITS.split(name.lower()))
    parts[1::2] = [int(digits) for digits in parts[1::2]]
    return parts


# What pages derive from a git object (a folder's sorted listing, a commit's changes), kept for the last 32
# objects: a large one costs its work once, not on every page view.
_folders: gitobjects.ShaKeyedCache[str, list[tuple[str, int, str]]] = gitobjects.ShaKeyedCache(32)
_commit_changes: gitobjects.ShaKeyedCache[str, tuple[int, list[tuple[str, str]]]] = gitobjects.ShaKeyedCache(32)


def _sorted_items(session, tree_sha: str) -> list[tuple[str, int, str]]:  # type: ignore[no-untyped-def]
    """A folder's (name, mode, sha) items: folders first, then files, each in natural order."""
    def compute() -> list[tuple[str, int, str]]:
        items = [(item.path.decode("utf-8", "replace"), item.mode, item.sha.decode())
                 for item in gitobjects.load_tree(session, tree_sha).iteritems()]
        items.sort(key=lambda item: (not stat.S_ISDIR(item[1]), natural_key(item[0])))
        return items

    return _folders.get_or_compute(tree_sha, compute)


@dataclass(frozen=True)
class Folder:
    repo: repos.RepoRef
    revision: str
    sha: str
    path: str
    entries: list[gitobjects.Entry]
    latest: dict
    branches: list[dict]
    tags: list[str]
    start: int
    total: int
    readme: bytes | None = None


@dataclass(frozen=True)
class File:
    repo: repos.RepoRef
    revision: str
    sha: str
    entry: gitobjects.Entry
    branches: list[dict]
    tags: list[str]
    inline: bytes | None  # the content of a small file kept in git (not a large file)


@dataclass(frozen=True)
class CommitView:
    repo: repos.RepoRef
    entry: dict
    parent: str | None
    total_changes: int
    changes: list[tuple[str, str]]  # (change kind, path), the first CHANGES_SHOWN in natural order


def _commit_entry(commit: ShaFile) -> dict:
    message = commit.message.decode("utf-8", "replace").strip()
    title, _, body = message.partition("\n")
    return {"id": commit.id.decode(), "title": title, "message": body.strip(),
            "author": commit.author.decode("utf-8", "replace").split(" <")[0],
            "date": datetime.fromtimestamp(commit.author_time, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")}


def _refs(session, repo: repos.RepoRef) -> tuple[list[dict], list[str]]:  # type: ignore[no-untyped-def]
    """Branches (main first, then natural order; a rescue branch names the job that made it) and tags."""
    refs = repos.list_refs(session, repo)
    rescued = [ref.name.removeprefix(RESCUE_PREFIX) for ref in refs if ref.name.startswith(RESCUE_PREFIX)]
    jobs = dict(session.execute(select(Job.id, Job.namespace).where(Job.id.in_(rescued))).all()) if rescued else {}
    branches, tags = [], []
    for ref in refs:
        if ref.kind == "tag":
            tags.append(ref.name)
        else:
            job_id = ref.name.removeprefix(RESCUE_PREFIX)
            job = {"id": job_id, "namespace": jobs[job_id]} if job_id in jobs else None
            branches.append({"name": ref.name, "job": job})
    branches.sort(key=lambda b: (b["name"] != repos.DEFAULT_BRANCH, natural_key(b["name"])))
    return branches, sorted(tags, key=natural_key)


def read_folder(hub: Hub, actor: Actor | None, repo_type: str, namespace: str, name: str, revision: str,
                path: str, start: int) -> Folder:
    """One page of a folder (FOLDER_PAGE entries from `start`, folders first, in natural order)."""
    if start < 0:
        raise BadRequest(f"start={start} is negative; use the folder page's links")
    with hub.db.read() as session:
        repo = repos.find_repo(session, repo_type, namespace, name, actor)
        sha = repos.resolve_revision(session, repo, revision)
        commit = gitobjects.load_commit(session, sha)
        tree = commit.tree.decode()
        found = gitobjects.lookup(session, tree, path) if path else (gitobjects.DIR_MODE, tree)
        if found is None or not stat.S_ISDIR(found[0]):
            raise EntryNotFound(f"there is no folder {path!r} at revision {revision!r} of {repo.repo_id}")
        items = _sorted_items(session, found[1])
        prefix = f"{path}/" if path else ""
        entries = gitobjects.entries_for(session, [(prefix + name, mode, sha)
                                                   for name, mode, sha in items[start:start + FOLDER_PAGE]])
        readme = None
        if not path:
            readme_entry = gitobjects.lookup(session, tree, "README.md")
            if readme_entry is not None and not stat.S_ISDIR(readme_entry[0]):
                readme = gitobjects.read_blob(session, readme_entry[1])
        branches, tags = _refs(session, repo)
        return Folder(repo, revision, sha, path, entries, _commit_entry(commit), branches, tags, start,
                      len(items), readme)


def read_file(hub: Hub, actor: Actor | None, repo_type: str, namespace: str, name: str, revision: str,
              path: str) -> File:
    with hub.db.read() as session:
        repo = repos.find_repo(session, repo_type, namespace, name, actor)
        sha = repos.resolve_revision(session, repo, revision)
        found = gitobjects.lookup(session, gitobjects.load_commit(session, sha).tree.decode(), path)
        if found is None or stat.S_ISDIR(found[0]):
            raise EntryNotFound(f"there is no file {path!r} at revision {revision!r} of {repo.repo_id}")
        entry = gitobjects.entry_for(session, path, *found)
        inline = None
        if entry.lfs_oid is None and entry.size <= MAX_SHOWN_TEXT:
            inline = gitobjects.read_blob(session, entry.sha)
        branches, tags = _refs(session, repo)
        return File(repo, revision, sha, entry, branches, tags, inline)


def file_bytes(hub: Hub, file: File, start: int, length: int) -> bytes:
    """Bytes [start, start+length) of a file, without reading the rest (a large file's header, say)."""
    if file.entry.lfs_oid is None:
        with hub.db.read() as session:
            return gitobjects.read_blob(session, file.entry.sha)[start:start + length]
    return b"".join(hub.large_file(file.entry.lfs_oid, start, length))


def safetensors_summary(hub: Hub, file: File) -> dict:
    """Tensor count, dtypes and parameter count from a safetensors file's JSON header (its first bytes only)."""
    size = file.entry.file_size
    if size < 8:
        return {"error": "the file is too short to be safetensors"}
    (header_length,) = struct.unpack("<Q", file_bytes(hub, file, 0, 8))
    if header_length > min(MAX_SAFETENSORS_HEADER, size - 8):
        return {"error": f"its header claims {header_length:,} bytes, more than this page reads"}
    try:
        header = json.loads(file_bytes(hub, file, 8, header_length))
    except ValueError:
        return {"error": "its header is not valid JSON"}
    if not isinstance(header, dict):
        return {"error": "its header is not a JSON object"}
    tensors = {name: info for name, info in header.items() if name != "__metadata__" and isinstance(info, dict)}
    dtypes: Counter[str] = Counter()
    parameters = 0
    for info in tensors.values():
        dtypes[str(info.get("dtype"))] += 1
        shape = info.get("shape")
        if isinstance(shape, list) and all(isinstance(n, int) for n in shape):
            parameters += prod(shape)
    metadata = header.get("__metadata__")
    return {"tensors": len(tensors), "dtypes": dict(dtypes.most_common()), "parameters": parameters,
            "metadata": metadata if isinstance(metadata, dict) else {}}


def history(hub: Hub, actor: Actor | None, repo_type: str, namespace: str, name: str, revision: str,
            page: int) -> tuple[repos.RepoRef, list[dict], bool, list[dict], list[str]]:
    """One page of first-parent history from `revision` (newest first), whether there is more, and the refs."""
    if page < 0 or page > 10**6:
        raise BadRequest(f"page {page} is out of range; use the links of the history page")
    with hub.db.read() as session:
        repo = repos.find_repo(session, repo_type, namespace, name, actor)
        sha = repos.resolve_revision(session, repo, revision)
        commits = [_commit_entry(c) for c in gitobjects.iter_history(session, sha, (page + 1) * HISTORY_PAGE + 1)]
        branches, tags = _refs(session, repo)
    shown = commits[page * HISTORY_PAGE:(page + 1) * HISTORY_PAGE]
    return repo, shown, len(commits) > (page + 1) * HISTORY_PAGE, branches, tags


def commit_changes(hub: Hub, actor: Actor | None, repo_type: str, namespace: str, name: str,
                   sha: str) -> CommitView:
    """A commit and the files it added, changed and deleted against its first parent."""
    with hub.db.read() as session:
        repo = repos.find_repo(session, repo_type, namespace, name, actor)
        resolved = repos.resolve_revision(session, repo, sha)
        commit = gitobjects.load_commit(session, resolved)
        parent = commit.parents[0].decode() if commit.parents else None

        def compute() -> tuple[int, list[tuple[str, str]]]:
            parent_tree = gitobjects.load_commit(session, parent).tree if parent else None
            changes = [(change.type, (change.new or change.old).path.decode("utf-8", "replace"))
                       for change in tree_changes(gitobjects.DatabaseObjects(session), parent_tree, commit.tree)]
            return len(changes), sorted(changes, key=lambda change: natural_key(change[1]))[:CHANGES_SHOWN]

        total, shown = _commit_changes.get_or_compute(resolved, compute)
    return CommitView(repo, _commit_entry(commit), parent, total, shown)


def trainer_state(hub: Hub, actor: Actor | None, repo_type: str, namespace: str, name: str,
                  revision: str) -> tuple[str, dict] | None:
    """The newest trainer_state.json at a revision: the top-level one (written at the end of training) or the
    one in the highest-numbered checkpoint folder; with the path it came from. None when there is none."""
    with hub.db.read() as session:
        repo = repos.find_repo(session, repo_type, namespace, name, actor)
        tree = gitobjects.load_commit(session, repos.resolve_revision(session, repo, revision)).tree.decode()
        candidates = [TRAINER_STATE]
        folders = itertools.takewhile(lambda item: stat.S_ISDIR(item[1]), _sorted_items(session, tree))
        checkpoints = sorted(((int(m.group(1)), name) for name, _, _ in folders if (m := _CHECKPOINT.match(name))),
                             reverse=True)
        candidates += [f"{path}/{TRAINER_STATE}" for _, path in checkpoints[:3]]
        for path in candidates:
            found = gitobjects.lookup(session, tree, path)
            if found is None or stat.S_ISDIR(found[0]):
                continue
            entry = gitobjects.entry_for(session, path, *found)
            if entry.lfs_oid is not None or entry.size > MAX_SHOWN_TEXT:
                continue
            try:
                state = json.loads(gitobjects.read_blob(session, entry.sha))
            except ValueError:
                continue
            if isinstance(state, dict) and isinstance(state.get("log_history"), list):
                return path, state
    return None


@dataclass
class DiscussionView:
    repo: repos.RepoRef
    details: dict  # as get_discussion_details answers it
    changed_files: list[tuple[str, str]]  # (change kind, path) of what a pull request changes, in natural order
    may_merge: bool


class _CommitGraph(gitobjects.DatabaseObjects):
    """The database's commits as dulwich's merge-base search reads them (a repo with no grafts or shallows)."""

    shallows: ClassVar[frozenset[bytes]] = frozenset()

    @property
    def object_store(self) -> _CommitGraph:
        return self

    def parents_provider(self) -> _CommitGraph:
        return self

    def get_parents(self, commit_id: bytes, commit: Commit | None = None) -> list[bytes]:
        found = commit or self[commit_id]
        assert isinstance(found, Commit)
        return list(found.parents)


def _pull_request_changes(session, base: str, head: str) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """What `head` changed since it left `base`: a tree diff from their merge base, which reads only the folders
    that differ (never the files' contents), so a pull request over a large repo costs what it changes."""
    graph = _CommitGraph(session)
    bases = find_merge_base(graph, [base.encode(), head.encode()])
    before = gitobjects.load_commit(session, bases[0].decode()).tree if bases else None
    changes = [(change.type, (change.new or change.old).path.decode("utf-8", "replace"))
               for change in tree_changes(graph, before, gitobjects.load_commit(session, head).tree)]
    return sorted(changes, key=lambda change: natural_key(change[1]))[:CHANGES_SHOWN]


_pull_requests: gitobjects.ShaKeyedCache[str, list[tuple[str, str]]] = gitobjects.ShaKeyedCache(32)


def discussion(hub: Hub, discussions: Discussions, actor: Actor | None, repo_type: str, namespace: str, name: str,
               num: int) -> DiscussionView:
    """A discussion or pull request with its events; for one not merged yet, the files it changes and whether
    the caller may merge it."""
    details = discussions.details(actor, repo_type, namespace, name, num, False)
    changed: list[tuple[str, str]] = []
    with hub.db.read() as session:
        repo = repos.find_repo(session, repo_type, namespace, name, actor)
        if details["isPullRequest"] and details["status"] != "merged":
            base = repos.branch_head(session, repo, details["changes"]["base"].removeprefix("refs/heads/"))
            head = repos.branch_head(session, repo, pr_ref(num))
            changed = _pull_requests.get_or_compute(f"{base}:{head}",
                                                     lambda: _pull_request_changes(session, base, head))
    may_merge = details["isPullRequest"] and details["status"] in ("open", "draft")
    return DiscussionView(repo, details, changed, may_merge and allowed(actor, "repo.write", repo.target))


def rescue_merged(hub: Hub, actor: Actor | None, repo_id: str, branch: str) -> bool:
    """Whether main already holds everything on a job's rescue branch (its rescue was merged, or main moved past
    it): then there is nothing left to offer as a pull request."""
    namespace, name = repo_id.split("/", 1)
    with hub.db.read() as session:
        repo = repos.find_repo(session, "model", namespace, name, actor)
        rescued = repos.branch_head(session, repo, branch)
        main = repos.branch_head(session, repo, repos.DEFAULT_BRANCH)
        return can_fast_forward(_CommitGraph(session), rescued.encode(), main.encode())


def discussions_of_repo(hub: Hub, discussions: Discussions, actor: Actor | None, repo_type: str, namespace: str,
                        name: str) -> tuple[repos.RepoRef, list[dict]]:
    """The repo and its newest discussions and pull requests (one page, as the API lists them)."""
    with hub.db.read() as session:
        repo = repos.find_repo(session, repo_type, namespace, name, actor)
    return repo, discussions.list(actor, repo_type, namespace, name, "all", "all", None, 0)["discussions"]
