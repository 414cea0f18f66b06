"""The CAS: verified xorbs, files registered from shards, reconstruction plans, dedup and garbage collection.

Trust runs one way: the server hashes every chunk of every xorb itself; a shard's terms are accepted only
when each names an existing xorb, a valid chunk range, its true unpacked size and a verification hash
that proves the uploader knows the chunk hashes; the file hash is recomputed from those chunks, and the
sha256 the commit will name is the running digest of the upload session's verified chunks as far as the file is
those chunks (chains.py), the rest computed by rebuilding the file. Only then is the file linked to the repo
the uploading token was issued for, through the same `LfsLink` the git-lfs path uses, so a commit
cannot name content its author never proved to hold. A bucket's token links files by their Xet hash
(`BucketUpload`) instead: buckets never name content by sha256, so none is computed for them.
"""

from __future__ import annotations

import itertools
import secrets
import threading
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.orm import Session

from keephub.config import Settings
from keephub.storage.blobs import BlobStore, BlobWriter, HashBehind, iter_range, trim
from keephub.storage.db import Database, insert_for, inserted
from keephub.storage.schema import (
    Bucket,
    BucketFile,
    BucketUpload,
    LfsLink,
    LfsObject,
    Repo,
    XetDedupChunk,
    XetFile,
    XetXorb,
    utcnow,
)
from keephub.wire import BadRequest, RangeNotSatisfiable
from keephub.wire.errors import NotFound
from keephub.wire.ranges import parse_range
from keephub.xet import formats, hashing, tokens
from keephub.xet.chains import Chains, Ticket
from keephub.xet.formats import ChunkRecord, FormatError, Term

DEDUP_SHARD_EXPIRY_SECONDS = 7 * 24 * 3600
# Bounds the work (and memory) one shard can demand: hashing and rebuilding every chunk it references.
MAX_FILE_CHUNK_REFERENCES = 2_000_000
MAX_SHARD_CHUNK_REFERENCES = 4_000_000
# About 190 KiB per 64 MiB xorb held (1,024 chunk records): 32 keep the cache near 6 MB, within issue 22's memory
# budget for a server that has moved many GiB; a xorb that is not cached costs one indexed read (~1 ms).
XORB_CACHE_ENTRIES = 32
# Rebuilt files go out in pieces this large, not chunk by chunk (~64 KiB): each piece costs a hop from the worker
# thread to the event loop and one ASGI message, which at 64 KiB held a download to a third of the disk's speed.
STREAM_PIECE_BYTES = 1024 * 1024
# A file's sha256 rebuilt from its xorbs is read into two buffers this large (kept for the next rebuild, so they
# stay resident): 2 MiB hashed as fast as 8 MiB in a scratch test (134 against 131 ms for 200 MiB), at a quarter
# of the memory.
REBUILD_BUFFER_BYTES = 2 * 1024 * 1024


@dataclass(frozen=True)
class XorbEntry:
    hash: str
    chunks: list[ChunkRecord]
    stored_bytes: int

    def byte_span(self, start: int, end: int) -> tuple[int, int]:
        """Serialized bytes [first, last] holding chunks [start, end)."""
        last = self.chunks[end].offset - 1 if end < len(self.chunks) else self.stored_bytes - 1
        return self.chunks[start].offset, last


@dataclass(frozen=True)
class FileEntry:
    file_hash: str
    sha256: str | None  # None: only buckets hold it (see XetFile)
    size: int
    terms: list[Term]


@dataclass(frozen=True)
class TermSlice:
    """A term of a reconstruction: `term` covers file bytes [file_offset, file_offset + term.unpacked)."""

    term: Term
    file_offset: int


class Cas:
    def __init__(self, settings: Settings, db: Database, xorbs: BlobStore) -> None:
        self.settings = settings
        self.db = db
        self.xorbs = xorbs
        self._xorb_cache: dict[str, XorbEntry] = {}
        self._cache_lock = threading.Lock()
        self._chains = Chains()

    # -- xorbs ----------------------------------------------------------------------------------------
    def begin_xorb(self, xorb: str, grant: tokens.CasGrant) -> XorbUpload:
        """An uploaded xorb about to be received: verified chunk by chunk as its bytes arrive (see `XorbUpload`), and,
        for a repo, fed to its session's running sha256 (see chains.py)."""
        ticket = self._chains.ticket(_session(grant)) if grant.kind == tokens.REPO else None
        return XorbUpload(xorb, self.xorbs.begin(xorb, hashed=False), ticket)

    def store_xorb(self, upload: XorbUpload) -> bool:
        """Keep an uploaded xorb once every chunk was verified against its hash. False if it was already kept.

        The same xorb hash has more than one valid serialization (LZ4 or not), and the index must describe
        the bytes on disk: placing the file and recording its index happen under one lock, and a file left
        without an index (a crash between the two) is replaced, never indexed from another upload's bytes.
        """
        xorb, pending = upload.xorb, upload.pending
        chunks = upload.verified_chunks()
        if self._touch_xorb(xorb):
            return False
        size = pending.size
        with self._placing_xorbs():
            if self._touch_xorb(xorb):
                return False
            self.xorbs.delete(xorb)
            pending.commit_verified()
            with self.db.write() as session:
                session.add(XetXorb(hash=xorb, num_chunks=len(chunks), unpacked_bytes=sum(c.size for c in chunks),
                                    stored_bytes=size, chunk_index=formats.pack_chunk_index(chunks)))
                session.flush()
                eligible = {hashing.to_hex(c.hash) for c in chunks if hashing.is_global_dedup_eligible(c.hash)}
                self._index_for_dedup(session, xorb, eligible)
        # The shard that names it comes next: it finds the index here instead of reading it back.
        self._cache(XorbEntry(xorb, chunks, size))
        return True

    @contextmanager
    def _placing_xorbs(self) -> Iterator[None]:
        """Held while an upload places and indexes a xorb file, and while garbage collection deletes xorb files:
        a database lock, so it holds across every keephub server and `keephub gc` sharing the database.
        Without it, a xorb re-uploaded just after gc un-indexed it could be placed, indexed, then deleted."""
        with self.db.lock("xet-placing-xorbs"):
            yield

    def _touch_xorb(self, xorb: str) -> bool:
        """Whether the xorb is kept; if so, mark it recently uploaded, so garbage collection's grace period
        protects a re-upload of old content as it protects a first upload."""
        with self.db.write() as session:
            row = session.get(XetXorb, xorb)
            if row is None:
                return False
            row.created_at = utcnow()
            return True

    def _index_for_dedup(self, session: Session, xorb: str, chunk_hashes: set[str]) -> None:
        if not chunk_hashes:
            return
        # A chunk another xorb holds keeps its entry (either xorb serves it), also when both are indexed at once.
        session.execute(insert_for(session, XetDedupChunk).on_conflict_do_nothing(index_elements=["chunk_hash"]),
                        [{"chunk_hash": h, "xorb_hash": xorb} for h in sorted(chunk_hashes)])

    def xorb(self, xorb: str) -> XorbEntry | None:
        """A xorb's chunk index. Xorbs never change, so found ones are cached (a bounded number of them)."""
        entry = self._xorb_cache.get(xorb)
        if entry is not None:
            return entry
        with self.db.read() as session:
            row = session.get(XetXorb, xorb)
            if row is None:
                return None
            entry = XorbEntry(xorb, formats.unpack_chunk_index(row.chunk_index), row.stored_bytes)
        self._cache(entry)
        return entry

    def _cache(self, entry: XorbEntry) -> None:
        with self._cache_lock:
            if len(self._xorb_cache) >= XORB_CACHE_ENTRIES:
                self._xorb_cache.pop(next(iter(self._xorb_cache)), None)
            self._xorb_cache[entry.hash] = entry

    # -- shards ---------------------------------------------------------------------------------------
    def register_shard(self, grant: tokens.CasGrant, body: bytes) -> int:
        """Verify a shard's files and link them to the grant's repo; 1 if anything new was recorded, else 0."""
        try:
            shard = formats.parse_shard(body)
        except FormatError as exc:
            raise BadRequest(f"shard rejected, nothing was recorded: {exc}")
        total = sum(t.end - t.start for info in shard.files for t in info.terms if t.end > t.start)
        if total > MAX_SHARD_CHUNK_REFERENCES:
            raise BadRequest(f"shard rejected: its files reference {total} chunks in all; the limit is "
                             f"{MAX_SHARD_CHUNK_REFERENCES}: upload the files in several sessions")
        for cas in shard.xorbs:
            self._check_listed_xorb(cas)
        verified = [self._verify_file(info, grant) for info in shard.files]
        new = False
        with self.db.write() as session:
            if session.get(Bucket if grant.kind == tokens.BUCKET else Repo, grant.repo_id) is None:
                raise NotFound(f"the {grant.kind} this CAS token was issued for has been deleted; nothing was "
                               "recorded")
            needed = {hashing.to_hex(t.xorb) for entry in verified for t in entry.terms}
            present = set(session.scalars(select(XetXorb.hash).where(XetXorb.hash.in_(needed))))
            if needed - present:
                # Garbage collection (another process) removed a xorb since the checks above read it.
                raise BadRequest(f"shard rejected: xorb {sorted(needed - present)[0]} is no longer stored; "
                                 "upload the file again")
            for entry in verified:
                # One statement whether the file is new or known (then its grace period starts again), so that
                # two servers registering the same file at once both succeed.
                if inserted(session, insert_for(session, XetFile).values(
                        file_hash=entry.file_hash, sha256=entry.sha256, size=entry.size,
                        terms=formats.pack_terms(entry.terms)).on_conflict_do_nothing(index_elements=["file_hash"])):
                    new = True
                else:
                    session.execute(update(XetFile).where(XetFile.file_hash == entry.file_hash).values(
                        created_at=utcnow(), sha256=func.coalesce(XetFile.sha256, entry.sha256)))
                new = self._link(session, grant, entry) or new
                first = self.xorb(hashing.to_hex(entry.terms[0].xorb))
                if first is not None:
                    chunk = first.chunks[entry.terms[0].start].hash
                    self._index_for_dedup(session, first.hash, {hashing.to_hex(chunk)})
        if grant.kind == tokens.REPO:
            self._chains.restart(_session(grant))
        return 1 if new else 0

    @staticmethod
    def _link(session: Session, grant: tokens.CasGrant, entry: FileEntry) -> bool:
        """Make verified content nameable by the grant's repo (a commit's lfsFile) or bucket (a batch's addFile);
        True if the link is new."""
        if grant.kind == tokens.BUCKET:
            return inserted(session, insert_for(session, BucketUpload).values(
                bucket_id=grant.repo_id, file_hash=entry.file_hash).on_conflict_do_nothing(
                index_elements=["bucket_id", "file_hash"]))
        assert entry.sha256 is not None  # _verify_file computes it for repos
        session.execute(insert_for(session, LfsObject).values(oid=entry.sha256, size=entry.size)
                        .on_conflict_do_nothing(index_elements=["oid"]))
        return inserted(session, insert_for(session, LfsLink).values(repo_id=grant.repo_id, oid=entry.sha256)
                        .on_conflict_do_nothing(index_elements=["repo_id", "oid"]))

    def _check_listed_xorb(self, cas: formats.CasInfo) -> None:
        name = hashing.to_hex(cas.xorb)
        entry = self.xorb(name)
        if entry is None:
            raise BadRequest(f"shard rejected: it lists xorb {name}, which was never uploaded; upload the xorb first")
        if [c[0] for c in cas.chunks] != [c.hash for c in entry.chunks]:
            raise BadRequest(f"shard rejected: its chunk list for xorb {name} does not match the xorb's chunks")

    def _verify_file(self, info: formats.FileInfo, grant: tokens.CasGrant) -> FileEntry:
        kind = grant.kind
        label = f"file {hashing.to_hex(info.file_hash)}"
        if info.verifications is None:
            raise BadRequest(f"shard rejected: {label} has no verification entries; they are required")
        if info.sha256 is None and kind == tokens.REPO:
            raise BadRequest(f"shard rejected: {label} has no sha256 metadata extension; git repos require it")
        references = sum(term.end - term.start for term in info.terms)
        if references > MAX_FILE_CHUNK_REFERENCES:
            raise BadRequest(f"shard rejected: {label} references {references} chunks; a file may reference at "
                             f"most {MAX_FILE_CHUNK_REFERENCES} (about 128 GiB)")
        chunk_list: list[tuple[bytes, int]] = []
        for index, (term, proof) in enumerate(zip(info.terms, info.verifications)):
            xorb_name = hashing.to_hex(term.xorb)
            entry = self.xorb(xorb_name)
            if entry is None:
                raise BadRequest(f"shard rejected: {label} term {index} references xorb {xorb_name}, which was "
                                 "never uploaded (or was garbage-collected); upload it again")
            if term.end > len(entry.chunks):
                raise BadRequest(f"shard rejected: {label} term {index} asks for chunks [{term.start}, {term.end}) "
                                 f"of xorb {xorb_name}, which has {len(entry.chunks)}")
            chunks = entry.chunks[term.start : term.end]
            if sum(c.size for c in chunks) != term.unpacked:
                raise BadRequest(f"shard rejected: {label} term {index} says {term.unpacked} bytes but its chunks "
                                 f"hold {sum(c.size for c in chunks)}")
            if hashing.verification_hash([c.hash for c in chunks]) != proof:
                raise BadRequest(f"shard rejected: {label} term {index}'s verification hash does not match "
                                 f"chunks [{term.start}, {term.end}) of xorb {xorb_name}")
            chunk_list += [(c.hash, c.size) for c in chunks]
        recomputed = hashing.file_hash(chunk_list)
        if recomputed != info.file_hash:
            raise BadRequest(f"shard rejected: the chunks of {label} hash to {hashing.to_hex(recomputed)}, "
                             "not to its declared hash")
        file_hash = hashing.to_hex(info.file_hash)
        size = sum(size for _, size in chunk_list)
        known = self.file(file_hash)
        if kind == tokens.BUCKET:
            # The file hash, recomputed above from chunks the server hashed itself, is all a bucket names.
            return FileEntry(file_hash, known.sha256 if known else None, size, list(info.terms))
        assert info.sha256 is not None  # refused above for repos
        claimed = hashing.to_hex(info.sha256)
        if known is not None and known.sha256 is not None:
            actual = known.sha256
        else:
            digest, hashed = self._chains.resume(_session(grant), info.terms)
            actual = self._rebuilt_sha256(info.terms[hashed:], digest)
        if actual != claimed:
            raise BadRequest(f"shard rejected: the bytes of {label} hash to sha256 {actual}, not the claimed "
                             f"{claimed}")
        return FileEntry(file_hash, actual, size, list(info.terms))

    # -- files and reconstruction ---------------------------------------------------------------------
    def file(self, file_hash: str) -> FileEntry | None:
        with self.db.read() as session:
            row = session.get(XetFile, file_hash)
            if row is None:
                return None
            return FileEntry(row.file_hash, row.sha256, row.size, formats.unpack_terms(row.terms))

    def file_for_sha256(self, sha256: str) -> FileEntry | None:
        with self.db.read() as session:
            row = session.scalars(select(XetFile).where(XetFile.sha256 == sha256).limit(1)).first()
            if row is None:
                return None
            return FileEntry(row.file_hash, row.sha256, row.size, formats.unpack_terms(row.terms))

    def xet_hashes(self, session: Session, sha256s: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for start in range(0, len(sha256s), 900):
            rows = session.execute(select(XetFile.sha256, XetFile.file_hash)
                                   .where(XetFile.sha256.in_(sha256s[start : start + 900])))
            found.update({sha: file_hash for sha, file_hash in rows})
        return found

    def readable_file(self, grant: tokens.CasGrant, file_hash: str) -> FileEntry:
        """A file the grant's repo or bucket holds; 404 otherwise, so a token never reveals others' content."""
        entry = self.file(file_hash) if hashing.is_hash_string(file_hash) else None
        if entry is not None:
            with self.db.read() as session:
                if _holds(session, grant, entry):
                    return entry
        raise NotFound(f"file {file_hash} is not stored in the {grant.kind} this CAS token was issued for")

    def plan(self, entry: FileEntry, first: int, last: int) -> tuple[int, list[TermSlice]]:
        """Terms covering file bytes [first, last], and how far into the first one the range starts."""
        selected = []
        offset = 0
        for term in entry.terms:
            if offset + term.unpacked > first and offset <= last:
                selected.append(TermSlice(term, offset))
            offset += term.unpacked
        return first - selected[0].file_offset, selected

    def byte_range(self, entry: FileEntry, header: str | None) -> tuple[int, int]:
        if entry.size == 0:
            raise RangeNotSatisfiable(f"file {entry.file_hash} is empty: there is nothing to reconstruct")
        if not header:
            return 0, entry.size - 1
        try:
            wanted = parse_range(header)
        except ValueError as exc:
            raise BadRequest(str(exc))
        if wanted.first is None or (wanted.last is not None and wanted.last < wanted.first):
            raise BadRequest(f"Range {header!r} is malformed; send 'bytes=<first>-<last>' with first <= last")
        span = wanted.within(entry.size)
        if span is None:
            raise RangeNotSatisfiable(f"Range {header!r} starts past the end of the {entry.size}-byte file",
                                      extra_headers={"Content-Range": f"bytes */{entry.size}"})
        return span

    def reconstruction(self, entry: FileEntry, first: int, last: int, version: int, direct: bool = True) -> dict:
        """Terms and fetch URLs for file bytes [first, last]; `direct`: URLs straight to the blob store where it
        serves objects itself (S3), else keephub's own signed fetch URLs."""
        skip, slices = self.plan(entry, first, last)
        wanted: dict[str, list[list[int]]] = {}
        for piece in slices:
            wanted.setdefault(hashing.to_hex(piece.term.xorb), []).append([piece.term.start, piece.term.end])
        fetch: dict[str, list[dict]] = {}
        for xorb_name, ranges in wanted.items():
            xorb = self.xorb(xorb_name)
            if xorb is None:
                raise NotFound(f"xorb {xorb_name} of file {entry.file_hash} is missing from this server")
            items = []
            for start, end in _merge_ranges(ranges):
                byte_first, byte_last = xorb.byte_span(start, end)
                # A store that serves objects itself (S3) gets the bytes to hf_xet without keephub. The URL grants
                # only this span, as keephub's own fetch URLs do: a xorb may hold chunks of files of other repos
                # (dedup), and hf_xet sends exactly this Range.
                url = ((self.xorbs.presigned_get(xorb_name, (byte_first, byte_last)) if direct else None)
                       or tokens.fetch_url(self.settings, xorb_name, byte_first, byte_last))
                chunks, span = {"start": start, "end": end}, {"start": byte_first, "end": byte_last}
                if version == 1:
                    items.append({"range": chunks, "url": url, "url_range": span})
                else:
                    items.append({"url": url, "ranges": [{"chunks": chunks, "bytes": span}]})
            fetch[xorb_name] = items
        terms = [{"hash": hashing.to_hex(p.term.xorb), "unpacked_length": p.term.unpacked,
                  "range": {"start": p.term.start, "end": p.term.end}} for p in slices]
        key = "fetch_info" if version == 1 else "xorbs"
        return {"offset_into_first_range": skip, "terms": terms, key: fetch}

    def stream(self, entry: FileEntry, start: int, length: int) -> Iterator[bytes]:
        """File bytes [start, start + length), rebuilt from the xorbs: for browsers and clients without hf_xet."""
        if length <= 0:
            return iter(())
        skip, slices = self.plan(entry, start, start + length - 1)
        pieces = coalesced(self._stream_terms([p.term for p in slices], skip, length), STREAM_PIECE_BYTES)
        # The first piece is read here, before the caller starts its response: a store that is unreachable is
        # then a 503, not a 200 cut short.
        first = next(pieces, None)
        return itertools.chain([] if first is None else [first], pieces)

    def _stream_terms(self, terms: list[Term], skip: int, length: int) -> Iterator[bytes]:
        try:
            yield from self._terms_bytes(terms, skip, length)
        finally:
            trim.transferred(length)

    def _terms_bytes(self, terms: list[Term], skip: int, length: int) -> Iterator[bytes]:
        remaining = length
        for term in terms:
            xorb = self.xorb(hashing.to_hex(term.xorb))
            if xorb is None:
                raise NotFound(f"xorb {hashing.to_hex(term.xorb)} is missing from this server")
            first, last = xorb.byte_span(term.start, term.end)
            with closing(self.xorbs.open_range(xorb.hash, first, last - first + 1)) as fh:
                for _offset, data in formats.iter_xorb(fh, last - first + 1):  # type: ignore[arg-type]
                    if skip >= len(data):
                        skip -= len(data)
                        continue
                    piece = data[skip : skip + remaining]
                    skip = 0
                    remaining -= len(piece)
                    yield piece
                    if remaining <= 0:
                        return

    def _rebuilt_sha256(self, terms: list[Term], digest: Any) -> str:
        """`digest` (a sha256 over the file's bytes before `terms`) extended by the terms' bytes rebuilt from the
        stored xorbs, read in large pieces (chunk hashes were verified on upload, so only the sha256 is computed);
        each piece is hashed while the next is read and parsed."""
        behind = HashBehind(digest, REBUILD_BUFFER_BYTES)
        for term in terms:
            xorb = self.xorb(hashing.to_hex(term.xorb))
            if xorb is None:
                raise NotFound(f"xorb {hashing.to_hex(term.xorb)} is missing from this server")
            first, last = xorb.byte_span(term.start, term.end)
            length = last - first + 1
            reader = formats.XorbReader(behind.add, hash_chunks=False)
            for piece in behind.pieces(self.xorbs.open_range(xorb.hash, first, length), length):
                reader.feed(piece)
            if len(reader.finish()) != term.end - term.start:
                raise FormatError(f"xorb {xorb.hash} holds other chunks than its index says")
        return behind.hexdigest()

    def read_xorb_range(self, xorb: str, first: int, last: int) -> Iterator[bytes]:
        return iter_range(self.xorbs, xorb, first, last - first + 1)

    # -- dedup ----------------------------------------------------------------------------------------
    def dedup_query(self, chunk_hash: str) -> bytes | None:
        """A shard describing a xorb that holds this chunk (hashes HMAC-protected), or None if unknown."""
        with self.db.read() as session:
            row = session.get(XetDedupChunk, chunk_hash)
            xorb_name = row.xorb_hash if row is not None else None
        xorb = self.xorb(xorb_name) if xorb_name else None
        if xorb is None:
            return None
        return formats.dedup_shard([(hashing.from_hex(xorb.hash), xorb.chunks, xorb.stored_bytes)],
                                   secrets.token_bytes(32), DEDUP_SHARD_EXPIRY_SECONDS)

    # -- garbage collection ---------------------------------------------------------------------------
    def collect_garbage(self, lfs_blobs: BlobStore, dry_run: bool = False) -> dict:
        """Delete xorbs no live file needs and files no stored commit or bucket names, keeping anything recent.

        A file is live if any repo links its sha256 (holds it: see hub/housekeeping.py), a bucket holds it, or
        it was registered within the grace period. A xorb is live if a live file uses it, or it was uploaded
        within the grace period — clients build new uploads on xorbs named in their shard cache.
        """
        cutoff = datetime.now(timezone.utc) - timedelta(seconds=self.settings.xet_gc_grace_seconds)
        with self.db.write() as session:
            if self.db.is_postgresql and not dry_run:
                # What SQLite's write lock gives: no commit, bucket write or shard lands between reading what is
                # referenced and deleting the rest. SHARE mode lets reads (downloads) go on meanwhile.
                session.execute(text("LOCK TABLE git_objects, bucket_files, bucket_uploads, xet_files, xet_xorbs, "
                                     "xet_dedup_chunks, lfs_links, lfs_objects IN SHARE MODE"))
            # Content a repo holds (see hub/housekeeping.py, whose sweep runs first and unlinks what no reachable
            # commit of its repo points at any more, and what permanently_delete_lfs_files removed).
            referenced = set(session.scalars(select(LfsLink.oid).distinct()))
            in_buckets = set(session.scalars(select(BucketFile.xet_hash).distinct()))
            dead_files: list[str] = []
            unbacked: list[str] = []
            live_xorbs: set[str] = set()
            for row in session.scalars(select(XetFile)):
                if row.sha256 in referenced or row.file_hash in in_buckets or _aware(row.created_at) >= cutoff:
                    live_xorbs.update(hashing.to_hex(t.xorb) for t in formats.unpack_terms(row.terms))
                else:
                    dead_files.append(row.file_hash)
                    if row.sha256 is not None and not lfs_blobs.exists(row.sha256):
                        unbacked.append(row.sha256)
            dead_xorbs = [h for h, created in session.execute(select(XetXorb.hash, XetXorb.created_at))
                          if h not in live_xorbs and _aware(created) < cutoff]
            freed = sum(session.scalars(select(XetXorb.stored_bytes).where(XetXorb.hash.in_(dead_xorbs))))
            if not dry_run:
                for start in range(0, len(dead_files), 900):
                    batch = dead_files[start : start + 900]
                    session.execute(delete(BucketUpload).where(BucketUpload.file_hash.in_(batch)))
                    session.execute(delete(XetFile).where(XetFile.file_hash.in_(batch)))
                for start in range(0, len(unbacked), 900):
                    # Content that no longer exists anywhere must not stay linkable by a later commit.
                    batch = unbacked[start : start + 900]
                    session.execute(delete(LfsLink).where(LfsLink.oid.in_(batch)))
                    session.execute(delete(LfsObject).where(LfsObject.oid.in_(batch)))
                for start in range(0, len(dead_xorbs), 900):
                    batch = dead_xorbs[start : start + 900]
                    session.execute(delete(XetDedupChunk).where(XetDedupChunk.xorb_hash.in_(batch)))
                    session.execute(delete(XetXorb).where(XetXorb.hash.in_(batch)))
        if not dry_run:
            self.delete_unindexed_xorbs(dead_xorbs)
            self._xorb_cache.clear()
        return {"files": len(dead_files), "xorbs": len(dead_xorbs), "bytes": freed, "dry_run": dry_run}


    def delete_unindexed_xorbs(self, xorbs: list[str]) -> None:
        """Delete the files of xorbs garbage collection has un-indexed, except any an upload has placed and
        indexed again since: the index is re-read under the placing lock, batch by batch."""
        for start in range(0, len(xorbs), 900):
            batch = xorbs[start : start + 900]
            with self._placing_xorbs():
                with self.db.read() as session:
                    indexed = set(session.scalars(select(XetXorb.hash).where(XetXorb.hash.in_(batch))))
                for xorb in batch:
                    if xorb not in indexed:
                        self.xorbs.delete(xorb)


class XorbUpload:
    """A xorb being received: each piece is parsed, unpacked and hashed chunk by chunk as it arrives (from the bytes
    already in memory, never read back from disk) while the blob store writes it, and each unpacked chunk extends
    the session's running sha256 when this upload has its turn. A malformed piece is refused once the store is
    done with it; nothing of the xorb is kept (the caller aborts the upload)."""

    def __init__(self, xorb: str, pending: BlobWriter, ticket: Ticket | None) -> None:
        self.xorb = xorb
        self.pending = pending
        self.ticket = ticket
        self._reader = formats.XorbReader(ticket.feed if ticket is not None else None)

    def write(self, data: bytes | memoryview) -> None:
        """A piece of the xorb, parsed and hashed while the blob store writes it (from the same memory: no copy)."""
        try:
            self.pending.write(data, alongside=self._reader.feed)
        except FormatError as exc:
            raise BadRequest(f"xorb {self.xorb} rejected, nothing was stored: {exc}")

    def verified_chunks(self) -> list[ChunkRecord]:
        """The xorb's chunks, once all its bytes arrived and their Merkle hash is the xorb's; a 400 otherwise."""
        try:
            chunks = self._reader.finish(hashing.from_hex(self.xorb))
        except FormatError as exc:
            raise BadRequest(f"xorb {self.xorb} rejected, nothing was stored: {exc}")
        if self.ticket is not None:
            self.ticket.complete(self.xorb, len(chunks))
        return chunks

    def abort(self) -> None:
        """Drop the bytes unless stored, and pass the turn on; idempotent."""
        if self.ticket is not None:
            self.ticket.close()
        self.pending.abort()


def _session(grant: tokens.CasGrant) -> tuple:
    """An upload session, for the running sha256: one Hub token's uploads to one repo (across CAS token renewals)."""
    return grant.kind, grant.repo_id, grant.repo_stamp, grant.user, grant.hub_token_id


def _holds(session: Session, grant: tokens.CasGrant, entry: FileEntry) -> bool:
    """Whether the grant's bucket (a file in it, or content its tokens uploaded) or repo holds the file."""
    if grant.kind == tokens.BUCKET:
        if session.get(BucketUpload, (grant.repo_id, entry.file_hash)) is not None:
            return True
        in_bucket = select(BucketFile.path).where(BucketFile.bucket_id == grant.repo_id,
                                                  BucketFile.xet_hash == entry.file_hash)
        return session.scalars(in_bucket.limit(1)).first() is not None
    return entry.sha256 is not None and session.get(LfsLink, (grant.repo_id, entry.sha256)) is not None


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _merge_ranges(ranges: list[list[int]]) -> list[tuple[int, int]]:
    """Union of [start, end) chunk ranges, overlapping or touching ones joined (hf_xet needs them disjoint)."""
    merged: list[list[int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged]


def coalesced(pieces: Iterator[bytes], size: int) -> Iterator[bytes]:
    """The same bytes in pieces of at least `size` (the last may be smaller)."""
    held: list[bytes] = []
    held_bytes = 0
    for piece in pieces:
        held.append(piece)
        held_bytes += len(piece)
        if held_bytes >= size:
            yield b"".join(held)
            held.clear()
            held_bytes = 0
    if held:
        yield b"".join(held)
