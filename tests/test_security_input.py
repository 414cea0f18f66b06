"""Findings of the outside attack review on input handling and files at rest, each as a regression test.

Every bad input must get a 4xx whose message names the problem (never a 500, never a dropped connection)
and must leave nothing stored. Tests go through the real huggingface_hub client where it can send the
input, and through httpx or a raw socket where it cannot.
"""

from __future__ import annotations

import base64
import json
import socket
import stat
import time
import unicodedata
import uuid
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from conftest import SESSION_DIR, Server, free_port
from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import HfHubHTTPError

UV_IMAGE = "ghcr.io/astral-sh/uv:python3.12-bookworm"


@pytest.fixture(scope="module")
def alice(server: Server) -> tuple[str, str]:
    """One user for the whole module (creating one takes seconds): every refusal must leave it unchanged."""
    return server.user()


def refused(call, status: int, *words: str) -> str:  # type: ignore[no-untyped-def]
    """Run a client call that must fail with `status`; return the server's message, which must name `words`."""
    with pytest.raises(HfHubHTTPError) as info:
        call()
    response = info.value.response
    message = response.json()["error"]
    assert response.status_code == status, (response.status_code, message)
    for word in words:
        assert word in message, (word, message)
    return message


def json_post(server: Server, token: str, path: str, raw_json: bytes) -> httpx.Response:
    """POST a JSON body as raw bytes: the only way to send what a client library would never produce."""
    return httpx.post(server.url + path, content=raw_json, timeout=30,
                      headers={"authorization": f"Bearer {token}", "content-type": "application/json"})


# -- 1. job spec values ------------------------------------------------------------------------------------
JOB_SPEC_CASES = [
    # (run_job keyword arguments, the field the refusal must name); lone surrogates are sent raw below, as
    # the client cannot encode them
    ({"command": ["echo\x00", "hi"]}, "command[0]"),
    ({"command": ["echo"], "secrets": {"TOKEN": "x\x00--bind / /"}}, "secrets.TOKEN"),
    ({"command": ["echo"], "env": {"GREETING": "hi\x00"}}, "environment.GREETING"),
    ({"command": ["echo"], "labels": {"team": "a\x00b"}}, "labels.team"),
    ({"command": ["echo"], "labels": {"\x00": "x"}}, "labels"),
    ({"command": ["echo"], "flavor": "cpu-basic\x00"}, "flavor"),
    ({"command": ["echo"], "image": "python:3.12\x00"}, "dockerImage"),
]


@pytest.mark.parametrize(("kwargs", "field"), JOB_SPEC_CASES, ids=[c[1] for c in JOB_SPEC_CASES])
def test_job_spec_text_with_nul_or_lone_surrogate_is_refused(api: HfApi, alice: tuple[str, str], kwargs: dict,
                                                             field: str) -> None:
    kwargs = {"image": UV_IMAGE, **kwargs}
    refused(lambda: api.run_job(namespace=alice[0], **kwargs), 422, field)
    assert list(api.list_jobs(namespace=alice[0])) == [], "nothing is stored for a refused spec"


@pytest.mark.parametrize("name", ["A=B", "NAME\x00", "TRAILING\n", "1ST", "with space", "ÜMLAUT"])
def test_environment_and_secret_names_must_be_variable_names(api: HfApi, alice: tuple[str, str],
                                                             name: str) -> None:
    for where in ("env", "secrets"):
        message = refused(lambda: api.run_job(image=UV_IMAGE, command=["echo"], namespace=alice[0],
                                              **{where: {name: "value"}}), 422)
        assert "letters, digits" in message or "NUL" in message, message
    assert list(api.list_jobs(namespace=alice[0])) == []


def test_jobs_stay_listable_after_hostile_submissions(server: Server, api: HfApi, alice: tuple[str, str]) -> None:
    """A lone surrogate in `command` used to be stored, after which list_jobs and the job page answered 500."""
    for raw, field in ((b'{"command": ["echo", "\\ud800"], "flavor": "cpu-basic"}', "command[1]"),
                       (b'{"command": ["echo"], "arguments": ["\\udfff"]}', "arguments[0]"),
                       (b'{"command": ["echo"], "labels": {"\\udc80": "x"}}', "labels"),
                       (b'{"command": ["echo"], "environment": {"GREETING": "hi\\udc80"}}', "environment.GREETING"),
                       (b'{"command": ["echo"], "secrets": {"A": "x\\u0000--bind / /"}}', "secrets.A"),
                       (b'{"command": ["echo"], "spaceId": "a\\u0000"}', "spaceId"),
                       (b'{"command": ["echo"], "flavor": ["cpu-basic"]}', "flavor"),
                       (b'{"command": ["echo"], "timeoutSeconds": "' + b"9" * 400 + b'"}', "timeout")):
        response = json_post(server, alice[1], f"/api/jobs/{alice[0]}", raw)
        assert 400 <= response.status_code < 500, (raw, response.status_code, response.text)
        assert field in response.json()["error"], (field, response.text)
    assert list(api.list_jobs(namespace=alice[0])) == []
    page = httpx.get(f"{server.url}/jobs/{alice[0]}", headers={"authorization": f"Bearer {alice[1]}"})
    assert page.status_code < 500


# -- 2. stored strings are UTF-8 ---------------------------------------------------------------------------
def test_lone_surrogates_and_nul_never_reach_storage(server: Server, api: HfApi, alice: tuple[str, str],
                                                     repo_id: str) -> None:
    token = alice[1]
    before = api.list_repo_commits(repo_id)
    refused(lambda: api.create_commit(repo_id, [CommitOperationAdd("a.txt", b"x")], commit_message="bad \ud800"),
            400, "surrogate")
    refused(lambda: api.create_commit(repo_id, [CommitOperationAdd("a.txt", b"x")], commit_message="bad \x00 nul"),
            400, "NUL")
    refused(lambda: api.create_commit(repo_id, [CommitOperationAdd("a.txt", b"x")], commit_message="ok",
                                      commit_description="bad \udfff"), 400, "surrogate")
    response = json_post(server, token, f"/api/models/{repo_id}/tag/main", b'{"tag": "v1\\ud800"}')
    assert response.status_code == 400 and "surrogate" in response.json()["error"]
    for raw, word in [
        (b'{"name": "r\\ud800", "organization": "%s"}' % alice[0].encode(), "name"),
        (b'{"name": "ok-name", "organization": "%s", "cardData": {"t": "\\ud800"}}' % alice[0].encode(), "cardData.t"),
    ]:
        response = json_post(server, token, "/api/repos/create", raw)
        assert response.status_code == 400 and word in response.json()["error"], response.text
    response = json_post(server, token, f"/api/models/{repo_id}/paths-info/main", b'{"paths": ["a\\u0000b"]}')
    assert response.status_code == 400 and "NUL" in response.json()["error"]
    response = json_post(server, token, f"/api/models/{repo_id}/preupload/main",
                         b'{"files": [{"path": "x\\udc00.txt", "size": 1, "sample": ""}]}')
    assert response.status_code == 400 and "surrogate" in response.json()["error"]
    assert api.list_repo_commits(repo_id) == before
    assert [r.name for r in api.list_repo_refs(repo_id).tags] == []
    assert not api.repo_exists(f"{alice[0]}/ok-name")


@pytest.mark.parametrize(("front_matter", "card"), [
    (b"tags: [\"\\ud800\"]", None),                     # a YAML escape for a lone surrogate
    (b"a: &x [*x]", None),                                 # a cycle
    (b"a: &a [1, 1]\nb: &b [*a, *a]\nc: [*b, *b]", None),  # aliases, which nest into a "billion laughs"
    (b"a: [" * 3000, None),                                # nesting past the parser's depth
    (b"license: mit\ndate: 2024-01-01", {"license": "mit", "date": "2024-01-01"}),
], ids=["surrogate", "cycle", "aliases", "deep", "date"])
def test_model_card_metadata_never_breaks_repo_info(server: Server, api: HfApi, repo_id: str,
                                                    front_matter: bytes, card: dict | None) -> None:
    """The README is stored as written; its cardData used to make model_info (and the repo page) answer 500.

    Committed without the client, whose commits of a README.md ask validate-yaml first (which refuses some)."""
    readme = base64.b64encode(b"---\n" + front_matter + b"\n---\n# Model\n").decode()
    auth = {"authorization": f"Bearer {api.token}"}
    body = "\n".join(json.dumps(line) for line in (
        {"key": "header", "value": {"summary": "card"}},
        {"key": "file", "value": {"path": "README.md", "content": readme, "encoding": "base64"}}))
    committed = httpx.post(f"{server.url}/api/models/{repo_id}/commit/main", content=body,
                           headers={**auth, "content-type": "application/x-ndjson"})
    assert committed.status_code == 200, committed.text
    assert api.model_info(repo_id, files_metadata=True).sha is not None
    assert httpx.get(f"{server.url}/api/models/{repo_id}", headers=auth).json()["cardData"] == card
    assert httpx.get(f"{server.url}/{repo_id}", headers=auth).status_code == 200


# -- 3. numeric query parameters -------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["99999999999999999999999", "-1", "\u0661\u0662", "1e5", "0x10", " 5", "5.0"])
def test_limit_and_cursor_are_range_checked(server: Server, repo_id: str, value: str) -> None:
    for url, name in [("/api/models", "limit"), ("/api/datasets", "limit"),
                      (f"/api/models/{repo_id}/tree/main", "cursor")]:
        response = httpx.get(server.url + url, params={name: value})
        assert response.status_code == 400, (url, value, response.status_code)
        message = response.json()["error"]
        assert f"'{name}'" in message and "from 0 to" in message, message


def test_limit_and_cursor_in_range_still_work(server: Server, api: HfApi, repo_id: str) -> None:
    assert httpx.get(f"{server.url}/api/models", params={"limit": "1"}).status_code == 200
    listed = [model.id for model in api.list_models(author=repo_id.split("/")[0], limit=100_000)]
    assert repo_id in listed and len(list(api.list_models(author=repo_id.split("/")[0], limit=1))) == 1
    assert httpx.get(f"{server.url}/api/models/{repo_id}/tree/main", params={"cursor": "0"}).status_code == 200


# -- 4. error headers --------------------------------------------------------------------------------------
@pytest.mark.parametrize("segment", ["r%00x", "r%01x", "r%0Ax", "r%0D%0AX-Evil:%201", "r%C3%A9x", "r%E2%98%83",
                                     "r%1B%5B31m", "r%7Fx", "r%FFx"])
def test_error_headers_are_printable_ascii_whatever_the_url_holds(server: Server, alice: tuple[str, str],
                                                                  segment: str) -> None:
    """Messages quote the URL; a NUL or control character in X-Error-Message made uvicorn drop the connection."""
    for path in (f"/api/models/{alice[0]}/{segment}", f"/api/models/{alice[0]}/{segment}/resolve/main/a.txt",
                 f"/api/models/{alice[0]}/repo/resolve/main/{segment}", f"/api/nope/{segment}",
                 f"/{alice[0]}/{segment}/resolve/main/{segment}", f"/api/models?limit={segment}",
                 f"/api/models/{alice[0]}/repo/tree/main?cursor={segment}"):
        response = httpx.get(server.url + path, headers={"authorization": f"Bearer {alice[1]}"})
        assert 400 <= response.status_code < 500, (path, response.status_code)
        header = response.headers.get("x-error-message", "")
        assert all(" " <= char <= "~" for char in header), (path, header)
        assert "x-evil" not in response.headers


# -- 5. header size and count ------------------------------------------------------------------------------
def _send_raw(server: Server, request: bytes) -> bytes:
    """Send `request` (stopping if the server hangs up) and return what the server answered."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        try:
            for start in range(0, len(request), 64 * 1024):
                sock.sendall(request[start:start + 64 * 1024])
        except OSError:
            pass  # the server answered and closed while the rest was still on its way
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
    return answer


def _peak_rss_kib(server: Server) -> int:
    assert server.process is not None
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))


def test_oversized_or_too_many_headers_get_431_and_the_server_stays_well(server: Server) -> None:
    head = b"GET /api/models HTTP/1.1\r\nHost: keephub\r\n"
    cases = [
        head + b"X-Big: " + b"a" * (1 << 20) + b"\r\n\r\n",                               # one 1 MiB header
        head + b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 1000) for i in range(1000)) + b"\r\n",  # 1 MB in many
        head + b"".join(b"X-C%d: 1\r\n" % i for i in range(150)) + b"\r\n",               # small, too many
        head + b"".join(b"X-D%d: %s\r\n" % (i, b"e" * 2000) for i in range(50)) + b"\r\n",  # 100 kB, few
        b"GET /api/models?q=" + b"c" * 200_000 + b" HTTP/1.1\r\nHost: keephub\r\n\r\n",  # a huge URL
    ]
    baseline = _peak_rss_kib(server)
    for request in cases * 3:
        answer = _send_raw(server, request)
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert _peak_rss_kib(server) - baseline < 20 * 1024, "the server must not buffer the oversized heads"
    normal = head + b"".join(b"X-N%d: %s\r\n" % (i, b"d" * 500) for i in range(90)) + b"Connection: close\r\n\r\n"
    assert _send_raw(server, normal).startswith(b"HTTP/1.1 200 ")
    large_body = b"[" + b"1," * 500_000 + b"1]"  # a body is not a head, however it arrives
    with_body = (b"POST /api/validate-yaml HTTP/1.1\r\nHost: keephub\r\nContent-Type: application/json\r\n"
                 b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(large_body) + large_body)
    assert _send_raw(server, with_body).startswith(b"HTTP/1.1 400 "), "refused for its JSON, not as a head"
    assert httpx.get(f"{server.url}/api/models").status_code == 200


# -- 6. cron ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", ["* * * * * *", "*/1 * * * * * *", "* * * *", "@reboot", "@every_second",
                                      "61 * * * *", "* * * * *\x00", ""])
def test_schedules_firing_faster_than_a_minute_or_malformed_are_refused(server: Server, api: HfApi,
                                                                        alice: tuple[str, str], schedule: str) -> None:
    script_url = f"{server.url}/{alice[0]}/scripts/resolve/main/hello.py"
    refused(lambda: api.create_scheduled_job(image=UV_IMAGE, command=["echo"], schedule=schedule,
                                             namespace=alice[0]), 422, "schedule")
    refused(lambda: api.create_scheduled_uv_job(script_url, schedule=schedule, namespace=alice[0]), 422, "schedule")
    assert list(api.list_scheduled_jobs(namespace=alice[0])) == []


@pytest.mark.parametrize("schedule", ["*/5 * * * *", "@hourly", "@annually", "0 3 * * 1-5"])
def test_five_field_schedules_and_hub_aliases_are_accepted(api: HfApi, alice: tuple[str, str],
                                                           schedule: str) -> None:
    scheduled = api.create_scheduled_job(image=UV_IMAGE, command=["echo"], schedule=schedule, namespace=alice[0],
                                         suspend=True)
    assert scheduled.schedule == schedule
    api.delete_scheduled_job(scheduled_job_id=scheduled.id, namespace=alice[0])


# -- 7. branch and tag names --------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "rule"), [
    ("HEAD", "reserves"), ("@", "reserves"), ("refs/heads/main", "refs/"), ("refs/pr/1", "refs/"),
    ("-rf", "starts with"), ("a..b", ".."), ("x@{1}", "@{"), ("a.lock/b", ".lock"), ("b.lock", ".lock"),
    ("a b", "space"), ("a~1", "~"), ("a^", "^"), ("a:b", ":"), ("a?", "?"), ("a*", "*"), ("a[", "["),
    ("a\\b", "\\"), ("a/", "ends with"), ("a.", "ends with"), ("a//b", "//"), ("a/.b", "'.'"), ("tab\tx", "control"),
])
def test_branch_and_tag_names_follow_git_check_ref_format(api: HfApi, repo_id: str, name: str, rule: str) -> None:
    refs_before = api.list_repo_refs(repo_id)
    refused(lambda: api.create_branch(repo_id, branch=name), 400, "invalid branch name", rule)
    refused(lambda: api.create_tag(repo_id, tag=name), 400, "invalid tag name", rule)
    refs_after = api.list_repo_refs(repo_id)
    assert refs_after.branches == refs_before.branches and refs_after.tags == refs_before.tags


def test_ordinary_branch_and_tag_names_still_work(api: HfApi, repo_id: str) -> None:
    api.create_branch(repo_id, branch="rescue/job-1")
    api.create_tag(repo_id, tag="v1.0-rc.1", revision="rescue/job-1")
    refs = api.list_repo_refs(repo_id)
    assert "rescue/job-1" in [b.name for b in refs.branches] and [t.name for t in refs.tags] == ["v1.0-rc.1"]
    assert api.list_repo_files(repo_id, revision="rescue/job-1") == api.list_repo_files(repo_id)


# -- 8. Unicode normalisation of paths ----------------------------------------------------------------------
def test_nfc_and_nfd_spellings_of_a_path_are_one_file(api: HfApi, repo_id: str, tmp_path: Path) -> None:
    nfc, nfd = unicodedata.normalize("NFC", "café.txt"), unicodedata.normalize("NFD", "café.txt")
    assert nfc != nfd
    api.upload_file(path_or_fileobj=b"first", path_in_repo=nfc, repo_id=repo_id)
    api.upload_file(path_or_fileobj=b"second", path_in_repo=nfd, repo_id=repo_id)
    assert [f for f in api.list_repo_files(repo_id) if f.startswith("caf")] == [nfc], "stored once, in NFC"
    for spelling in (nfc, nfd):
        downloaded = api.hf_hub_download(repo_id, spelling, local_dir=tmp_path / spelling.encode().hex())
        assert Path(downloaded).read_bytes() == b"second"
    assert [p.path for p in api.get_paths_info(repo_id, [nfd])] == [nfc]


# -- 10. files at rest -------------------------------------------------------------------------------------
@pytest.fixture
def private_server() -> Iterator[Server]:
    srv = Server(data_dir=SESSION_DIR / f"at-rest-{uuid.uuid4().hex[:6]}" / "data", port=free_port())
    srv.start()
    yield srv
    srv.stop()


def _group_or_other_access(data_dir: Path) -> list[str]:
    """Entries under `data_dir` that other users could enter, read or write (sockets: reached only through
    the mounts keephub makes for sandboxes)."""
    found = []
    for path in [data_dir, *data_dir.rglob("*")]:
        mode = path.lstat().st_mode
        if stat.S_ISSOCK(mode) or stat.S_ISLNK(mode):
            continue
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            found.append(f"{path.relative_to(data_dir)} {stat.filemode(mode)}")
    return found


def test_data_directory_is_private_to_the_keephub_account(private_server: Server) -> None:
    name, token = private_server.user()
    api = HfApi(endpoint=private_server.url, token=token)
    repo = f"{name}/private-{uuid.uuid4().hex[:6]}"
    api.create_repo(repo)
    api.upload_file(path_or_fileobj=b"weights" * 1000, path_in_repo="model.bin", repo_id=repo)
    api.upload_file(path_or_fileobj=b"\x00" * 20_000_000, path_in_repo="big.safetensors", repo_id=repo)
    data_dir = private_server.data_dir
    required = ["signing.key"] if "KEEPHUB_DATABASE_URL" in private_server.env else ["keephub.db", "signing.key"]
    for entry in required:
        assert (data_dir / entry).exists()
    assert stat.S_IMODE(data_dir.stat().st_mode) & 0o077 in (0, 0o011)
    assert _group_or_other_access(data_dir) == []


def test_an_open_data_directory_is_reported_at_start(private_server: Server) -> None:
    private_server.stop()
    # The SQLite file, or (metadata in PostgreSQL) the signing key: either is reported the same way.
    name = "signing.key" if "KEEPHUB_DATABASE_URL" in private_server.env else "keephub.db"
    database = private_server.data_dir / name
    database.chmod(0o644)
    log_start = private_server.log_path.stat().st_size
    private_server.start()
    deadline = time.time() + 10
    while time.time() < deadline:
        log = private_server.log_path.read_bytes()[log_start:].decode(errors="replace")
        if str(database) in log:
            break
        time.sleep(0.2)
    assert str(database) in log and "chmod" in log and "644" in log, log
    assert json.loads(httpx.get(f"{private_server.url}/api/models").text) == []


@pytest.mark.parametrize("method, path, headers", [
    ("PUT", "/api/lfs/objects/" + "a" * 64 + "?repo=1&size=1&upload=x&exp=1&rs=1&t=1&sig=%C3%A9", {}),
    ("GET", "/cas/fetch/" + "a" * 64 + "?r=0-1&e=1&s=%C3%A9", {}),
    ("GET", "/cas/v1/reconstructions/" + "a" * 64,
     {b"authorization": b"Bearer kxet1.eyJyIjoxLCJhIjoiciIsInUiOiJ4IiwiZSI6MSwidCI6bnVsbCwicyI6MX0.\xe9"}),
    ("POST", "/api/agent/v1/jobs/x/attempts/99999999999999999999/records", {b"authorization": b"Bearer khagent_a"}),
    ("GET", "/api/jobs/x/y/logs?tail=" + "9" * 5000, {}),
])
def test_signatures_and_numbers_from_the_client_never_make_a_500(server: Server, alice: tuple[str, str],
                                                                 method: str, path: str, headers: dict) -> None:
    """Found by review: hmac.compare_digest raised TypeError on a non-ASCII signature; an attempt number or a
    tail of thousands of digits overflowed."""
    auth = {} if headers else {b"authorization": f"Bearer {alice[1]}".encode()}
    response = httpx.request(method, server.url + path, headers={**auth, **headers}, content=b'{"kind": "push"}')
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
