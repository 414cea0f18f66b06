"""Bounds on a request's head (request line and headers), enforced while it is still being read.

uvicorn's httptools parser has no limit of its own: it buffered 32 MB of headers and handed them to the
app. An ASGI middleware only sees headers once they are all in memory, so the bound has to sit in the
protocol: `BoundedHttpToolsProtocol` counts the bytes fed to the parser while the head is incomplete and
the headers parsed so far, and answers 431 and closes the connection as soon as either passes its limit.
Memory held for one head is thus at most `MAX_HEAD_BYTES` plus one socket read.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 100
_TOO_LARGE = f"the request line and headers exceed {MAX_HEAD_BYTES} bytes; send fewer or shorter headers"


class HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing; uvicorn's parse-error path then answers via
    `send_400_response`, which sends the 431 instead."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing heads over `MAX_HEAD_BYTES` or with more than `MAX_HEADERS`
    headers with 431 Request Header Fields Too Large.

    Bytes are counted per read, after feeding it to the parser: a read that began while a head was awaited
    and completed no head holds nothing but head bytes, which bounds the memory an unfinished head holds.
    A head completed within one read is measured once parsed (URL, names and values); bodies never count.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading_head = True
        self._heads_completed = 0
        self._head_bytes = 0
        self._refusal: str | None = None

    def data_received(self, data: bytes) -> None:
        was_reading_head, heads_before = self._reading_head, self._heads_completed
        super().data_received(data)
        if not was_reading_head or self._heads_completed != heads_before:
            return
        if self._refusal is not None or self.transport.is_closing():
            return
        self._head_bytes += len(data)
        if self._head_bytes > MAX_HEAD_BYTES:
            self._refusal = _TOO_LARGE
            self.send_400_response(self._refusal)

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        if len(self.headers) > MAX_HEADERS:
            self._refusal = f"the request has more than {MAX_HEADERS} headers; send fewer"
            raise HeadTooLarge(self._refusal)

    def on_headers_complete(self) -> None:
        self._reading_head, self._head_bytes = False, 0
        self._heads_completed += 1
        if len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers) > MAX_HEAD_BYTES:
            self._refusal = _TOO_LARGE
            raise HeadTooLarge(self._refusal)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._reading_head = True
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        if self._refusal is None:
            super().send_400_response(msg)
            return
        self.logger.warning("refused a request: %s", self._refusal)
        body = self._refusal.encode("ascii")
        self.transport.write(b"".join([
            STATUS_LINE[431],
            *(name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers),
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
            b"connection: close\r\n",
            b"\r\n",
            body,
        ]))
        self.transport.close()
