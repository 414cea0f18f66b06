"""Xet-stored files kept whole after a first full download, so the next one is a plain file read.

A Xet file is rebuilt for every plain HTTP download (browsers, curl, git-lfs, clients without hf_xet): each xorb
range is read and every chunk decompressed. The first full read writes the bytes it sends into this cache as well;
the copy is hashed once the response is sent (off the client's path) and published (renamed into place) only
when its size and sha256 match the name it is kept under, so whatever is read from here is the verified content. Entries are named by sha256 and content never changes under a
name, so nothing is ever invalidated; the cache is bounded (`xet_file_cache_bytes`), evicting the least recently
read files first, and `keephub gc` removes entries whose content the server no longer holds.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[0-9a-f]{64}$")
# Files smaller than this are rebuilt on every read: a few chunks cost less than a file of their own.
MIN_CACHED_BYTES = 1024 * 1024
# A partial copy untouched this long is a crash's leftover.
STALE_PART_SECONDS = 3600
# Pieces a cached file is sent in.
READ_PIECE_BYTES = 1024 * 1024


class RebuiltFileCache:
    """Whole rebuilt files by sha256 under one directory, at most `max_bytes` of them; `max_bytes` 0 disables it."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory, self.max_bytes = directory, max_bytes
        if max_bytes > 0:
            directory.mkdir(parents=True, exist_ok=True)
            # Copies left by a crash; a recent one may be another process's download in progress (`keephub gc`
            # opens this cache too while the server runs).
            for leftover in directory.glob("*.part"):
                try:
                    if time.time() - leftover.stat().st_mtime > STALE_PART_SECONDS:
                        leftover.unlink(missing_ok=True)
                except FileNotFoundError:
                    continue

    def read(self, oid: str, start: int, length: int) -> Iterator[bytes] | None:
        """Bytes [start, start + length) of a cached file, or None when it is not cached. The file is opened here,
        so an eviction meanwhile cannot cut the response short; a read marks it recently used."""
        if self.max_bytes <= 0 or not _NAME.match(oid):
            return None
        try:
            fh = open(self.directory / oid, "rb")
        except FileNotFoundError:
            return None
        os.utime(fh.fileno())
        fh.seek(start)
        return _pieces(fh, length)

    def keeping(self, oid: str, size: int, pieces: Iterator[bytes]) -> Iterator[bytes]:
        """`pieces` (the whole file, rebuilt) passed through unchanged, kept in the cache as well when they
        turn out to be exactly the file named `oid`."""
        if self.max_bytes <= 0 or not _NAME.match(oid) or not MIN_CACHED_BYTES <= size <= self.max_bytes // 2:
            return pieces
        return self._tee(oid, size, pieces)

    def _tee(self, oid: str, size: int, pieces: Iterator[bytes]) -> Iterator[bytes]:
        fd, temporary = tempfile.mkstemp(dir=self.directory, prefix=f"{oid}.", suffix=".part")
        written, handed_over = 0, False
        try:
            with os.fdopen(fd, "wb") as out:
                for piece in pieces:
                    out.write(piece)
                    written += len(piece)
                    yield piece
            if written == size:
                # Hashed once the client has every byte, off the response's path: the copy is read back from the
                # page cache and published only if it is the file named `oid`.
                threading.Thread(target=self._publish, args=(oid, Path(temporary)), daemon=True,
                                 name="xet-file-cache").start()
                handed_over = True
        finally:
            if not handed_over:
                Path(temporary).unlink(missing_ok=True)

    def _publish(self, oid: str, temporary: Path) -> None:
        try:
            digest = hashlib.sha256()
            with open(temporary, "rb") as fh:
                while piece := fh.read(READ_PIECE_BYTES):
                    digest.update(piece)
            if digest.hexdigest() == oid:
                os.replace(temporary, self.directory / oid)
                self._evict()
            else:
                log.error("a rebuilt Xet file did not match its sha256 %s; not cached", oid)
        finally:
            temporary.unlink(missing_ok=True)

    def _evict(self) -> None:
        """Delete the least recently read files until the cache fits its bound."""
        entries = []
        for path in self.directory.iterdir():
            if _NAME.match(path.name):
                try:
                    status = path.stat()
                except FileNotFoundError:
                    continue
                entries.append((status.st_mtime, status.st_size, path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size

    def forget_unless(self, still_held: Callable[[str], bool]) -> int:
        """Delete every cached file whose content the server no longer holds; returns how many went."""
        if self.max_bytes <= 0 or not self.directory.is_dir():
            return 0
        removed = 0
        for path in self.directory.iterdir():
            if _NAME.match(path.name) and not still_held(path.name):
                path.unlink(missing_ok=True)
                removed += 1
        return removed


def _pieces(fh: BinaryIO, length: int) -> Iterator[bytes]:
    with fh:
        remaining = length
        while remaining > 0:
            piece = fh.read(min(READ_PIECE_BYTES, remaining))
            if not piece:
                raise OSError(f"cached file {fh.name} ended {remaining} bytes early")
            remaining -= len(piece)
            yield piece
