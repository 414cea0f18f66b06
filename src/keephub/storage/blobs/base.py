"""The blob-store interface every backend implements, and the one writer that verifies what they keep.

Backends only move bytes (a `Sink` receives them, `place` makes them visible under the key the writer was
begun for); hashing, size checks and the refusal to place unverified content live in `BlobWriter`, which
no backend can replace, so no backend can make a blob visible under a key its bytes do not hash to.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, BinaryIO, Protocol

from keephub.storage.blobs import trim
from keephub.wire.buffers import BufferPool
from keephub.wire.errors import HubError

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
COPY_CHUNK = 1024 * 1024
# sha256 releases the GIL, so a blob's bytes are hashed on another core while the backend stores them.
_hashers = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="blob-sha256")
_read_buffers = BufferPool(keep=2)


def _run_each(checks: list[Callable[[bytes | memoryview], None]], data: bytes | memoryview) -> None:
    for check in checks:
        check(data)


class HashBehind:
    """Feeds a digest in the hashing pool one buffer behind its caller, so the caller reads and parses the next
    bytes while the last are hashed: rebuilding a Xet file's sha256 from its stored xorbs, the reads and the chunk
    parsing cost half what the sha256 does, and this way they no longer add to it.

    `pieces` reads streams one after another into the free space of two reused buffers in turn (a file is often
    many short ranges of its xorbs: one buffer gathers many of them); whatever the caller `add`s meanwhile (views
    of those bytes: a xorb's chunk data) goes to the pool once the buffer is full, and is hashed while the other
    one fills. Two buffers suffice because a buffer is filled again only after its batch is hashed: handing on
    one batch waits for the one before."""

    def __init__(self, digest: Any, buffer_bytes: int) -> None:
        self._digest = digest
        self._buffers = (_read_buffers.take(buffer_bytes), _read_buffers.take(buffer_bytes))
        self._turn = 0
        self._filled = 0
        self._batch: list[bytes | memoryview] = []
        self._hashing: Future[None] | None = None

    def add(self, data: bytes | memoryview) -> None:
        self._batch.append(data)

    def pieces(self, stream: ByteStream, length: int) -> Iterator[memoryview]:
        """Bytes [0, length) of `stream` (closed after), as they are read. Use each piece before asking for the
        next; what is `add`ed of it stays intact until it is hashed."""
        try:
            while length > 0:
                if self._filled == len(self._buffers[self._turn]):
                    self._hand_on()
                space = memoryview(self._buffers[self._turn])[self._filled : self._filled + length]
                got = read_into(stream, space)
                if not got:
                    return
                self._filled += got
                length -= got
                yield space[:got]
        finally:
            stream.close()

    def hexdigest(self) -> str:
        """The digest of every piece added; the buffers go back to the pool (a caller that stops early leaves
        them to the garbage collector)."""
        self._hand_on()
        self._wait()
        for buffer in self._buffers:
            _read_buffers.give(buffer)
        return str(self._digest.hexdigest())

    def _hand_on(self) -> None:
        """The current buffer's batch to the pool, once the one before is hashed; then fill the other buffer."""
        batch, self._batch = self._batch, []
        self._wait()
        if batch:
            self._hashing = _hashers.submit(_update_each, self._digest, batch)
        self._turn ^= 1
        self._filled = 0

    def _wait(self) -> None:
        if self._hashing is not None:
            hashing, self._hashing = self._hashing, None
            hashing.result()


def _update_each(digest: Any, pieces: list[bytes | memoryview]) -> None:
    for piece in pieces:
        digest.update(piece)


class HashMismatch(ValueError):
    """The bytes written do not hash to the oid the client announced."""


class SizeMismatch(ValueError):
    """The number of bytes written differs from the size the client announced."""


class BlobStoreUnavailable(HubError):
    """The backend cannot be reached or refused keephub (a 503): nothing was made visible, and the same request
    succeeds once the store is back, without a restart of keephub."""

    status_code = 503


def is_sha256(value: object) -> bool:
    return isinstance(value, str) and bool(_SHA256.match(value))


def check_key(key: str) -> str:
    """Keys are content hashes (sha256 of an LFS object, Xet hash of a xorb): 64 lowercase hex digits."""
    if not is_sha256(key):
        raise ValueError(f"not a 64-hex-digit content hash: {key!r}")
    return key


def check_part(upload_id: str, part_number: int) -> None:
    if not re.fullmatch(r"[0-9a-f]{32}", upload_id) or part_number < 1:
        raise ValueError("malformed upload id or part number")


class ByteStream(Protocol):
    """A readable, closeable byte stream: a local file, an S3 response body, a BytesIO."""

    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


class Sink(Protocol):
    """A backend's half of a write: it stores bytes somewhere invisible until `place`."""

    def write(self, data: bytes) -> None: ...

    def read_back(self) -> BinaryIO:
        """Every byte written so far, from the start (only for sinks begun with `spool=True`)."""
        ...

    def place(self) -> None:
        """Make the bytes visible under the key the sink was begun for, atomically (durably where promised)."""
        ...

    def discard(self) -> None:
        """Drop whatever was stored; idempotent, and safe after `place`."""
        ...


class BlobWriter:
    """A blob being written: bytes go to the backend's invisible staging, hashed on the way in.

    The key is fixed when the writer begins (an S3 backend streams the bytes into a multipart upload of that
    very key, so placing it costs no copy). `commit` places the blob only if the bytes hash to the key and the
    size matches; `commit_verified` is for content whose caller checked it by other means (a xorb against its
    Merkle hash, read through `read_back`; a multipart part, re-hashed when the upload completes). `abort`, or
    a crash, leaves nothing visible; each backend's `sweep_stale` removes what crashes leave behind.

    Each piece is hashed in a pool thread while the backend stores it, and both are done when `write` returns:
    the caller may reuse the piece's buffer (direct_body.py does).
    """

    def __init__(self, key: str, sink: Sink, *, hashed: bool = True) -> None:
        self.key = key
        self._sink = sink
        self._hashed = hashed
        self._digest = hashlib.sha256()
        self._ended = False
        self.size = 0

    def write(self, data: bytes | memoryview, alongside: Callable[[bytes | memoryview], None] | None = None) -> None:
        """Store a piece; `alongside(data)`, a check of the same bytes by the caller (a xorb's chunks are hashed
        that way), runs with the sha256 in the pool thread, while the backend stores them. Its error is raised
        once the store is done with the piece."""
        checks = [check for check in (self._digest.update if self._hashed else None, alongside) if check]
        checking = _hashers.submit(_run_each, checks, data) if checks else None
        try:
            self._sink.write(data)
        finally:
            if checking is not None:
                checking.result()
        self.size += len(data)

    @property
    def sha256(self) -> str:
        if not self._hashed:
            raise RuntimeError("this writer was begun with hashed=False; its caller verifies the content itself")
        return self._digest.hexdigest()

    def read_back(self) -> BinaryIO:
        """The bytes written so far, for a verifier that reads them (only if the store began it with spool)."""
        return self._sink.read_back()

    def commit(self, expected_size: int | None) -> None:
        """Place the blob under its key if its bytes hash to the key and number `expected_size` (None: any)."""
        try:
            if expected_size is not None and self.size != expected_size:
                raise SizeMismatch(f"received {self.size} bytes but {expected_size} were announced")
            if self.sha256 != self.key:
                raise HashMismatch(f"the bytes received hash to sha256 {self.sha256}, not the announced {self.key}")
            self._sink.place()
        finally:
            self.abort()

    def commit_verified(self) -> None:
        """Place the bytes under the key without the sha256 check: the caller has verified them itself."""
        try:
            self._sink.place()
        finally:
            self.abort()

    def abort(self) -> None:
        """Drop the bytes unless committed; idempotent, so callers may abort in a `finally` after committing."""
        self._sink.discard()
        if not self._ended:
            self._ended = True
            trim.transferred(self.size)


class BlobStore(Protocol):
    """What keephub needs from a blob backend: a local directory, memory (tests), an S3-compatible bucket.

    Keys are content hashes (`check_key`). Multipart parts live apart from blobs, under an upload id; they are
    re-hashed when the upload completes, so they are never trusted on their own.
    """

    #: Says where the bytes are, for messages (never credentials): "the directory /srv/keephub/blobs".
    label: str

    def check(self) -> None:
        """Raise ConfigError naming the setting to fix when the store cannot be used (called at start)."""
        ...

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int:
        """The blob's size; FileNotFoundError when there is none."""
        ...

    def open_range(self, key: str, start: int = 0, length: int | None = None) -> ByteStream:
        """Bytes [start, start + length) of the blob (to its end when None); FileNotFoundError when absent."""
        ...

    def presigned_get(self, key: str, span: tuple[int, int] | None = None) -> str | None:
        """A short-lived URL that serves this one blob without keephub, or None when the backend has none (the
        bytes are then served by keephub itself). With `span` (first, last), the URL serves only those bytes:
        the client must send exactly that Range header (xorbs hold chunks of other repos' files)."""
        ...

    def begin(self, key: str, *, hashed: bool = True, spool: bool = False) -> BlobWriter:
        """A writer for `key`. `hashed=False` skips sha256 (content the caller verifies otherwise); `spool=True`
        keeps a readable copy for `read_back` (bounded by what the caller lets in)."""
        ...

    def keys(self) -> Iterator[str]:
        """Every visible blob's key, in no particular order (for migration and garbage collection)."""
        ...

    def delete(self, key: str) -> None:
        """Remove the blob if present."""
        ...

    def begin_part(self, upload_id: str, part_number: int) -> BlobWriter:
        """A writer for one multipart part; commit it with `commit_verified` (completion re-hashes it)."""
        ...

    def open_parts(self, upload_id: str, count: int) -> list[ByteStream]:
        """Parts 1..count as streams; FileNotFoundError when one was never uploaded."""
        ...

    def discard_parts(self, upload_id: str) -> None: ...

    def sweep_stale(self, older_than_seconds: float) -> int:
        """Remove staging left by crashes and abandoned multipart uploads older than that; returns how many."""
        ...


def iter_stream(fh: ByteStream, piece_bytes: int = COPY_CHUNK) -> Iterator[bytes]:
    """Yield a stream's bytes in pieces of `piece_bytes` (1 MiB), then close it."""
    moved = 0
    try:
        while chunk := fh.read(piece_bytes):
            moved += len(chunk)
            yield chunk
    finally:
        fh.close()
        trim.transferred(moved)


def read_into(stream: ByteStream, buffer: memoryview) -> int:
    """Fill `buffer` from `stream` (fewer bytes only at its end); into the buffer itself where the stream can."""
    readinto = getattr(stream, "readinto", None)
    filled = 0
    while filled < len(buffer):
        if readinto is not None:
            got = readinto(buffer[filled:])
        else:
            data = stream.read(len(buffer) - filled)
            got = len(data)
            buffer[filled : filled + got] = data
        if not got:
            break
        filled += got
    return filled


def iter_range(store: BlobStore, key: str, start: int = 0, length: int | None = None,
               piece_bytes: int = COPY_CHUNK) -> Iterator[bytes]:
    """Bytes [start, start + length) of a blob, in pieces of `piece_bytes` (1 MiB); the blob is opened before the
    first is asked for, so a missing blob or an unreachable store fails the call, not a response already begun."""
    return iter_stream(store.open_range(key, start, length), piece_bytes)
