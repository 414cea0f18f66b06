"""What a commit's files answer, computed once per git object rather than once per request.

A tree or commit sha names content that can never change, so these caches are keyed by sha and need no
invalidation: a new commit has a new sha and is simply not cached yet, and several keephub processes on one
database can never disagree. Everything that can change (refs, visibility, likes, gating, Xet hashes of LFS
files) is still read from the database on every request by the callers.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from keephub.hub import wireformat
from keephub.storage import gitobjects
from keephub.storage.schema import GitObject

# Bounded by listed entries (a recursive listing of a 100,000-file repo weighs 100,000), not by listings: an entry
# held costs a few hundred bytes (its dict and its JSON), so the cache stays within some tens of MB however many
# repos are read.
MAX_CACHED_ENTRIES = 100_000
# Blobs whose size and LFS pointer are kept (a few dozen bytes each): files that paths_info and resolve name.
MAX_CACHED_BLOBS = 100_000

# The bytes Starlette's JSONResponse would send, made once per cached value instead of once per request.
_json = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def encode(value: Any) -> bytes:
    """`value` as the JSON bytes of a response body (as JSONResponse renders it)."""
    return _json.encode(value).encode()


def _weight(value: Any) -> int:
    """How many entries a cached value holds: a listing's entries, or a repo's files."""
    entries = value[0] if isinstance(value[0], tuple) else value[1]["siblings"]
    return max(len(entries), 1)


_listings: gitobjects.ShaKeyedCache[tuple, Any] = gitobjects.ShaKeyedCache(MAX_CACHED_ENTRIES, weigh=_weight)
_blobs: gitobjects.ShaKeyedCache[str, tuple[int, str | None, int | None]] = gitobjects.ShaKeyedCache(MAX_CACHED_BLOBS)
_BLOB_INFO = select(GitObject.size, GitObject.lfs_oid, GitObject.lfs_size).where(GitObject.sha == bindparam("sha"))


def _listing(session: Session, tree_sha: str, prefix: str, recursive: bool
             ) -> tuple[tuple[dict, ...], tuple[str, ...], tuple[bytes, ...]]:
    """A folder's entries in the wire format (without Xet hashes), the LFS oids among them, and each entry's JSON."""

    def compute() -> tuple[tuple[dict, ...], tuple[str, ...], tuple[bytes, ...]]:
        entries = gitobjects.list_entries(session, tree_sha, prefix, recursive)
        wire = tuple(wireformat.tree_entry(entry) for entry in entries)
        return wire, tuple(entry.lfs_oid for entry in entries if entry.lfs_oid), tuple(encode(e) for e in wire)

    return _listings.get_or_compute(("tree", tree_sha, prefix, recursive), compute)


def _with_xet(entry: dict, xet: dict[str, str]) -> dict:
    return entry | {"xetHash": xet[entry["lfs"]["oid"]]} if "lfs" in entry and entry["lfs"]["oid"] in xet else entry


def tree_entries(session: Session, tree_sha: str, prefix: str, recursive: bool,
                 xet_hashes: Callable[[Session, list[str]], dict[str, str]]) -> list[dict]:
    """The entries of the folder `tree_sha` (whose path is `prefix`) as `list_repo_tree` answers them.

    An LFS file's Xet hash can appear after its commit (the same content uploaded again through Xet), so it is
    looked up now, and only for LFS files. The dicts are shared between requests: callers copy before changing."""
    entries, lfs_oids, _ = _listing(session, tree_sha, prefix, recursive)
    xet = xet_hashes(session, list(lfs_oids)) if lfs_oids else {}
    if not xet:
        return list(entries)
    return [_with_xet(entry, xet) for entry in entries]


def tree_page_json(session: Session, tree_sha: str, prefix: str, recursive: bool, start: int, size: int,
                   xet_hashes: Callable[[Session, list[str]], dict[str, str]]) -> tuple[int, bytes]:
    """How many entries the folder has, and entries [start, start + size) of `tree_entries` as a JSON array:
    joined from each entry's cached JSON; only an entry with a Xet hash (looked up now) is encoded again. A listing
    too large to keep (a quarter of the cache) is built a page at a time instead: kept whole it would be evicted,
    and every page would rebuild all of it (a 100,000-file repo listed in 100 pages read 10 million entries)."""
    total = (gitobjects.count_entries(session, tree_sha) if recursive
             else len(gitobjects.load_tree(session, tree_sha)))
    if total > MAX_CACHED_ENTRIES // 4:
        # Too large a share of the cache to keep whole: built a page at a time, each page costing its own size.
        wire = [wireformat.tree_entry(entry)
                for entry in gitobjects.page_of_entries(session, tree_sha, prefix, recursive, start, size)]
        lfs_in_page = [entry["lfs"]["oid"] for entry in wire if "lfs" in entry]
        xet = xet_hashes(session, lfs_in_page) if lfs_in_page else {}
        return total, encode([_with_xet(entry, xet) for entry in wire])
    entries, lfs_oids, encoded = _listing(session, tree_sha, prefix, recursive)
    xet = xet_hashes(session, list(lfs_oids)) if lfs_oids else {}
    page = encoded[start : start + size]
    if xet:
        page = tuple(encode(_with_xet(entry, xet)) if "lfs" in entry else body
                     for entry, body in zip(entries[start : start + size], page))
    return len(entries), b"[" + b",".join(page) + b"]"


def path_entry(session: Session, path: str, mode: int, sha: str) -> gitobjects.Entry:
    """`gitobjects.entry_for`, with a file's size and LFS pointer kept by blob sha (a blob never changes)."""
    if stat.S_ISDIR(mode):
        return gitobjects.Entry(path=path, is_dir=True, sha=sha)

    def compute() -> tuple[int, str | None, int | None]:
        row = session.connection().execute(_BLOB_INFO, {"sha": sha}).one()
        return row.size, row.lfs_oid, row.lfs_size

    size, lfs_oid, lfs_size = _blobs.get_or_compute(sha, compute)
    return gitobjects.Entry(path=path, is_dir=False, sha=sha, size=size, lfs_oid=lfs_oid, lfs_size=lfs_size)


def repo_files(session: Session, commit_sha: str, with_metadata: bool, readme: Callable[[str], bytes | None]
               ) -> tuple[dict | None, dict, bytes]:
    """The parts of `model_info` that only the commit's content decides: the model card's metadata, the
    siblings with the storage they use, and the siblings as JSON; `readme(tree_sha)` reads README.md the first
    time."""

    def compute() -> tuple[dict | None, dict, bytes]:
        tree = gitobjects.load_commit(session, commit_sha).tree.decode()
        files = [entry for entry in gitobjects.list_entries(session, tree, "", recursive=True) if not entry.is_dir]
        siblings = [wireformat.sibling(entry, with_metadata) for entry in files]
        return wireformat.card_data(readme(tree)), {
            "siblings": siblings,
            "usedStorage": sum(entry.file_size for entry in files),
        }, encode(siblings)

    return _listings.get_or_compute(("repo", commit_sha, with_metadata), compute)
