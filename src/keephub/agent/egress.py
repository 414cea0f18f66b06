"""The egress proxy: a job's one way beyond keephub.

Jobs live in network namespaces of their own. The package index the uv shim installs from is outside,
so the job's agent runs an HTTP CONNECT proxy on a Unix socket bound into every sandbox (HTTPS_PROXY inside),
and lets through only the host:port pairs of `job_egress_allow`. A name on the list that resolves to a
loopback, private or link-local address is refused too, so DNS cannot turn an allowed name into a way
onto the host or its network; list an IP address itself to allow it on purpose.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
from pathlib import Path

log = logging.getLogger("keephub.agent.egress")
MAX_HEAD_BYTES = 8192
CONNECT_TIMEOUT_SECONDS = 30
BUFFER_BYTES = 256 * 1024
# Connections through the proxy at once, all jobs together: jobs cannot spend keephub's file descriptors.
MAX_CONNECTIONS = 256


def parse_allow_list(text: str) -> frozenset[tuple[str, int]]:
    """`host:port` pairs, comma- or space-separated; an IPv6 address in brackets."""
    allowed = set()
    for entry in text.replace(",", " ").split():
        host, _, port = entry.rpartition(":")
        host = host.strip("[]").lower()
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"job_egress_allow entry {entry!r} must be host:port (e.g. pypi.org:443)")
        allowed.add((host, int(port)))
    return frozenset(allowed)


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _internal(address: str) -> bool:
    """Anything but a public unicast address (loopback, private, shared, link-local, reserved, multicast)."""
    ip = ipaddress.ip_address(address.split("%")[0])
    return not ip.is_global or ip.is_multicast


class EgressProxy:
    """CONNECT-only proxy on a Unix socket; every refusal is an HTTP answer the client prints."""

    def __init__(self, socket_path: Path, allowed: frozenset[tuple[str, int]]) -> None:
        self.socket_path = socket_path
        self.allowed = allowed
        self._server: asyncio.base_events.Server | None = None
        self._open = 0

    async def start(self) -> None:
        self.socket_path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._handle, path=str(self.socket_path),
                                                       limit=MAX_HEAD_BYTES)
        os.chmod(self.socket_path, 0o666)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= MAX_CONNECTIONS:
            await _refuse(writer, 503, f"all {MAX_CONNECTIONS} egress connections of this keephub are in use; "
                                       "retry later")
            writer.close()
            return
        self._open += 1
        try:
            try:
                upstream = await self._connect(reader, writer)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
                upstream = None
            if upstream is None:
                writer.close()
                return
            up_reader, up_writer = upstream
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            self._open -= 1

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                       ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CONNECT_TIMEOUT_SECONDS)
        method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
        target = rest.partition(" ")[0]
        if method != "CONNECT":
            await _refuse(writer, 405, "jobs reach the internet only through CONNECT (https://) to the hosts "
                                       "of job_egress_allow; plain http:// is not proxied")
            return None
        host, _, port_text = target.rpartition(":")
        host = host.strip("[]").lower()
        if not (port_text.isascii() and port_text.isdigit()) or (host, int(port_text)) not in self.allowed:
            await _refuse(writer, 403, f"{target} is not on this keephub's job egress allow-list "
                                       "(setting job_egress_allow); ask its admin to add it")
            return None
        port = int(port_text)
        address = host
        if not _is_literal(host):
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
            if not infos or any(_internal(info[4][0]) for info in infos):
                await _refuse(writer, 403, f"{host} resolves to an internal address; refused")
                return None
            address = infos[0][4][0]  # the address checked, not a second look-up's answer
        try:
            upstream = await asyncio.wait_for(asyncio.open_connection(address, port), CONNECT_TIMEOUT_SECONDS)
        except (OSError, TimeoutError) as exc:
            await _refuse(writer, 502, f"cannot reach {target}: {exc}")
            return None
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        return upstream


async def _refuse(writer: asyncio.StreamWriter, status: int, message: str) -> None:
    body = f"keephub egress proxy: {message}\n".encode()
    reason = {403: "Forbidden", 405: "Method Not Allowed", 502: "Bad Gateway", 503: "Service Unavailable"}[status]
    writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                 f"Connection: close\r\n\r\n".encode() + body)
    try:
        await writer.drain()
    except OSError:
        pass


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(BUFFER_BYTES):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        try:
            writer.close()
        except OSError:
            pass
