"""A Xet CAS and LFS upload target that reads every byte it is sent and keeps none: the client's own ceiling.

A figure whose target lies beyond what the client itself can do is reported with that ceiling (issue 22).
Uploading the same files through hf_xet to this server, which answers the token refresh, reads each xorb and
shard to its last byte, finds no chunk in its global dedup query and stores nothing, leaves the client's own
work: chunking, hashing, the sha256, compression, and sending the bytes over loopback. A PUT (git-lfs's basic
transfer, where huggingface_hub sends a file once it has its sha256) is read to its end and answered 200. No
server that receives the bytes can make the upload faster than that. The server is the standard library's; one
thread per connection.

With --check it also does the least that a server must compute before it may accept what it is sent, as the
issue asks of keephub (never trust the client's hash), and still stores nothing: every xorb's chunks are unpacked
and BLAKE3-hashed and their Merkle root compared with the xorb's name (with keephub's own parser, as the bytes
arrive), and every file a shard names gets its sha256 over all its bytes: those of xorbs received in the same
session were hashed as they arrived, the others (chunks deduplicated against an earlier upload) from memory,
where the sink keeps the chunks of the xorbs the last shard referenced. Nothing touches the disk, so this is a
floor, not a server: where it is over a target, no server that checks what it is sent can meet that target on
this machine.

    python xet_sink.py PORT [--check]        (prints "ready" once listening)
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from keephub.devserver import free_port
from keephub.xet import formats, hashing

READ_BYTES = 1024 * 1024
TOKEN_SECONDS = 3600


class Checks:
    """The hashing a checking server cannot avoid (see the module's docstring), shared by the handler threads.

    A fresh file's xorbs come in its order, several at once: each xorb's chunks extend the session's sha256 once
    every xorb that began before it has, so a shard naming exactly those xorbs, whole and in that order, needs no
    more hashing. Any other file (one with deduplicated chunks) is hashed whole, in its order, from memory."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: dict[bytes, list[bytes]] = {}  # xorb -> its unpacked chunks
        self._begun: list[bytes] = []  # the session's xorbs in the order their requests began
        self._hashed = 0  # how many of them extend the running sha256
        self._running = hashlib.sha256()

    def xorb(self, name: bytes, body: Callable[[Callable[[memoryview], None]], None]) -> None:
        """Unpack, hash and check a xorb from its body's pieces, then extend the session's sha256 in turn."""
        with self._lock:
            self._begun.append(name)
        chunks: list[bytes] = []
        reader = formats.XorbReader(lambda data: chunks.append(bytes(data)))
        body(reader.feed)
        reader.finish(name)
        with self._lock:
            self._kept[name] = chunks
            while self._hashed < len(self._begun) and self._begun[self._hashed] in self._kept:
                for chunk in self._kept[self._begun[self._hashed]]:
                    self._running.update(chunk)
                self._hashed += 1

    def shard(self, body: bytes) -> None:
        """Check each file's claimed sha256; then keep only the xorbs this shard references, for the next
        upload's deduplicated chunks."""
        shard = formats.parse_shard(body)
        with self._lock:
            session = [(name, 0, len(self._kept[name])) for name in self._begun[: self._hashed]]
            for info in shard.files:
                if [(term.xorb, term.start, term.end) for term in info.terms] == session:
                    actual = self._running.hexdigest()
                else:
                    digest = hashlib.sha256()
                    for term in info.terms:
                        if term.xorb not in self._kept:
                            raise formats.FormatError(f"xorb {hashing.to_hex(term.xorb)} is not kept here")
                        for chunk in self._kept[term.xorb][term.start : term.end]:
                            digest.update(chunk)
                    actual = digest.hexdigest()
                if info.sha256 is None or actual != hashing.to_hex(info.sha256):
                    raise formats.FormatError(f"file {hashing.to_hex(info.file_hash)}: its bytes hash to sha256 "
                                              f"{actual}, not the claimed one")
            self._kept = {term.xorb: self._kept[term.xorb] for info in shard.files for term in info.terms}
            self._begun, self._hashed, self._running = [], 0, hashlib.sha256()


class SinkHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    checks: Checks | None = None

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: one line per xorb would cost more than the sink itself."""

    def do_GET(self) -> None:
        if "/xet-write-token/" in self.path:
            url = f"http://{self.headers['host']}"
            self._json({"accessToken": "sink", "exp": int(time.time()) + TOKEN_SECONDS, "casUrl": url},
                       {"X-Xet-Cas-Url": url, "X-Xet-Access-Token": "sink",
                        "X-Xet-Token-Expiration": str(int(time.time()) + TOKEN_SECONDS)})
        else:  # the global dedup query: no chunk is known here
            self._json({"error": "not found"}, status=404)

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            if self.checks is not None and path.startswith("/v1/xorbs/"):
                self.checks.xorb(hashing.from_hex(path.rsplit("/", 1)[1]), self._drain)
            elif self.checks is not None and path == "/v1/shards":
                self.checks.shard(self._body())
            else:
                self._drain()
        except formats.FormatError as exc:
            self.close_connection = True  # the body may be unread past the fault
            self._json({"error": str(exc)}, status=400)
            return
        if path.startswith("/v1/xorbs/"):
            self._json({"was_inserted": True})
        elif path == "/v1/shards":
            self._json({"result": 1})
        elif path.endswith("/telemetry"):
            self._json({})
        else:  # what keephub does not serve either (xorb grants, v2 shards): hf_xet falls back to the above
            self._json({"error": "not found"}, status=404)

    def do_PUT(self) -> None:
        self._drain()
        self._json({})

    def _body(self) -> bytes:
        pieces: list[bytes] = []
        self._drain(lambda piece: pieces.append(bytes(piece)))
        return b"".join(pieces)

    def _drain(self, take: Callable[[memoryview], None] | None = None) -> None:
        """Read the request body to its end (Content-Length or chunked) into one reused buffer, handing each piece
        read to `take` if given."""
        buffer = memoryview(bytearray(READ_BYTES))
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while size := int(self.rfile.readline().split(b";")[0], 16):
                self._read(buffer, size, take)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
        else:
            self._read(buffer, int(self.headers.get("content-length") or 0), take)

    def _read(self, buffer: memoryview, size: int, take: Callable[[memoryview], None] | None) -> None:
        while size:
            got = self.rfile.readinto(buffer[: min(size, len(buffer))])
            if not got:
                raise ConnectionError("the client closed the connection inside a body")
            size -= got
            if take is not None:
                take(buffer[:got])

    def _json(self, answer: dict, extra: dict[str, str] | None = None, status: int = 200) -> None:
        body = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


class XetSink:
    """This file's server in a child process on a free 127.0.0.1 port; with `check`, the checking floor."""

    def __init__(self, check: bool = False) -> None:
        self.port = free_port()
        self.process = subprocess.Popen([sys.executable, str(Path(__file__)), str(self.port),
                                         *(["--check"] if check else [])], stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            self.stop()
            sys.exit("xet_sink.py did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def main() -> None:
    if "--check" in sys.argv[2:]:
        SinkHandler.checks = Checks()
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), SinkHandler)
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
