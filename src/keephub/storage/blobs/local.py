"""Blobs as files in a local directory: the embedded default.

Writes go to a temporary file that is fsynced and renamed into place (and the folders leading to it
fsynced), so an acknowledged blob survives a power cut and a crash leaves no partial blob.

A blob that must be durable is written around the page cache (O_DIRECT), as databases write their data
files: it is fsynced before it is acknowledged anyway, and copying it into the cache first, then writing the
cache back, cost most of an upload's server CPU (measured: 1 GiB written and fsynced, 3.3 s of system time
through the cache against 0.2 s direct; docs/benchmarks.md). The first read of a new blob then comes from the
disk rather than the cache. Filesystems without O_DIRECT (tmpfs on older kernels) get cached writes.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import BinaryIO

from keephub.storage.blobs.base import BlobWriter, ByteStream, check_key, check_part
from keephub.wire.buffers import BufferPool

_WRITE_BEHIND_BYTES = 8 * 1024 * 1024
_fadvise = getattr(os, "posix_fadvise", None)  # absent on macOS and Windows
_O_DIRECT = getattr(os, "O_DIRECT", 0)  # Linux and the BSDs; macOS has F_NOCACHE instead, not used here
# Direct writes go out in pieces of this size from a page-aligned buffer; their offsets and lengths are
# multiples of _DIRECT_ALIGN (the largest logical block size in use), the last piece padded and cut back.
_DIRECT_PIECE_BYTES = 4 * 1024 * 1024
_DIRECT_ALIGN = 4096
# Buffers kept for the next writer: a fresh one costs a page fault per page, which a small blob would feel. Each
# large writer holds two (see _DirectFile).
_SPARE_BUFFERS = 4


_direct_buffers = BufferPool(_SPARE_BUFFERS)
# Direct writes release the GIL and mostly wait on the disk: more threads than cores is fine.
_direct_writers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="blob-direct-write")


class _DirectFile:
    """A new file written with O_DIRECT: bytes gather in an aligned buffer and go to the disk a piece at a time.

    A full piece is written by a pool thread while the next one fills (a direct write blocks until the disk has
    the bytes: ~3 ms per 4 MiB here, which a caller hashing the same bytes would otherwise wait out in turn), so
    two buffers take turns and at most one write is in flight. A caller whose piece is itself page-aligned memory
    (direct_body.py's buffers: every large upload) has its whole blocks written from that memory, with no copy,
    before `write` returns; BlobWriter hashes the same bytes meanwhile. `finish` writes what is left (padded to the
    alignment, then the file cut back to its true size) and turns the file back into a cached one, so that
    whatever is written after it (nothing, in practice) still lands at the right offset. A filesystem that
    refuses a direct write gets the same treatment at once.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer: mmap.mmap | None = _direct_buffers.take(_DIRECT_PIECE_BYTES)
        self._spare: mmap.mmap | None = None
        self._writing: Future[None] | None = None
        self._filled = 0
        self._size = 0
        self._on_disk = 0
        self._direct = True

    @classmethod
    def create(cls, path: Path) -> _DirectFile | None:
        """The file opened for direct writes, or None where the platform or the filesystem has no O_DIRECT."""
        if not _O_DIRECT:
            return None
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | _O_DIRECT, 0o644)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            return None
        return cls(fd)

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        self._size += len(view)
        if self._buffer is None:
            _write_all(self._fd, view)
            return
        while view:
            if self._filled == 0 and len(view) >= _DIRECT_PIECE_BYTES and _page_aligned(view):
                # The caller's own buffer goes to the disk, with no copy; the write ends before `write` returns.
                self._wait()
                whole = len(view) - len(view) % _DIRECT_ALIGN
                if self._direct:
                    self._write_piece(view, whole, self._on_disk)
                    self._on_disk += whole
                    view = view[whole:]
                if not self._direct:
                    self.finish()
                    _write_all(self._fd, view)
                    return
                continue
            taken = min(len(view), _DIRECT_PIECE_BYTES - self._filled)
            self._buffer[self._filled:self._filled + taken] = view[:taken]
            self._filled += taken
            view = view[taken:]
            if self._filled == _DIRECT_PIECE_BYTES:
                self._write_behind()
                if not self._direct:
                    self.finish()
                    _write_all(self._fd, view)
                    return

    def _write_behind(self) -> None:
        """Hand the full buffer to a pool thread and go on filling the other one."""
        assert self._buffer is not None
        self._wait()
        if not self._direct:
            return
        full, offset = self._buffer, self._on_disk
        self._writing = _direct_writers.submit(self._write_piece, full, _DIRECT_PIECE_BYTES, offset)
        self._on_disk += _DIRECT_PIECE_BYTES
        self._buffer = self._spare if self._spare is not None else _direct_buffers.take(_DIRECT_PIECE_BYTES)
        self._spare = full
        self._filled = 0

    def _wait(self) -> None:
        """Let the write in flight finish; its error, if any, is this writer's."""
        if self._writing is not None:
            writing, self._writing = self._writing, None
            writing.result()

    def _write_piece(self, buffer: mmap.mmap | memoryview, length: int, offset: int) -> None:
        """Write the buffer's first `length` bytes (aligned) at `offset` directly, or cached if the filesystem
        refuses; only one runs at a time for a file."""
        try:
            _pwrite_all(self._fd, memoryview(buffer)[:length], offset)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self._stop_direct()
            _pwrite_all(self._fd, memoryview(buffer)[:length], offset)

    def _stop_direct(self) -> None:
        fcntl.fcntl(self._fd, fcntl.F_SETFL, fcntl.fcntl(self._fd, fcntl.F_GETFL) & ~_O_DIRECT)
        self._direct = False

    def finish(self) -> None:
        """Put every byte written so far into the file; later writes are cached ones."""
        if self._buffer is None:
            return
        self._wait()
        if self._filled and self._direct:
            padded = -(-self._filled // _DIRECT_ALIGN) * _DIRECT_ALIGN
            self._buffer[self._filled:padded] = bytes(padded - self._filled)
            self._write_piece(self._buffer, padded, self._on_disk)
            os.ftruncate(self._fd, self._size)
        elif self._filled:
            _pwrite_all(self._fd, memoryview(self._buffer)[:self._filled], self._on_disk)
        self._on_disk += self._filled
        self._filled = 0
        if self._direct:
            self._stop_direct()
        os.lseek(self._fd, self._on_disk, os.SEEK_SET)
        self._release_buffers()

    def _release_buffers(self) -> None:
        for buffer in (self._buffer, self._spare):
            if buffer is not None:
                _direct_buffers.give(buffer)
        self._buffer = self._spare = None

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if self._writing is not None:
            # An abandoned writer (its upload failed): the piece in flight must not land in a reused descriptor.
            # Its own error, if any, is dropped: the one that abandoned the writer is what the client hears.
            wait([self._writing])
            self._writing = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._release_buffers()

    @property
    def closed(self) -> bool:
        return self._fd < 0


def _page_aligned(view: memoryview) -> bool:
    """Whether a buffer may be written directly as it is: writable memory (so its address can be known) that
    starts on a page boundary, as direct_body.py's buffers do."""
    if view.readonly or not view.c_contiguous:
        return False
    return ctypes.addressof(ctypes.c_char.from_buffer(view)) % _DIRECT_ALIGN == 0


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view):]


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


class _FileSink:
    """Bytes in a private temporary file, renamed to `final` by `place`.

    A `durable` sink is fsynced before it is placed and written around the page cache where the filesystem
    allows (see the module's docstring); where it does not, its bytes are handed to the kernel for write-back
    as they arrive, so that fsync finds little left to do instead of stalling for the whole file at the end. A
    non-durable one (a multipart part, re-hashed when the upload completes) skips all that: if a crash loses
    it, completion fails and the client re-sends it.
    """

    def __init__(self, tmp: Path, final: Path, durable: bool) -> None:
        self._tmp = tmp
        self._final = final
        self._durable = durable
        self._direct = _DirectFile.create(tmp) if durable else None
        self._fh: BinaryIO | _DirectFile = self._direct if self._direct is not None else open(tmp, "wb")
        self._size = 0
        self._written_back = 0

    def write(self, data: bytes) -> None:
        self._fh.write(data)
        self._size += len(data)
        if (self._durable and self._direct is None and _fadvise is not None
                and self._size - self._written_back >= _WRITE_BEHIND_BYTES):
            # On Linux, DONTNEED on dirty pages starts their write-back now; they stay cached until written.
            self._flush()
            _fadvise(self._fh.fileno(), self._written_back, self._size - self._written_back, os.POSIX_FADV_DONTNEED)
            self._written_back = self._size

    def _flush(self) -> None:
        if self._direct is not None:
            self._direct.finish()
        else:
            self._fh.flush()  # type: ignore[union-attr]

    def read_back(self) -> BinaryIO:
        self._flush()
        return open(self._tmp, "rb")

    def place(self) -> None:
        self._flush()
        if self._durable:
            os.fsync(self._fh.fileno())
        self._fh.close()
        if self._durable:
            _mkdir_durable(self._final.parent)
        else:
            self._final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._tmp, self._final)
        if self._durable:
            _fsync_dir(self._final.parent)

    def discard(self) -> None:
        if not self._fh.closed:
            self._fh.close()
        self._tmp.unlink(missing_ok=True)


class _Window:
    """At most `remaining` bytes of a file, from where it was positioned."""

    def __init__(self, fh: BinaryIO, remaining: int | None) -> None:
        self._fh = fh
        self._remaining = remaining

    def read(self, size: int = -1, /) -> bytes:
        if self._remaining is not None:
            size = self._remaining if size < 0 else min(size, self._remaining)
        data = self._fh.read(size)
        if self._remaining is not None:
            self._remaining -= len(data)
        return data

    def readinto(self, buffer: memoryview, /) -> int:
        if self._remaining is not None:
            buffer = buffer[: self._remaining]
        got = self._fh.readinto(buffer)
        if self._remaining is not None:
            self._remaining -= got
        return got

    def close(self) -> None:
        self._fh.close()


class LocalBlobStore:
    """Blobs as files under `root/objects/ab/cd/<key>`; temporary files under `root/tmp`, parts under
    `root/uploads/<upload id>/`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / "objects"
        self.tmp = root / "tmp"
        self.uploads = root / "uploads"
        self.label = f"the directory {root}"
        for directory in (self.objects, self.tmp, self.uploads):
            directory.mkdir(parents=True, exist_ok=True)

    def check(self) -> None:
        """The folders exist (made at construction); nothing else can be wrong before the first write."""

    def _path(self, key: str) -> Path:
        check_key(key)
        return self.objects / key[:2] / key[2:4] / key

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    def open_range(self, key: str, start: int = 0, length: int | None = None) -> ByteStream:
        fh = open(self._path(key), "rb")
        fh.seek(start)
        return _Window(fh, length)

    def presigned_get(self, key: str, span: tuple[int, int] | None = None) -> str | None:
        return None

    def begin(self, key: str, *, hashed: bool = True, spool: bool = False) -> BlobWriter:
        """`spool` costs nothing here: the temporary file is read back."""
        final = self._path(key)
        return BlobWriter(key, _FileSink(self.tmp / f"{uuid.uuid4().hex}.part", final, durable=True), hashed=hashed)

    def keys(self) -> Iterator[str]:
        for path in self.objects.glob("??/??/*"):
            if path.is_file():
                yield path.name

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def _part_path(self, upload_id: str, part_number: int) -> Path:
        check_part(upload_id, part_number)
        return self.uploads / upload_id / f"{part_number:06d}"

    def begin_part(self, upload_id: str, part_number: int) -> BlobWriter:
        final = self._part_path(upload_id, part_number)
        final.parent.mkdir(exist_ok=True)
        sink = _FileSink(final.parent / f"{uuid.uuid4().hex}.tmp", final, durable=False)
        return BlobWriter(f"{upload_id}/{part_number}", sink)

    def open_parts(self, upload_id: str, count: int) -> list[ByteStream]:
        opened: list[ByteStream] = []
        try:
            for n in range(1, count + 1):
                opened.append(open(self._part_path(upload_id, n), "rb"))
        except FileNotFoundError:
            for fh in opened:
                fh.close()
            raise
        return opened

    def discard_parts(self, upload_id: str) -> None:
        shutil.rmtree(self.uploads / upload_id, ignore_errors=True)

    def sweep_stale(self, older_than_seconds: float) -> int:
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
