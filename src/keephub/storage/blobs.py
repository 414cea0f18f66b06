"""Content-addressed blob storage for large files, behind one small interface.

A blob's key is the sha256 of its bytes, recomputed by the server while the bytes arrive: a
blob is only ever visible under the hash of what was actually written. Writes go to a temporary
file that is fsynced and renamed into place, so a crash leaves no partial blob.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Protocol

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_COPY_CHUNK = 1024 * 1024
_WRITE_BEHIND_BYTES = 8 * 1024 * 1024
_fadvise = getattr(os, "posix_fadvise", None)  # absent on macOS and Windows
# sha256 releases the GIL, so a blob's bytes are hashed on another core while they are written.
_hashers = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="blob-sha256")


class HashMismatch(ValueError):
    """The bytes written do not hash to the oid the client announced."""


class SizeMismatch(ValueError):
    """The number of bytes written differs from the size the client announced."""


def is_sha256(value: object) -> bool:
    return isinstance(value, str) and bool(_SHA256.match(value))


class PendingBlob:
    """A blob being written: bytes go to a private temporary file, hashed on the way in.

    `commit` makes it visible under its oid only if the hash and size match; `abort` (or a crash)
    leaves nothing visible, and the janitor sweeps temporary files left by crashes.

    A `durable` blob is fsynced before it is placed, and its bytes are handed to the kernel for
    write-back as they arrive, so that fsync finds little left to do instead of stalling for the
    whole file at the end. A non-durable one (a multipart part, re-hashed and discarded when the
    upload completes) skips both: if a crash loses it, completion fails and the client re-sends it.

    Each piece is hashed in a pool thread while it is written (and while the caller fetches the
    next one); a piece's hash must finish before the next piece's starts, which keeps them in order.
    """

    def __init__(self, tmp: Path, place: Callable[[Path, str], None], durable: bool = True,
                 hashed: bool = True) -> None:
        self.tmp = tmp
        self._place = place
        self._durable = durable
        self._hashed = hashed
        self._fh = open(tmp, "wb")
        self._digest = hashlib.sha256()
        self.size = 0
        self._written_back = 0
        self._hashing: Future[None] | None = None

    def write(self, data: bytes) -> None:
        self._wait_for_hash()
        if self._hashed:
            self._hashing = _hashers.submit(self._digest.update, data)
        self._fh.write(data)
        self.size += len(data)
        if self._durable and _fadvise is not None and self.size - self._written_back >= _WRITE_BEHIND_BYTES:
            # On Linux, DONTNEED on dirty pages starts their write-back now; they stay cached until written.
            self._fh.flush()
            _fadvise(self._fh.fileno(), self._written_back, self.size - self._written_back, os.POSIX_FADV_DONTNEED)
            self._written_back = self.size

    def _wait_for_hash(self) -> None:
        if self._hashing is not None:
            self._hashing.result()
            self._hashing = None

    @property
    def sha256(self) -> str:
        self._wait_for_hash()
        return self._digest.hexdigest()

    def flush(self) -> None:
        """Make every byte written so far readable through `tmp` (for checks that read the file back)."""
        self._wait_for_hash()
        self._fh.flush()

    def commit_as(self, key: str) -> None:
        """Place the bytes under `key` without the sha256 check: for content whose own hash the caller
        has verified (a xorb, checked against its Merkle hash)."""
        try:
            self._fh.flush()
            if self._durable:
                os.fsync(self._fh.fileno())
            self._fh.close()
            self._place(self.tmp, key)
        finally:
            self.abort()

    def commit(self, expected_oid: str, expected_size: int | None) -> None:
        try:
            self._fh.flush()
            if self._durable:
                os.fsync(self._fh.fileno())
            self._fh.close()
            if expected_size is not None and self.size != expected_size:
                raise SizeMismatch(f"received {self.size} bytes but {expected_size} were announced")
            if self.sha256 != expected_oid:
                raise HashMismatch(f"the bytes received hash to sha256 {self.sha256}, not the announced {expected_oid}")
            self._place(self.tmp, expected_oid)
        finally:
            self.abort()

    def abort(self) -> None:
        if not self._fh.closed:
            self._fh.close()
        self.tmp.unlink(missing_ok=True)


class BlobStore(Protocol):
    """What keephub needs from a blob backend (a local directory now, S3-compatible later)."""

    def exists(self, oid: str) -> bool: ...

    def size(self, oid: str) -> int: ...

    def open(self, oid: str) -> BinaryIO: ...

    def begin(self, hashed: bool = True) -> PendingBlob: ...

    def begin_part(self, upload_id: str, part_number: int) -> PendingBlob: ...

    def open_parts(self, upload_id: str, count: int) -> list[BinaryIO]: ...

    def discard_parts(self, upload_id: str) -> None: ...

    def delete(self, oid: str) -> None: ...

    def sweep_stale(self, older_than_seconds: float) -> int: ...


class LocalBlobStore:
    """Blobs as files under `root/objects/ab/cd/<sha256>`; temporary files under `root/tmp`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / "objects"
        self.tmp = root / "tmp"
        self.uploads = root / "uploads"
        for directory in (self.objects, self.tmp, self.uploads):
            directory.mkdir(parents=True, exist_ok=True)

    def _path(self, oid: str) -> Path:
        if not is_sha256(oid):
            raise ValueError(f"not a sha256 hex digest: {oid!r}")
        return self.objects / oid[:2] / oid[2:4] / oid

    def exists(self, oid: str) -> bool:
        return self._path(oid).is_file()

    def size(self, oid: str) -> int:
        return self._path(oid).stat().st_size

    def open(self, oid: str) -> BinaryIO:
        return open(self._path(oid), "rb")

    def begin(self, hashed: bool = True) -> PendingBlob:
        return PendingBlob(self.tmp / f"{uuid.uuid4().hex}.part", self._place, hashed=hashed)

    def _place(self, tmp: Path, oid: str) -> None:
        final = self._path(oid)
        if final.exists():
            return
        _mkdir_durable(final.parent)
        os.replace(tmp, final)
        _fsync_dir(final.parent)

    def _part_path(self, upload_id: str, part_number: int) -> Path:
        if not re.fullmatch(r"[0-9a-f]{32}", upload_id) or part_number < 1:
            raise ValueError("malformed upload id or part number")
        return self.uploads / upload_id / f"{part_number:06d}"

    def begin_part(self, upload_id: str, part_number: int) -> PendingBlob:
        """A multipart part is a pending blob that lands at its part path instead of the object store.

        Parts are not durable: completion re-hashes each against its ETag and the whole object against
        its oid before anything becomes visible, so a part torn by a crash is refused, never stored.
        """
        final = self._part_path(upload_id, part_number)
        final.parent.mkdir(exist_ok=True)

        def place(tmp: Path, _oid: str) -> None:
            os.replace(tmp, final)

        return PendingBlob(final.parent / f"{uuid.uuid4().hex}.tmp", place, durable=False)

    def open_parts(self, upload_id: str, count: int) -> list[BinaryIO]:
        """Open parts 1..count; raises FileNotFoundError naming the first missing part."""
        return [open(self._part_path(upload_id, n), "rb") for n in range(1, count + 1)]

    def discard_parts(self, upload_id: str) -> None:
        shutil.rmtree(self.uploads / upload_id, ignore_errors=True)

    def delete(self, oid: str) -> None:
        self._path(oid).unlink(missing_ok=True)

    def sweep_stale(self, older_than_seconds: float) -> int:
        """Delete temporary files and abandoned multipart uploads; returns how many entries went."""
        cutoff = time.time() - older_than_seconds
        removed = 0
        for entry in list(self.tmp.iterdir()) + list(self.uploads.iterdir()):
            try:
                if entry.stat().st_mtime >= cutoff:
                    continue
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed += 1
            except FileNotFoundError:
                continue
        return removed


def _mkdir_durable(directory: Path) -> None:
    """Create `directory` and its missing parents, fsyncing each new entry into its parent.

    An acknowledged blob must survive a power cut, and so must the fan-out folders that lead to it.
    """
    if directory.is_dir():
        return
    _mkdir_durable(directory.parent)
    directory.mkdir(exist_ok=True)
    _fsync_dir(directory.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def iter_file(fh: BinaryIO, start: int = 0, length: int | None = None) -> Iterator[bytes]:
    """Yield `length` bytes of `fh` from `start` (to the end when None), in 1 MiB pieces, then close it."""
    try:
        fh.seek(start)
        remaining = length
        while remaining is None or remaining > 0:
            chunk = fh.read(_COPY_CHUNK if remaining is None else min(_COPY_CHUNK, remaining))
            if not chunk:
                break
            if remaining is not None:
                remaining -= len(chunk)
            yield chunk
    finally:
        fh.close()
