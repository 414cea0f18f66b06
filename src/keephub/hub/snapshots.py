"""What a commit's files answer, computed once per git object rather than once per request.

A tree or commit sha names content that can never change, so these caches are keyed by sha and need no
invalidation: a new commit has a new sha and is simply not cached yet, and several keephub processes on one
database can never disagree. Everything that can change (refs, visibility, likes, gating, Xet hashes of LFS
files) is still read from the database on every request by the callers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from keephub.hub import wireformat
from keephub.storage import gitobjects

# Bounded by listed entries (a recursive listing of a 100,000-file repo weighs 100,000), not by listings: an entry
# held costs a few hundred bytes, so the cache stays within some tens of MB however many repos are read.
MAX_CACHED_ENTRIES = 100_000


def _weight(value: Any) -> int:
    """How many entries a cached value holds: a listing's entries, or a repo's files."""
    entries = value[0] if isinstance(value[0], tuple) else value[1]["siblings"]
    return max(len(entries), 1)


_listings: gitobjects.ShaKeyedCache[tuple, Any] = gitobjects.ShaKeyedCache(MAX_CACHED_ENTRIES, weigh=_weight)


def _listing(session: Session, tree_sha: str, prefix: str, recursive: bool) -> tuple[tuple[dict, ...],
                                                                                      tuple[str, ...]]:
    """A folder's entries in the wire format (without Xet hashes), and the LFS oids among them."""

    def compute() -> tuple[tuple[dict, ...], tuple[str, ...]]:
        entries = gitobjects.list_entries(session, tree_sha, prefix, recursive)
        return (tuple(wireformat.tree_entry(entry) for entry in entries),
                tuple(entry.lfs_oid for entry in entries if entry.lfs_oid))

    return _listings.get_or_compute(("tree", tree_sha, prefix, recursive), compute)


def tree_entries(session: Session, tree_sha: str, prefix: str, recursive: bool,
                 xet_hashes: Callable[[Session, list[str]], dict[str, str]]) -> list[dict]:
    """The entries of the folder `tree_sha` (whose path is `prefix`) as `list_repo_tree` answers them.

    An LFS file's Xet hash can appear after its commit (the same content uploaded again through Xet), so it is
    looked up now, and only for LFS files. The dicts are shared between requests: callers copy before changing."""
    entries, lfs_oids = _listing(session, tree_sha, prefix, recursive)
    xet = xet_hashes(session, list(lfs_oids)) if lfs_oids else {}
    if not xet:
        return list(entries)
    return [entry | {"xetHash": xet[entry["lfs"]["oid"]]} if "lfs" in entry and entry["lfs"]["oid"] in xet
            else entry for entry in entries]


def repo_files(session: Session, commit_sha: str, with_metadata: bool, readme: Callable[[str], bytes | None]
               ) -> tuple[dict | None, dict]:
    """The parts of `model_info` that only the commit's content decides: the model card's metadata, and the
    siblings with the storage they use; `readme(tree_sha)` reads README.md the first time."""

    def compute() -> tuple[dict | None, dict]:
        tree = gitobjects.load_commit(session, commit_sha).tree.decode()
        files = [entry for entry in gitobjects.list_entries(session, tree, "", recursive=True) if not entry.is_dir]
        return wireformat.card_data(readme(tree)), {
            "siblings": [wireformat.sibling(entry, with_metadata) for entry in files],
            "usedStorage": sum(entry.file_size for entry in files),
        }

    return _listings.get_or_compute(("repo", commit_sha, with_metadata), compute)
