"""Real git objects (via dulwich) kept in the metadata database.

Commit ids are true git SHA-1s over true trees, and large files are git-lfs pointer blobs, as on
the Hugging Face Hub, so a future `git clone` endpoint can serve these objects unchanged.
Objects are immutable, so parsed trees and commits are cached in memory by sha.
"""

from __future__ import annotations

import stat
from collections import OrderedDict
from dataclasses import dataclass
from threading import Lock
from typing import Iterator

from dulwich.objects import Blob, Commit, ShaFile, Tree
from sqlalchemy import Insert, select
from sqlalchemy.orm import Session

from keephub.storage.schema import GitObject

FILE_MODE = stat.S_IFREG | 0o644
DIR_MODE = stat.S_IFDIR
LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/v1\n"
_LFS_POINTER_MAX = 200


def lfs_pointer(oid: str, size: int) -> bytes:
    """The git-lfs pointer file that stands in the git tree for a large file."""
    return LFS_POINTER_PREFIX + f"oid sha256:{oid}\nsize {size}\n".encode()


def parse_lfs_pointer(data: bytes) -> tuple[str, int] | None:
    if len(data) > _LFS_POINTER_MAX or not data.startswith(LFS_POINTER_PREFIX):
        return None
    fields = dict(line.split(" ", 1) for line in data.decode("ascii", "replace").splitlines()[1:] if " " in line)
    oid = fields.get("oid", "")
    if not oid.startswith("sha256:") or not fields.get("size", "").isdigit():
        return None
    return oid.removeprefix("sha256:"), int(fields["size"])


@dataclass(frozen=True)
class Entry:
    """One path in a tree, with what listings need (no blob bodies)."""

    path: str
    is_dir: bool
    sha: str
    size: int = 0
    lfs_oid: str | None = None
    lfs_size: int | None = None

    @property
    def file_size(self) -> int:
        return self.lfs_size if self.lfs_size is not None else self.size


class _LRU:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.items: OrderedDict[str, object] = OrderedDict()
        self.lock = Lock()

    def get(self, key: str) -> object | None:
        with self.lock:
            value = self.items.get(key)
            if value is not None:
                self.items.move_to_end(key)
            return value

    def put(self, key: str, value: object) -> None:
        with self.lock:
            self.items[key] = value
            self.items.move_to_end(key)
            while len(self.items) > self.capacity:
                self.items.popitem(last=False)


_parsed = _LRU(4096)


def insert_ignoring_duplicates(session: Session, rows: list[dict]) -> None:
    """Insert git object rows; an object that already exists is identical by construction."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    statement: Insert = dialect_insert(GitObject).on_conflict_do_nothing(index_elements=["sha"])
    session.execute(statement, rows)


def object_row(obj: ShaFile) -> dict:
    data = obj.as_raw_string()
    row = {"sha": obj.id.decode(), "type_num": obj.type_num, "size": len(data), "lfs_oid": None, "lfs_size": None,
           "data": data}
    if isinstance(obj, Blob):
        pointer = parse_lfs_pointer(data)
        if pointer:
            row["lfs_oid"], row["lfs_size"] = pointer
    return row


class ObjectWriter:
    """Collects new objects during a commit and writes them in one batch."""

    def __init__(self) -> None:
        self.pending: dict[str, ShaFile] = {}

    def add(self, obj: ShaFile) -> str:
        sha = obj.id.decode()
        self.pending[sha] = obj
        return sha

    def flush(self, session: Session) -> None:
        insert_ignoring_duplicates(session, [object_row(o) for o in self.pending.values()])
        for sha, obj in self.pending.items():
            if isinstance(obj, (Tree, Commit)):
                _parsed.put(sha, obj)
        self.pending.clear()


def load(session: Session, sha: str, writer: ObjectWriter | None = None) -> ShaFile:
    cached = _parsed.get(sha)
    if cached is not None:
        return cached  # type: ignore[return-value]
    if writer is not None and sha in writer.pending:
        return writer.pending[sha]
    row = session.execute(select(GitObject.type_num, GitObject.data).where(GitObject.sha == sha)).one_or_none()
    if row is None:
        raise KeyError(sha)
    obj = ShaFile.from_raw_string(row.type_num, row.data, sha=sha.encode())
    if isinstance(obj, (Tree, Commit)):
        _parsed.put(sha, obj)
    return obj


def load_commit(session: Session, sha: str) -> Commit:
    obj = load(session, sha)
    if not isinstance(obj, Commit):
        raise KeyError(sha)
    return obj


def load_tree(session: Session, sha: str, writer: ObjectWriter | None = None) -> Tree:
    obj = load(session, sha, writer)
    if not isinstance(obj, Tree):
        raise KeyError(sha)
    return obj


def read_blob(session: Session, sha: str) -> bytes:
    row = session.execute(select(GitObject.data).where(GitObject.sha == sha)).scalar_one()
    return row


def lookup(session: Session, tree_sha: str, path: str) -> tuple[int, str] | None:
    """(mode, sha) of `path` under the tree, or None. The empty path is the tree itself."""
    mode, sha = DIR_MODE, tree_sha
    for part in [p for p in path.split("/") if p]:
        if not stat.S_ISDIR(mode):
            return None
        tree = load_tree(session, sha)
        try:
            mode, raw_sha = tree[part.encode()]
        except KeyError:
            return None
        sha = raw_sha.decode()
    return mode, sha


def list_entries(session: Session, tree_sha: str, prefix: str, recursive: bool) -> list[Entry]:
    """Entries under `tree_sha` (whose own path is `prefix`), directories before their contents."""
    raw: list[tuple[str, bool, str]] = []

    def walk(sha: str, base: str) -> None:
        for item in load_tree(session, sha).iteritems():
            path = f"{base}{item.path.decode()}"
            is_dir = stat.S_ISDIR(item.mode)
            raw.append((path, is_dir, item.sha.decode()))
            if is_dir and recursive:
                walk(item.sha.decode(), path + "/")

    walk(tree_sha, f"{prefix}/" if prefix else "")
    blob_info = _blob_info(session, {sha for _, is_dir, sha in raw if not is_dir})
    entries = []
    for path, is_dir, sha in raw:
        if is_dir:
            entries.append(Entry(path=path, is_dir=True, sha=sha))
        else:
            size, lfs_oid, lfs_size = blob_info[sha]
            entries.append(Entry(path=path, is_dir=False, sha=sha, size=size, lfs_oid=lfs_oid, lfs_size=lfs_size))
    return entries


def entry_for(session: Session, path: str, mode: int, sha: str) -> Entry:
    if stat.S_ISDIR(mode):
        return Entry(path=path, is_dir=True, sha=sha)
    size, lfs_oid, lfs_size = _blob_info(session, {sha})[sha]
    return Entry(path=path, is_dir=False, sha=sha, size=size, lfs_oid=lfs_oid, lfs_size=lfs_size)


def _blob_info(session: Session, shas: set[str]) -> dict[str, tuple[int, str | None, int | None]]:
    info: dict[str, tuple[int, str | None, int | None]] = {}
    ordered = sorted(shas)
    for start in range(0, len(ordered), 900):
        batch = ordered[start : start + 900]
        rows = session.execute(
            select(GitObject.sha, GitObject.size, GitObject.lfs_oid, GitObject.lfs_size).where(GitObject.sha.in_(batch))
        )
        for row in rows:
            info[row.sha] = (row.size, row.lfs_oid, row.lfs_size)
    return info


def apply_changes(
    session: Session, writer: ObjectWriter, root_sha: str | None, changes: dict[str, str | None]
) -> str:
    """Write new trees for `changes` (path -> blob sha, or None to delete a file or folder); return the root sha.

    Only the trees on the changed paths are rebuilt, so a commit of one file costs the same in a repo
    of ten files and a repo of ten thousand.
    """
    nested: dict = {}
    for path, sha in changes.items():
        node = nested
        parts = path.split("/")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = sha
    return _rebuild(session, writer, root_sha, nested) or writer.add(Tree())


def _rebuild(session: Session, writer: ObjectWriter, tree_sha: str | None, changes: dict) -> str | None:
    tree = Tree()
    if tree_sha is not None:
        for item in load_tree(session, tree_sha, writer).iteritems():
            tree.add(item.path, item.mode, item.sha)
    for name, change in changes.items():
        key = name.encode()
        existing = tree[key] if key in tree else None
        if isinstance(change, dict):
            sub_sha = existing[1].decode() if existing and stat.S_ISDIR(existing[0]) else None
            new_sub = _rebuild(session, writer, sub_sha, change)
            if new_sub is None:
                if existing:
                    del tree[key]
            else:
                tree.add(key, DIR_MODE, new_sub.encode())
        elif change is None:
            if existing:
                del tree[key]
        else:
            tree.add(key, FILE_MODE, change.encode())
    if not len(tree):
        return None
    return writer.add(tree)


def new_blob(data: bytes) -> Blob:
    return Blob.from_string(data)


def iter_history(session: Session, head: str, limit: int | None = None) -> Iterator[Commit]:
    """First-parent history from `head`, newest first."""
    sha: str | None = head
    count = 0
    while sha is not None and (limit is None or count < limit):
        commit = load_commit(session, sha)
        yield commit
        count += 1
        sha = commit.parents[0].decode() if commit.parents else None

