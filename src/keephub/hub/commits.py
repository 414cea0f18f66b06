"""Commits: parse the client's NDJSON body, then apply it to a branch atomically.

A commit either lands whole or not at all (one database transaction holds its git objects and
the ref update). Concurrent commits to one branch serialise on the ref: a commit that names its
`parentCommit` gets 412 if the branch moved, others are applied on top of the new head. A retried
commit whose first attempt landed (lost response) is recognised and answered with that commit.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Callable, Iterable

from dulwich.objects import Blob

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from keephub.accounts import Actor
from keephub.hub import naming
from keephub.hub.repos import RepoRef, branch_head, make_commit, touch
from keephub.storage import gitobjects
from keephub.storage.blobs import is_sha256
from keephub.storage.schema import LfsLink, LfsObject, Ref, RepoCommit
from keephub.wire import BadRequest, EntryNotFound, PreconditionFailed, TooLarge

MAX_OPERATIONS = 100_000
# Regular-file bytes a commit holds in memory before storing them (BlobStash).
STASH_BATCH_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class AddRegular:
    """A regular file; `content` is None once its blob (`sha`) is in the database already (see BlobStash)."""

    path: str
    sha: str
    content: bytes | None


@dataclass(frozen=True)
class AddLfs:
    path: str
    oid: str
    size: int | None


@dataclass(frozen=True)
class Delete:
    path: str
    is_folder: bool


Operation = AddRegular | AddLfs | Delete


@dataclass
class CommitRequest:
    summary: str
    description: str = ""
    parent_commit: str | None = None
    operations: list[Operation] = field(default_factory=list)


class BlobStash:
    """Stores a commit's regular files in the database as they are parsed, a batch at a time, so that a commit
    of many files holds one batch in memory, not the whole commit. Blobs are content-addressed: one whose commit
    then fails is stored but unreferenced, like an upload never committed."""

    def __init__(self, store: Callable[[list[Blob]], None], batch_bytes: int = STASH_BATCH_BYTES) -> None:
        self.store = store
        self.batch_bytes = batch_bytes
        self.pending: list[Blob] = []
        self.pending_bytes = 0

    def add(self, content: bytes) -> str:
        blob = gitobjects.new_blob(content)
        self.pending.append(blob)
        self.pending_bytes += len(content)
        if self.pending_bytes >= self.batch_bytes:
            self.flush()
        return blob.id.decode()

    def flush(self) -> None:
        if self.pending:
            self.store(self.pending)
        self.pending, self.pending_bytes = [], 0


def parse_ndjson(body: bytes | Iterable[bytes], max_regular_bytes: int, stash: BlobStash | None = None
                 ) -> CommitRequest:
    """Turn the NDJSON body (bytes, or lines as from a file) into a CommitRequest, rejecting anything malformed
    with the line number. With a `stash`, regular files go to the database as they are read."""
    request: CommitRequest | None = None
    lines = body.splitlines() if isinstance(body, bytes) else body
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # RecursionError: nesting too deep for the parser
            raise BadRequest(f"commit body line {number} is not valid JSON ({exc}); send one JSON object per line")
        if not isinstance(line, dict) or not isinstance(line.get("value"), dict):
            raise BadRequest(f"commit body line {number} must be an object with 'key' and an object 'value'")
        key, value = line.get("key"), line["value"]
        if key == "header":
            if request is not None:
                raise BadRequest(f"commit body line {number} is a second header; send exactly one, first")
            request = _parse_header(value, number)
            continue
        if request is None:
            raise BadRequest("the commit body must start with a 'header' line carrying the summary")
        if len(request.operations) >= MAX_OPERATIONS:
            raise TooLarge(f"a commit may hold at most {MAX_OPERATIONS} operations; split it into several commits")
        operation = _parse_operation(key, value, number, max_regular_bytes)
        if stash is not None and isinstance(operation, AddRegular) and operation.content is not None:
            operation = AddRegular(operation.path, stash.add(operation.content), None)
        request.operations.append(operation)
    if stash is not None:
        stash.flush()
    if request is None:
        raise BadRequest("the commit body is empty; send a 'header' line and one line per operation")
    paths = [op.path for op in request.operations]
    if len(paths) != len(set(paths)):
        duplicate = next(p for p in paths if paths.count(p) > 1)
        raise BadRequest(f"the path {duplicate!r} appears in more than one operation of this commit")
    return request


def _parse_header(value: dict, number: int) -> CommitRequest:
    summary = value.get("summary")
    description = value.get("description") or ""
    parent = value.get("parentCommit")
    if not isinstance(summary, str) or not summary.strip():
        raise BadRequest(f"commit header (line {number}) needs a non-empty 'summary' (the commit message)")
    if not isinstance(description, str):
        raise BadRequest(f"commit header (line {number}): 'description' must be a string")
    naming.check_text(summary, f"commit summary (line {number})")
    naming.check_text(description, f"commit description (line {number})")
    if parent is not None and not (isinstance(parent, str) and naming.is_commit_sha(parent)):
        raise BadRequest(f"commit header (line {number}): 'parentCommit' must be a 40-character commit id")
    return CommitRequest(summary=summary, description=description, parent_commit=parent)


def _parse_operation(key: object, value: dict, number: int, max_regular_bytes: int) -> Operation:
    if key not in ("file", "lfsFile", "deletedFile", "deletedFolder"):
        raise BadRequest(f"commit body line {number}: unknown key {key!r}; "
                         "expected header, file, lfsFile, deletedFile or deletedFolder")
    where = f"commit body line {number} ({key})"
    raw_path = value.get("path")
    if key == "deletedFolder" and isinstance(raw_path, str):
        raw_path = raw_path.rstrip("/")
    path = naming.check_path(raw_path, f"path in {where}")
    if key == "file":
        if value.get("encoding", "base64") != "base64" or not isinstance(value.get("content"), str):
            raise BadRequest(f"{where}: 'content' must be a base64 string with encoding 'base64'")
        try:
            content = base64.b64decode(value["content"], validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(f"{where}: 'content' is not valid base64")
        if len(content) > max_regular_bytes:
            raise TooLarge(
                f"{where}: {path} is {len(content)} bytes, over the {max_regular_bytes}-byte limit for regular files; "
                "upload it as an LFS file (the client does this when preupload says 'lfs')"
            )
        return AddRegular(path=path, sha=gitobjects.new_blob(content).id.decode(), content=content)
    if key == "lfsFile":
        oid, size = value.get("oid"), value.get("size")
        if value.get("algo", "sha256") != "sha256" or not is_sha256(oid):
            raise BadRequest(f"{where}: 'oid' must be a lowercase sha256 hex digest and 'algo' sha256")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise BadRequest(f"{where}: 'size' must be a non-negative integer")
        return AddLfs(path=path, oid=str(oid), size=size)
    return Delete(path=path, is_folder=key == "deletedFolder")


@dataclass(frozen=True)
class CommitResult:
    sha: str
    created: bool


def apply_commit(session: Session, repo: RepoRef, branch: str, request: CommitRequest, actor: Actor) -> CommitResult:
    """Apply `request` to `branch` inside the caller's write transaction. The branch is locked from here to the
    commit: a concurrent commit to it waits, then builds on the head this one made (or, with a parentCommit
    that is no longer the head, gets 412); the ref update below stays a compare-and-swap all the same."""
    head = branch_head(session, repo, branch, lock=True)
    if request.parent_commit is not None and request.parent_commit != head:
        landed = _find_landed_retry(session, repo, head, request, actor)
        if landed is not None:
            return CommitResult(sha=landed, created=False)
        raise PreconditionFailed(
            f"A commit has happened since. Please refresh and try again. (parentCommit {request.parent_commit} is "
            f"not the head of {branch!r}, now {head})"
        )
    head_commit = gitobjects.load_commit(session, head)
    writer = gitobjects.ObjectWriter()
    tree_sha = _build_tree(session, repo, writer, head_commit.tree.decode(), request.operations)
    commit = make_commit(tree_sha, [head], actor.name, request.summary, request.description)
    if tree_sha == head_commit.tree.decode() and _same_message(head_commit, commit) and _same_author(head_commit, actor):
        return CommitResult(sha=head, created=False)
    commit_sha = writer.add(commit)
    writer.flush(session)
    moved = session.execute(
        update(Ref).where(Ref.repo_id == repo.id, Ref.kind == "branch", Ref.name == branch, Ref.commit_sha == head)
        .values(commit_sha=commit_sha)
    )
    if moved.rowcount != 1:
        raise PreconditionFailed(f"branch {branch!r} moved during the commit; retry it")
    session.add(RepoCommit(repo_id=repo.id, sha=commit_sha))
    touch(session, repo)
    return CommitResult(sha=commit_sha, created=True)


def _build_tree(session: Session, repo: RepoRef, writer: gitobjects.ObjectWriter, base_tree: str,
                operations: list[Operation]) -> str:
    changes: dict[str, str | None] = {}
    for op in operations:
        if isinstance(op, Delete):
            found = gitobjects.lookup(session, base_tree, op.path)
            # A deletedFile naming a folder deletes it: the client sends one for a folder given without a "/".
            if found is None or (op.is_folder and not gitobjects.stat.S_ISDIR(found[0])):
                kind = "folder" if op.is_folder else "file"
                raise EntryNotFound(f"cannot delete {kind} {op.path!r}: no such {kind} in {repo.repo_id}")
            changes[op.path] = None
        elif isinstance(op, AddRegular):
            changes[op.path] = op.sha if op.content is None else writer.add(gitobjects.new_blob(op.content))
        else:
            size = _linked_lfs_size(session, repo, op)
            changes[op.path] = writer.add(gitobjects.new_blob(gitobjects.lfs_pointer(op.oid, size)))
    _reject_file_folder_clashes(session, base_tree, changes)
    return gitobjects.apply_changes(session, writer, base_tree, changes)


def _reject_file_folder_clashes(session: Session, base_tree: str, changes: dict[str, str | None]) -> None:
    """Adding 'a/b' where 'a' is a file (or 'a' where 'a/' is a folder) would silently drop data: refuse it.

    Operations apply in order, so below a folder deleted earlier in this commit the old tree no longer counts.
    """
    order = {path: index for index, path in enumerate(changes)}
    for path, sha in changes.items():
        if sha is None:
            continue
        parts = path.split("/")
        wiped = False
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            change = changes.get(parent, "")
            if change is None and order[parent] < order[path]:
                wiped = True
                continue
            found = None if wiped else gitobjects.lookup(session, base_tree, parent)
            if change or (found is not None and not gitobjects.stat.S_ISDIR(found[0])):
                raise BadRequest(f"cannot add {path!r}: {parent!r} is a file; delete it in the same commit first")
        found = None if wiped else gitobjects.lookup(session, base_tree, path)
        if found is not None and gitobjects.stat.S_ISDIR(found[0]):
            raise BadRequest(f"cannot add file {path!r}: a folder with that name exists; delete the folder first")


def _linked_lfs_size(session: Session, repo: RepoRef, op: AddLfs) -> int:
    """The size of an LFS object this repo may reference: uploaded to it and verified by the server."""
    # FOR SHARE (PostgreSQL): `keephub gc` cannot unlink it until this commit, which points at it, is in.
    row = session.execute(
        select(LfsObject.size).join(LfsLink, LfsLink.oid == LfsObject.oid)
        .where(LfsLink.repo_id == repo.id, LfsObject.oid == op.oid).with_for_update(read=True, of=LfsLink)
    ).scalar_one_or_none()
    if row is None:
        raise BadRequest(
            f"lfsFile {op.path!r} names sha256 {op.oid}, which was never uploaded to {repo.repo_id}; "
            "upload it through the LFS batch API first (the client does this before committing)"
        )
    if op.size is not None and op.size != row:
        raise BadRequest(f"lfsFile {op.path!r} says size {op.size}, but the uploaded object {op.oid} has {row} bytes")
    return row


def _same_message(a, b) -> bool:  # type: ignore[no-untyped-def]
    return a.message.strip() == b.message.strip()


def _same_author(commit, actor: Actor) -> bool:  # type: ignore[no-untyped-def]
    return commit.author.split(b" <")[0].decode() == actor.name


def _find_landed_retry(session: Session, repo: RepoRef, head: str, request: CommitRequest, actor: Actor) -> str | None:
    """If `head` is exactly this request applied to its parentCommit by the same user, it is a retry that landed."""
    head_commit = gitobjects.load_commit(session, head)
    if [p.decode() for p in head_commit.parents] != [request.parent_commit] or not _same_author(head_commit, actor):
        return None
    parent_commit = gitobjects.load_commit(session, request.parent_commit)  # type: ignore[arg-type]
    writer = gitobjects.ObjectWriter()
    try:
        tree = _build_tree(session, repo, writer, parent_commit.tree.decode(), request.operations)
    except (BadRequest, EntryNotFound):
        return None
    probe = make_commit(tree, [request.parent_commit], actor.name, request.summary, request.description)  # type: ignore[list-item]
    if tree == head_commit.tree.decode() and _same_message(head_commit, probe):
        return head
    return None
