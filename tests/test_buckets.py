"""Buckets through the real clients: `HfApi`'s bucket methods, `hf buckets ...`, `hf sync`, and raw requests for
what the clients never send (bad input, other users' content).

huggingface_hub moves bucket bytes through hf_xet whatever `HF_HUB_DISABLE_XET` says (its bucket methods call
hf_xet directly), so every test runs in both modes of the suite; in the git-lfs mode `HfFileSystem` reads a
bucket file with a plain GET of resolve instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from conftest import Server
from huggingface_hub import HfApi, HfFileSystem
from huggingface_hub.errors import BucketBatchError, BucketNotFoundError, HfHubHTTPError

from keephub.devserver import free_port

HF_CLI = str(Path(sys.executable).with_name("hf"))


def hf(server: Server, token: str, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    """This environment's `hf` executable, run as a user would with HF_TOKEN and HF_ENDPOINT set."""
    env = {**os.environ, "HF_TOKEN": token, "HF_ENDPOINT": server.url}
    result = subprocess.run([HF_CLI, *args], capture_output=True, text=True, env=env, timeout=120)
    if ok:
        assert result.returncode == 0, f"hf {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def new_bucket(api: HfApi, owner: str, **kwargs: object) -> str:
    bucket = f"{owner}/b-{uuid.uuid4().hex[:8]}"
    api.create_bucket(bucket, **kwargs)  # type: ignore[arg-type]
    return bucket


def files_of(api: HfApi, bucket: str, prefix: str | None = None) -> dict[str, int]:
    return {f.path: f.size for f in api.list_bucket_tree(bucket, prefix, recursive=True)}


def raw(server: Server, token: str | None, method: str, path: str, headers: dict | None = None,
        **kwargs: object) -> httpx.Response:
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.request(method, server.url + path, headers={**auth, **(headers or {})}, timeout=60,
                         **kwargs)  # type: ignore[arg-type]


# -- buckets ---------------------------------------------------------------------------------------------
def test_create_info_list_settings_move_delete(server: Server, api: HfApi, alice) -> None:
    name, _ = alice
    bucket = f"{name}/models-{uuid.uuid4().hex[:6]}"
    url = api.create_bucket(bucket, private=True)
    assert url.bucket_id == bucket and url.url == f"{server.url}/buckets/{bucket}"
    with pytest.raises(HfHubHTTPError) as exists:
        api.create_bucket(bucket)
    assert exists.value.response.status_code == 409
    assert api.create_bucket(bucket, exist_ok=True).bucket_id == bucket
    assert api.create_bucket(bucket.split("/")[1], exist_ok=True).bucket_id == bucket  # "me" namespace

    info = api.bucket_info(bucket)
    assert (info.id, info.private, info.size, info.total_files) == (bucket, True, 0, 0)
    api.batch_bucket_files(bucket, add=[(b"x" * 10, "a.txt"), (b"y" * 5, "d/b.txt")])
    info = api.bucket_info(bucket)
    assert (info.size, info.total_files) == (15, 2)
    other = new_bucket(api, name)
    assert {b.id for b in api.list_buckets()} == {bucket, other}
    assert [b.id for b in api.list_buckets(name, search="models-")] == [bucket]

    stranger = HfApi(endpoint=server.url, token=server.user()[1])
    with pytest.raises(BucketNotFoundError):
        stranger.bucket_info(bucket)
    assert [b.id for b in stranger.list_buckets(name)] == [other]
    api.update_bucket_settings(bucket, private=False)
    assert stranger.bucket_info(bucket).private is False

    renamed = f"{name}/renamed-{uuid.uuid4().hex[:6]}"
    api.move_bucket(bucket, renamed)
    with pytest.raises(BucketNotFoundError):
        api.bucket_info(bucket)
    assert files_of(api, renamed) == {"a.txt": 10, "d/b.txt": 5}
    with pytest.raises(HfHubHTTPError) as clash:
        api.move_bucket(renamed, other)
    assert clash.value.response.status_code == 409

    api.delete_bucket(renamed)
    with pytest.raises(BucketNotFoundError):
        api.bucket_info(renamed)
    api.delete_bucket(renamed, missing_ok=True)
    with pytest.raises(BucketNotFoundError):
        api.delete_bucket(renamed)


def test_access_rules_match_repos(server: Server, api: HfApi, alice) -> None:
    name, token = alice
    private = new_bucket(api, name, private=True)
    public = new_bucket(api, name)
    api.batch_bucket_files(public, add=[(b"public bytes", "p.txt")])
    _, reader_token = name, server.token(name, "read")
    reader = HfApi(endpoint=server.url, token=reader_token)
    assert [f.path for f in reader.list_bucket_tree(private)] == []
    with pytest.raises(ConnectionError, match="403 Forbidden.*xet-write-token"):  # hf_xet asks for a CAS token first
        reader.batch_bucket_files(private, add=[(b"nope", "n.txt")])
    with pytest.raises(HfHubHTTPError) as read_only:
        reader.batch_bucket_files(private, delete=["n.txt"])
    assert read_only.value.response.status_code == 403 and "read-only" in str(read_only.value)

    other = HfApi(endpoint=server.url, token=server.user()[1])
    anonymous = HfApi(endpoint=server.url, token=False)
    for caller in (other, anonymous):
        with pytest.raises(BucketNotFoundError):
            caller.bucket_info(private)
        assert caller.get_bucket_file_metadata(public, "p.txt").size == 12
    with pytest.raises(HfHubHTTPError) as foreign:
        other.batch_bucket_files(public, delete=["p.txt"])
    assert foreign.value.response.status_code == 403 and f"namespace '{name}'" in str(foreign.value)
    with pytest.raises(HfHubHTTPError) as elsewhere:
        other.create_bucket(f"{name}/mine")
    assert elsewhere.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError):
        other.delete_bucket(public)
    assert raw(server, None, "DELETE", f"/api/buckets/{public}").status_code == 401
    assert files_of(api, public) == {"p.txt": 12}


# -- files -----------------------------------------------------------------------------------------------
def test_write_replaces_delete_copy_download(server: Server, api: HfApi, alice, tmp_path: Path) -> None:
    name, token = alice
    bucket = new_bucket(api, name)
    local = tmp_path / "weights.bin"
    local.write_bytes(os.urandom(2_000_000))
    api.batch_bucket_files(bucket, add=[(local, "ckpt/weights.bin"), (b"v1", "notes.txt"), (b"", "empty")])
    api.batch_bucket_files(bucket, add=[(b"version two", "notes.txt")], delete=["empty"])
    assert files_of(api, bucket) == {"ckpt/weights.bin": 2_000_000, "notes.txt": 11}  # no history: replaced

    api.download_bucket_files(bucket, [("ckpt/weights.bin", tmp_path / "out/w.bin"), ("notes.txt", tmp_path / "n")])
    assert (tmp_path / "out/w.bin").read_bytes() == local.read_bytes()
    assert (tmp_path / "n").read_bytes() == b"version two"
    meta = api.get_bucket_file_metadata(bucket, "ckpt/weights.bin")
    assert meta.size == 2_000_000 and meta.xet_file_data.refresh_route.endswith(f"/api/buckets/{bucket}/xet-read-token")

    part = raw(server, token, "GET", f"/buckets/{bucket}/resolve/ckpt%2Fweights.bin",
               headers={"Range": "bytes=1000-1999"})
    assert part.status_code == 206 and part.content == local.read_bytes()[1000:2000]
    assert raw(server, token, "GET", f"/buckets/{bucket}/resolve/notes.txt").content == b"version two"
    missing = raw(server, token, "HEAD", f"/buckets/{bucket}/resolve/nope.txt")
    assert missing.status_code == 404 and missing.headers["x-error-code"] == "EntryNotFound"

    target = new_bucket(api, name, private=True)
    api.copy_files(f"hf://buckets/{bucket}/ckpt/", f"hf://buckets/{target}/backup/")
    repo = f"{name}/model-{uuid.uuid4().hex[:6]}"
    api.create_repo(repo)
    api.upload_file(path_or_fileobj=local, path_in_repo="model.bin", repo_id=repo)
    api.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id=repo)
    api.copy_files(f"hf://{repo}/", f"hf://buckets/{target}/from-repo/")
    assert files_of(api, target) == {"backup/weights.bin": 2_000_000, "from-repo/model.bin": 2_000_000,
                                     "from-repo/config.json": 2}
    api.download_bucket_files(target, [("from-repo/model.bin", tmp_path / "m.bin")])
    assert (tmp_path / "m.bin").read_bytes() == local.read_bytes()

    fs = HfFileSystem(endpoint=server.url, token=token)  # Xet off: a plain GET of resolve
    assert fs.cat_file(f"buckets/{bucket}/notes.txt") == b"version two"
    assert sorted(fs.ls(f"buckets/{bucket}", detail=False)) == [f"buckets/{bucket}/ckpt", f"buckets/{bucket}/notes.txt"]


def test_tree_pages_prefixes_and_paths_info(paged_server: Server, tmp_path: Path) -> None:
    """Pages of 3 entries (KEEPHUB_TREE_PAGE_SIZE=3): the client follows the Link header to the end."""
    name, token = paged_server.user()
    api = HfApi(endpoint=paged_server.url, token=token)
    bucket = new_bucket(api, name)
    paths = ["a.txt", "logs.json", "logs/1.txt", "logs/2.txt", "logs/deep/3.txt", "logs_old/4.txt", "z/5.txt",
             "checkpoint-1/w", "checkpoint-2/w", "checkpoint-20/w"]
    api.batch_bucket_files(bucket, add=[(p.encode(), p) for p in paths])
    assert sorted(files_of(api, bucket)) == sorted(paths)
    top = [(e.type, e.path) for e in api.list_bucket_tree(bucket)]
    assert top == [("file", "a.txt"), ("directory", "checkpoint-1"), ("directory", "checkpoint-2"),
                   ("directory", "checkpoint-20"), ("file", "logs.json"), ("directory", "logs"),
                   ("directory", "logs_old"), ("directory", "z")]
    assert [(e.type, e.path) for e in api.list_bucket_tree(bucket, "logs")] == [
        ("file", "logs/1.txt"), ("file", "logs/2.txt"), ("directory", "logs/deep")]
    assert sorted(files_of(api, bucket, "logs/")) == ["logs/1.txt", "logs/2.txt", "logs/deep/3.txt"]
    assert sorted(files_of(api, bucket, "checkpoint-2")) == ["checkpoint-2/w", "checkpoint-20/w"]  # as documented
    assert [e.path for e in api.list_bucket_tree(bucket, "checkpoint-")] == [
        "checkpoint-1", "checkpoint-2", "checkpoint-20"]
    page = raw(paged_server, token, "GET", f"/api/buckets/{bucket}/tree", params={"recursive": "true"})
    assert len(page.json()) == 3 and 'rel="next"' in page.headers["link"]
    info = api.get_bucket_paths_info(bucket, ["logs/2.txt", "missing", "logs", "a.txt"])
    assert [(f.path, f.size) for f in info] == [("logs/2.txt", 10), ("a.txt", 5)]
    bad_cursor = raw(paged_server, token, "GET", f"/api/buckets/{bucket}/tree", params={"cursor": "!!"})
    assert bad_cursor.status_code == 400 and "cursor" in bad_cursor.json()["error"]


def test_sync_both_ways_with_api_and_cli(server: Server, api: HfApi, alice, tmp_path: Path) -> None:
    name, token = alice
    bucket = new_bucket(api, name)
    source = tmp_path / "run"
    (source / "ckpt").mkdir(parents=True)
    (source / "metrics.json").write_text('{"loss": 0.5}')
    (source / "ckpt" / "model.safetensors").write_bytes(os.urandom(500_000))
    plan = api.sync_bucket(str(source), f"hf://buckets/{bucket}/out")
    assert plan.summary()["uploads"] == 2
    assert api.sync_bucket(str(source), f"hf://buckets/{bucket}/out").summary()["uploads"] == 0  # mtimes kept

    time.sleep(1.1)  # the client compares mtimes with a one-second window
    (source / "metrics.json").write_text('{"loss": 0.25}')
    (source / "ckpt" / "model.safetensors").unlink()
    synced = hf(server, token, "sync", str(source), f"hf://buckets/{bucket}/out", "--delete")
    assert "metrics.json" in synced.stdout + synced.stderr or synced.returncode == 0
    assert files_of(api, bucket) == {"out/metrics.json": 14}

    back = tmp_path / "back"
    hf(server, token, "buckets", "sync", f"hf://buckets/{bucket}/out", str(back))
    assert (back / "metrics.json").read_text() == '{"loss": 0.25}'
    api.batch_bucket_files(bucket, add=[(b"new", "out/more/new.txt")])
    api.sync_bucket(f"hf://buckets/{bucket}/out", str(back))
    assert sorted(str(p.relative_to(back)) for p in back.rglob("*") if p.is_file()) == [
        "metrics.json", "more/new.txt"]


def test_hf_buckets_cli(server: Server, api: HfApi, alice, tmp_path: Path) -> None:
    name, token = alice
    bucket = f"{name}/cli-{uuid.uuid4().hex[:6]}"
    created = json.loads(hf(server, token, "buckets", "create", bucket, "--private", "--format", "json").stdout)
    assert created == {"uri": f"hf://buckets/{bucket}", "url": f"{server.url}/buckets/{bucket}"}
    hf(server, token, "buckets", "create", bucket, "--exist-ok")
    assert hf(server, token, "buckets", "create", bucket, ok=False).returncode != 0
    listed = json.loads(hf(server, token, "buckets", "list", "--format", "json").stdout)
    assert [b["id"] for b in listed] == [bucket]

    (tmp_path / "f.txt").write_text("hello")
    hf(server, token, "buckets", "cp", str(tmp_path / "f.txt"), f"hf://buckets/{bucket}/dir/")
    hf(server, token, "cp", f"hf://buckets/{bucket}/dir/f.txt", str(tmp_path / "g.txt"))
    assert (tmp_path / "g.txt").read_text() == "hello"
    files = json.loads(hf(server, token, "buckets", "list", f"{bucket}/dir", "-R", "--format", "json").stdout)
    assert [f["path"] for f in files] == ["dir/f.txt"]
    info = json.loads(hf(server, token, "buckets", "info", bucket, "--format", "json").stdout)
    assert (info["id"], info["private"], info["total_files"]) == (bucket, True, 1)
    hf(server, token, "buckets", "settings", bucket, "--public")
    assert api.bucket_info(bucket).private is False
    hf(server, token, "buckets", "rm", f"{bucket}/dir/f.txt", "--yes")
    assert files_of(api, bucket) == {}
    moved = f"{name}/moved-{uuid.uuid4().hex[:6]}"
    hf(server, token, "buckets", "move", bucket, moved)
    hf(server, token, "buckets", "delete", moved, "--yes")
    missing = hf(server, token, "buckets", "info", moved, ok=False)
    assert missing.returncode != 0 and f"Bucket '{moved}' not found" in missing.stderr


def test_bucket_and_namespace_pages(server: Server, api: HfApi, alice) -> None:
    name, token = alice
    bucket = new_bucket(api, name, private=True)
    api.batch_bucket_files(bucket, add=[(b"x" * 2000, "ckpt/model.bin")])
    page = raw(server, token, "GET", f"/buckets/{bucket}")
    assert page.status_code == 200 and "ckpt/model.bin" in page.text and "2.0 kB" in page.text
    assert f'href="/buckets/{bucket}/resolve/ckpt/model.bin"' in page.text
    twin = raw(server, token, "GET", f"/buckets/{bucket}", params={"format": "json"}).json()
    assert (twin["id"], twin["totalFiles"], [f["path"] for f in twin["files"]]) == (bucket, 1, ["ckpt/model.bin"])
    assert raw(server, None, "GET", f"/buckets/{bucket}").status_code == 404
    listed = raw(server, token, "GET", f"/{name}", params={"format": "json"}).json()
    assert [(e["id"], e["type"]) for e in listed] == [(bucket, "bucket")]
    assert f'href="/buckets/{bucket}"' in raw(server, token, "GET", f"/{name}").text
    assert raw(server, None, "GET", f"/{name}", params={"format": "json"}).json() == []


# -- bad input ---------------------------------------------------------------------------------------------
def batch(server: Server, token: str, bucket: str, *operations: dict | str) -> httpx.Response:
    lines = [op if isinstance(op, str) else json.dumps(op) for op in operations]
    return raw(server, token, "POST", f"/api/buckets/{bucket}/batch", content="\n".join(lines).encode(),
               headers={"Content-Type": "application/x-ndjson"})


def test_bad_input_is_refused_whole_and_changes_nothing(server: Server, api: HfApi, alice) -> None:
    name, token = alice
    bucket = new_bucket(api, name)
    api.batch_bucket_files(bucket, add=[(b"kept", "kept.txt")])
    kept = next(iter(api.get_bucket_paths_info(bucket, ["kept.txt"])))
    good = {"type": "addFile", "path": "copy.txt", "xetHash": kept.xet_hash, "mtime": 1}
    for path, problem in [("../escape", "'..'"), ("a/./b", "'.'"), ("a//b", "empty"), ("/abs", "absolute"),
                          ("a\\b", "backslash"), ("a\x00b", "NUL byte"), ("a\nb", "control character"),
                          ("", "missing")]:
        refused = batch(server, token, bucket, good, {"type": "addFile", "path": path, "xetHash": kept.xet_hash})
        assert refused.status_code == 422, (path, refused.text)
        failed = refused.json()["failed"]
        assert len(failed) == 1 and problem in failed[0]["error"] and "nothing in this batch" in failed[0]["error"]
    never = "ab" * 32
    for operation, problem in [
        ({"type": "addFile", "path": "x", "xetHash": never}, "never uploaded to bucket"),
        ({"type": "addFile", "path": "x", "xetHash": "XYZ"}, "not a Xet hash"),
        ({"type": "addFile", "path": "x", "xetHash": kept.xet_hash, "mtime": "yesterday"}, "'mtime'"),
        ({"type": "renameFile", "path": "x"}, "unknown operation type"),
        ({"type": "copyFile", "path": "x", "xetHash": kept.xet_hash, "sourceRepoType": "bucket",
          "sourceRepoId": f"{name}/no-such-bucket"}, "not found"),
        ({"type": "copyFile", "path": "x", "xetHash": kept.xet_hash, "sourceRepoType": "tarball",
          "sourceRepoId": bucket}, "sourceRepoType"),
    ]:
        refused = batch(server, token, bucket, good, operation)
        assert refused.status_code == 422 and problem in refused.json()["failed"][0]["error"], refused.text
    with pytest.raises(BucketBatchError) as error:  # as the client shows it
        api.batch_bucket_files(bucket, copy=[("bucket", bucket, never, "y")])
    assert "holds no file with Xet hash" in str(error.value)
    for body, problem in [("not json", "not JSON"), ("[1]", "not a JSON object"), ("", "empty")]:
        refused = batch(server, token, bucket, body)
        assert refused.status_code == 400 and problem in refused.json()["error"]
    assert files_of(api, bucket) == {"kept.txt": 4}

    for bad_name in ("bad..name", "-dash", "x" * 97, "sp ace"):
        created = raw(server, token, "POST", f"/api/buckets/{name}/{bad_name}", json={})
        assert created.status_code in (400, 404), (bad_name, created.text)
    region = raw(server, token, "POST", f"/api/buckets/{name}/regional", json={"region": "us"})
    assert region.status_code == 400 and "region" in region.json()["error"]
    assert raw(server, token, "POST", f"/api/buckets/{bucket}/paths-info",
               json={"paths": ["a"] * 1001}).status_code == 400
    traversal = raw(server, token, "GET", f"/buckets/{bucket}/resolve/..%2Fkept.txt")
    assert traversal.status_code == 400 and "'..'" in traversal.json()["error"]
    assert [b.id for b in api.list_buckets()] == [bucket]


def test_content_is_reachable_only_through_its_bucket(server: Server, api: HfApi, alice) -> None:
    """Content uploaded to one user's private bucket cannot be added to, or read through, anyone else's."""
    name, token = alice
    secret = new_bucket(api, name, private=True)
    api.batch_bucket_files(secret, add=[(os.urandom(100_000), "secret.bin")])
    xet_hash = next(iter(api.list_bucket_tree(secret))).xet_hash
    thief, thief_token = server.user()
    loot = new_bucket(HfApi(endpoint=server.url, token=thief_token), thief)
    refused = batch(server, thief_token, loot, {"type": "addFile", "path": "s", "xetHash": xet_hash})
    assert refused.status_code == 422 and "never uploaded" in refused.json()["failed"][0]["error"]
    copied = batch(server, thief_token, loot, {"type": "copyFile", "path": "s", "xetHash": xet_hash,
                                                "sourceRepoType": "bucket", "sourceRepoId": secret})
    assert copied.status_code == 422 and "not found" in copied.json()["failed"][0]["error"]
    cas = raw(server, thief_token, "GET", f"/api/buckets/{loot}/xet-read-token").json()
    plan = httpx.get(f"{cas['casUrl']}/v1/reconstructions/{xet_hash}",
                     headers={"Authorization": f"Bearer {cas['accessToken']}"})
    assert plan.status_code == 404
    read = raw(server, token, "GET", f"/api/buckets/{secret}/xet-read-token").json()
    upload = httpx.post(f"{read['casUrl']}/v1/shards", content=b"",
                        headers={"Authorization": f"Bearer {read['accessToken']}"})
    assert upload.status_code == 403
    write = raw(server, token, "GET", f"/api/buckets/{secret}/xet-write-token").json()
    api.delete_bucket(secret)
    gone = httpx.post(f"{write['casUrl']}/v1/shards", content=b"",
                      headers={"Authorization": f"Bearer {write['accessToken']}"})
    assert gone.status_code == 401 and "no longer exists" in gone.json()["error"]


def test_garbage_collection_keeps_what_buckets_hold(paged_server: Server, tmp_path: Path) -> None:
    name, token = paged_server.user()
    api = HfApi(endpoint=paged_server.url, token=token)
    bucket = new_bucket(api, name)
    data = os.urandom(300_000)
    api.batch_bucket_files(bucket, add=[(data, "kept.bin"), (os.urandom(200_000), "dropped.bin")])
    api.batch_bucket_files(bucket, delete=["dropped.bin"])
    env = {**os.environ, **paged_server.env, "KEEPHUB_XET_GC_GRACE_SECONDS": "0"}
    done = subprocess.run([sys.executable, "-m", "keephub.cli", "--data-dir", str(paged_server.data_dir), "gc"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert "unreferenced" in done.stdout and " 1 unreferenced" in done.stdout, done.stdout + done.stderr
    api.download_bucket_files(bucket, [("kept.bin", tmp_path / "k")])
    assert (tmp_path / "k").read_bytes() == data


# -- job volumes -----------------------------------------------------------------------------------------
def test_job_volumes_are_checked_at_submission(server: Server, api: HfApi, alice, tmp_path: Path) -> None:
    name, token = alice
    data = new_bucket(api, name, private=True)
    api.batch_bucket_files(data, add=[(b"1,2\n", "inputs/train.csv")])
    others = new_bucket(HfApi(endpoint=server.url, token=(other := server.user())[1]), other[0], private=True)

    def submit(*volumes: dict, with_token: str = token) -> httpx.Response:
        return raw(server, with_token, "POST", f"/api/jobs/{name}", json={
            "command": ["python", "-c", "print(1)"], "dockerImage": "ghcr.io/astral-sh/uv:python3.12-bookworm",
            "volumes": list(volumes)})

    def volume(**fields: object) -> dict:
        return {"type": "bucket", "source": data, "mountPath": "/data", **fields}

    for bad, problem in [
        (volume(mountPath="data"), "absolute"), (volume(mountPath="/data/../etc"), "'..'"),
        (volume(mountPath="/usr/local"), "/usr"), (volume(mountPath="/workspace"), "cannot replace /workspace"),
        (volume(mountPath="/"), "cannot replace /"), (volume(mountPath="/opt"), "/opt/keephub"),
        (volume(mountPath="/data/-x"), "starting with '-'"), (volume(mountPath="/data\n--bind"), "control"),
        (volume(type="tarball"), "unknown volume type"), (volume(source="no-namespace"), "namespace/name"),
        (volume(revision="main"), "no revisions"), (volume(path="../up"), "'..'"),
        ({"type": "model", "source": f"{name}/m", "mountPath": "/m", "readOnly": False}, "read-only"),
    ]:
        refused = submit(bad)
        assert refused.status_code == 422 and problem in refused.json()["error"], (bad, refused.text)
    twice = submit(volume(), volume(mountPath="/data/"))
    assert twice.status_code == 422 and "both mount at '/data'" in twice.json()["error"]
    assert submit(volume(source=f"{name}/no-such-bucket")).status_code == 404
    assert submit(volume(source=others)).status_code == 404
    assert submit({"type": "model", "source": f"{name}/no-such-model", "mountPath": "/m"}).status_code == 404
    read_only = submit(volume(), with_token=server.token(name, "read"))
    assert read_only.status_code == 403
    assert submit(volume(readOnly=True, path="nothing-here")).status_code == 404
    assert list(api.list_jobs(namespace=name)) == []
    accepted = submit(volume(path="inputs"), volume(source=data, mountPath="/out", path="run-1"))
    assert accepted.status_code == 200, accepted.text
    assert api.wait_for_job(job_id=accepted.json()["id"], namespace=name, timeout=120).status.stage == "COMPLETED"


def test_run_uv_job_uploads_the_script_to_the_jobs_artifacts_bucket(server: Server, api: HfApi, alice,
                                                                      tmp_path: Path) -> None:
    name, token = alice
    script = tmp_path / "train.py"
    script.write_text("print('training')\n")
    job = api.run_uv_job(str(script))
    assert "training" in list(api.fetch_job_logs(job_id=job.id, follow=True))
    artifacts = f"{name}/jobs-artifacts"
    assert api.bucket_info(artifacts).private is True
    (folder,) = {f.path.split("/")[0] for f in api.list_bucket_tree(artifacts, recursive=True)}
    api.download_bucket_files(artifacts, [(f"{folder}/train.py", tmp_path / "back.py")])
    assert (tmp_path / "back.py").read_text() == script.read_text()

    cli = hf(server, token, "jobs", "uv", "run", str(script))
    assert f"saved in this bucket: {server.url}/buckets/{artifacts}" in cli.stdout + cli.stderr
    assert "training" in cli.stdout
    assert len({f.path.split("/")[0] for f in api.list_bucket_tree(artifacts, recursive=True)}) == 2


@pytest.fixture(scope="module")
def paged_server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A server of this module's own, with tree pages of 3 entries and data a gc run may sweep."""
    srv = Server(data_dir=tmp_path_factory.mktemp("paged") / "data", port=free_port(),
                 env={"KEEPHUB_TREE_PAGE_SIZE": "3"})
    srv.start()
    yield srv
    srv.stop()




# -- the agent's volume sync (keephub.agent.volume_sync) ---------------------------------------------------
def test_volume_sync_pulls_pushes_verifies_and_never_follows_links(server: Server, api: HfApi, alice,
                                                                   tmp_path: Path) -> None:
    from keephub.agent.volume_sync import BucketVolume

    name, _ = alice
    bucket = new_bucket(api, name, private=True)
    api.batch_bucket_files(bucket, add=[(b"print('hi')\n", "run-1/train.py"), (b"other", "run-2/x")])
    volume = BucketVolume(api, bucket, "run-1", tmp_path / "mnt")
    pulled = volume.pull()
    assert (pulled.files, pulled.verified) == (1, True)
    assert (tmp_path / "mnt/train.py").read_text() == "print('hi')\n"

    (tmp_path / "mnt/ckpt").mkdir()
    (tmp_path / "mnt/ckpt/model.bin").write_bytes(os.urandom(400_000))
    (tmp_path / "secret").write_text("host file")
    (tmp_path / "mnt/leak").symlink_to(tmp_path / "secret")
    (tmp_path / "mnt/leakdir").symlink_to(tmp_path)
    first = volume.push()
    assert (first.files, first.deferred) == (0, 1)  # new since the last scan: may still be being written
    second = volume.push()
    assert (second.files, second.bytes, second.verified) == (1, 400_000, True)
    (tmp_path / "mnt/train.py").unlink()
    (tmp_path / "mnt/log.txt").write_text("step 1\n")
    final = volume.push(final=True)
    assert (final.files, final.deleted, final.verified) == (1, 1, True)
    assert files_of(api, bucket) == {"run-1/ckpt/model.bin": 400_000, "run-1/log.txt": 7, "run-2/x": 5}
    assert volume.push(final=True).files == 0
    assert final.record()["kind"] == "bucket-sync"


def test_volume_sync_keeps_every_closed_file_of_a_killed_job(server: Server, api: HfApi, alice,
                                                             tmp_path: Path) -> None:
    """A writer killed mid-file: after the final push every file it closed is in the bucket, byte for byte."""
    import hashlib
    import signal
    import threading

    from keephub.agent.volume_sync import BucketVolume

    name, _ = alice
    bucket = new_bucket(api, name)
    mount = tmp_path / "out"
    mount.mkdir()
    writer = subprocess.Popen([sys.executable, "-c", (
        "import os, sys, time\n"
        "for step in range(1000):\n"
        "    with open(f'{sys.argv[1]}/ckpt-{step}.bin', 'wb') as f:\n"
        "        f.write(os.urandom(150_000))\n"
        "        f.flush()\n"
        "    print(step, flush=True)\n"
        "    time.sleep(0.05)\n"), str(mount)], stdout=subprocess.PIPE, text=True)
    volume = BucketVolume(api, bucket, "job-1", mount)
    stop, reports = threading.Event(), []
    follower = threading.Thread(target=volume.follow, args=(stop, reports.append, 0.3))
    follower.start()
    assert writer.stdout is not None
    closed = -1
    while closed < 15:
        closed = int(writer.stdout.readline())
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    closed = max([closed] + [int(line) for line in writer.stdout.read().split()])
    stop.set()
    follower.join(120)
    assert reports[-1].final and reports[-1].verified and reports[-1].error is None
    held = {f.path: f for f in api.list_bucket_tree(bucket, "job-1", recursive=True)}
    for step in range(closed + 1):
        local = (mount / f"ckpt-{step}.bin").read_bytes()
        assert held[f"job-1/ckpt-{step}.bin"].size == len(local) == 150_000
    api.download_bucket_files(bucket, [(f"job-1/ckpt-{closed}.bin", tmp_path / "last")])
    last = (mount / f"ckpt-{closed}.bin").read_bytes()
    assert hashlib.sha256((tmp_path / "last").read_bytes()).digest() == hashlib.sha256(last).digest()
    assert sum(r.files for r in reports) >= closed + 1 and any(not r.final and r.files for r in reports)
