"""`keephub migrate`: an embedded instance (SQLite + a local blob directory) moved onto PostgreSQL + S3.

The new instance must serve the same repos, history, buckets and bytes: a `snapshot_download` from it matches
the old one byte for byte. The move is resumable: killed part-way, the same command finishes it.
"""

from __future__ import annotations

import filecmp
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from huggingface_hub import CommitOperationAdd, HfApi, snapshot_download

from postgres_cluster import PostgresCluster, postgres_bin_dir
from seaweedfs import SeaweedFS

from keephub.devserver import LocalServer as Server

pytestmark = pytest.mark.skipif(postgres_bin_dir() is None, reason="needs PostgreSQL (scripts/setup.sh installs it)")

# An embedded instance whatever the pass: SQLite in its data directory, bytes in data_dir/blobs and xorbs.
EMBEDDED = {"KEEPHUB_DATABASE_URL": "", "KEEPHUB_BLOB_BACKEND": "local"}


def migrate(data_dir: Path, env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "keephub.cli", "--data-dir", str(data_dir), "migrate", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env})


def snapshot(server: Server, token: str, repo: str, into: Path, **kwargs: object) -> Path:
    return Path(snapshot_download(repo, endpoint=server.url, token=token, cache_dir=into, **kwargs))  # type: ignore[arg-type]


def same_tree(left: Path, right: Path) -> bool:
    names = sorted(p.relative_to(left).as_posix() for p in left.rglob("*") if p.is_file())
    if names != sorted(p.relative_to(right).as_posix() for p in right.rglob("*") if p.is_file()):
        return False
    return all(filecmp.cmp(left / name, right / name, shallow=False) for name in names)


def test_an_embedded_instance_moves_to_postgresql_and_s3(scale_out_backends: tuple[PostgresCluster, SeaweedFS, str],
                                                         tmp_path: Path) -> None:
    postgres, store, bucket_name = scale_out_backends
    old = Server(data_dir=tmp_path / "old" / "data", env=dict(EMBEDDED))
    old.start()
    name, token = old.user()
    api = HfApi(endpoint=old.url, token=token)
    model, data = f"{name}/model-{uuid.uuid4().hex[:6]}", f"{name}/data-{uuid.uuid4().hex[:6]}"
    api.create_repo(model, private=True)
    api.create_repo(data, repo_type="dataset")
    weights = [os.urandom(2 * 1024 * 1024 + i) for i in range(3)]
    for step, blob in enumerate(weights):  # three commits, each with an LFS file and a regular one
        api.create_commit(model, operations=[CommitOperationAdd(f"checkpoint-{step}/model.safetensors", blob),
                                             CommitOperationAdd(f"checkpoint-{step}/step.txt", b"%d" % step)],
                          commit_message=f"checkpoint {step}")
    api.create_branch(model, branch="best")
    api.create_tag(model, tag="v1")
    api.upload_file(path_or_fileobj=b"a,b\n1,2\n", path_in_repo="train.csv", repo_id=data, repo_type="dataset")
    bucket = f"{name}/scratch"
    api.create_bucket(bucket)
    (tmp_path / "outs").mkdir()
    (tmp_path / "outs" / "metrics.json").write_bytes(os.urandom(70_000))
    api.sync_bucket(str(tmp_path / "outs"), f"hf://buckets/{bucket}")
    before = snapshot(old, token, model, tmp_path / "before")
    history = [c.commit_id for c in api.list_repo_commits(model)]
    old.stop()

    database = postgres.create_database("moved")
    prefix = f"moved-{uuid.uuid4().hex[:8]}"
    blob_env = {k: v for k, v in store.settings_env(bucket_name).items()
                if k not in ("KEEPHUB_BLOB_BACKEND", "KEEPHUB_BLOB_BUCKET", "KEEPHUB_BLOB_PREFIX")}
    args = ("--to-database", database, "--to-blobs", f"s3://{bucket_name}/{prefix}")

    interrupted = migrate(old.data_dir, {**EMBEDDED, **blob_env}, *args)
    time.sleep(2.5)  # somewhere in the copy (or already past it on a quick machine)
    interrupted.send_signal(signal.SIGKILL)
    interrupted.wait()
    finished = migrate(old.data_dir, {**EMBEDDED, **blob_env}, *args)
    out, err = finished.communicate(timeout=300)
    assert finished.returncode == 0, err
    assert "all there" in out and "each object verified" in out
    again = migrate(old.data_dir, {**EMBEDDED, **blob_env}, *args)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert "lfs: 0 copied" in out and "xorbs: 0 copied" in out  # nothing left to move

    keys = {"KEEPHUB_SIGNING_KEY": (old.data_dir / "signing.key").read_text().strip()}
    new = Server(data_dir=tmp_path / "new" / "data",
                 env={"KEEPHUB_DATABASE_URL": database, **store.settings_env(bucket_name, prefix=prefix), **keys})
    new.start()
    try:
        moved = HfApi(endpoint=new.url, token=token)  # the same token: tokens moved with the accounts
        assert [c.commit_id for c in moved.list_repo_commits(model)] == history
        assert {b.name for b in moved.list_repo_refs(model).branches} == {"main", "best"}
        assert [t.name for t in moved.list_repo_refs(model).tags] == ["v1"]
        after = snapshot(new, token, model, tmp_path / "after")
        assert same_tree(before, after)
        assert moved.hf_hub_download(data, "train.csv", repo_type="dataset", cache_dir=tmp_path / "d") and \
            Path(moved.hf_hub_download(data, "train.csv", repo_type="dataset",
                                       cache_dir=tmp_path / "d")).read_bytes() == b"a,b\n1,2\n"
        moved.sync_bucket(f"hf://buckets/{bucket}", str(tmp_path / "back"))
        assert (tmp_path / "back" / "metrics.json").read_bytes() == (tmp_path / "outs" / "metrics.json").read_bytes()
        moved.create_repo(f"{name}/after-the-move")  # new ids do not collide with the copied ones
        assert HfApi(endpoint=new.url, token=token).repo_info(model).private
    finally:
        new.stop()


def test_migrate_refuses_a_database_holding_another_instance(scale_out_backends: tuple[PostgresCluster, SeaweedFS, str],
                                                             tmp_path: Path) -> None:
    postgres, _, _ = scale_out_backends
    other = Server(data_dir=tmp_path / "other" / "data", env={"KEEPHUB_DATABASE_URL": postgres.create_database("o")})
    other.start()
    other.user("somebody-else")
    other.stop()
    mine = Server(data_dir=tmp_path / "mine" / "data", env=dict(EMBEDDED))
    mine.start()
    mine.user("me-myself")
    mine.stop()
    refused = migrate(mine.data_dir, EMBEDDED, "--to-database", other.env["KEEPHUB_DATABASE_URL"])
    _, err = refused.communicate(timeout=120)
    assert refused.returncode == 2 and "somebody-else" in err and "empty database" in err
    nothing = migrate(mine.data_dir, EMBEDDED)
    _, err = nothing.communicate(timeout=120)
    assert nothing.returncode == 2 and "--to-database" in err
