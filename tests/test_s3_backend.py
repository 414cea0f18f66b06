"""keephub on the S3 backend, against a real SeaweedFS with real identities, with the real clients.

Downloads of LFS objects are redirects to presigned URLs and Xet reconstructions name presigned xorb URLs,
so bytes go from SeaweedFS to the client without keephub; access checks come first; the S3 server refuses
altered, expired or re-pointed URLs; an S3 outage is a 503 naming the backend, leaves nothing half-visible,
and ends without a restart; `keephub serve` refuses S3 settings it cannot use.

The tests marked `once` run in scripts/test.sh's first pass only: its second runs every test on S3, so what
they check is what the S3 backend does, not the pass's upload path or executor. The gibibyte test (multipart
uploads of either kind) and the jobs test (an executor's job reaching keephub) run in both.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import Server, free_port, relay
from seaweedfs import SeaweedFS

PRESIGN_TTL = 10


@pytest.fixture(scope="module")
def s3hub(seaweedfs: SeaweedFS, s3_bucket: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(data_dir=tmp_path_factory.mktemp("s3hub") / "data", port=free_port(),
                 env={**seaweedfs.settings_env(s3_bucket, "hub/"), "KEEPHUB_BLOB_PRESIGN_TTL_SECONDS": str(PRESIGN_TTL),
                      "KEEPHUB_MAX_REGULAR_FILE_BYTES": "1000"})
    srv.start()
    yield srv
    srv.stop()


def run_client(srv: Server, token: str, hf_home: Path, code: str, xet: bool) -> str:
    """Client code in a fresh interpreter: huggingface_hub reads HF_HUB_DISABLE_XET when it is imported."""
    env = {**os.environ, "HF_ENDPOINT": srv.url, "HF_HOME": str(hf_home), "HF_TOKEN": token}
    env.pop("HF_HUB_DISABLE_XET", None)
    if not xet:
        env["HF_HUB_DISABLE_XET"] = "1"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def lfs_upload(srv: Server, token: str, repo_id: str, path: str, data: bytes) -> str:
    """Upload and commit one git-lfs file with raw HTTP (no client retries hide a status); returns the oid."""
    http = httpx.Client(base_url=srv.url, headers={"authorization": f"Bearer {token}"}, timeout=60)
    oid = hashlib.sha256(data).hexdigest()
    batch = http.post(f"/{repo_id}.git/info/lfs/objects/batch",
                      json={"operation": "upload", "objects": [{"oid": oid, "size": len(data)}]}).json()
    actions = batch["objects"][0].get("actions")
    if actions:
        put = httpx.put(actions["upload"]["href"], content=data, timeout=60)
        assert put.status_code == 200, put.text
    op = {"key": "lfsFile", "value": {"path": path, "algo": "sha256", "oid": oid, "size": len(data)}}
    body = "\n".join(json.dumps(x) for x in [{"key": "header", "value": {"summary": "add"}}, op])
    assert http.post(f"/api/models/{repo_id}/commit/main", content=body,
                     headers={"content-type": "application/x-ndjson"}).status_code == 200
    return oid


@pytest.mark.once
def test_lfs_download_is_a_redirect_to_the_object(s3hub: Server, seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    """Uploaded with git-lfs (hf_xet off): /resolve answers 302 to a presigned URL with the Hub's metadata
    headers, and hf_hub_download, snapshot_download and a ranged download get exact bytes through it."""
    name, token = s3hub.user()
    repo_id = f"{name}/lfs-{uuid.uuid4().hex[:6]}"
    data = os.urandom(3_000_000)
    (tmp_path / "w.bin").write_bytes(data)
    run_client(s3hub, token, tmp_path / "up", f"""
from huggingface_hub import HfApi
api = HfApi()
api.create_repo({repo_id!r})
api.upload_file(path_or_fileobj={str(tmp_path / 'w.bin')!r}, path_in_repo="w.bin", repo_id={repo_id!r})
""", xet=False)
    oid = hashlib.sha256(data).hexdigest()
    auth = {"authorization": f"Bearer {token}"}
    head = httpx.head(f"{s3hub.url}/{repo_id}/resolve/main/w.bin", headers=auth)
    assert head.status_code == 302, head.text
    location = head.headers["location"]
    assert location.startswith(seaweedfs.endpoint + "/") and oid in location and "X-Amz-Signature=" in location
    assert head.headers["x-linked-size"] == str(len(data)) and head.headers["x-linked-etag"] == f'"{oid}"'
    assert len(head.headers["x-repo-commit"]) == 40
    assert httpx.get(location).content == data
    ranged = httpx.get(f"{s3hub.url}/{repo_id}/resolve/main/w.bin", headers={**auth, "Range": "bytes=10-19"},
                       follow_redirects=True)
    assert ranged.status_code == 206 and ranged.content == data[10:20]
    git_lfs = httpx.get(f"{s3hub.url}/{repo_id}.git/info/lfs/objects/{oid}", headers=auth)
    assert git_lfs.status_code == 302 and httpx.get(git_lfs.headers["location"]).content == data
    for xet in (False, True):
        out = run_client(s3hub, token, tmp_path / f"down-{xet}", f"""
from pathlib import Path
from huggingface_hub import hf_hub_download, snapshot_download
one = Path(hf_hub_download({repo_id!r}, "w.bin")).read_bytes()
snap = Path(snapshot_download({repo_id!r})) / "w.bin"
print(one == snap.read_bytes(), len(one), __import__("hashlib").sha256(one).hexdigest())
""", xet=xet)
        assert out.split() == ["True", str(len(data)), oid]


@pytest.mark.once
def test_xet_download_reads_xorbs_from_presigned_urls(s3hub: Server, seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    """Uploaded with hf_xet: the reconstruction's fetch URLs are presigned xorb URLs (hf_xet fetches them with a
    Range header), and hf_xet and plain HTTP both rebuild the exact bytes."""
    name, token = s3hub.user()
    repo_id = f"{name}/xet-{uuid.uuid4().hex[:6]}"
    data = os.urandom(1_500_000) + b"keephub " * 300_000
    (tmp_path / "w.bin").write_bytes(data)
    out = run_client(s3hub, token, tmp_path / "hf", f"""
from pathlib import Path
from huggingface_hub import HfApi, hf_hub_download
api = HfApi()
api.create_repo({repo_id!r})
api.upload_file(path_or_fileobj={str(tmp_path / 'w.bin')!r}, path_in_repo="w.bin", repo_id={repo_id!r})
Path({str(tmp_path / 'hf' / 'cache')!r}).mkdir(parents=True)
print(Path(hf_hub_download({repo_id!r}, "w.bin", cache_dir={str(tmp_path / 'hf' / 'cache')!r})).read_bytes()
      == Path({str(tmp_path / 'w.bin')!r}).read_bytes())
""", xet=True)
    assert out.strip() == "True"
    auth = {"authorization": f"Bearer {token}"}
    head = httpx.head(f"{s3hub.url}/{repo_id}/resolve/main/w.bin", headers=auth)
    assert head.status_code == 200 and "location" not in head.headers  # only xorbs hold it: no single object
    xet_hash = head.headers["x-xet-hash"]
    grant = httpx.get(f"{s3hub.url}/api/models/{repo_id}/xet-read-token/main", headers=auth).json()
    plan = httpx.get(f"{grant['casUrl']}/v1/reconstructions/{xet_hash}",
                     headers={"authorization": f"Bearer {grant['accessToken']}"}).json()
    urls = [item for items in plan["fetch_info"].values() for item in items]
    assert urls and all(item["url"].startswith(seaweedfs.endpoint + "/") for item in urls)
    first = urls[0]
    span = first["url_range"]
    piece = httpx.get(first["url"], headers={"Range": f"bytes={span['start']}-{span['end']}"})
    assert piece.status_code == 206 and len(piece.content) == span["end"] - span["start"] + 1
    # The URL grants that span only (a xorb may hold other repos' chunks): a wider Range is refused by S3.
    wider = httpx.get(first["url"], headers={"Range": f"bytes=0-{span['end'] + 1}"})
    assert wider.status_code == 403
    plain = httpx.get(f"{s3hub.url}/{repo_id}/resolve/main/w.bin", headers=auth)  # rebuilt by keephub from S3
    assert plain.status_code == 200 and plain.content == data


@pytest.mark.once
def test_private_repo_redirects_only_after_the_access_check(s3hub: Server, tmp_path: Path) -> None:
    owner, token = s3hub.user()
    _, stranger = s3hub.user()
    repo_id = f"{owner}/private-{uuid.uuid4().hex[:6]}"
    assert httpx.post(f"{s3hub.url}/api/repos/create", headers={"authorization": f"Bearer {token}"},
                      json={"name": repo_id.split("/")[1], "type": "model", "private": True}).status_code == 200
    data = os.urandom(50_000)
    lfs_upload(s3hub, token, repo_id, "secret.bin", data)
    url = f"{s3hub.url}/{repo_id}/resolve/main/secret.bin"
    for headers in ({}, {"authorization": f"Bearer {stranger}"}, {"authorization": "Bearer hf_not_a_token"}):
        for method in ("HEAD", "GET"):
            answer = httpx.request(method, url, headers=headers)
            assert answer.status_code in (401, 404) and "location" not in answer.headers, (headers, method)
    owner_answer = httpx.get(url, headers={"authorization": f"Bearer {token}"})
    assert owner_answer.status_code == 302
    assert httpx.get(owner_answer.headers["location"]).content == data


@pytest.mark.once
def test_presigned_urls_are_refused_by_the_store_when_altered_reused_or_expired(s3hub: Server) -> None:
    name, token = s3hub.user()
    repo_id = f"{name}/urls-{uuid.uuid4().hex[:6]}"
    auth = {"authorization": f"Bearer {token}"}
    assert httpx.post(f"{s3hub.url}/api/repos/create", headers=auth, json={"name": repo_id.split("/")[1]}
                      ).status_code == 200
    data, other = os.urandom(20_000), os.urandom(30_000)
    oid = lfs_upload(s3hub, token, repo_id, "a.bin", data)
    other_oid = lfs_upload(s3hub, token, repo_id, "b.bin", other)
    location = httpx.head(f"{s3hub.url}/{repo_id}/resolve/main/a.bin", headers=auth).headers["location"]
    assert httpx.get(location).content == data
    refused = {
        "other object": location.replace(oid, other_oid),
        "tampered signature": location.replace("X-Amz-Signature=", "X-Amz-Signature=0"),
        "longer life": location.replace(f"X-Amz-Expires={PRESIGN_TTL}", "X-Amz-Expires=86400"),
        "other bucket key": location.replace("/hub/lfs/objects/", "/hub/xorbs/objects/"),
    }
    for what, url in refused.items():
        answer = httpx.get(url)
        assert answer.status_code == 403 and data not in answer.content and other not in answer.content, what
    time.sleep(PRESIGN_TTL + 1.5)
    expired = httpx.get(location)
    assert expired.status_code == 403 and data not in expired.content


class Outage:
    """A TCP relay between keephub and SeaweedFS that can drop every connection, as a store that is down."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.down = False
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.down:
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=relay, args=(a, b), daemon=True).start()

    def cut(self) -> None:
        self.down = True
        for sock in self.open:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.open = []

    def close(self) -> None:
        self.cut()
        self.listener.close()


@pytest.mark.once
def test_store_outage_is_a_503_naming_it_and_ends_without_a_restart(seaweedfs: SeaweedFS, s3_bucket: str,
                                                                      tmp_path: Path) -> None:
    relay = Outage(seaweedfs.s3_port)
    env = {**seaweedfs.settings_env(s3_bucket, f"outage-{uuid.uuid4().hex[:6]}/"),
           "KEEPHUB_BLOB_ENDPOINT": f"http://127.0.0.1:{relay.port}"}
    srv = Server(data_dir=tmp_path / "data", port=free_port(), env=env)
    srv.start()
    try:
        name, token = srv.user()
        repo_id = f"{name}/r"
        auth = {"authorization": f"Bearer {token}"}
        assert httpx.post(f"{srv.url}/api/repos/create", headers=auth, json={"name": "r"}).status_code == 200
        before = os.urandom(40_000)
        lfs_upload(srv, token, repo_id, "before.bin", before)
        bucket_id = f"{name}/b"
        run_client(srv, token, tmp_path / "hf", f"""
from huggingface_hub import HfApi
api = HfApi()
api.create_bucket({bucket_id!r})
api.batch_bucket_files({bucket_id!r}, add=[({os.urandom(30_000)!r}, "x.bin")])
""", xet=True)

        relay.cut()
        data = os.urandom(6 * 1024 * 1024)  # more than one S3 part: the outage hits a multipart upload
        oid = hashlib.sha256(data).hexdigest()
        batch = httpx.post(f"{srv.url}/{repo_id}.git/info/lfs/objects/batch", headers=auth,
                           json={"operation": "upload", "objects": [{"oid": oid, "size": len(data)}]}).json()
        href = batch["objects"][0]["actions"]["upload"]["href"]
        put = httpx.put(href, content=data, timeout=60)
        assert put.status_code == 503, put.text
        assert f"the blob store (S3 at http://127.0.0.1:{relay.port})" in put.json()["error"]
        assert seaweedfs.secret_key not in put.text
        down = httpx.head(f"{srv.url}/{repo_id}/resolve/main/before.bin", headers=auth)
        assert down.status_code == 503 and "unreachable" in down.headers["x-error-message"]
        rebuilt = httpx.get(f"{srv.url}/buckets/{bucket_id}/resolve/x.bin", headers=auth)  # from its xorbs
        assert rebuilt.status_code == 503 and "S3 at" in rebuilt.json()["error"]
        verify = httpx.post(f"{srv.url}/{repo_id}.git/info/lfs/objects/verify", headers=auth,
                            json={"oid": oid, "size": len(data)})
        assert verify.status_code == 404  # nothing half-visible

        relay.down = False
        assert httpx.put(href, content=data, timeout=60).status_code == 200
        assert httpx.post(f"{srv.url}/{repo_id}.git/info/lfs/objects/verify", headers=auth,
                          json={"oid": oid, "size": len(data)}).status_code == 200
        answer = httpx.get(f"{srv.url}/{repo_id}/resolve/main/before.bin", headers=auth, follow_redirects=True)
        assert answer.status_code == 200 and answer.content == before
        listed = seaweedfs.client().list_objects_v2(Bucket=s3_bucket, Prefix=env["KEEPHUB_BLOB_PREFIX"] + "lfs/objects/")
        stored = {item["Key"].rsplit("/", 1)[1]: item["Size"] for item in listed["Contents"]}
        assert stored == {hashlib.sha256(before).hexdigest(): len(before), oid: len(data)}
    finally:
        srv.stop()
        relay.close()


def serve_fails(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keephub.cli", "--data-dir", str(tmp_path / "data"), "serve",
                           "--port", str(free_port())], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.once
def test_serve_refuses_s3_settings_it_cannot_use(seaweedfs: SeaweedFS, s3_bucket: str, tmp_path: Path) -> None:
    good = seaweedfs.settings_env(s3_bucket, "refusals/")
    cases = {
        "blobs.access_key_id": {**good, "KEEPHUB_BLOB_SECRET_ACCESS_KEY": "wrong" * 8},
        "blobs.bucket": {**good, "KEEPHUB_BLOB_BUCKET": "no-such-bucket-here"},
        "blobs.endpoint": {**good, "KEEPHUB_BLOB_ENDPOINT": f"http://127.0.0.1:{free_port()}"},
    }
    for setting, env in cases.items():
        done = serve_fails(tmp_path / setting, env)
        assert done.returncode == 2, (setting, done.stdout, done.stderr)
        assert setting in done.stderr, (setting, done.stderr)
        assert seaweedfs.secret_key not in done.stderr + done.stdout and "wrong" * 8 not in done.stderr
    missing = serve_fails(tmp_path / "unset", {**good, "KEEPHUB_BLOB_BUCKET": ""})
    assert missing.returncode == 2 and "blobs.bucket is required" in missing.stderr


def peak_rss_mb(srv: Server) -> float:
    """The server process's peak resident memory since it started (VmHWM), in MiB."""
    assert srv.process is not None
    status = Path(f"/proc/{srv.process.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024


def test_a_gibibyte_goes_up_and_down_in_bounded_server_memory(s3hub: Server) -> None:
    """1 GiB through keephub into S3 (one streamed PUT) and back out (the redirect): the server's peak RSS stays
    under 300 MB, since it holds one part of the upload at a time and none of the download."""
    name, token = s3hub.user()
    repo_id = f"{name}/big-{uuid.uuid4().hex[:6]}"
    auth = {"authorization": f"Bearer {token}"}
    assert httpx.post(f"{s3hub.url}/api/repos/create", headers=auth, json={"name": repo_id.split("/")[1]}
                      ).status_code == 200
    block, blocks = os.urandom(1024 * 1024), 1024

    def body() -> Iterator[bytes]:
        for n in range(blocks):
            yield n.to_bytes(8, "big") + block[8:]

    digest = hashlib.sha256()
    for piece in body():
        digest.update(piece)
    oid, size = digest.hexdigest(), len(block) * blocks
    batch = httpx.post(f"{s3hub.url}/{repo_id}.git/info/lfs/objects/batch", headers=auth,
                       json={"operation": "upload", "objects": [{"oid": oid, "size": size}]}).json()
    put = httpx.put(batch["objects"][0]["actions"]["upload"]["href"], content=body(),
                    headers={"content-length": str(size)}, timeout=600)
    assert put.status_code == 200, put.text
    op = {"key": "lfsFile", "value": {"path": "big.bin", "algo": "sha256", "oid": oid, "size": size}}
    commit = "\n".join(json.dumps(x) for x in [{"key": "header", "value": {"summary": "big"}}, op])
    assert httpx.post(f"{s3hub.url}/api/models/{repo_id}/commit/main", headers=auth, content=commit).status_code == 200
    down = hashlib.sha256()
    received = 0
    with httpx.stream("GET", f"{s3hub.url}/{repo_id}/resolve/main/big.bin", headers=auth, follow_redirects=True,
                      timeout=600) as answer:
        assert answer.status_code == 200 and answer.history[0].status_code == 302
        for piece in answer.iter_bytes(1024 * 1024):
            down.update(piece)
            received += len(piece)
    assert received == size and down.hexdigest() == oid
    assert peak_rss_mb(s3hub) < 300, f"keephub peaked at {peak_rss_mb(s3hub):.0f} MiB"


def test_jobs_get_bytes_from_keephub_not_a_redirect(s3hub: Server, tmp_path: Path) -> None:
    """A sandboxed job reaches keephub through its Unix socket and nothing else (no route to S3): a download
    asked that way is served by keephub, while the same request over TCP is redirected."""
    from keephub.agent.sandbox import hub_socket_path

    name, token = s3hub.user()
    repo_id = f"{name}/jobs-{uuid.uuid4().hex[:6]}"
    auth = {"authorization": f"Bearer {token}"}
    assert httpx.post(f"{s3hub.url}/api/repos/create", headers=auth, json={"name": repo_id.split("/")[1]}
                      ).status_code == 200
    data = os.urandom(60_000)
    lfs_upload(s3hub, token, repo_id, "w.bin", data)
    path = f"/{repo_id}/resolve/main/w.bin"
    assert httpx.get(s3hub.url + path, headers=auth).status_code == 302
    job_side = httpx.Client(transport=httpx.HTTPTransport(uds=str(hub_socket_path(s3hub.data_dir))),
                            base_url="http://keephub", headers=auth)
    served = job_side.get(path)
    assert served.status_code == 200 and served.content == data
