"""Two keephub servers sharing one PostgreSQL database and one S3 bucket serve the same users and repos.

Each server has its own data directory and port, as two machines behind a load balancer would; they share
only what docs/operations.md says they must: database_url, the [blobs] bucket, signing_key and secrets_key.
They run on the session's PostgreSQL and SeaweedFS (conftest's scale_out_backends).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from cryptography.fernet import Fernet
from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError

from postgres_cluster import PostgresCluster, postgres_bin_dir
from seaweedfs import SeaweedFS

from keephub.devserver import LocalServer as Server

pytestmark = pytest.mark.skipif(postgres_bin_dir() is None, reason="needs PostgreSQL (scripts/setup.sh installs it)")


@pytest.fixture(scope="module")
def pair(scale_out_backends: tuple[PostgresCluster, SeaweedFS, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Server]]:
    """Two servers on one database and one bucket (the same prefix), with the same keys."""
    postgres, store, bucket = scale_out_backends
    shared = {
        "KEEPHUB_DATABASE_URL": postgres.create_database("several"),
        **store.settings_env(bucket, prefix=f"team-{uuid.uuid4().hex[:8]}/"),
        "KEEPHUB_SIGNING_KEY": secrets.token_hex(32),
        "KEEPHUB_SECRETS_KEY": Fernet.generate_key().decode(),
    }
    root = tmp_path_factory.mktemp("several")
    servers = [Server(data_dir=root / name / "data", env=dict(shared)) for name in ("one", "two")]
    for server in servers:
        server.start()
    yield servers
    for server in servers:
        server.stop()


def _api(server: Server, token: str) -> HfApi:
    return HfApi(endpoint=server.url, token=token)


def test_a_push_through_one_server_is_read_through_the_other_at_once(pair: list[Server], tmp_path: Path) -> None:
    one, two = pair
    name, token = one.user()
    repo = f"{name}/shared-{uuid.uuid4().hex[:6]}"
    _api(one, token).create_repo(repo)
    weights = os.urandom(3 * 1024 * 1024 + 17)  # an LFS file (Xet or git-lfs, as the pass uploads)
    (tmp_path / "model.bin").write_bytes(weights)
    commit = _api(one, token).upload_file(path_or_fileobj=str(tmp_path / "model.bin"), path_in_repo="model.bin",
                                          repo_id=repo)
    assert _api(two, token).list_repo_files(repo) == [".gitattributes", "model.bin"]
    assert _api(two, token).repo_info(repo).sha == commit.oid
    fetched = hf_hub_download(repo, "model.bin", endpoint=two.url, token=token, cache_dir=tmp_path / "cache")
    assert Path(fetched).read_bytes() == weights


def test_concurrent_commits_through_both_servers_lose_no_update(pair: list[Server]) -> None:
    """Writers on both servers commit to one branch: those naming a parent commit land or get 412, those
    naming none always land on top of whatever is newest; the branch ends with every acknowledged commit."""
    name, token = pair[0].user()
    repo = f"{name}/race-{uuid.uuid4().hex[:6]}"
    _api(pair[0], token).create_repo(repo)
    acknowledged: list[tuple[str, str]] = []  # (commit id, file it added)
    refused: list[int] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def writer(index: int) -> None:
        api = _api(pair[index % 2], token)
        try:
            for k in range(6):
                path = f"w{index}/{k}.txt"
                parent = api.repo_info(repo).sha if index % 3 else None
                try:
                    info = api.create_commit(repo, operations=[CommitOperationAdd(path, f"{index}.{k}".encode())],
                                             commit_message=path, parent_commit=parent)
                except HfHubHTTPError as exc:
                    assert exc.response is not None and exc.response.status_code == 412, exc
                    with lock:
                        refused.append(index)
                    continue
                with lock:
                    acknowledged.append((info.oid, path))
        except BaseException as exc:  # noqa: BLE001  (re-raised below, in the test's thread)
            failures.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert not failures, failures
    assert len(acknowledged) + len(refused) == 8 * 6
    assert len(acknowledged) >= 8 * 6 // 3  # writers naming no parent never fail
    for server in pair:
        history = {c.commit_id for c in _api(server, token).list_repo_commits(repo)}
        assert {oid for oid, _ in acknowledged} <= history
        assert len(history) == len(acknowledged) + 1  # and nothing else: the repo's initial commit
        files = set(_api(server, token).list_repo_files(repo))
        assert {path for _, path in acknowledged} <= files


def test_a_server_killed_mid_upload_leaves_nothing_half_visible_and_the_retry_through_the_other_lands(
        scale_out_backends: tuple[PostgresCluster, SeaweedFS, str], tmp_path: Path) -> None:
    """kill -9 of the server taking an upload: commits it acknowledged before are all there, the interrupted
    file is not, and the client's retry through the surviving server stores every byte."""
    postgres, store, bucket = scale_out_backends
    shared = {"KEEPHUB_DATABASE_URL": postgres.create_database("killed"),
              **store.settings_env(bucket, prefix=f"killed-{uuid.uuid4().hex[:8]}/"),
              "KEEPHUB_SIGNING_KEY": secrets.token_hex(32), "KEEPHUB_SECRETS_KEY": Fernet.generate_key().decode()}
    victim = Server(data_dir=tmp_path / "victim" / "data", env=dict(shared))
    survivor = Server(data_dir=tmp_path / "survivor" / "data", env=dict(shared))
    victim.start()
    survivor.start()
    try:
        name, token = victim.user()
        repo = f"{name}/kill-{uuid.uuid4().hex[:6]}"
        _api(victim, token).create_repo(repo)
        before = [_api(victim, token).create_commit(repo, operations=[CommitOperationAdd(f"small-{i}.txt", b"%d" % i)],
                                                    commit_message=f"small {i}").oid for i in range(3)]
        big = tmp_path / "big.bin"
        with open(big, "wb") as fh:
            for _ in range(48):
                fh.write(os.urandom(4 * 1024 * 1024))
        upload = subprocess.Popen(
            [sys.executable, "-c", "import sys; from huggingface_hub import HfApi; HfApi(endpoint=sys.argv[1], "
             "token=sys.argv[2]).upload_file(path_or_fileobj=sys.argv[3], path_in_repo='big.bin', repo_id=sys.argv[4])",
             victim.url, token, str(big), repo], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.5)  # the client is hashing and sending (192 MiB take longer than this here)
        victim.kill()
        try:
            upload.wait(20)
        except subprocess.TimeoutExpired:  # hf_xet retries a dead server for minutes; the user gives up first
            upload.kill()
            upload.wait()
        assert upload.returncode != 0, "the upload finished before its server was killed"

        api = _api(survivor, token)
        history = [c.commit_id for c in api.list_repo_commits(repo)]
        assert set(before) <= set(history)
        assert "big.bin" not in api.list_repo_files(repo)
        api.upload_file(path_or_fileobj=str(big), path_in_repo="big.bin", repo_id=repo)
        fetched = hf_hub_download(repo, "big.bin", endpoint=survivor.url, token=token, cache_dir=tmp_path / "cache")
        assert Path(fetched).read_bytes() == big.read_bytes()
        victim.start()  # the killed server comes back on the same database and bucket and sees the same repo
        assert _api(victim, token).repo_info(repo).sha == api.repo_info(repo).sha
    finally:
        victim.stop()
        survivor.stop()
