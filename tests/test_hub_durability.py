"""A store that does not lose data: acknowledged writes survive `kill -9`, commits are all-or-nothing,
concurrent commits never lose an update, retries are idempotent, and interrupted uploads leave nothing.

Everything runs against a dedicated server (own data directory and port) so it can be killed and
restarted without disturbing other tests; it offers 5 MiB multipart LFS parts.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from conftest import Server, blob_staging, free_port, read_response
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError

CHUNK = 5 * 1024 * 1024


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(data_dir=tmp_path_factory.mktemp("durable") / "data", port=free_port(),
                    env={"KEEPHUB_LFS_MULTIPART_CHUNK_BYTES": str(CHUNK),
                         "KEEPHUB_LFS_MULTIPART_THRESHOLD_BYTES": str(CHUNK)})
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def user(srv: Server) -> tuple[str, str]:
    return srv.user()


@pytest.fixture(scope="module")
def hf(srv: Server, user: tuple[str, str]) -> HfApi:
    return HfApi(endpoint=srv.url, token=user[1])


@pytest.fixture
def http(srv: Server, user: tuple[str, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=srv.url, headers={"authorization": f"Bearer {user[1]}"}, timeout=60) as client:
        yield client


@pytest.fixture
def repo_id(hf: HfApi, user: tuple[str, str]) -> str:
    repo = f"{user[0]}/durable-{uuid.uuid4().hex[:8]}"
    hf.create_repo(repo)
    return repo


def restart_after_sigkill(srv: Server) -> None:
    srv.kill()
    srv.start()


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def ndjson(summary: str, *ops: dict, parent: str | None = None) -> bytes:
    head = {"summary": summary} | ({"parentCommit": parent} if parent else {})
    return b"\n".join(json.dumps(line).encode() for line in [{"key": "header", "value": head}, *ops])


def add_file(path: str, content: bytes) -> dict:
    return {"key": "file", "value": {"path": path, "content": base64.b64encode(content).decode(), "encoding": "base64"}}


def head_of(http: httpx.Client, repo_id: str, revision: str = "main") -> str:
    return http.get(f"/api/models/{repo_id}/revision/{revision}").json()["sha"]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- (a) acknowledged commits survive kill -9 ------------------------------------------------------
def test_acknowledged_commits_survive_sigkill(srv: Server, hf: HfApi, repo_id: str, tmp_path: Path) -> None:
    expected: dict[tuple[str, str], bytes] = {}  # (revision, path) -> bytes
    main_commits = [hf.list_repo_commits(repo_id)[0].commit_id]
    branch_heads: dict[str, str] = {}
    tags: dict[str, str] = {}

    def push(path: str, data: bytes, revision: str = "main") -> str:
        oid = hf.upload_file(path_or_fileobj=data, path_in_repo=path, repo_id=repo_id, revision=revision).oid
        expected[(revision, path)] = data
        return oid

    for cycle in range(2):  # push, kill -9 right after the last acknowledgement, restart; twice
        for step in range(3):
            main_commits.append(push(f"cycle{cycle}/config-{step}.json", f'{{"step": {step}}}'.encode()))
            main_commits.append(push(f"cycle{cycle}/weights-{step}.safetensors", os.urandom(200_000 + step)))  # LFS
        many = {f"cycle{cycle}/many/{i}.txt": f"{cycle}-{i}".encode() for i in range(25)}
        main_commits.append(hf.create_commit(repo_id, commit_message=f"many files {cycle}", operations=[
            CommitOperationAdd(path, data) for path, data in many.items()]).oid)
        expected.update({("main", path): data for path, data in many.items()})
        tags[f"v{cycle}"] = main_commits[-1]
        hf.create_tag(repo_id, tag=f"v{cycle}")
        hf.create_branch(repo_id, branch=f"rescue/{cycle}")
        branch_heads[f"rescue/{cycle}"] = push(f"rescue-{cycle}.bin", os.urandom(50_000), revision=f"rescue/{cycle}")
        restart_after_sigkill(srv)

    assert [c.commit_id for c in hf.list_repo_commits(repo_id)] == main_commits[::-1]
    refs = hf.list_repo_refs(repo_id)
    assert {b.name: b.target_commit for b in refs.branches} == {"main": main_commits[-1], **branch_heads}
    assert {t.name: t.target_commit for t in refs.tags} == tags
    assert set(hf.list_repo_files(repo_id)) == {path for rev, path in expected if rev == "main"} | {".gitattributes"}
    for (revision, path), data in expected.items():
        local = hf_hub_download(repo_id, path, revision=revision, cache_dir=tmp_path, endpoint=srv.url)
        assert sha256(Path(local).read_bytes()) == sha256(data), (revision, path)


# -- (b) commit atomicity --------------------------------------------------------------------------
def test_a_commit_of_many_files_is_all_or_nothing_even_when_killed(srv: Server, http: httpx.Client, hf: HfApi,
                                                                    repo_id: str) -> None:
    def paths() -> set[str]:
        return set(hf.list_repo_files(repo_id))  # follows the tree listing's pages

    invalid = {"key": "deletedFile", "value": {"path": "not-there.txt"}}
    ops = [add_file(f"bulk/{i % 40}/{i}.txt", str(i).encode()) for i in range(2000)]
    assert http.post(f"/api/models/{repo_id}/commit/main", content=ndjson("bad", *ops, invalid)).status_code == 404
    assert paths() == {".gitattributes"}

    for attempt, delay in enumerate((0.1, 0.4, 0.8)):  # before, during and (often) after the ~0.6 s of work
        count = 12_000
        body = ndjson(f"bulk {attempt}", *(add_file(f"bulk{attempt}/{i % 97}/{i}.txt", str(i).encode())
                                           for i in range(count)))
        sender = threading.Thread(target=_post_ignoring_errors, args=(srv.url, repo_id, http.headers, body))
        sender.start()
        time.sleep(delay)
        restart_after_sigkill(srv)
        sender.join()
        mine = {p for p in paths() if p.startswith(f"bulk{attempt}/")}
        assert len(mine) in (0, count), f"attempt {attempt}: a killed commit left {len(mine)} of {count} files"
        history = [c["title"] for c in http.get(f"/api/models/{repo_id}/commits/main").json()]
        assert history.count(f"bulk {attempt}") == (1 if mine else 0)
    # The repo is still writable and readable after the crashes.
    assert http.post(f"/api/models/{repo_id}/commit/main", content=ndjson("after", add_file("after.txt", b"ok"))
                     ).status_code == 200
    assert http.get(f"/{repo_id}/resolve/main/after.txt").content == b"ok"


def test_operations_apply_in_order_and_none_is_silently_dropped(http: httpx.Client, hf: HfApi,
                                                                repo_id: str) -> None:
    commit_url = f"/api/models/{repo_id}/commit/main"
    seed = [add_file(p, p.encode()) for p in ("a/old1", "a/old2", "c/keep", "d", "e")]
    assert http.post(commit_url, content=ndjson("seed", *seed)).status_code == 200
    # Delete a folder, then add into it: the folder holds only the new file (the old ones must not survive).
    hf.create_commit(repo_id, commit_message="replace a/", operations=[
        CommitOperationDelete("a/"), CommitOperationAdd("a/new", b"new")])
    assert {p for p in hf.list_repo_files(repo_id) if p.startswith("a/")} == {"a/new"}
    # Add into a folder, then delete it: the client warns about this, and the folder goes.
    with pytest.warns(UserWarning, match="About to delete a folder containing files that have just been updated"):
        hf.create_commit(repo_id, commit_message="drop c/", operations=[
            CommitOperationAdd("c/new", b"x"), CommitOperationDelete("c/")])
    assert not any(p.startswith("c/") for p in hf.list_repo_files(repo_id))
    # Delete the file 'e', then add 'e/x': 'e' becomes a folder.
    ops = [{"key": "deletedFile", "value": {"path": "e"}}, add_file("e/x", b"x")]
    assert http.post(commit_url, content=ndjson("e becomes a folder", *ops)).status_code == 200
    # Add 'd/x' while 'd' is still a file (deleted only afterwards): refused, not silently dropped.
    before = hf.list_repo_files(repo_id)
    ops = [add_file("d/x", b"x"), {"key": "deletedFile", "value": {"path": "d"}}]
    refused = http.post(commit_url, content=ndjson("d", *ops))
    assert refused.status_code == 400 and "'d' is a file" in refused.json()["error"]
    assert hf.list_repo_files(repo_id) == before
    assert sorted(before) == [".gitattributes", "a/new", "d", "e/x"]
    assert http.get(f"/{repo_id}/resolve/main/a/new").content == b"new"


def _post_ignoring_errors(url: str, repo_id: str, headers: httpx.Headers, body: bytes) -> None:
    try:
        httpx.post(f"{url}/api/models/{repo_id}/commit/main", content=body, headers=headers, timeout=60)
    except httpx.TransportError:
        pass  # the server was killed mid-request: this commit was never acknowledged


# -- (c) concurrent commits ------------------------------------------------------------------------
def test_concurrent_commits_without_parent_all_land(hf: HfApi, repo_id: str) -> None:
    writers, commits_each = 8, 4
    initial = hf.list_repo_commits(repo_id)[0].commit_id

    def writer(n: int) -> list[str]:
        return [hf.create_commit(repo_id, commit_message=f"writer {n} commit {i}",
                                 operations=[CommitOperationAdd(f"w{n}/c{i}.txt", f"{n}.{i}".encode())]).oid
                for i in range(commits_each)]

    with ThreadPoolExecutor(writers) as pool:
        acknowledged = [oid for oids in pool.map(writer, range(writers)) for oid in oids]
    assert len(set(acknowledged)) == writers * commits_each
    history = hf.list_repo_commits(repo_id)
    assert len(history) == writers * commits_each + 1  # linear: every commit on the first-parent chain, once
    assert {c.commit_id for c in history} == set(acknowledged) | {initial}
    assert history[-1].commit_id == initial
    expected = {f"w{n}/c{i}.txt" for n in range(writers) for i in range(commits_each)}
    assert set(hf.list_repo_files(repo_id)) == expected | {".gitattributes"}
    # Each writer's own commits appear in the order it made them.
    titles = [c.title for c in reversed(history)]
    for n in range(writers):
        mine = [t for t in titles if t.startswith(f"writer {n} ")]
        assert mine == [f"writer {n} commit {i}" for i in range(commits_each)]


def test_concurrent_commits_with_the_same_parent_exactly_one_lands(hf: HfApi, repo_id: str) -> None:
    contenders = 6
    head = hf.list_repo_commits(repo_id)[0].commit_id
    start = threading.Barrier(contenders)

    def contender(n: int) -> str | int:
        start.wait()
        try:
            return hf.create_commit(repo_id, commit_message=f"contender {n}", parent_commit=head,
                                    operations=[CommitOperationAdd(f"c{n}.txt", str(n).encode())]).oid
        except HfHubHTTPError as exc:
            assert "is not the head" in str(exc)
            return exc.response.status_code

    with ThreadPoolExecutor(contenders) as pool:
        outcomes = list(pool.map(contender, range(contenders)))
    winners = [o for o in outcomes if isinstance(o, str)]
    assert len(winners) == 1 and sorted(o for o in outcomes if isinstance(o, int)) == [412] * (contenders - 1)
    winner = outcomes.index(winners[0])
    assert [c.commit_id for c in hf.list_repo_commits(repo_id)] == [winners[0], head]
    assert set(hf.list_repo_files(repo_id)) == {".gitattributes", f"c{winner}.txt"}


# -- (d) retry after a lost response ---------------------------------------------------------------
def test_replayed_commit_returns_the_same_commit(http: httpx.Client, repo_id: str) -> None:
    commit_url = f"/api/models/{repo_id}/commit/main"
    lfs_data = os.urandom(10_000)
    oid = _upload_lfs(http, repo_id, lfs_data)
    head = head_of(http, repo_id)
    body = ndjson("checkpoint 1", add_file("step.txt", b"1"),
                  {"key": "lfsFile", "value": {"path": "w.bin", "algo": "sha256", "oid": oid, "size": len(lfs_data)}},
                  parent=head)
    first = http.post(commit_url, content=body)
    assert first.status_code == 200, first.text
    for _ in range(2):  # the response was lost; the client sends the identical request again
        again = http.post(commit_url, content=body)
        assert again.status_code == 200, again.text
        assert again.json()["commitOid"] == first.json()["commitOid"]
    titles = [c["title"] for c in http.get(f"/api/models/{repo_id}/commits/main").json()]
    assert titles == ["checkpoint 1", "initial commit"]
    # Without parentCommit, a replay is recognised too (same tree, message and author on top of head).
    plain = ndjson("checkpoint 2", add_file("step.txt", b"2"))
    sha = http.post(commit_url, content=plain).json()["commitOid"]
    assert http.post(commit_url, content=plain).json()["commitOid"] == sha
    assert len(http.get(f"/api/models/{repo_id}/commits/main").json()) == 3
    # Once other work landed on top, the stale replay is refused rather than duplicated or reverting it.
    stale = http.post(commit_url, content=body)
    assert stale.status_code == 412
    assert http.get(f"/{repo_id}/resolve/main/step.txt").content == b"2"


def _upload_lfs(http: httpx.Client, repo_id: str, data: bytes) -> str:
    oid = sha256(data)
    href = _upload_href(http, repo_id, oid, len(data))
    assert httpx.put(href, content=data).status_code == 200
    return oid


def _upload_href(http: httpx.Client, repo_id: str, oid: str, size: int) -> str:
    answer = http.post(f"/{repo_id}.git/info/lfs/objects/batch",
                       json={"operation": "upload", "transfers": ["basic"], "objects": [{"oid": oid, "size": size}]})
    return answer.json()["objects"][0]["actions"]["upload"]["href"]


# -- (e) interrupted uploads -----------------------------------------------------------------------
def _invisible(http: httpx.Client, repo_id: str, oid: str, size: int) -> None:
    """Nothing of the object is visible: not downloadable, not committable, and the batch API wants it."""
    assert http.get(f"/{repo_id}.git/info/lfs/objects/{oid}").status_code == 404
    op = {"key": "lfsFile", "value": {"path": "w.bin", "algo": "sha256", "oid": oid, "size": size}}
    response = http.post(f"/api/models/{repo_id}/commit/main", content=ndjson("use it", op))
    assert response.status_code == 400 and "never uploaded" in response.json()["error"]
    assert "upload" in http.post(f"/{repo_id}.git/info/lfs/objects/batch", json={
        "operation": "upload", "objects": [{"oid": oid, "size": size}]}).json()["objects"][0]["actions"]


def _start_raw_put(href: str, size: int, sent: bytes) -> socket.socket:
    """Begin a PUT announcing `size` bytes and send only `sent`: a client that is cut off mid-upload."""
    url = urlsplit(href)
    sock = socket.create_connection((url.hostname, url.port))
    sock.sendall(f"PUT {url.path}?{url.query} HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Length: {size}\r\n"
                 "Content-Type: application/octet-stream\r\n\r\n".encode() + sent)
    return sock


def test_interrupted_lfs_upload_leaves_nothing(srv: Server, http: httpx.Client, repo_id: str) -> None:
    log_start = len(srv.log_path.read_text())
    data = os.urandom(16 * 1024 * 1024)
    oid = sha256(data)
    # A raw socket that disconnects after 9 MiB of the 16 MiB it announced (on S3, past the first 5 MiB part).
    sock = _start_raw_put(_upload_href(http, repo_id, oid, len(data)), len(data), data[: 9 * 1024 * 1024])
    wait_for(lambda: blob_staging(srv), "the upload's temporary file")
    sock.close()
    wait_for(lambda: not blob_staging(srv), "the temporary file to be removed after the disconnect")
    _invisible(http, repo_id, oid, len(data))

    # An httpx upload whose body generator fails half-way (the client process crashing mid-read).
    def failing_body() -> Iterator[bytes]:
        yield data[: 9 * 1024 * 1024]
        wait_for(lambda: blob_staging(srv), "the upload's temporary file")
        raise OSError("disk read error on the client")

    with pytest.raises(OSError):
        httpx.put(_upload_href(http, repo_id, oid, len(data)), content=failing_body(),
                  headers={"content-length": str(len(data))})
    wait_for(lambda: not blob_staging(srv), "the temporary file to be removed after the failed upload")
    _invisible(http, repo_id, oid, len(data))
    assert "Traceback" not in srv.log_path.read_text()[log_start:], "a client hang-up is not a server error"


def test_a_large_upload_after_100_continue_in_odd_pieces_is_kept_whole_on_a_reused_connection(
        srv: Server, http: httpx.Client, repo_id: str) -> None:
    """A body of several 4 MiB pieces, read straight into the server's buffers (wire/direct_body.py), sent as curl
    sends one (`Expect: 100-continue`, the body only after the interim answer) in pieces that straddle every piece
    boundary; then, on the same connection, a body refused before it is read, and a small request after it."""
    data = os.urandom(9 * 1024 * 1024 + 7)
    oid = sha256(data)
    url = urlsplit(_upload_href(http, repo_id, oid, len(data)))
    with socket.create_connection((url.hostname, url.port), timeout=60) as sock:
        sock.sendall(f"PUT {url.path}?{url.query} HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Length: {len(data)}\r\n"
                     "Expect: 100-continue\r\n\r\n".encode())
        assert read_response(sock, interim=True) == (100, b"")
        cuts = [0, 1, 4 * 1024 * 1024 + 2, 4 * 1024 * 1024 + 5, 8 * 1024 * 1024 - 1, len(data)]
        for start, end in itertools.pairwise(cuts):
            sock.sendall(data[start:end])
        assert read_response(sock)[0] == 200
        assert http.get(f"/{repo_id}.git/info/lfs/objects/{oid}", follow_redirects=True).content == data

        other = os.urandom(5 * 1024 * 1024)
        refused = urlsplit(_upload_href(http, repo_id, sha256(other), len(other) - 1))
        sock.sendall(f"PUT {refused.path}?{refused.query} HTTP/1.1\r\nHost: {url.netloc}\r\n"
                     f"Content-Length: {len(other)}\r\n\r\n".encode() + other)
        status, body = read_response(sock)
        assert status == 400 and f"more than the announced {len(other) - 1} bytes" in json.loads(body)["error"]
        sock.sendall(f"GET /api/whoami-v2 HTTP/1.1\r\nHost: {url.netloc}\r\n"
                     f"Authorization: {http.headers['authorization']}\r\n\r\n".encode())
        status, body = read_response(sock)
        assert status == 200 and json.loads(body)["name"]
    _invisible(http, repo_id, sha256(other), len(other))


def test_upload_cut_by_a_server_crash_is_swept_at_restart(srv: Server, http: httpx.Client, repo_id: str) -> None:
    data = os.urandom(2 * CHUNK + 1024)  # three multipart parts
    oid = sha256(data)
    batch = http.post(f"/{repo_id}.git/info/lfs/objects/batch", json={
        "operation": "upload", "transfers": ["basic", "multipart"], "objects": [{"oid": oid, "size": len(data)}]})
    upload = batch.json()["objects"][0]["actions"]["upload"]
    assert batch.json()["transfer"] == "multipart" and set(upload["header"]) == {"chunk_size", "1", "2", "3"}
    assert httpx.put(upload["header"]["1"], content=data[:CHUNK]).status_code == 200  # part 1 of 3, then abandoned
    # A single PUT cut after 10 MiB: on S3, past the first 5 MiB part of its multipart upload.
    sock = _start_raw_put(_upload_href(http, repo_id, oid, len(data)), len(data), data[: 2 * CHUNK])
    wait_for(lambda: len(blob_staging(srv)) >= 2, "the upload's temporary file")
    srv.kill()  # the server dies mid-upload: nothing can clean up, so leftovers stay on disk
    sock.close()
    assert len(blob_staging(srv)) >= 2  # the part, and the cut upload's temporary file
    srv.env["KEEPHUB_STALE_UPLOAD_SECONDS"] = "0"  # make every leftover stale for the janitor's start-up sweep
    try:
        srv.start()
        wait_for(lambda: not blob_staging(srv), "the janitor's sweep")
    finally:
        del srv.env["KEEPHUB_STALE_UPLOAD_SECONDS"]
        restart_after_sigkill(srv)
    _invisible(http, repo_id, oid, len(data))


# -- (f) multipart LFS upload with the real client -------------------------------------------------
def test_multipart_upload_with_the_real_client(srv: Server, hf: HfApi, http: httpx.Client, repo_id: str,
                                               tmp_path: Path) -> None:
    data = os.urandom(12 * 1024 * 1024)
    oid = sha256(data)
    offer = http.post(f"/{repo_id}.git/info/lfs/objects/batch", json={
        "operation": "upload", "transfers": ["basic", "multipart"], "objects": [{"oid": oid, "size": len(data)}]})
    assert offer.json()["transfer"] == "multipart"
    assert set(offer.json()["objects"][0]["actions"]["upload"]["header"]) == {"chunk_size", "1", "2", "3"}
    hf.upload_file(path_or_fileobj=data, path_in_repo="big/model.safetensors", repo_id=repo_id)
    local = hf_hub_download(repo_id, "big/model.safetensors", cache_dir=tmp_path, endpoint=srv.url)
    assert sha256(Path(local).read_bytes()) == oid
    info = hf.get_paths_info(repo_id, ["big/model.safetensors"])[0]
    assert info.lfs is not None and info.lfs.sha256 == oid and info.size == len(data)
    assert not blob_staging(srv)
