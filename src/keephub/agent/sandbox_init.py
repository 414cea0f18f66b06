"""The first process of every job sandbox: run the job's command with its environment, and open the
job's only ways out of its network namespace.

The command and environment arrive as one JSON document on stdin, never as arguments of bubblewrap:
bwrap reads its own options from its argument stream, so a value carried there (a secret with a NUL
byte in it) could become an option that mounts the host into the sandbox. Here a value is only ever a
value.

The sandbox has a network namespace of its own with nothing but loopback. Each route in the spec is a
listener on loopback inside that forwards every connection to a Unix socket keephub bound into the
sandbox: one reaches keephub's API (HF_ENDPOINT), one keephub's egress proxy (HTTPS_PROXY), which lets
through only the hosts on its allow-list. Nothing else on the host, and no other job, can be reached.

Runs as a plain file under `python -I`: standard library only.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading

BUFFER_BYTES = 256 * 1024
EXIT_BAD_SPEC = 126
EXIT_NOT_FOUND = 127


def fail(message: str, status: int = EXIT_BAD_SPEC) -> None:
    print(f"keephub sandbox: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


def _is_clean(value: object) -> bool:
    return isinstance(value, str) and "\0" not in value


def read_spec() -> dict:
    """The spec from stdin, checked; stdin then becomes /dev/null, as a job's stdin always was."""
    raw = sys.stdin.buffer.read()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    try:
        spec = json.loads(raw)
    except ValueError:
        fail("the sandbox spec is not valid JSON")
    command, env = spec.get("command"), spec.get("env")
    if not isinstance(command, list) or not command or not all(_is_clean(part) for part in command):
        fail("the command must be a non-empty list of strings without NUL bytes")
    if not isinstance(env, dict) or not all(_is_clean(k) and k and "=" not in k and _is_clean(v)
                                            for k, v in env.items()):
        fail("environment names and values must be strings without NUL bytes ('=' is not allowed in names)")
    return spec


def pump(source: socket.socket, target: socket.socket) -> None:
    """Move bytes one way until the source ends: spliced through a pipe inside the kernel (no copy through
    this process, which shares the job's cores), or copied where a socket cannot splice."""
    try:
        try:
            _splice_all(source, target)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOSYS):
                raise
            buffer = memoryview(bytearray(BUFFER_BYTES))
            while received := source.recv_into(buffer):
                target.sendall(buffer[:received])
    except OSError:
        pass
    finally:
        try:
            target.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _splice_all(source: socket.socket, target: socket.socket) -> None:
    read_end, write_end = os.pipe()
    try:
        while moved := os.splice(source.fileno(), write_end, BUFFER_BYTES, flags=os.SPLICE_F_MOVE):
            while moved:
                moved -= os.splice(read_end, target.fileno(), moved, flags=os.SPLICE_F_MOVE)
    finally:
        os.close(read_end)
        os.close(write_end)


def _relay(client: socket.socket, socket_path: str) -> None:
    with client, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as upstream:
        try:
            upstream.connect(socket_path)
        except OSError:
            return
        back = threading.Thread(target=pump, args=(upstream, client), daemon=True)
        back.start()
        pump(client, upstream)
        back.join()


def keep_off_the_jobs_cores() -> None:
    """Forwarding is platform work: like keephub's server and the durability sidecar's pusher, it runs on the
    machine's other cores when there are any, so moving the job's bytes costs its training nothing. Threads
    started by this one inherit its affinity."""
    elsewhere = set(range(os.cpu_count() or 1)) - os.sched_getaffinity(0)
    if elsewhere:
        try:
            os.sched_setaffinity(threading.get_native_id(), elsewhere)
        except OSError:
            pass


def _accept_forever(listener: socket.socket, socket_path: str) -> None:
    keep_off_the_jobs_cores()
    while True:
        client, _ = listener.accept()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=_relay, args=(client, socket_path), daemon=True).start()


def open_routes(routes: list[dict]) -> None:
    """Listen on every route before the command starts, so its first request finds keephub."""
    for route in routes:
        listener = socket.create_server((route["host"], int(route["port"])), backlog=256)
        threading.Thread(target=_accept_forever, args=(listener, route["socket"]), daemon=True).start()


def main() -> None:
    spec = read_spec()
    terminated = threading.Event()
    # A handler, not SIG_IGN: ignored signals would stay ignored in the command after exec. keephub sends
    # SIGTERM to every process of the sandbox; this one keeps forwarding so the job can save its work.
    signal.signal(signal.SIGTERM, lambda *_: terminated.set())
    open_routes(spec.get("routes", []))
    if terminated.is_set():
        sys.exit(128 + signal.SIGTERM)
    try:
        child = subprocess.Popen(spec["command"], env=spec["env"], cwd=spec.get("cwd"))
    except FileNotFoundError:
        fail(f"command not found: {spec['command'][0]}", EXIT_NOT_FOUND)
    except PermissionError:
        fail(f"command is not executable: {spec['command'][0]}", EXIT_NOT_FOUND)
    if terminated.is_set():
        child.terminate()
    status = child.wait()
    if status < 0:
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    sys.exit(status)


if __name__ == "__main__":
    main()
