"""The pack that answers `git clone` and `git fetch`, written from the database's git objects.

dulwich negotiates (wants, haves, shallow, acknowledgements); its own pack writer, given keephub's objects, walked them
one Python object at a time, read each object twice and started a fresh zlib stream with 256 KiB of state for each:
0.25-0.45 s of CPU for a clone of 2,300 small objects, where `git upload-pack` reuses the compressed objects of its
packs.
Here commits' parents and trees (for dulwich's history walks too, as its "commit graph") and trees' children are read
in batches and kept by sha; each object's pack entry (header and zlib data) is kept by sha too, so that a clone or
fetch after another of the same repo compresses only what is new, as git's stored packs let it; and the pack streams
to the client as it is written. The packs hold whole objects, no deltas, which every git accepts. Objects never
change, so nothing here is ever invalidated.
"""

from __future__ import annotations

import hashlib
import stat
import zlib
from collections.abc import Callable, Iterable, Iterator

from dulwich.object_format import DEFAULT_OBJECT_FORMAT
from dulwich.objects import S_IFGITLINK, Commit, ObjectID, Tree, parse_tree
from dulwich.pack import pack_header_chunks, pack_object_header
from sqlalchemy import select
from sqlalchemy.orm import Session

from keephub.storage.gitobjects import ShaKeyedCache
from keephub.storage.schema import GitObject, RepoCommit

_QUERY_SHAS = 900  # ids per IN (...) query, within SQLite's limit on bound parameters
_QUERY_BYTES = 16 * 1024 * 1024  # object bytes per query, so that a batch of large files cannot fill memory
_WRITE_BYTES = 64 * 1024  # pack bytes per write: one side-band packet each
_SHA_BYTES = 100  # about what a 40-character str costs in a tuple of a cached tree's children
_SINGLE_COMMIT_READS = 16  # commits a request reads one by one before it reads all of its repo's at once

# A commit's tree and parents.
_commit_links: ShaKeyedCache[str, tuple[str, tuple[str, ...]]] = ShaKeyedCache(
    8 * 1024 * 1024, weigh=lambda links: _SHA_BYTES * (3 + len(links[1])))

# A tree's subtrees and files (submodule commits left out: a repo holds no other repo's objects).
_children: ShaKeyedCache[str, tuple[tuple[str, ...], tuple[str, ...]]] = ShaKeyedCache(
    16 * 1024 * 1024, weigh=lambda children: _SHA_BYTES * (3 + len(children[0]) + len(children[1])))
# An object's entry in a pack: its header, then its body as a zlib stream (weighed with its key and bookkeeping).
_entries: ShaKeyedCache[str, bytes] = ShaKeyedCache(32 * 1024 * 1024, weigh=lambda entry: len(entry) + 2 * _SHA_BYTES)


class CommitLinks:
    """Each commit's tree and parents, for one request's walks of a repo's history: dulwich's (as its commit graph)
    and objects_to_send's. A commit nobody asked for since the server started is read alone the first few times (a
    fetch after a push needs one or two); past that the request is walking a history not seen yet, and all the
    repo's commits are read in one query rather than one query per commit."""

    def __init__(self, session: Session, repo_id: int) -> None:
        self.session = session
        self.repo_id = repo_id
        self.known: dict[str, tuple[str, tuple[str, ...]]] = {}
        self.single_reads_left = _SINGLE_COMMIT_READS
        self.read_all = False

    def get(self, sha: str) -> tuple[str, tuple[str, ...]]:
        """(tree, parents) of the commit `sha`; KeyError if no commit has that sha."""
        links = self.known.get(sha) or _commit_links.get(sha)
        if links is not None:
            return links
        rows = select(GitObject.sha, GitObject.data).where(GitObject.type_num == Commit.type_num)
        if self.single_reads_left > 0 or self.read_all:
            self.single_reads_left -= 1
            rows = rows.where(GitObject.sha == sha)
        else:
            self.read_all = True
            rows = rows.join(RepoCommit, RepoCommit.sha == GitObject.sha).where(RepoCommit.repo_id == self.repo_id)
        for row in self.session.execute(rows):
            commit = Commit.from_raw_string(Commit.type_num, row.data)
            found = (commit.tree.decode(), tuple(parent.decode() for parent in commit.parents))
            self.known[row.sha] = found
            _commit_links.put(row.sha, found)
        if sha not in self.known:
            raise KeyError(sha)
        return self.known[sha]

    def get_parents(self, sha: ObjectID) -> list[ObjectID] | None:
        """dulwich's commit graph: a commit's parents, or None for dulwich to look the object up itself."""
        try:
            _, parents = self.get(sha.decode())
        except KeyError:
            return None
        return [ObjectID(parent.encode()) for parent in parents]


def objects_to_send(links: CommitLinks, commits: Iterable[str], sent: set[str]) -> list[str]:
    """The commits, then every tree and file under them that is not in `sent` (what the client has), each once."""
    session = links.session
    commits = list(commits)
    seen = set(sent)
    seen.update(commits)
    level = list(dict.fromkeys(tree for tree in (links.get(sha)[0] for sha in commits) if tree not in seen))
    seen.update(level)
    trees: list[str] = []
    files: list[str] = []
    while level:
        trees += level
        below: list[str] = []
        for subtrees, blobs in _children_of(session, level):
            for sha in subtrees:
                if sha not in seen:
                    seen.add(sha)
                    below.append(sha)
            for sha in blobs:
                if sha not in seen:
                    seen.add(sha)
                    files.append(sha)
        level = below
    return [*commits, *trees, *files]


def tree_objects(session: Session, roots: Iterable[str]) -> set[str]:
    """Every tree and file under the trees `roots`, the roots included."""
    found: set[str] = set()
    level = list(set(roots))
    while level:
        found.update(level)
        below: set[str] = set()
        for subtrees, blobs in _children_of(session, level):
            below.update(subtrees)
            found.update(blobs)
        level = list(below - found)
    return found


def write_pack(session: Session, shas: list[str], write: Callable[[bytes], None]) -> None:
    """Write a pack of the objects `shas` (each once) in pieces of about _WRITE_BYTES. Entries already built are sent
    first, the others as each batch of them is read, so the client indexes the pack while the rest is built."""
    out = _PackOut(write)
    for chunk in pack_header_chunks(len(shas)):
        out.add(chunk)
    unbuilt = []
    for sha in shas:
        entry = _entries.get(sha)
        if entry is None:
            unbuilt.append(sha)
        else:
            out.add(entry)
    for sha, type_num, data in _read(session, unbuilt):
        entry = bytes(pack_object_header(type_num, None, len(data), object_format=DEFAULT_OBJECT_FORMAT))
        entry += deflate(data)
        _entries.put(sha, entry)
        out.add(entry)
    out.finish()


def deflate(data: bytes) -> bytes:
    """`data` as a zlib stream, level 6 like git's, with a window and hash table no larger than `data` needs: the
    same bytes out as zlib's defaults, without clearing ~300 KiB of state for an object of a few hundred bytes."""
    window_bits = max(9, min(15, (len(data) + 262).bit_length()))
    memory_level = max(2, min(8, len(data).bit_length() - 5))
    compressor = zlib.compressobj(6, zlib.DEFLATED, window_bits, memory_level)
    return compressor.compress(data) + compressor.flush()


class _PackOut:
    """Pack bytes gathered into writes of about _WRITE_BYTES, with the SHA-1 trailer git checks at the end."""

    def __init__(self, write: Callable[[bytes], None]) -> None:
        self.write = write
        self.digest = hashlib.sha1()
        self.pending: list[bytes] = []
        self.size = 0

    def add(self, data: bytes) -> None:
        self.pending.append(data)
        self.size += len(data)
        if self.size >= _WRITE_BYTES:
            self._flush()

    def finish(self) -> None:
        self._flush()
        self.write(self.digest.digest())

    def _flush(self) -> None:
        if self.pending:
            data = b"".join(self.pending)
            self.digest.update(data)
            self.write(data)
            self.pending, self.size = [], 0


def _children_of(session: Session, trees: list[str]) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """(subtrees, files) of each tree, in order: from the cache, else read in batches and parsed."""
    known = {sha: children for sha in trees if (children := _children.get(sha)) is not None}
    for sha, type_num, data in _read(session, [sha for sha in trees if sha not in known]):
        if type_num != Tree.type_num:
            raise KeyError(f"object {sha} is not a tree")
        subtrees, blobs = [], []
        for _name, mode, child in parse_tree(data, sha_len=DEFAULT_OBJECT_FORMAT.oid_length):
            kind = stat.S_IFMT(mode)
            if kind == stat.S_IFDIR:
                subtrees.append(child.decode())
            elif kind != S_IFGITLINK:
                blobs.append(child.decode())
        known[sha] = (tuple(subtrees), tuple(blobs))
        _children.put(sha, known[sha])
    return [known[sha] for sha in trees]


def _read(session: Session, shas: list[str]) -> Iterator[tuple[str, int, bytes]]:
    """(sha, type, body) of each object, in no particular order, in few queries of at most _QUERY_BYTES each (a
    single larger object alone); a missing object raises KeyError."""
    for start in range(0, len(shas), _QUERY_SHAS):
        batch = shas[start : start + _QUERY_SHAS]
        sizes = dict(session.execute(select(GitObject.sha, GitObject.size).where(GitObject.sha.in_(batch))).all())
        if len(sizes) < len(set(batch)):
            raise KeyError(f"object {next(sha for sha in batch if sha not in sizes)} is not stored")
        group: list[str] = []
        total = 0
        for sha in batch:
            if group and total + sizes[sha] > _QUERY_BYTES:
                yield from _bodies(session, group)
                group, total = [], 0
            group.append(sha)
            total += sizes[sha]
        yield from _bodies(session, group)


def _bodies(session: Session, shas: list[str]) -> Iterator[tuple[str, int, bytes]]:
    rows = session.execute(select(GitObject.sha, GitObject.type_num, GitObject.data).where(GitObject.sha.in_(shas)))
    for row in rows:
        yield row.sha, row.type_num, row.data

