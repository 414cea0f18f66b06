"""Large request bodies copied from the HTTP parser straight into reusable buffers, around ASGI's body messages.

Through ASGI an upload's bytes are copied three times between the parser and the app (uvicorn's body
bytearray, `bytes()` of it for each `http.request` message, the app's join into 4 MiB pieces), and each fresh
4 MiB piece costs page faults: measured on a 1 GiB upload, a sixth of the server's CPU was memmove and as much
again kernel time, much of it page faults. `DirectBodyProtocol` offers each request the ASGI scope extension
`keephub.direct_body`: called with a piece size, it returns a `DirectBody`, into whose fixed buffers the
parser's body callbacks copy the bytes as they arrive, once. The app takes full pieces in order and gives each
buffer back once it is done with it; reading pauses while no buffer is free, so memory stays bounded (two
pieces and at most one socket read). Servers without the extension fall back to ASGI messages (bodies.py).
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import Any

from starlette.requests import ClientDisconnect

from keephub.wire.header_limits import BoundedHttpToolsProtocol

EXTENSION = "keephub.direct_body"
BUFFERS_PER_BODY = 2
_SPARE_BUFFERS = 2


class _BufferPool:
    """Buffers of one size reused across requests (at most `keep` spare): a fresh one costs a page fault per page."""

    def __init__(self, keep: int) -> None:
        self._keep = keep
        self._spare: dict[int, list[bytearray]] = {}
        self._lock = threading.Lock()

    def take(self, size: int) -> bytearray:
        with self._lock:
            spare = self._spare.get(size)
            if spare:
                return spare.pop()
        return bytearray(size)

    def give(self, buffer: bytearray) -> None:
        with self._lock:
            if sum(len(kept) for kept in self._spare.values()) < self._keep:
                self._spare.setdefault(len(buffer), []).append(buffer)


_buffers = _BufferPool(_SPARE_BUFFERS)


class DirectBody:
    """A request body arriving in full pieces of `piece_size` bytes (the last one shorter), in order."""

    def __init__(self, protocol: DirectBodyProtocol, piece_size: int) -> None:
        self._protocol = protocol
        self._piece_size = piece_size
        self._free = [_buffers.take(piece_size) for _ in range(BUFFERS_PER_BODY)]
        self._filling: bytearray | None = None
        self._filled = 0
        self._full: deque[memoryview] = deque()
        self._held = bytearray()  # bytes that arrived while no buffer was free (reading is paused meanwhile)
        self._arrived = asyncio.Event()
        self._ended = False
        self._disconnected = False
        self._closed = False

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Bytes from the parser, copied into the buffer being filled."""
        view = memoryview(data)
        while view:
            if self._filling is None:
                if not self._free:
                    self._held += view
                    self._protocol.flow.pause_reading()
                    return
                self._filling, self._filled = self._free.pop(), 0
            taken = min(len(view), self._piece_size - self._filled)
            self._filling[self._filled:self._filled + taken] = view[:taken]
            self._filled += taken
            view = view[taken:]
            if self._filled == self._piece_size:
                self._pass_on()

    def _pass_on(self) -> None:
        assert self._filling is not None
        self._full.append(memoryview(self._filling)[:self._filled])
        self._filling = None
        self._arrived.set()

    def end(self) -> None:
        """The message is complete: what is in the buffer being filled is the last piece."""
        if self._filling is not None and self._filled:
            self._pass_on()
        self._ended = True
        self._arrived.set()

    def disconnect(self) -> None:
        self._disconnected = True
        self._arrived.set()

    async def next_piece(self) -> memoryview | None:
        """The next full piece (a view of a buffer to `give_back` once used), or None after the last one."""
        while not self._full:
            if self._disconnected:
                raise ClientDisconnect()
            if self._ended and not self._held:
                return None
            self._arrived.clear()
            await self._arrived.wait()
        return self._full.popleft()

    def give_back(self, piece: memoryview) -> None:
        """A piece's buffer is free for the next bytes: first those held while none was, then the socket's."""
        buffer = piece.obj
        piece.release()
        self._free.append(buffer)  # type: ignore[arg-type]
        if self._held:
            held, self._held = self._held, bytearray()
            self.feed(held)
            if self._ended and self._filling is not None:
                self._pass_on()
        if not self._held and not self._ended:
            self._protocol.flow.resume_reading()

    def close(self) -> None:
        """Stop taking bytes (any still to come are dropped) and return the buffers; idempotent. Pieces not given
        back stay with whoever holds them."""
        if self._closed:
            return
        self._closed = True
        self._protocol.detach(self)
        for buffer in self._free:
            _buffers.give(buffer)
        self._free.clear()
        self._full.clear()
        self._filling = None
        self._held = bytearray()
        if not self._protocol.transport.is_closing():
            self._protocol.flow.resume_reading()


class DirectBodyProtocol(BoundedHttpToolsProtocol):
    """The HTTP protocol keephub serves with: bounded heads (header_limits.py) and direct bodies (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._direct: DirectBody | None = None  # the current request's, while its body is still arriving

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self.cycle is not None and self.cycle.scope is self.scope:
            self.scope.setdefault("extensions", {})[EXTENSION] = self

    def attach(self, scope: dict, piece_size: int) -> DirectBody | None:
        """A `DirectBody` for the request of `scope`, starting with the bytes uvicorn already buffered for it; None
        when the connection has moved on to a pipelined request (the caller then reads ASGI messages)."""
        cycle = self.cycle
        if cycle is None or cycle.scope is not scope or self._direct is not None:
            return None
        body = DirectBody(self, piece_size)
        if cycle.disconnected:
            body.disconnect()
        if cycle.waiting_for_100_continue and not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            cycle.waiting_for_100_continue = False
        if cycle.body:
            body.feed(cycle.body)
            cycle.body = bytearray()
        if cycle.more_body:
            self._direct = body
            self.flow.resume_reading()
        else:
            body.end()
        return body

    def detach(self, body: DirectBody) -> None:
        if self._direct is body:
            self._direct = None

    def on_body(self, body: bytes) -> None:
        if self._direct is None:
            super().on_body(body)
        elif not self.cycle.response_complete:
            self._direct.feed(body)

    def on_message_complete(self) -> None:
        direct, self._direct = self._direct, None
        if direct is not None:
            direct.end()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._direct is not None:
            self._direct.disconnect()
        super().connection_lost(exc)
