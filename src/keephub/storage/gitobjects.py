"""Real git objects (via dulwich) kept in the metadata database.

Commit ids are true git SHA-1s over true trees, and large files are git-lfs pointer blobs, as on
the Hugging Face Hub, so git's smart HTTP (hub/git_http.py) serves these objects unchanged.
Objects are immutable, so parsed trees and commits are cached in memory by sha.
"""

from __future__ import annotations

import hashlib
import stat
from bisect import bisect_left
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from itertools import accumulate
from threading import Lock
from typing import Generic, TypeVar

from cachetools import LRUCache
from dulwich.diff_tree import tree_changes
from dulwich.objects import Blob, Commit, ShaFile, Tree
from sqlalchemy import Insert, select
from sqlalchemy.orm import Session

from keephub.storage.schema import GitObject

FILE_MODE = stat.S_IFREG | 0o644
DIR_MODE = stat.S_IFDIR
LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/v1\n"
_LFS_POINTER_MAX = 200

Key = TypeVar("Key", bound=Hashable)
Value = TypeVar("Value")


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


class ShaKeyedCache(Generic[Key, Value]):
    """A thread-safe LRU of values derived from immutable git objects, keyed by their shas: an object never
    changes, so nothing here needs invalidating. `weigh` says how much of `capacity` a value takes (1 each by
    default); a value too large to keep is just served."""

    def __init__(self, capacity: int, weigh: Callable[[Value], int] | None = None) -> None:
        self._items: LRUCache[Key, Value] = LRUCache(maxsize=capacity, getsizeof=weigh)
        self._lock = Lock()

    def get(self, key: Key) -> Value | None:
        with self._lock:
            return self._items.get(key)

    def put(self, key: Key, value: Value) -> None:
        with self._lock:
            if self._items.getsizeof(value) <= self._items.maxsize:
                self._items[key] = value

    def get_or_compute(self, key: Key, compute: Callable[[], Value]) -> Value:
        """The cached value, else `compute()`'s, then kept; computed outside the lock, so two threads may both."""
        found = self.get(key)
        if found is None:
            found = compute()
            self.put(key, found)
        return found


_parsed: ShaKeyedCache[str, ShaFile] = ShaKeyedCache(4096)


class TreeIndex:
    """A tree as its raw git bytes plus each entry's sort key and byte length, in tree order.

    A commit changes a handful of entries in trees that may hold thousands. Parsing a dulwich Tree,
    re-sorting it and re-serialising every entry in Python cost tens of milliseconds per commit on a
    10,000-file folder; here one entry is found by bisection and a changed tree is written by
    splicing the untouched runs of bytes, so that cost no longer grows with the folder.
    Git orders entries by name, a folder's name compared as if it ended in '/': that is the key.
    """

    __slots__ = ("raw", "keys", "lengths")

    def __init__(self, raw: bytes, keys: list[bytes], lengths: list[int]) -> None:
        self.raw = raw
        self.keys = keys
        self.lengths = lengths

    @classmethod
    def parse(cls, raw: bytes) -> TreeIndex:
        keys: list[bytes] = []
        lengths: list[int] = []
        pos = 0
        while pos < len(raw):
            space = raw.index(b" ", pos)
            nul = raw.index(b"\0", space)
            name = raw[space + 1 : nul]
            keys.append(name + b"/" if stat.S_ISDIR(int(raw[pos:space], 8)) else name)
            lengths.append(nul + 21 - pos)
            pos = nul + 21
        if all(map(bytes.__lt__, keys, keys[1:])):
            return cls(raw, keys, lengths)
        # Not in git order (not written by keephub): index a canonically ordered copy instead.
        starts = [0, *accumulate(lengths)]
        ordered = sorted(zip(keys, starts, lengths))
        return cls(b"".join(raw[start : start + length] for _, start, length in ordered),
                   [key for key, _, _ in ordered], [length for _, _, length in ordered])

    @property
    def sha(self) -> str:
        digest = hashlib.sha1(b"tree %d\0" % len(self.raw))
        digest.update(self.raw)
        return digest.hexdigest()

    def get(self, name: bytes) -> tuple[int, str] | None:
        """(mode, hex sha) of the entry called `name`, file or folder, or None."""
        for key in (name, name + b"/"):
            i = bisect_left(self.keys, key)
            if i < len(self.keys) and self.keys[i] == key:
                start = sum(self.lengths[:i])
                space = self.raw.index(b" ", start)
                end = start + self.lengths[i]
                return int(self.raw[start:space], 8), self.raw[end - 20 : end].hex()
        return None

    def with_changes(self, changes: dict[bytes, tuple[int, str] | None]) -> TreeIndex:
        """A new tree: each named entry (file or folder) replaced by (mode, hex sha), or removed for None."""
        dropped = set()
        added = []
        for name, new in changes.items():
            for key in (name, name + b"/"):
                i = bisect_left(self.keys, key)
                if i < len(self.keys) and self.keys[i] == key:
                    dropped.add(i)
            if new is not None:
                mode, sha = new
                key = name + b"/" if stat.S_ISDIR(mode) else name
                added.append((bisect_left(self.keys, key), key, b"%o %s\0%s" % (mode, name, bytes.fromhex(sha))))
        raw: list[bytes] = []
        keys: list[bytes] = []
        lengths: list[int] = []
        copied = offset = 0  # old entries [0, copied) are done; `offset` is where entry `copied` starts

        def copy_until(end: int) -> None:
            nonlocal copied, offset
            if end <= copied:  # an insertion just after a dropped entry
                return
            size = sum(self.lengths[copied:end])
            raw.append(self.raw[offset : offset + size])
            keys.extend(self.keys[copied:end])
            lengths.extend(self.lengths[copied:end])
            copied, offset = end, offset + size

        # Dropped entries sort before insertions at the same position; untouched runs are copied whole.
        for position, key, entry in sorted([(i, b"", b"") for i in dropped] + added):
            copy_until(position)
            if key:
                raw.append(entry)
                keys.append(key)
                lengths.append(len(entry))
            else:
                copied, offset = position + 1, offset + self.lengths[position]
        copy_until(len(self.keys))
        return TreeIndex(b"".join(raw), keys, lengths)


def _index_bytes(index: TreeIndex) -> int:
    """Roughly the memory a cached TreeIndex holds: its raw bytes, plus a key and a length per entry."""
    return len(index.raw) + 72 * len(index.keys)


# Weighed in bytes, not entries, so that a few huge folders cannot fill memory.
_indexes: ShaKeyedCache[str, TreeIndex] = ShaKeyedCache(64 * 1024 * 1024, _index_bytes)


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
        self.trees: dict[str, TreeIndex] = {}

    def add(self, obj: ShaFile) -> str:
        sha = obj.id.decode()
        self.pending[sha] = obj
        return sha

    def add_tree(self, tree: TreeIndex) -> str:
        sha = tree.sha
        self.trees[sha] = tree
        return sha

    def flush(self, session: Session) -> None:
        rows = [object_row(o) for o in self.pending.values()]
        rows += [{"sha": sha, "type_num": Tree.type_num, "size": len(tree.raw), "lfs_oid": None, "lfs_size": None,
                  "data": tree.raw} for sha, tree in self.trees.items()]
        insert_ignoring_duplicates(session, rows)
        for sha, obj in self.pending.items():
            if isinstance(obj, (Tree, Commit)):
                _parsed.put(sha, obj)
        for sha, tree in self.trees.items():
            _indexes.put(sha, tree)
        self.pending.clear()
        self.trees.clear()


def load(session: Session, sha: str) -> ShaFile:
    cached = _parsed.get(sha)
    if cached is not None:
        return cached
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


def load_tree(session: Session, sha: str) -> Tree:
    obj = load(session, sha)
    if not isinstance(obj, Tree):
        raise KeyError(sha)
    return obj


class DatabaseObjects:
    """The database's git objects as dulwich's algorithms read them (by binary-hex id), e.g. its tree diff."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def __getitem__(self, sha: bytes) -> ShaFile:
        return load(self.session, sha.decode())


def changed_files(session: Session, before_tree: str | None, after_tree: str | None) -> dict[str, tuple[str | None,
                                                                                                      str | None]]:
    """path -> (blob before, blob after) of every file that differs between two trees (None: absent). dulwich's
    tree diff skips subtrees whose ids match, so the cost is the folders that changed, not the repo's size."""
    changes: dict[str, tuple[str | None, str | None]] = {}
    for change in tree_changes(DatabaseObjects(session), before_tree.encode() if before_tree else None,
                               after_tree.encode() if after_tree else None):
        if change.old is not None:  # a file whose kind changed (say, to a symlink) comes as a delete and an add
            path = change.old.path.decode()
            changes[path] = (change.old.sha.decode(), changes.get(path, (None, None))[1])
        if change.new is not None:
            path = change.new.path.decode()
            changes[path] = (changes.get(path, (None, None))[0], change.new.sha.decode())
    return changes


def tree_index(session: Session, sha: str) -> TreeIndex:
    cached = _indexes.get(sha)
    if cached is not None:
        return cached
    row = session.execute(select(GitObject.type_num, GitObject.data).where(GitObject.sha == sha)).one_or_none()
    if row is None or row.type_num != Tree.type_num:
        raise KeyError(sha)
    index = TreeIndex.parse(row.data)
    _indexes.put(sha, index)
    return index


def read_blob(session: Session, sha: str) -> bytes:
    row = session.execute(select(GitObject.data).where(GitObject.sha == sha)).scalar_one()
    return row


def lookup(session: Session, tree_sha: str, path: str) -> tuple[int, str] | None:
    """(mode, sha) of `path` under the tree, or None. The empty path is the tree itself."""
    mode, sha = DIR_MODE, tree_sha
    for part in [p for p in path.split("/") if p]:
        if not stat.S_ISDIR(mode):
            return None
        found = tree_index(session, sha).get(part.encode())
        if found is None:
            return None
        mode, sha = found
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


_entry_counts: ShaKeyedCache[str, int] = ShaKeyedCache(100_000)


def count_entries(session: Session, tree_sha: str) -> int:
    """How many entries a recursive listing of `tree_sha` has (folders included); kept per tree sha, so a commit
    recounts only the folders it changed."""
    found = _entry_counts.get(tree_sha)
    if found is None:
        found = 0
        for item in load_tree(session, tree_sha).iteritems():
            found += 1 + (count_entries(session, item.sha.decode()) if stat.S_ISDIR(item.mode) else 0)
        _entry_counts.put(tree_sha, found)
    return found


def page_of_entries(session: Session, tree_sha: str, prefix: str, recursive: bool, start: int,
                    size: int) -> list[Entry]:
    """Entries [start, start + size) of `list_entries(session, tree_sha, prefix, recursive)`, in the same order,
    at the cost of the page: folders wholly before `start` are skipped by their counts, unread, and only the
    page's files are looked up."""
    items: list[tuple[str, int, str]] = []
    skip = start

    def walk(sha: str, base: str) -> None:
        nonlocal skip
        for item in load_tree(session, sha).iteritems():
            if len(items) >= size:
                return
            path, child = f"{base}{item.path.decode()}", item.sha.decode()
            if skip:
                skip -= 1
            else:
                items.append((path, item.mode, child))
            if recursive and stat.S_ISDIR(item.mode):
                inside = count_entries(session, child)
                if skip >= inside:
                    skip -= inside
                else:
                    walk(child, path + "/")

    walk(tree_sha, f"{prefix}/" if prefix else "")
    return entries_for(session, items)


def entry_for(session: Session, path: str, mode: int, sha: str) -> Entry:
    if stat.S_ISDIR(mode):
        return Entry(path=path, is_dir=True, sha=sha)
    size, lfs_oid, lfs_size = _blob_info(session, {sha})[sha]
    return Entry(path=path, is_dir=False, sha=sha, size=size, lfs_oid=lfs_oid, lfs_size=lfs_size)


def entries_for(session: Session, items: list[tuple[str, int, str]]) -> list[Entry]:
    """Entries for (path, mode, sha) items of trees, their sizes and LFS pointers read in one batched query (a
    page of a large folder, without the cost of the rest)."""
    blob_info = _blob_info(session, {sha for _, mode, sha in items if not stat.S_ISDIR(mode)})
    return [Entry(path=path, is_dir=True, sha=sha) if stat.S_ISDIR(mode)
            else Entry(path, False, sha, *blob_info[sha]) for path, mode, sha in items]


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

    Changes apply in order: deleting 'a' and then writing 'a/x' leaves a folder holding only 'x'.
    Only the trees on the changed paths are rewritten, each by splicing its bytes (see TreeIndex), so a
    commit of one file costs about the same in a repo of ten files and in a folder of ten thousand.
    """
    nested: dict = {}
    for path, sha in changes.items():
        node = nested
        *folders, leaf = path.split("/")
        for part in folders:
            child = node.get(part)
            if not isinstance(child, dict):
                # replaced or deleted earlier in this commit: what is written below it starts from empty
                child = node[part] = _Fresh() if part in node else {}
            node = child
        node[leaf] = sha
    return _rebuild(session, writer, root_sha, nested) or writer.add(Tree())


class _Fresh(dict):
    """Changes under a folder that an earlier change removed: rebuilt from nothing, not from the old folder."""


def _rebuild(session: Session, writer: ObjectWriter, tree_sha: str | None, changes: dict) -> str | None:
    base = tree_index(session, tree_sha) if tree_sha is not None else TreeIndex(b"", [], [])
    edits: dict[bytes, tuple[int, str] | None] = {}
    for name, change in changes.items():
        key = name.encode()
        if isinstance(change, dict):
            existing = base.get(key)
            sub_sha = existing[1] if existing and stat.S_ISDIR(existing[0]) else None
            new_sub = _rebuild(session, writer, None if isinstance(change, _Fresh) else sub_sha, change)
            edits[key] = None if new_sub is None else (DIR_MODE, new_sub)
        else:
            edits[key] = None if change is None else (FILE_MODE, change)
    tree = base.with_changes(edits)
    return writer.add_tree(tree) if tree.keys else None


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

