"""Large request bodies read by the kernel straight into reusable buffers, around the HTTP parser and ASGI.

Through uvicorn and ASGI every byte of an upload is copied five times on the event loop before the app sees it
(the loop's read buffer, a `bytes` of each read, the parser's `bytes` of each body span, uvicorn's body
bytearray, `bytes()` of it per `http.request` message) and once more into the app's 4 MiB pieces, each a fresh
allocation paying page faults: measured on a 1 GiB upload, most of the event loop's time. `DirectBodyProtocol`
offers each request the ASGI scope extension `keephub.direct_body` (the protocol itself): its `attach(scope,
piece size)` hands the connection's reads for the rest of the body to a `BufferedProtocol`, into whose buffers
the kernel copies the bytes, once, and returns a `DirectBody` from which the app takes full pieces in order,
giving each buffer back once done with it. Reading pauses while no buffer is free, so memory stays bounded
(two pieces). Once the body's last byte is read the connection goes back to the HTTP parser (a fresh one, for
the next request); a body the app stops reading early is read to its end and dropped, so the connection
stays usable. Only a body with a Content-Length and no Transfer-Encoding is read this way; servers without
the extension, and every other body, go through ASGI messages (bodies.py).
"""

from __future__ import annotations

import asyncio
import mmap
from collections import deque
from typing import Any

import httptools
from starlette.requests import ClientDisconnect

from keephub.wire.buffers import BufferPool
from keephub.wire.header_limits import BoundedHttpToolsProtocol

EXTENSION = "keephub.direct_body"
BUFFERS_PER_BODY = 2
_SPARE_BUFFERS = 2
# Where bytes go while no buffer is free (reading is paused then, so at most one read lands here).
_HOLDING_BYTES = 256 * 1024


_buffers = BufferPool(_SPARE_BUFFERS)


class DirectBody:
    """A request body arriving in full pieces of `piece_size` bytes (the last one shorter), in order.

    Bytes come in either by `feed` (copied: those read before the body was attached) or by writing into the view
    `writable` returns and then calling `wrote` (the kernel's read, with no copy of ours).
    """

    def __init__(self, protocol: DirectBodyProtocol, piece_size: int) -> None:
        self._protocol = protocol
        self._flow = protocol.flow  # uvicorn's FlowControl: pauses and resumes the connection's reads
        self._piece_size = piece_size
        self._free = [_buffers.take(piece_size) for _ in range(BUFFERS_PER_BODY)]
        self._filling: mmap.mmap | None = None
        self._filled = 0
        self._full: deque[memoryview] = deque()
        self._held = bytearray()  # bytes that arrived while no buffer was free
        self._holding: bytearray | None = None
        self._arrived = asyncio.Event()
        self._ended = False
        self._disconnected = False
        self._closed = False

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Bytes copied into the buffer being filled."""
        view = memoryview(data)
        while view:
            target = self.writable()
            taken = min(len(view), len(target))
            target[:taken] = view[:taken]
            self.wrote(taken)
            view = view[taken:]

    def writable(self) -> memoryview:
        """Where the next bytes go: the rest of the buffer being filled, or, while no buffer is free, a holding
        buffer (reading is then paused)."""
        if self._filling is None and self._free:
            self._filling, self._filled = self._free.pop(), 0
        if self._filling is None:
            self._flow.pause_reading()
            if self._holding is None:
                self._holding = bytearray(_HOLDING_BYTES)
            return memoryview(self._holding)
        return memoryview(self._filling)[self._filled:]

    def wrote(self, count: int) -> None:
        """`count` bytes were written at the start of the view `writable` gave last."""
        if self._filling is None:
            assert self._holding is not None
            self._held += self._holding[:count]
            return
        self._filled += count
        if self._filled == self._piece_size:
            self._pass_on()
            if not self._free:
                self._flow.pause_reading()

    def _pass_on(self) -> None:
        assert self._filling is not None
        self._full.append(memoryview(self._filling)[:self._filled])
        self._filling = None
        self._arrived.set()

    def end(self) -> None:
        """The body is complete: what is in the buffer being filled is the last piece."""
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
        if (self._filling is not None or self._free) and not self._held and not self._ended:
            self._flow.resume_reading()

    def close(self) -> None:
        """Stop taking bytes (the rest of the body is read and dropped) and return the buffers; idempotent. Pieces
        not given back stay with their holder."""
        if self._closed:
            return
        self._closed = True
        self._protocol.detach(self)
        if self._filling is not None:
            self._free.append(self._filling)
        for piece in self._full:
            self._free.append(piece.obj)  # type: ignore[arg-type]
            piece.release()
        for buffer in self._free:
            _buffers.give(buffer)
        self._free.clear()
        self._full.clear()
        self._filling = self._holding = None
        self._held = bytearray()


class _BodyReader(asyncio.BufferedProtocol):
    """The connection's protocol while one request body is read into a `DirectBody`: the kernel writes straight
    into its buffers. Everything but reads is passed to the HTTP protocol; after the body's last byte, so is the
    connection."""

    def __init__(self, http: DirectBodyProtocol, body: DirectBody, remaining: int) -> None:
        self._http = http
        self.body: DirectBody | None = body  # None once the app stopped reading: the rest is dropped
        self._remaining = remaining
        self._dropped = bytearray(0)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.body is None:
            if not self._dropped:
                self._dropped = bytearray(_HOLDING_BYTES)
            view = memoryview(self._dropped)
        else:
            view = self.body.writable()
        return view[:self._remaining]

    def buffer_updated(self, nbytes: int) -> None:
        self._http.read_body_bytes()
        self._remaining -= nbytes
        if self.body is not None:
            self.body.wrote(nbytes)
        if self._remaining == 0:
            self._http.body_complete(self)

    def eof_received(self) -> bool | None:
        return self._http.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.body is not None:
            self.body.disconnect()
        self._http.connection_lost(exc)

    def pause_writing(self) -> None:
        self._http.pause_writing()

    def resume_writing(self) -> None:
        self._http.resume_writing()


class DirectBodyProtocol(BoundedHttpToolsProtocol):
    """The HTTP protocol keephub serves with: bounded heads (header_limits.py) and direct bodies (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reader: _BodyReader | None = None  # while a body is read directly
        self._body_parsed = 0  # body bytes of the current request the parser has seen

    def on_headers_complete(self) -> None:
        self._body_parsed = 0
        super().on_headers_complete()
        if self.cycle is not None and self.cycle.scope is self.scope:
            self.scope.setdefault("extensions", {})[EXTENSION] = self

    def on_body(self, body: bytes) -> None:
        self._body_parsed += len(body)
        super().on_body(body)

    def attach(self, scope: dict, piece_size: int) -> DirectBody | None:
        """A `DirectBody` for the rest of the body of the request of `scope`, starting with the bytes uvicorn has
        already read; None where this request cannot be read directly (the caller then reads ASGI messages)."""
        cycle = self.cycle
        if (cycle is None or cycle.scope is not scope or not cycle.more_body or cycle.disconnected
                or self._reader is not None or self.transport.is_closing()):
            return None
        names = [name for name, _ in scope["headers"]]
        declared = [value for name, value in scope["headers"] if name == b"content-length"]
        if b"transfer-encoding" in names or len(declared) != 1 or not declared[0].isdigit():
            return None
        remaining = int(declared[0]) - self._body_parsed
        if remaining <= 0:
            return None
        body = DirectBody(self, piece_size)
        if cycle.waiting_for_100_continue:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            cycle.waiting_for_100_continue = False
        body.feed(cycle.body)
        cycle.body = bytearray()
        self._reader = _BodyReader(self, body, remaining)
        self.transport.set_protocol(self._reader)
        self.flow.resume_reading()
        return body

    def detach(self, body: DirectBody) -> None:
        """The app stopped reading `body` (done, or failed): whatever of it is still to come is dropped."""
        if self._reader is not None and self._reader.body is body:
            self._reader.body = None
            self.flow.resume_reading()

    def read_body_bytes(self) -> None:
        """Bytes of a body arrived: the connection is not idle (as uvicorn's `data_received` notes)."""
        self._unset_keepalive_if_required()

    def body_complete(self, reader: _BodyReader) -> None:
        """The body's last byte is read: the connection goes back to a fresh parser, and the message is over."""
        self._reader = None
        self.transport.set_protocol(self)
        self.parser = httptools.HttpRequestParser(self)
        try:
            self.parser.set_dangerous_leniencies(lenient_data_after_close=True)  # as uvicorn sets its own
        except AttributeError:
            pass
        if reader.body is not None:
            reader.body.end()
        self.on_message_complete()
