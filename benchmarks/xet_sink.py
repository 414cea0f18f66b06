"""A Xet CAS and LFS upload target that reads every byte it is sent and keeps none: the client's own ceiling.

A figure whose target lies beyond what the client itself can do is reported with that ceiling (issue 22).
Uploading the same files through hf_xet to this server, which answers the token refresh, reads each xorb and
shard to its last byte, finds no chunk in its global dedup query and stores nothing, leaves the client's own
work: chunking, hashing, the sha256, compression, and sending the bytes over loopback. A PUT (git-lfs's basic
transfer, where huggingface_hub sends a file once it has its sha256) is read to its end and answered 200. No
server that receives the bytes can make the upload faster than that. The server is the standard library's; one
thread per connection.

    python xet_sink.py PORT        (prints "ready" once listening)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from keephub.devserver import free_port

READ_BYTES = 1024 * 1024
TOKEN_SECONDS = 3600


class SinkHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

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
        self._drain()
        path = self.path.split("?", 1)[0]
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

    def _drain(self) -> None:
        """Read the request body to its end (Content-Length or chunked) into one reused buffer."""
        buffer = memoryview(bytearray(READ_BYTES))
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while size := int(self.rfile.readline().split(b";")[0], 16):
                self._read(buffer, size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
        else:
            self._read(buffer, int(self.headers.get("content-length") or 0))

    def _read(self, buffer: memoryview, size: int) -> None:
        while size:
            got = self.rfile.readinto(buffer[: min(size, len(buffer))])
            if not got:
                raise ConnectionError("the client closed the connection inside a body")
            size -= got

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
    """This file's server in a child process on a free 127.0.0.1 port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process = subprocess.Popen([sys.executable, str(Path(__file__)), str(self.port)], stdout=subprocess.PIPE,
                                        text=True)
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
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), SinkHandler)
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
