"""A live keephub on 127.0.0.1 for the whole session, and the real clients pointed at it.

huggingface_hub reads HF_ENDPOINT when it is imported, so the port is chosen and the environment
set here, before any test module imports a client.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from keephub.devserver import LocalServer as Server
from keephub.devserver import free_port

# The suite runs twice (scripts/test.sh): with hf_xet, as a default install uploads, and with
# KEEPHUB_TEST_XET=off, through the git-lfs path that HF_HUB_DISABLE_XET=1 selects.
XET_ENABLED = os.environ.get("KEEPHUB_TEST_XET", "on") != "off"
# What a job's environment needs so the client inside the sandbox runs in the same mode.
JOB_XET_ENV = {} if XET_ENABLED else {"HF_HUB_DISABLE_XET": "1"}
SESSION_DIR = Path(tempfile.mkdtemp(prefix="keephub-tests-"))
PORT = free_port()
ENDPOINT = f"http://127.0.0.1:{PORT}"
os.environ.update({
    "HF_ENDPOINT": ENDPOINT,
    "HF_HOME": str(SESSION_DIR / "hf-home"),
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_ETAG_TIMEOUT": "30",
    "HF_HUB_DOWNLOAD_TIMEOUT": "60",
    "TOKENIZERS_PARALLELISM": "false",
})
os.environ.pop("HF_TOKEN", None)
if XET_ENABLED:
    os.environ.pop("HF_HUB_DISABLE_XET", None)
else:
    os.environ["HF_HUB_DISABLE_XET"] = "1"


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
