"""Blobs as files in a local directory: the embedded default.

Writes go to a temporary file that is fsynced and renamed into place (and the folders leading to it
fsynced), so an acknowledged blob survives a power cut and a crash leaves no partial blob.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from keephub.storage.blobs.base import BlobWriter, ByteStream, check_key, check_part

_WRITE_BEHIND_BYTES = 8 * 1024 * 1024
_fadvise = getattr(os, "posix_fadvise", None)  # absent on macOS and Windows


class _FileSink:
    """Bytes in a private temporary file, renamed to `final` by `place`.

    A `durable` sink is fsynced before it is placed, and its bytes are handed to the kernel for write-back as
    they arrive, so that fsync finds little left to do instead of stalling for the whole file at the end. A
    non-durable one (a multipart part, re-hashed when the upload completes) skips both: if a crash loses it,
    completion fails and the client re-sends it.
    """

    def __init__(self, tmp: Path, final: Path, durable: bool) -> None:
        self._tmp = tmp
        self._final = final
        self._durable = durable
        self._fh = open(tmp, "wb")
        self._size = 0
        self._written_back = 0

    def write(self, data: bytes) -> None:
        self._fh.write(data)
        self._size += len(data)
        if self._durable and _fadvise is not None and self._size - self._written_back >= _WRITE_BEHIND_BYTES:
            # On Linux, DONTNEED on dirty pages starts their write-back now; they stay cached until written.
            self._fh.flush()
            _fadvise(self._fh.fileno(), self._written_back, self._size - self._written_back, os.POSIX_FADV_DONTNEED)
            self._written_back = self._size

    def read_back(self) -> BinaryIO:
        self._fh.flush()
        return open(self._tmp, "rb")

    def place(self) -> None:
        self._fh.flush()
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
