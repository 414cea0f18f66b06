"""Give the memory a large transfer used back to the system once it is over.

A transfer moves its bytes through buffers of a few MiB (4 MiB receive buffers, 1-8 MiB read pieces). glibc
serves allocations that size from its heaps once its adaptive mmap threshold has risen past them, and keeps
what they freed: measured, the server's RSS grew ~40 MiB over 1 GiB of uploads and downloads and never came
back. A fixed mmap threshold gives every such buffer back at once, but then each one costs fresh page faults,
which raised the server's CPU time by half in the same measurement. Instead the heaps keep reusing their pages
during a transfer, and `malloc_trim` returns the free ones after it: `transferred` is called as each blob write
or read ends. Trimming alone still left ~30 MiB behind after 1 GiB, fragments spread over glibc's many
per-thread heaps (up to 8 per core, one per worker thread that allocated); `limit_heaps`, called as the server
starts, keeps them to two: +10 MiB after 1 GiB, +18 MiB after 10 GiB, at the same CPU time
(benchmarks/memory_bench.py, docs/benchmarks.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
import time

# mallopt's parameter for the number of heaps ("arenas"), from glibc's malloc.h.
_M_ARENA_MAX = -8
SERVER_HEAPS = 2
# Trim once this much has moved since the last trim, and at most this often (a trim walks every heap).
TRIM_AFTER_BYTES = 32 * 1024 * 1024
TRIM_INTERVAL_SECONDS = 1.0


def _glibc_function(name: str, *argtypes: type) -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """A function of glibc's malloc, or None where the C library has none (musl, macOS)."""
    try:
        function = getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = list(argtypes)
    function.restype = ctypes.c_int
    return function


_malloc_trim = _glibc_function("malloc_trim", ctypes.c_size_t)
_mallopt = _glibc_function("mallopt", ctypes.c_int, ctypes.c_int)


def limit_heaps() -> None:
    """Keep glibc to SERVER_HEAPS heaps for the rest of the process (heaps made before stay); call before the
    server starts its threads. An explicit MALLOC_ARENA_MAX in the environment wins."""
    if _mallopt is not None and "MALLOC_ARENA_MAX" not in os.environ:
        _mallopt(_M_ARENA_MAX, SERVER_HEAPS)

_lock = threading.Lock()
_pending_bytes = 0
_last_trim = 0.0
_scheduled = False


def transferred(size: int) -> None:
    """A blob transfer of `size` bytes has ended: trim the heaps once enough has moved since the last trim (now,
    or when the interval since the last trim has passed, so that the last of a burst of transfers is trimmed too)."""
    global _pending_bytes, _scheduled
    if _malloc_trim is None:
        return
    with _lock:
        _pending_bytes += size
        if _pending_bytes < TRIM_AFTER_BYTES or _scheduled:
            return
        wait = _last_trim + TRIM_INTERVAL_SECONDS - time.monotonic()
        if wait > 0:
            _scheduled = True
            timer = threading.Timer(wait, _trim)
            timer.daemon = True
            timer.start()
            return
    _trim()


def _trim() -> None:
    global _pending_bytes, _last_trim, _scheduled
    with _lock:
        _pending_bytes = 0
        _last_trim = time.monotonic()
        _scheduled = False
    _malloc_trim(0)  # type: ignore[misc]
