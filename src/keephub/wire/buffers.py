"""Large byte buffers reused across requests: a fresh one costs a page fault per page, which on a VM is a trip
to the host, so the bodies, disk writes and rebuilds that move bytes a piece at a time keep a few spare."""

from __future__ import annotations

import mmap
import threading


class BufferPool:
    """Buffers by size, at most `keep` spare in all. They are page-aligned (anonymous maps), so a blob store may
    write one to the disk straight from its memory (O_DIRECT), with no copy."""

    def __init__(self, keep: int) -> None:
        self._keep = keep
        self._spare: dict[int, list[mmap.mmap]] = {}
        self._lock = threading.Lock()

    def take(self, size: int) -> mmap.mmap:
        with self._lock:
            spare = self._spare.get(size)
            if spare:
                return spare.pop()
        return mmap.mmap(-1, size)

    def give(self, buffer: mmap.mmap) -> None:
        """Keep `buffer` for the next `take`, or free it; its taker must hold no view of it any more."""
        with self._lock:
            if sum(len(kept) for kept in self._spare.values()) < self._keep:
                self._spare.setdefault(len(buffer), []).append(buffer)
                return
        try:
            buffer.close()
        except BufferError:  # a view of it is still held (by a traceback being handled): freed with that view
            pass
