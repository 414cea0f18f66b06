"""A live keephub on 127.0.0.1 for the whole session, and the real clients pointed at it.

huggingface_hub reads HF_ENDPOINT when it is imported, so the port is chosen and the environment
set here, before any test module imports a client.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


SESSION_DIR = Path(tempfile.mkdtemp(prefix="keephub-tests-"))
PORT = free_port()
ENDPOINT = f"http://127.0.0.1:{PORT}"
os.environ.update({
    "HF_ENDPOINT": ENDPOINT,
    "HF_HOME": str(SESSION_DIR / "hf-home"),
    "HF_HUB_DISABLE_XET": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_ETAG_TIMEOUT": "30",
    "HF_HUB_DOWNLOAD_TIMEOUT": "60",
    "TOKENIZERS_PARALLELISM": "false",
})
os.environ.pop("HF_TOKEN", None)


def keephub(data_dir: Path, *args: str) -> str:
    """Run the keephub CLI against `data_dir` and return its stdout."""
    result = subprocess.run([sys.executable, "-m", "keephub.cli", "--data-dir", str(data_dir), *args],
                            capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"keephub {' '.join(args)} failed: {result.stderr}")
    return result.stdout


@dataclass
class Server:
    """A keephub server process; `restart` and `kill` let tests exercise crash safety."""

    data_dir: Path
    port: int
    process: subprocess.Popen | None = None
    # Extra environment for the server process, e.g. KEEPHUB_* settings for a dedicated server.
    env: dict[str, str] = field(default_factory=dict)
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.data_dir.parent / f"server-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "keephub.cli", "--data-dir", str(self.data_dir), "serve",
             "--port", str(self.port), "--log-level", "warning"],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env},
        )
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"keephub exited at start-up:\n{self.log_path.read_text()}")
            try:
                httpx.get(self.url + "/api/models", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("keephub did not start within 30 s")

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks run, as in a power cut or OOM kill."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def user(self, name: str | None = None, role: str = "write") -> tuple[str, str]:
        """Create a fresh user and return (name, token)."""
        name = name or f"u{uuid.uuid4().hex[:10]}"
        keephub(self.data_dir, "user", "create", name)
        return name, self.token(name, role)

    def token(self, user: str, role: str = "write") -> str:
        return keephub(self.data_dir, "token", "create", user, "--role", role, "--quiet").strip()


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    srv = Server(data_dir=SESSION_DIR / "data", port=PORT)
    srv.start()
    yield srv
    srv.stop()
    shutil.rmtree(SESSION_DIR, ignore_errors=True)


@pytest.fixture
def alice(server: Server) -> tuple[str, str]:
    """A fresh user with a write token, per test (so tests never share namespaces)."""
    return server.user()


@pytest.fixture
def api(server: Server, alice: tuple[str, str]):  # type: ignore[no-untyped-def]
    from huggingface_hub import HfApi

    return HfApi(endpoint=server.url, token=alice[1])


@pytest.fixture
def repo_id(api, alice: tuple[str, str]) -> str:  # type: ignore[no-untyped-def]
    repo = f"{alice[0]}/repo-{uuid.uuid4().hex[:8]}"
    api.create_repo(repo)
    return repo
