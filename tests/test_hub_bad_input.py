"""Bad input: every client mistake gets a 4xx that names the problem, and changes nothing.

The requests go to the live server as raw HTTP (httpx) where the real huggingface_hub client would
refuse to send them, and through the real client where it can. After each rejected request the
repo's refs and file list are compared with a snapshot taken before it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import uuid
from typing import Any, Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from conftest import Server, free_port
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError

from keephub.config import Settings
from keephub.hub import lfs

ZERO_SHA = "0" * 40
NEVER_UPLOADED = hashlib.sha256(b"never uploaded anywhere " + uuid.uuid4().bytes).hexdigest()


# -- helpers ----------------------------------------------------------------------------------------
def rejected(response: httpx.Response, status: int, *fragments: str) -> str:
    """Assert a JSON error with `status` whose message (body and X-Error-Message) names every fragment."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json")
    message = response.json()["error"]
    header = response.headers["x-error-message"]
    for fragment in fragments:
        assert fragment.lower() in message.lower(), message
        assert fragment.lower() in header.lower(), header
    return message


def ndjson(*lines: dict) -> bytes:
    return b"\n".join(json.dumps(line).encode() for line in lines)


def header(summary: str = "bad input", **extra: object) -> dict:
    return {"key": "header", "value": {"summary": summary, **extra}}


def add_file(path: str, content: bytes = b"x") -> dict:
    return {"key": "file", "value": {"path": path, "content": base64.b64encode(content).decode(), "encoding": "base64"}}


def add_lfs(path: str, oid: str, size: int | None = 1) -> dict:
    return {"key": "lfsFile", "value": {"path": path, "algo": "sha256", "oid": oid, "size": size}}


def delete_file(path: str) -> dict:
    return {"key": "deletedFile", "value": {"path": path}}


class Repo:
    """A repo driven over raw HTTP, with a snapshot of everything a rejected request must leave alone."""

    def __init__(self, http: httpx.Client, repo_id: str) -> None:
        self.http = http
        self.repo_id = repo_id

    def commit(self, body: bytes | Iterator[bytes], revision: str = "main", **kwargs: Any) -> httpx.Response:
        return self.http.post(f"/api/models/{self.repo_id}/commit/{revision}", content=body,
                              headers={"content-type": "application/x-ndjson"}, **kwargs)

    def snapshot(self) -> tuple:
        refs = self.http.get(f"/api/models/{self.repo_id}/refs").json()
        tree = self.http.get(f"/api/models/{self.repo_id}/tree/main", params={"recursive": "true"}).json()
        return (sorted((b["name"], b["targetCommit"]) for b in refs["branches"]),
                sorted((t["name"], t["targetCommit"]) for t in refs["tags"]),
                sorted((e["path"], e["oid"]) for e in tree))

    def head(self) -> str:
        return self.http.get(f"/api/models/{self.repo_id}/revision/main").json()["sha"]

    def upload_lfs(self, data: bytes) -> str:
        """Upload `data` through the LFS batch API, as the client does before committing; returns the oid."""
        oid = hashlib.sha256(data).hexdigest()
        answer = self.batch(oid, len(data))
        if "actions" in answer:
            put = httpx.put(answer["actions"]["upload"]["href"], content=data)
            assert put.status_code == 200, put.text
        return oid

    def batch(self, oid: str, size: int) -> dict:
        response = self.http.post(f"/{self.repo_id}.git/info/lfs/objects/batch",
                                  json={"operation": "upload", "transfers": ["basic"],
                                        "objects": [{"oid": oid, "size": size}]})
        assert response.status_code == 200, response.text
        return response.json()["objects"][0]


def http_client(server: Server, token: str | None) -> httpx.Client:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=server.url, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def owner(server: Server) -> tuple[str, str]:
    return server.user()


@pytest.fixture(scope="module")
def http(server: Server, owner: tuple[str, str]) -> Iterator[httpx.Client]:
    with http_client(server, owner[1]) as client:
        yield client


@pytest.fixture(scope="module")
def hf(server: Server, owner: tuple[str, str]) -> HfApi:
    return HfApi(endpoint=server.url, token=owner[1])


def new_repo(http: httpx.Client, owner: str, prefix: str = "r") -> Repo:
    repo_id = f"{owner}/{prefix}-{uuid.uuid4().hex[:8]}"
    response = http.post("/api/repos/create", json={"name": repo_id})
    assert response.status_code == 200, response.text
    return Repo(http, repo_id)


@pytest.fixture(scope="module")
def shared(http: httpx.Client, owner: tuple[str, str]) -> Repo:
    """A repo with a regular file, an LFS file, a folder, a branch and a tag; no test may change it."""
    repo = new_repo(http, owner[0], "shared")
    oid = repo.upload_lfs(b"\x00weights" * 1000)
    response = repo.commit(ndjson(header("seed"), add_file("config.json", b'{"a": 1}'),
                                  add_file("docs/readme.txt", b"0123456789" * 10), add_lfs("model.bin", oid, 8000)))
    assert response.status_code == 200, response.text
    assert http.post(f"/api/models/{repo.repo_id}/branch/dev", json={}).status_code == 200
    assert http.post(f"/api/models/{repo.repo_id}/tag/main", json={"tag": "v1"}).status_code == 200
    return repo


@pytest.fixture
def unchanged(shared: Repo) -> Iterator[Repo]:
    """The shared repo, checked after the test to be exactly as before it."""
    before = shared.snapshot()
    yield shared
    assert shared.snapshot() == before


# -- paths in commits -------------------------------------------------------------------------------
BAD_PATHS = [
    ("../evil.txt", "'..'"),
    ("docs/../../evil.txt", "'..'"),
    ("./config.json", "'.'"),
    ("docs//x.txt", "empty"),
    ("/etc/passwd", "absolute"),
    ("docs\\evil.txt", "backslash"),
    ("evil\x00.txt", "NUL"),
    ("evil\n.txt", "control character"),
    (".git/config", ".git"),
    ("docs/.git/hooks/post-commit", ".git"),
    ("evil\ud800.txt", "surrogate"),
    ("", "missing"),
]


@pytest.mark.parametrize("kind", ["file", "lfsFile", "deletedFile"])
@pytest.mark.parametrize(("path", "problem"), BAD_PATHS, ids=[repr(p) for p, _ in BAD_PATHS])
def test_commit_rejects_bad_paths(unchanged: Repo, kind: str, path: str, problem: str) -> None:
    op = {"file": add_file(path), "lfsFile": add_lfs(path, NEVER_UPLOADED), "deletedFile": delete_file(path)}[kind]
    response = unchanged.commit(ndjson(header(), add_file("innocent.txt"), op))
    rejected(response, 400, problem, "line 3")


@pytest.mark.parametrize(("path", "problem"), [
    ("docs\\evil.txt", "backslash"), ("evil\x00.txt", "NUL"), ("docs//x.txt", "empty"), ("evil\n.txt", "control"),
])
def test_real_client_bad_paths_are_refused_by_the_server(hf: HfApi, unchanged: Repo, path: str,
                                                         problem: str) -> None:
    """The client lets these through (it only catches '..' and '.git'); the server must refuse them."""
    with pytest.raises(HfHubHTTPError) as info:
        hf.upload_file(path_or_fileobj=b"x", path_in_repo=path, repo_id=unchanged.repo_id)
    assert info.value.response.status_code == 400
    assert problem.lower() in str(info.value).lower()


# -- malformed NDJSON -------------------------------------------------------------------------------
MALFORMED = [
    ("not json", b"this is not json\n", 400, "not valid JSON"),
    ("truncated json", b'{"key": "header", "value": {"summary": "x"', 400, "not valid JSON"),
    ("invalid utf-8", b'{"key": "header", "value": {"summary": "\xff"}}', 400, "not valid JSON"),
    ("deep nesting", b"[" * 100_000, 400, "not valid JSON"),
    ("empty body", b"", 400, "empty"),
    ("blank lines only", b"\n\n  \n", 400, "empty"),
    ("missing header", ndjson(add_file("a.txt")), 400, "must start with a 'header'"),
    ("second header", ndjson(header(), add_file("a.txt"), header()), 400, "second header"),
    ("header not first", ndjson(add_file("a.txt"), header()), 400, "must start with a 'header'"),
    ("unknown key", ndjson(header(), {"key": "renamedFile", "value": {"path": "a"}}), 400, "unknown key 'renamedFile'"),
    ("missing key", ndjson(header(), {"value": {"path": "a"}}), 400, "unknown key None"),
    ("line is an array", ndjson(header()) + b"\n[1, 2]", 400, "must be an object"),
    ("line is a string", ndjson(header()) + b'\n"file"', 400, "must be an object"),
    ("value not an object", ndjson(header(), {"key": "file", "value": "a.txt"}), 400, "must be an object"),
    ("bad base64", ndjson(header(), {"key": "file", "value": {"path": "a", "content": "!!!not base64!!!"}}),
     400, "not valid base64"),
    ("content not a string", ndjson(header(), {"key": "file", "value": {"path": "a", "content": 5}}), 400, "base64"),
    ("unsupported encoding", ndjson(header(), {"key": "file", "value": {"path": "a", "content": "x",
                                                                         "encoding": "utf-8"}}), 400, "base64"),
    ("no summary", ndjson({"key": "header", "value": {}}), 400, "summary"),
    ("blank summary", ndjson(header("   ")), 400, "summary"),
    ("summary not a string", ndjson({"key": "header", "value": {"summary": ["x"]}}), 400, "summary"),
    ("summary with lone surrogate", ndjson(header("\ud800")), 400, "surrogate"),
    ("description not a string", ndjson(header(description=5)), 400, "description"),
    ("parentCommit not a sha", ndjson(header(parentCommit="main")), 400, "parentCommit"),
    ("lfs oid not sha256", ndjson(header(), add_lfs("a.bin", "abc")), 400, "oid"),
    ("lfs oid uppercase", ndjson(header(), add_lfs("a.bin", NEVER_UPLOADED.upper())), 400, "oid"),
    ("lfs algo", ndjson(header(), {"key": "lfsFile", "value": {"path": "a", "oid": NEVER_UPLOADED, "algo": "md5"}}),
     400, "algo"),
    ("lfs size negative", ndjson(header(), add_lfs("a.bin", NEVER_UPLOADED, -1)), 400, "size"),
    ("lfs size string", ndjson(header(), add_lfs("a.bin", NEVER_UPLOADED, "1")), 400, "size"),  # type: ignore[arg-type]
    ("duplicate path", ndjson(header(), add_file("a.txt"), add_file("a.txt", b"y")), 400, "more than one operation"),
    ("delete missing file", ndjson(header(), add_file("a.txt"), delete_file("nope.txt")), 404, "no such file"),
    ("delete file as folder", ndjson(header(), {"key": "deletedFolder", "value": {"path": "config.json"}}),
     404, "no such folder"),
    ("file under a file", ndjson(header(), add_file("config.json/x.txt")), 400, "is a file"),
    ("file over a folder", ndjson(header(), add_file("docs")), 400, "folder with that name exists"),
    ("file under a file added in the commit", ndjson(header(), add_file("new"), add_file("new/x")), 400, "is a file"),
]


@pytest.mark.parametrize(("body", "status", "problem"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_commit_bodies_are_rejected(unchanged: Repo, body: bytes, status: int, problem: str) -> None:
    rejected(unchanged.commit(body), status, problem)


def test_commit_to_something_that_is_not_a_branch(unchanged: Repo) -> None:
    body = ndjson(header(), add_file("a.txt"))
    rejected(unchanged.commit(body, revision="v1"), 400, "not a branch")
    rejected(unchanged.commit(body, revision="no-such-branch"), 404, "does not exist", "create_branch")
    rejected(unchanged.commit(body, revision="v1", params={"create_pr": "1"}), 400, "not a branch")


# -- commit body size limit (a dedicated server with a small limit) --------------------------------------
@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(data_dir=tmp_path_factory.mktemp("small") / "data", port=free_port(),
                 env={"KEEPHUB_MAX_COMMIT_BODY_BYTES": "65536"})
    srv.start()
    yield srv
    srv.stop()


def test_oversized_commit_body_is_413_and_stores_nothing(small_server: Server) -> None:
    name, token = small_server.user()
    with http_client(small_server, token) as client:
        repo = new_repo(client, name)
        before = repo.snapshot()
        big = ndjson(header(), *(add_file(f"f{i}.txt", os.urandom(3000)) for i in range(60)))
        assert len(big) > 65536
        rejected(repo.commit(big), 413, "65536-byte limit", "split")

        def chunked() -> Iterator[bytes]:  # no Content-Length: the limit must hold while streaming too
            for start in range(0, len(big), 8192):
                yield big[start : start + 8192]

        rejected(repo.commit(chunked()), 413, "65536-byte limit")
        assert repo.snapshot() == before
        small = ndjson(header(), add_file("fits.txt", b"ok"))
        assert repo.commit(small).status_code == 200  # the connection and the server are still fine

    hf = HfApi(endpoint=small_server.url, token=token)
    # Text, so that preupload answers "regular" and the client inlines every file into one NDJSON body.
    operations = [CommitOperationAdd(f"g{i}.txt", os.urandom(1500).hex().encode()) for i in range(40)]
    with pytest.raises(HfHubHTTPError) as info:
        hf.create_commit(repo.repo_id, operations=operations, commit_message="too big")
    assert info.value.response.status_code == 413 and "limit" in str(info.value)
    assert sorted(hf.list_repo_files(repo.repo_id)) == [".gitattributes", "fits.txt"]


# -- LFS references in commits ----------------------------------------------------------------------
def test_lfs_file_never_uploaded_or_with_wrong_size(http: httpx.Client, owner: tuple[str, str]) -> None:
    repo = new_repo(http, owner[0])
    data = os.urandom(2048)
    oid = repo.upload_lfs(data)
    before = repo.snapshot()
    rejected(repo.commit(ndjson(header(), add_lfs("w.bin", NEVER_UPLOADED, 10))), 400, "never uploaded",
             repo.repo_id)
    rejected(repo.commit(ndjson(header(), add_lfs("w.bin", oid, 2047))), 400, "size 2047", "2048 bytes")
    # Content uploaded to one repo cannot be referenced from another by knowing its oid.
    other = new_repo(http, owner[0])
    rejected(other.commit(ndjson(header(), add_lfs("stolen.bin", oid, 2048))), 400, "never uploaded")
    assert repo.snapshot() == before
    assert repo.commit(ndjson(header(), add_lfs("w.bin", oid, 2048))).status_code == 200


def test_commit_with_some_invalid_operations_stores_none_of_them(http: httpx.Client, owner: tuple[str, str],
                                                                  hf: HfApi) -> None:
    repo = new_repo(http, owner[0])
    good_oid = repo.upload_lfs(os.urandom(512))
    before = repo.snapshot()
    valid = [add_file(f"batch/{i}.txt", str(i).encode()) for i in range(50)] + [add_lfs("batch/w.bin", good_oid, 512)]
    for invalid, status in ((add_lfs("batch/missing.bin", NEVER_UPLOADED), 400), (delete_file("missing.txt"), 404),
                            (add_file("batch/3.txt/inner"), 400)):
        rejected(repo.commit(ndjson(header(), *valid, invalid)), status)
        rejected(repo.commit(ndjson(header(), invalid, *valid)), status)
        assert repo.snapshot() == before
    with pytest.raises(EntryNotFoundError):
        hf.create_commit(repo.repo_id, commit_message="half", operations=[
            CommitOperationAdd("ok.txt", b"ok"), CommitOperationDelete("not-there.txt")])
    assert repo.snapshot() == before


def test_stale_parent_commit_is_412(http: httpx.Client, owner: tuple[str, str], hf: HfApi) -> None:
    repo = new_repo(http, owner[0])
    first = repo.head()
    assert repo.commit(ndjson(header(parentCommit=first), add_file("a.txt"))).status_code == 200
    before = repo.snapshot()
    rejected(repo.commit(ndjson(header(parentCommit=first), add_file("b.txt"))), 412,
             f"parentCommit {first} is not the head")
    rejected(repo.commit(ndjson(header(parentCommit=ZERO_SHA), add_file("b.txt"))), 412, "is not the head")
    with pytest.raises(HfHubHTTPError) as info:
        hf.upload_file(path_or_fileobj=b"c", path_in_repo="c.txt", repo_id=repo.repo_id, parent_commit=first)
    assert info.value.response.status_code == 412
    assert repo.snapshot() == before


# -- revisions ---------------------------------------------------------------------------------------
BAD_REFS = [
    ("has space", "a b", "space"), ("double dot", "a..b", "'..'"), ("leading dash", "-x", "starts with"),
    ("lock suffix", "x.lock", ".lock"), ("tilde", "a~1", "~"), ("caret", "a^", "^"), ("colon", "a:b", ":"),
    ("question", "a?", "?"), ("star", "a*", "*"), ("bracket", "a[", "["), ("backslash", "a\\b", "\\"),
    ("trailing slash", "a/", "ends with"), ("leading slash", "/a", "starts with"), ("dot component", "a/.b", "'.'"),
    ("at-brace", "a@{1}", "@{"), ("double slash", "a//b", "//"), ("trailing dot", "a.", "ends with"),
    ("commit id", "a" * 40, "commit id"), ("too long", "b" * 201, "200 characters"), ("tab", "a\tb", "control"),
]


@pytest.mark.parametrize(("name", "problem"), [r[1:] for r in BAD_REFS], ids=[r[0] for r in BAD_REFS])
def test_bad_branch_and_tag_names(hf: HfApi, unchanged: Repo, name: str, problem: str) -> None:
    with pytest.raises(HfHubHTTPError) as info:
        hf.create_branch(unchanged.repo_id, branch=name)
    assert info.value.response.status_code == 400
    assert "invalid branch name" in str(info.value) and problem in str(info.value)
    with pytest.raises(HfHubHTTPError) as info:
        hf.create_tag(unchanged.repo_id, tag=name)
    assert info.value.response.status_code == 400
    assert "invalid tag name" in str(info.value) and problem in str(info.value)


def test_branch_and_tag_mistakes(http: httpx.Client, unchanged: Repo) -> None:
    api = f"/api/models/{unchanged.repo_id}"
    rejected(http.post(f"{api}/branch/dev", json={}), 409, "already exists")
    rejected(http.post(f"{api}/tag/main", json={"tag": "v1"}), 409, "already exists")
    rejected(http.post(f"{api}/branch/new", json={"startingPoint": "no-such-rev"}), 404, "no-such-rev")
    rejected(http.post(f"{api}/branch/new", json={"startingPoint": 5}), 400, "startingPoint")
    rejected(http.post(f"{api}/tag/no-such-rev", json={"tag": "v2"}), 404, "no-such-rev")
    rejected(http.post(f"{api}/tag/main", json={}), 400, "tag")
    rejected(http.post(f"{api}/tag/main", content=b'{"tag": "\\ud800"}'), 400, "surrogate")
    rejected(http.delete(f"{api}/branch/main"), 400, "cannot be deleted")
    rejected(http.delete(f"{api}/branch/nope"), 404, "does not exist")
    rejected(http.delete(f"{api}/tag/nope"), 404, "does not exist")


# -- repo names, moves and settings ---------------------------------------------------------------
BAD_REPO_NAMES = [
    ("too long", "{user}/" + "a" * 97, "limit is 96"),
    ("bad characters", "{user}/bad name!", "characters that are not allowed"),
    ("unicode", "{user}/modèle", "characters that are not allowed"),
    ("leading dash", "{user}/-model", "must not start or end with '-'"),
    ("trailing dot", "{user}/model.", "must not start or end with '-' or '.'"),
    ("double dash", "{user}/my--model", "must not contain '--'"),
    ("double dot", "{user}/my..model", "'..'"),
    ("dot git", "{user}/model.git", "'.git'"),
    ("missing namespace", "/model", "namespace is missing"),
    ("missing name", "{user}/", "repo name is missing"),
    ("two slashes", "{user}/a/b", "namespace/name"),
    ("bad namespace", "bad ns/model", "namespace 'bad ns'"),
]


@pytest.mark.parametrize(("name", "problem"), [r[1:] for r in BAD_REPO_NAMES], ids=[r[0] for r in BAD_REPO_NAMES])
def test_create_repo_names_the_broken_rule(http: httpx.Client, owner: tuple[str, str], name: str,
                                           problem: str) -> None:
    before = http.get("/api/models", params={"author": owner[0]}).json()
    rejected(http.post("/api/repos/create", json={"name": name.format(user=owner[0])}), 400, problem)
    assert http.get("/api/models", params={"author": owner[0]}).json() == before


def test_create_repo_other_mistakes(http: httpx.Client, owner: tuple[str, str], server: Server) -> None:
    rejected(http.post("/api/repos/create", json={"name": "x", "type": "notebook"}), 400, "invalid repo type")
    rejected(http.post("/api/repos/create", json={"name": "x", "private": "yes"}), 400, "'private'")
    rejected(http.post("/api/repos/create", json={"name": "sp", "type": "space"}), 400, "sdk")
    rejected(http.post("/api/repos/create", content=b"{not json"), 400, "not valid JSON")
    rejected(http.post("/api/repos/create", json=["x"]), 400, "JSON object")
    rejected(http.post("/api/repos/create", json={"name": "nobody-here/x"}), 403, "does not exist")
    with http_client(server, None) as anonymous:
        rejected(anonymous.post("/api/repos/create", json={"name": "x"}), 401, "authenticated")
        rejected(anonymous.post("/api/repos/create", json={"name": f"{owner[0]}/x"}), 401, "authenticated")
    rejected(http.get(f"/api/models/{owner[0]}/x"), 404, "not found")


def test_move_onto_an_existing_repo_is_409(http: httpx.Client, owner: tuple[str, str], hf: HfApi) -> None:
    source, target = new_repo(http, owner[0]), new_repo(http, owner[0])
    assert source.commit(ndjson(header(), add_file("source.txt"))).status_code == 200
    before = (source.snapshot(), target.snapshot())
    rejected(http.post("/api/repos/move", json={"fromRepo": source.repo_id, "toRepo": target.repo_id}), 409,
             "already exists")
    rejected(http.post("/api/repos/move", json={"fromRepo": source.repo_id, "toRepo": source.repo_id}), 409,
             "already exists")
    with pytest.raises(HfHubHTTPError) as info:
        hf.move_repo(source.repo_id, target.repo_id)
    assert info.value.response.status_code == 409
    rejected(http.post("/api/repos/move", json={"fromRepo": source.repo_id}), 400, "invalid repo id")
    rejected(http.post("/api/repos/move", json={"fromRepo": source.repo_id, "toRepo": "x/b--ad"}), 400, "'--'")
    rejected(http.post("/api/repos/move", json={"fromRepo": source.repo_id, "toRepo": "no-such-ns/x"}), 403,
             "does not exist")
    assert (source.snapshot(), target.snapshot()) == before


def test_settings_with_bad_visibility(http: httpx.Client, unchanged: Repo, hf: HfApi) -> None:
    url = f"/api/models/{unchanged.repo_id}/settings"
    rejected(http.put(url, json={"visibility": "secret"}), 400, "invalid visibility 'secret'", "public", "private")
    rejected(http.put(url, json={"visibility": True}), 400, "invalid visibility")
    rejected(http.put(url, json={"private": "yes"}), 400, "'private' must be true or false")
    rejected(http.put(url, json={"gated": "sometimes"}), 400, "invalid 'gated'", "auto", "manual")
    rejected(http.put(url, content=b"[1]"), 400, "JSON object")
    assert hf.model_info(unchanged.repo_id).private is False


# -- authentication and authorization ----------------------------------------------------------------
def test_missing_token_on_write_is_401(server: Server, unchanged: Repo) -> None:
    with http_client(server, None) as anonymous:
        anonymous_repo = Repo(anonymous, unchanged.repo_id)
        rejected(anonymous_repo.commit(ndjson(header(), add_file("a.txt"))), 401, "must be authenticated", "token")
        api = f"/api/models/{unchanged.repo_id}"
        rejected(anonymous.post(f"{api}/branch/x", json={}), 401, "authenticated")
        rejected(anonymous.post(f"{api}/preupload/main", json={"files": []}), 401, "authenticated")
        rejected(anonymous.post(f"/{unchanged.repo_id}.git/info/lfs/objects/batch",
                                json={"operation": "upload", "objects": [{"oid": NEVER_UPLOADED, "size": 1}]}),
                 401, "authenticated")
    with pytest.raises(HfHubHTTPError) as info:
        HfApi(endpoint=server.url, token=False).upload_file(path_or_fileobj=b"x", path_in_repo="x.txt",
                                                            repo_id=unchanged.repo_id)
    assert info.value.response.status_code == 401


@pytest.mark.parametrize("authorization", ["Bearer kh_garbage", "Bearer", "Basic dXNlcjpwYXNz", "kh_no_scheme"])
def test_garbage_token_is_401_invalid_credentials(server: Server, unchanged: Repo, authorization: str) -> None:
    for method, url in (("GET", "/api/whoami-v2"), ("GET", f"/api/models/{unchanged.repo_id}"),
                        ("POST", f"/api/models/{unchanged.repo_id}/commit/main")):
        response = httpx.request(method, server.url + url, headers={"authorization": authorization},
                                 content=ndjson(header(), add_file("a.txt")) if method == "POST" else None)
        rejected(response, 401, "Invalid credentials in Authorization header")


def test_wrong_token_with_the_real_client(server: Server, unchanged: Repo) -> None:
    """The exact message matters: the client maps other 401s on repo URLs to 'repository not found'."""
    stranger = HfApi(endpoint=server.url, token="kh_not-a-real-token")
    with pytest.raises(HfHubHTTPError) as info:
        stranger.model_info(unchanged.repo_id)
    assert not isinstance(info.value, RepositoryNotFoundError)
    assert info.value.response.status_code == 401 and "Invalid credentials" in str(info.value)


def test_token_without_write_access_is_403_naming_the_namespace(server: Server, owner: tuple[str, str],
                                                                unchanged: Repo) -> None:
    _, bob_token = server.user()
    reader_token = server.token(owner[0], role="read")
    api = f"/api/models/{unchanged.repo_id}"
    for token, problem in ((bob_token, f"namespace '{owner[0]}'"), (reader_token, "read-only")):
        with http_client(server, token) as client:
            repo = Repo(client, unchanged.repo_id)
            rejected(repo.commit(ndjson(header(), add_file("a.txt"))), 403, problem)
            rejected(client.post(f"{api}/branch/x", json={}), 403, problem)
            rejected(client.post(f"{api}/tag/main", json={"tag": "v9"}), 403, problem)
            rejected(client.put(f"{api}/settings", json={"private": True}), 403)
            rejected(client.request("DELETE", "/api/repos/delete", json={"name": unchanged.repo_id}), 403)
            # For main (as the client names it); without a ref it is an upload for a pull request of one's own.
            rejected(client.post(f"/{unchanged.repo_id}.git/info/lfs/objects/batch",
                                 json={"operation": "upload", "objects": [{"oid": NEVER_UPLOADED, "size": 1}],
                                       "ref": {"name": "main"}}),
                     403, problem)
            rejected(client.post("/api/repos/create", json={"name": f"{owner[0]}/intruder"}), 403, problem)


# -- LFS ----------------------------------------------------------------------------------------------
BAD_BATCHES = [
    ("not json", b"{oops", "not valid JSON"),
    ("deep nesting", b"[" * 100_000, "not valid JSON"),
    ("array", b"[]", "must be a JSON object"),
    ("no operation", json.dumps({"objects": [{"oid": NEVER_UPLOADED, "size": 1}]}).encode(), "operation"),
    ("bad operation", json.dumps({"operation": "delete", "objects": [{"oid": NEVER_UPLOADED, "size": 1}]}).encode(),
     "operation"),
    ("no objects", json.dumps({"operation": "upload"}).encode(), "objects"),
    ("empty objects", json.dumps({"operation": "upload", "objects": []}).encode(), "objects"),
    ("objects not a list", json.dumps({"operation": "upload", "objects": {"oid": NEVER_UPLOADED}}).encode(),
     "objects"),
    ("object not a dict", json.dumps({"operation": "upload", "objects": ["x"]}).encode(), "object 0"),
    ("short oid", json.dumps({"operation": "upload", "objects": [{"oid": "abc", "size": 1}]}).encode(), "oid"),
    ("negative size", json.dumps({"operation": "upload", "objects": [{"oid": NEVER_UPLOADED, "size": -1}]}).encode(),
     "size"),
    ("bool size", json.dumps({"operation": "upload", "objects": [{"oid": NEVER_UPLOADED, "size": True}]}).encode(),
     "size"),
    ("hash algo", json.dumps({"operation": "upload", "hash_algo": "md5",
                              "objects": [{"oid": NEVER_UPLOADED, "size": 1}]}).encode(), "hash_algo"),
    ("transfers not a list", json.dumps({"operation": "upload", "transfers": 5,
                                         "objects": [{"oid": NEVER_UPLOADED, "size": 1}]}).encode(), "transfers"),
    ("ref not an object", json.dumps({"operation": "upload", "ref": "main",
                                      "objects": [{"oid": NEVER_UPLOADED, "size": 1}]}).encode(), "'ref'"),
]


@pytest.mark.parametrize(("body", "problem"), [b[1:] for b in BAD_BATCHES], ids=[b[0] for b in BAD_BATCHES])
def test_malformed_lfs_batch_bodies(http: httpx.Client, unchanged: Repo, body: bytes, problem: str) -> None:
    response = http.post(f"/{unchanged.repo_id}.git/info/lfs/objects/batch", content=body,
                         headers={"content-type": "application/vnd.git-lfs+json"})
    rejected(response, 400, problem)


def test_malformed_lfs_verify_bodies(http: httpx.Client, unchanged: Repo) -> None:
    url = f"/{unchanged.repo_id}.git/info/lfs/objects/verify"
    for body in ({"oid": 5}, {"oid": NEVER_UPLOADED}, {"oid": NEVER_UPLOADED, "size": "1"}, [1]):
        rejected(http.post(url, json=body), 400, "verify body")
    rejected(http.post(url, json={"oid": NEVER_UPLOADED, "size": 1}), 404, "has not been uploaded")


def test_upload_whose_bytes_do_not_match_the_oid_is_never_visible(http: httpx.Client,
                                                                   owner: tuple[str, str]) -> None:
    repo = new_repo(http, owner[0])
    data = os.urandom(4096)
    oid = hashlib.sha256(data).hexdigest()
    href = repo.batch(oid, len(data))["actions"]["upload"]["href"]
    rejected(httpx.put(href, content=os.urandom(4096)), 400, "nothing was stored", "hash to sha256")
    rejected(httpx.put(href, content=data[:100]), 400, "nothing was stored", "4096 were announced")
    rejected(httpx.put(href, content=data + b"!"), 400, "more than the announced 4096 bytes")
    # Not visible: not downloadable, not referable by a commit, and the batch API still asks for it.
    rejected(http.get(f"/{repo.repo_id}.git/info/lfs/objects/{oid}"), 404, "not part of")
    rejected(repo.commit(ndjson(header(), add_lfs("w.bin", oid, 4096))), 400, "never uploaded")
    rejected(http.post(f"/{repo.repo_id}.git/info/lfs/objects/verify", json={"oid": oid, "size": 4096}), 404)
    assert "upload" in repo.batch(oid, len(data))["actions"]
    assert [e["path"] for e in http.get(f"/api/models/{repo.repo_id}/tree/main").json()] == [".gitattributes"]


def test_upload_url_of_a_deleted_repo_never_reaches_the_repo_that_reuses_its_id(http: httpx.Client,
                                                                             owner: tuple[str, str]) -> None:
    doomed = new_repo(http, owner[0], "doomed")
    data = os.urandom(2048)
    oid = hashlib.sha256(data).hexdigest()
    href = doomed.batch(oid, len(data))["actions"]["upload"]["href"]
    assert http.request("DELETE", "/api/repos/delete", json={"name": doomed.repo_id}).status_code == 200
    successor = new_repo(http, owner[0], "successor")
    rejected(httpx.put(href, content=data), 404, "deleted since")
    assert "upload" in successor.batch(oid, len(data))["actions"]


def test_tampered_or_expired_upload_urls_are_403(http: httpx.Client, owner: tuple[str, str],
                                                 server: Server) -> None:
    repo = new_repo(http, owner[0])
    data = os.urandom(1000)
    oid = hashlib.sha256(data).hexdigest()
    href = repo.batch(oid, len(data))["actions"]["upload"]["href"]
    query = {k: v[0] for k, v in parse_qs(urlsplit(href).query).items()}
    base = href.split("?")[0]

    def put(**changes: str) -> httpx.Response:
        return httpx.put(base, params={**query, **changes}, content=data)

    rejected(put(size="999"), 403, "signature is invalid")
    rejected(put(repo=str(int(query["repo"]) + 1)), 403, "signature is invalid")
    rejected(put(rs=str(int(query["rs"]) + 1)), 403, "signature is invalid")
    rejected(put(exp=str(int(time.time()) + 10**6)), 403, "signature is invalid")
    rejected(put(sig="0" * 64), 403, "signature is invalid")
    rejected(httpx.put(base, params={k: v for k, v in query.items() if k != "sig"}, content=data), 403, "incomplete")
    rejected(httpx.put(base.replace(oid, NEVER_UPLOADED), params=query, content=data), 403, "signature is invalid")
    rejected(httpx.put(f"{base}/parts/1", params={**query, "sig": "1" * 64}, content=data), 403, "signature")
    # An expired URL, correctly signed with the server's own key, is refused as expired.
    key = (server.data_dir / "signing.key").read_text().strip()
    expired = lfs.UploadGrant(int(query["repo"]), oid, len(data), query["upload"], int(time.time()) - 5,
                              int(query["rs"]), int(query["t"]))
    rejected(httpx.put(f"{base}?{lfs.grant_query(Settings(signing_key=key), expired)}", content=data), 403, "expired")
    rejected(repo.commit(ndjson(header(), add_lfs("w.bin", oid, 1000))), 400, "never uploaded")
    assert httpx.put(href, content=data).status_code == 200  # the untouched URL still works


def test_bad_multipart_completion(http: httpx.Client, owner: tuple[str, str]) -> None:
    repo = new_repo(http, owner[0])
    data = os.urandom(300)
    oid = hashlib.sha256(data).hexdigest()
    href = repo.batch(oid, len(data))["actions"]["upload"]["href"]
    part = href.replace(f"/objects/{oid}?", f"/objects/{oid}/parts/1?")
    rejected(httpx.post(href, content=b"not json"), 400, "completion body")
    rejected(httpx.post(href, content=b"[" * 100_000), 400, "completion body")
    rejected(httpx.post(href, json={"oid": oid, "parts": "1"}), 400, "completion body")
    rejected(httpx.post(href, json={"oid": NEVER_UPLOADED, "parts": []}), 400, "oid does not match")
    rejected(httpx.post(href, json={"oid": oid, "parts": [{"partNumber": 2, "etag": "x"}]}), 400, "in order")
    rejected(httpx.post(href, json={"oid": oid, "parts": [{"partNumber": 1, "etag": "x"}]}), 422, "never uploaded")
    rejected(httpx.put(part.replace("/parts/1?", "/parts/0?"), content=data), 400, "outside this upload")
    rejected(httpx.put(part.replace("/parts/1?", "/parts/2?"), content=data), 400, "outside this upload")
    assert httpx.put(part, content=data).status_code == 200
    rejected(httpx.post(href, json={"oid": oid, "parts": [{"partNumber": 1, "etag": "0" * 64}]}), 400, "ETag")
    rejected(repo.commit(ndjson(header(), add_lfs("w.bin", oid, 300))), 400, "never uploaded")


def test_upload_url_of_a_deleted_repo_is_404(http: httpx.Client, owner: tuple[str, str]) -> None:
    repo = new_repo(http, owner[0])
    data = os.urandom(64)
    href = repo.batch(hashlib.sha256(data).hexdigest(), len(data))["actions"]["upload"]["href"]
    assert http.request("DELETE", "/api/repos/delete", json={"name": repo.repo_id}).status_code == 200
    rejected(httpx.put(href, content=data), 404, "deleted")


# -- reading -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["config.json", "model.bin"])
@pytest.mark.parametrize("span", ["bytes=100000-", "bytes=100000-200000", "bytes=-0", "bytes=9-3"])
def test_range_out_of_bounds_is_416(http: httpx.Client, unchanged: Repo, path: str, span: str) -> None:
    response = http.get(f"/{unchanged.repo_id}/resolve/main/{path}", headers={"range": span})
    rejected(response, 416, "outside the file")
    size = {"config.json": 8, "model.bin": 8000}[path]
    assert response.headers["content-range"] == f"bytes */{size}"


def test_range_inside_the_file_still_works(http: httpx.Client, unchanged: Repo) -> None:
    # On the S3 backend through the redirect to the object (the Range re-sent there); a bad Range is answered
    # by keephub itself before any redirect (above).
    response = http.get(f"/{unchanged.repo_id}/resolve/main/model.bin", headers={"range": "bytes=7990-"},
                        follow_redirects=True)
    assert response.status_code == 206 and response.content == (b"\x00weights" * 1000)[7990:]


@pytest.mark.parametrize("url", ["/api/no-such-thing", "/api/no-such/ns/name", "/api/models/a/b/no-such-view",
                                 "/no/such/page/at/all", "/api/%C3%BCber/%E6%97%A5"])
def test_unknown_endpoint_is_json_404(http: httpx.Client, url: str) -> None:
    rejected(http.get(url), 404, "no such endpoint")


@pytest.mark.parametrize(("method", "url", "allowed"), [
    ("DELETE", "/api/whoami-v2", "GET"), ("GET", "/api/repos/create", "POST"), ("PUT", "/api/repos/move", "POST"),
    ("GET", "/api/models/a/b/commit/main", "POST"),
])
def test_wrong_method_is_405(http: httpx.Client, method: str, url: str, allowed: str) -> None:
    response = http.request(method, url)
    rejected(response, 405, f"{method} is not allowed")
    assert allowed in response.headers["allow"]


PREUPLOAD = [
    ("not json", b"{", "not valid JSON"),
    ("array", b"[]", "JSON object"),
    ("no files", b"{}", "files"),
    ("files not a list", json.dumps({"files": {"a": 1}}).encode(), "files"),
    ("item not an object", json.dumps({"files": ["a.txt"]}).encode(), "files[0]"),
    ("no path", json.dumps({"files": [{"size": 1}]}).encode(), "path"),
    ("traversal", json.dumps({"files": [{"path": "../x", "size": 1}]}).encode(), "'..'"),
    ("negative size", json.dumps({"files": [{"path": "a", "size": -1}]}).encode(), "size"),
    ("size string", json.dumps({"files": [{"path": "a", "size": "1"}]}).encode(), "size"),
    ("sample not base64", json.dumps({"files": [{"path": "a", "size": 1, "sample": "!!"}]}).encode(), "sample"),
    ("sample not a string", json.dumps({"files": [{"path": "a", "size": 1, "sample": 5}]}).encode(), "sample"),
]


@pytest.mark.parametrize(("body", "problem"), [p[1:] for p in PREUPLOAD], ids=[p[0] for p in PREUPLOAD])
def test_malformed_preupload(http: httpx.Client, unchanged: Repo, body: bytes, problem: str) -> None:
    rejected(http.post(f"/api/models/{unchanged.repo_id}/preupload/main", content=body), 400, problem)


def test_preupload_for_a_missing_branch_or_pull_request(http: httpx.Client, unchanged: Repo) -> None:
    api = f"/api/models/{unchanged.repo_id}/preupload"
    rejected(http.post(f"{api}/nope", json={"files": []}), 404, "does not exist")
    rejected(http.post(f"{api}/nope", params={"create_pr": "1"}, json={"files": []}), 404, "does not exist")


PATHS_INFO = [
    ("array", b"[1]", "JSON object"),
    ("paths missing", b"{}", "'paths'"),
    ("paths not a list", json.dumps({"paths": "config.json"}).encode(), "'paths'"),
    ("paths hold numbers", json.dumps({"paths": [1, 2]}).encode(), "'paths'"),
    ("traversal", json.dumps({"paths": ["config.json", "../etc"]}).encode(), "'paths' entry 1"),
    ("empty path", json.dumps({"paths": [""]}).encode(), "missing or empty"),
    ("lone surrogate", b'{"paths": ["\\ud800"]}', "surrogate"),
]


@pytest.mark.parametrize(("body", "problem"), [p[1:] for p in PATHS_INFO], ids=[p[0] for p in PATHS_INFO])
def test_malformed_paths_info(http: httpx.Client, unchanged: Repo, body: bytes, problem: str) -> None:
    response = http.post(f"/api/models/{unchanged.repo_id}/paths-info/main", content=body,
                         headers={"content-type": "application/json"})
    rejected(response, 400, problem)


def test_paths_info_with_a_broken_form(http: httpx.Client, unchanged: Repo) -> None:
    response = http.post(f"/api/models/{unchanged.repo_id}/paths-info/main", content=b"--x\r\n",
                         headers={"content-type": "multipart/form-data"})
    rejected(response, 400, "boundary")


@pytest.mark.parametrize("cursor", ["abc", "-1", "1.5", "0x10", ""])
def test_tree_with_a_bad_cursor(http: httpx.Client, unchanged: Repo, cursor: str) -> None:
    response = http.get(f"/api/models/{unchanged.repo_id}/tree/main", params={"cursor": cursor})
    rejected(response, 400, "'cursor'")


def test_tree_and_resolve_of_bad_paths(http: httpx.Client, unchanged: Repo) -> None:
    api = f"/api/models/{unchanged.repo_id}"
    rejected(http.get(f"{api}/tree/main/config.json"), 404, "does not exist")
    rejected(http.get(f"{api}/tree/main/nope"), 404, "does not exist")
    rejected(http.get(f"{api}/tree/main/docs/%2E%2E/x"), 400, "'..'")
    rejected(http.get(f"{api}/tree/no-such-rev"), 404, "no-such-rev")
    rejected(http.get(f"/{unchanged.repo_id}/resolve/main/docs"), 404, "does not exist")
    rejected(http.get(f"/{unchanged.repo_id}/resolve/main/a%5Cb"), 400, "backslash")
    rejected(http.get(f"/{unchanged.repo_id}/resolve/%00/x"), 400, "revision")
    rejected(http.get("/api/models", params={"limit": "-1"}), 400, "'limit'")


def test_unicode_file_names_round_trip(http: httpx.Client, owner: tuple[str, str]) -> None:
    """Non-Latin-1 names end up in headers (Content-Disposition, Link): they must be encoded, not a 500."""
    repo = new_repo(http, owner[0])
    assert repo.commit(ndjson(header(), add_file("日本/données ü.txt", b"hi"))).status_code == 200
    response = http.get(f"/{repo.repo_id}/resolve/main/日本/données ü.txt")
    assert response.status_code == 200 and response.content == b"hi"
    assert "filename*=UTF-8''" in response.headers["content-disposition"]
    rejected(http.get(f"/{repo.repo_id}/resolve/main/日本/ñö.txt"), 404, "does not exist")
    # A folder listing longer than one page links to the next page, with the folder name in the URL.
    assert repo.commit(ndjson(header(), *(add_file(f"日本/{i}.txt") for i in range(1000)))).status_code == 200
    first = http.get(f"/api/models/{repo.repo_id}/tree/main/日本")
    assert first.status_code == 200 and len(first.json()) == 1000
    second = http.get(first.links["next"]["url"])
    assert second.status_code == 200 and [e["path"] for e in second.json()] == ["日本/données ü.txt"]
