"""A keephub server in a child process on 127.0.0.1, for the demo, the tests and the benchmarks.

It runs the real `keephub serve` (no in-process shortcut), and creates users and tokens with the real
`keephub` admin commands against the same data directory.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import httpx

START_TIMEOUT_SECONDS = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# The extra environment of each LocalServer by its data directory: admin commands on that directory run with it
# too, so that they reach the same database as the server (a database_url given through the environment).
_SERVER_ENV: dict[Path, dict[str, str]] = {}


def keephub_cli(data_dir: Path, *args: str, stdin: str | None = None) -> str:
    """Run the keephub CLI against `data_dir` (with the settings of the LocalServer serving it), `stdin` its
    input, and return its stdout; a failure raises with its stderr."""
    env = {**os.environ, **_SERVER_ENV.get(Path(data_dir).resolve(), {})}
    result = subprocess.run([sys.executable, "-m", "keephub.cli", "--data-dir", str(data_dir), *args],
                            capture_output=True, text=True, timeout=120, env=env, check=False, input=stdin)
    if result.returncode != 0:
        raise RuntimeError(f"keephub {' '.join(args)} failed: {result.stderr}")
    return result.stdout


@dataclass
class LocalServer:
    """One keephub server process; `kill` and `start` again let callers exercise crash safety."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    # Extra environment for the server process, e.g. KEEPHUB_* settings.
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    log_path: Path = field(init=False)
    # Makes the database_url of each server given none in `env` (the tests' PostgreSQL pass: a fresh database
    # per server, so servers never share state); None: SQLite in the data directory, keephub's default.
    database_factory: ClassVar[Callable[[], str] | None] = None

    def __post_init__(self) -> None:
        self.log_path = self.data_dir.parent / f"server-{self.port}.log"
        if LocalServer.database_factory is not None and "KEEPHUB_DATABASE_URL" not in self.env:
            self.env["KEEPHUB_DATABASE_URL"] = LocalServer.database_factory()
        _SERVER_ENV[self.data_dir.resolve()] = self.env

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "keephub.cli", "--data-dir", str(self.data_dir), "serve",
             "--port", str(self.port), "--log-level", os.environ.get("KEEPHUB_TEST_LOG_LEVEL", "warning")],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env},
        )
        deadline = time.time() + START_TIMEOUT_SECONDS
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"keephub exited at start-up:\n{self.log_path.read_text()}")
            try:
                httpx.get(self.url + "/api/models", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"keephub did not start within {START_TIMEOUT_SECONDS} s; see {self.log_path}")

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks run, as in a power cut or an OOM kill."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self, keep_agents: bool = False) -> None:
        """SIGTERM the server. Job agents outlive it, as they should in production; here they are stopped too
        unless `keep_agents`, so a test or demo leaves no job behind."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        if not keep_agents:
            self.kill_agents()

    def agent_pids(self) -> list[int]:
        """The job agents of this server (local, or Slurm's on this machine): they name its URL."""
        marker = f"--server={self.url}".encode()
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/cmdline", "rb") as fh:
                        argv = fh.read().split(b"\0")
                except OSError:
                    continue
                if b"keephub.agent.main" in argv and marker in argv:
                    pids.append(int(entry))
        return pids

    def kill_agents(self) -> None:
        for pid in self.agent_pids():
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def user(self, name: str | None = None, role: str = "write") -> tuple[str, str]:
        """Create a user (a fresh name unless given) and return (name, token)."""
        name = name or f"u{uuid.uuid4().hex[:10]}"
        keephub_cli(self.data_dir, "user", "create", name)
        return name, self.token(name, role)

    def token(self, user: str, role: str = "write") -> str:
        return keephub_cli(self.data_dir, "token", "create", user, "--role", role, "--quiet").strip()
