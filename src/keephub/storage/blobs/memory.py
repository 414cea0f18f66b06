"""Blobs in this process's memory: for tests and throwaway servers, and the smallest proof that the interface
needs no files. Nothing survives the process."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from typing import BinaryIO

from keephub.storage.blobs.base import BlobWriter, ByteStream, check_key, check_part


class _BufferSink:
    def __init__(self, place: Callable[[bytes], None]) -> None:
        self._buffer = bytearray()
        self._place = place

    def write(self, data: bytes) -> None:
        self._buffer += data

    def read_back(self) -> BinaryIO:
        return io.BytesIO(bytes(self._buffer))

    def place(self) -> None:
        self._place(bytes(self._buffer))

    def discard(self) -> None:
        self._buffer = bytearray()


class MemoryBlobStore:
    """Blobs and parts in dicts behind one lock. `sweep_stale` forgets parts of uploads begun too long ago."""

    def __init__(self) -> None:
        self.label = "memory"
        self._blobs: dict[str, bytes] = {}
        self._parts: dict[str, dict[int, bytes]] = {}
        self._part_times: dict[str, float] = {}
        self._lock = threading.Lock()

    def check(self) -> None:
        """Memory is always there."""

    def exists(self, key: str) -> bool:
        return check_key(key) in self._blobs

    def _get(self, key: str) -> bytes:
        try:
            return self._blobs[check_key(key)]
        except KeyError:
            raise FileNotFoundError(f"no blob {key}") from None

    def size(self, key: str) -> int:
        return len(self._get(key))

    def open_range(self, key: str, start: int = 0, length: int | None = None) -> ByteStream:
        data = self._get(key)
        return io.BytesIO(data[start:] if length is None else data[start : start + length])

    def presigned_get(self, key: str, span: tuple[int, int] | None = None) -> str | None:
        return None

    def begin(self, key: str, *, hashed: bool = True, spool: bool = False) -> BlobWriter:
        check_key(key)

        def place(data: bytes) -> None:
            with self._lock:
                self._blobs[key] = data

        return BlobWriter(key, _BufferSink(place), hashed=hashed)

    def keys(self) -> Iterator[str]:
        with self._lock:
            return iter(list(self._blobs))

    def delete(self, key: str) -> None:
        with self._lock:
            self._blobs.pop(check_key(key), None)

    def begin_part(self, upload_id: str, part_number: int) -> BlobWriter:
        check_part(upload_id, part_number)

        def place(data: bytes) -> None:
            with self._lock:
                self._parts.setdefault(upload_id, {})[part_number] = data
                self._part_times.setdefault(upload_id, time.time())

        return BlobWriter(f"{upload_id}/{part_number}", _BufferSink(place))

    def open_parts(self, upload_id: str, count: int) -> list[ByteStream]:
        with self._lock:
            parts = self._parts.get(upload_id, {})
            missing = [n for n in range(1, count + 1) if n not in parts]
            if missing:
                raise FileNotFoundError(f"part {missing[0]} of upload {upload_id} was never uploaded")
            return [io.BytesIO(parts[n]) for n in range(1, count + 1)]

    def discard_parts(self, upload_id: str) -> None:
        with self._lock:
            self._parts.pop(upload_id, None)
            self._part_times.pop(upload_id, None)

    def sweep_stale(self, older_than_seconds: float) -> int:
        """Parts of uploads begun before the cutoff go; a writer's own buffer goes with the writer."""
        cutoff = time.time() - older_than_seconds
        with self._lock:
            stale = [upload for upload, begun in self._part_times.items() if begun < cutoff]
            for upload in stale:
                self._parts.pop(upload, None)
                self._part_times.pop(upload, None)
        return len(stale)
