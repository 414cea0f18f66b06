"""Reading request bodies: whole (with a limit and a 413 that says how to get around it) or streamed to disk."""

from __future__ import annotations

import asyncio
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import IO

from starlette.requests import Request

from keephub.wire import direct_body
from keephub.wire.errors import BadRequest, TooLarge

_FLUSH_BYTES = 4 * 1024 * 1024
# Each piece of a streamed body is handed to one of these threads. Through anyio's pool (run_in_threadpool) the
# hand-off took 3 ms on average while the event loop was busy receiving, a third of a 1 GiB upload's time.
_piece_writers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="body-pieces")


async def read_body(request: Request, limit: int, advice: str = "") -> bytes:
    """The whole body, refused with 413 (plus `advice`, the way around the limit) once it passes `limit`."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"request body of {declared} bytes exceeds the {limit}-byte limit for this endpoint{advice}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLarge(f"request body exceeds the {limit}-byte limit for this endpoint{advice}")
    return bytes(body)


async def spool_body(request: Request, limit: int, advice: str = "") -> IO[bytes]:
    """The body in a temporary file, rewound: kept in memory while small, on disk past `_FLUSH_BYTES`, so that a
    large body (an NDJSON commit of many files) costs no more memory than a small one. 413 past `limit`."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"request body of {declared} bytes exceeds the {limit}-byte limit for this endpoint{advice}")
    spool = tempfile.SpooledTemporaryFile(max_size=_FLUSH_BYTES)
    try:
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise TooLarge(f"request body exceeds the {limit}-byte limit for this endpoint{advice}")
            spool.write(chunk)
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return spool


async def receive_into(request: Request, pending, limit: int,  # type: ignore[no-untyped-def]
                       overflow: str = "received more than the announced {limit} bytes; nothing was stored") -> None:
    """Stream the body into `pending` (its `write` must be done with each piece when it returns), hashing and
    writing one piece in a worker thread while the next arrives.

    Awaiting each write before reading on would stall the socket (uvicorn stops reading once 64 KiB wait
    unconsumed), so network and disk would take turns; overlapping them is what lets a large upload go at
    disk speed. Memory stays bounded: one piece being written, one filling. A large body is read through
    keephub's own protocol where the server offers it (direct_body.py), which saves three copies of every byte.
    """
    declared = request.headers.get("content-length")
    size = int(declared) if declared and declared.isdigit() else None
    if size is not None and size > limit:
        raise BadRequest(overflow.format(limit=limit))
    protocol = request.scope.get("extensions", {}).get(direct_body.EXTENSION)
    direct = (protocol.attach(request.scope, _FLUSH_BYTES)
              if protocol is not None and size is not None and size >= _FLUSH_BYTES else None)
    if direct is None:
        await _receive_messages_into(request, pending, limit, overflow)
        return
    received = 0
    writing: asyncio.Future | None = None
    written: memoryview | None = None
    try:
        while (piece := await direct.next_piece()) is not None:
            received += len(piece)
            if received > limit:
                raise BadRequest(overflow.format(limit=limit))
            if writing is not None:
                await writing
                direct.give_back(written)  # type: ignore[arg-type]
            writing, written = _in_writer(pending.write, piece), piece
        if writing is not None:
            await writing
            direct.give_back(written)  # type: ignore[arg-type]
    finally:
        await _finish(writing)
        direct.close()


async def _receive_messages_into(request: Request, pending, limit: int,  # type: ignore[no-untyped-def]
                                 overflow: str) -> None:
    """`receive_into` through ASGI messages, joined into pieces of `_FLUSH_BYTES`."""
    received = buffered = 0
    chunks: list[bytes] = []
    writing: asyncio.Future | None = None
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise BadRequest(overflow.format(limit=limit))
            chunks.append(chunk)
            buffered += len(chunk)
            if buffered >= _FLUSH_BYTES:
                if writing is not None:
                    await writing
                writing = _in_writer(pending.write, b"".join(chunks))
                chunks, buffered = [], 0
        if writing is not None:
            await writing
        if chunks:
            await _in_writer(pending.write, b"".join(chunks))
    finally:
        await _finish(writing)


def _in_writer(write, piece) -> asyncio.Future:  # type: ignore[no-untyped-def]
    """`write(piece)` in one of `_piece_writers`, awaitable."""
    return asyncio.get_running_loop().run_in_executor(_piece_writers, write, piece)


async def _finish(writing: asyncio.Future | None) -> None:
    """On the way out after an error: the caller aborts `pending` next, so let the write in flight finish before
    its file is closed. Its own error, if any, is consumed here: the one already propagating is what the client
    hears."""
    if writing is not None and not writing.done():
        await asyncio.wait([writing])
        if not writing.cancelled():
            writing.exception()
