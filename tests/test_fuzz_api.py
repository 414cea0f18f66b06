"""Property-based fuzzing of the main API endpoints with hypothesis, against the live server.

Properties: no input gets a 5xx or a dropped connection; an input that is invalid by construction (it holds
a NUL, a lone surrogate or a character a name may not hold) gets a 4xx; and a fixed repo's branches, tags,
commits and files are the same at the end. Runs are deterministic (derandomize) and bounded (max_examples)
so the whole file stays under a minute.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any, Iterator
from urllib.parse import quote

import httpx
import pytest
from conftest import Server
from huggingface_hub import HfApi
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Characters that broke keephub before: NUL and control characters in headers, lone surrogates in storage,
# line breaks in header values, and what git refuses in ref names.
SPECIAL = ["\x00", "\x01", "\n", "\r", "\t", "\x1b", "\x7f", "\ud800", "\udfff", "\udc80", "é", "☃", "\u0661",
           "/", "\\", "..", "@{", "~", "^", ":", "?", "*", "[", " ", "%", "%00", ".lock", "HEAD", "refs/"]
# Never storable as text anywhere. The 'x's keep a planted surrogate lone: next to another one it could form a
# valid pair ("\ud800\udfff" is U+103FF).
UNSTORABLE = ["\x00", "x\ud800x", "x\udfffx", "x\udc80x"]
NOT_IN_A_REF = ["\x00", "\x01", "\n", "\x7f", " ", "~", "^", ":", "?", "*", "[", "\\", "..", "@{"]

any_text = st.lists(st.one_of(st.characters(), st.sampled_from(SPECIAL)), max_size=16).map("".join)
huge_number = st.one_of(st.integers(min_value=-(10**30), max_value=10**30), st.sampled_from([2**63, -(2**63) - 1]))
query_value = st.one_of(any_text, huge_number.map(str), st.sampled_from(["\u0661\u0662", "1e5", "-0", "0x10"]))
json_value = st.recursive(
    st.one_of(st.none(), st.booleans(), huge_number, st.floats(allow_nan=False, allow_infinity=False), any_text),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(any_text, children, max_size=4)),
    max_leaves=12,
)


def spliced(forbidden: list[str]) -> st.SearchStrategy[str]:
    """Arbitrary text with one of `forbidden` somewhere in it: invalid by construction."""
    return st.builds(lambda head, bad, tail: head + bad + tail, any_text, st.sampled_from(forbidden), any_text)


unstorable_text = spliced(UNSTORABLE)
# In a URL, a lone surrogate would arrive as U+FFFD (a valid character), so URL-borne names use these.
bad_ref_in_url = st.one_of(spliced(NOT_IN_A_REF), st.sampled_from(["HEAD", "@", "refs/heads/main", "-x", "a.lock"]))
bad_ref_in_json = st.one_of(bad_ref_in_url, unstorable_text)


def segment(text: str) -> str:
    """`text` as one URL path segment or query value, byte for byte (a lone surrogate becomes invalid UTF-8)."""
    return quote(text.encode("utf-8", "surrogatepass"), safe="") or "%20"


def body(value: Any) -> bytes:
    """JSON with lone surrogates as \\ud800 escapes, as a hostile client would send them."""
    return json.dumps(value).encode()


class Fuzzer:
    """Sends requests to the live server and checks the answer is an HTTP response below 500."""

    def __init__(self, server: Server, user: str, token: str, repo_id: str) -> None:
        self.server, self.user, self.repo_id = server, user, repo_id
        self.client = httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {token}"}, timeout=60)

    def send(self, method: str, path: str, *, content: bytes | None = None, params: dict | None = None,
             expect_4xx: bool = False) -> httpx.Response:
        if params:
            path += "?" + "&".join(f"{key}={segment(value)}" for key, value in params.items())
        try:
            response = self.client.request(method, path, content=content,
                                           headers={"content-type": "application/json"} if content else None)
        except httpx.TransportError as exc:
            raise AssertionError(f"{method} {path} dropped the connection: {exc!r}") from exc
        assert response.status_code < 500, (method, path, content, response.status_code, response.text)
        if expect_4xx:
            assert 400 <= response.status_code < 500, (method, path, content, response.status_code, response.text)
            assert response.json().get("error"), "a refusal says what is wrong"
        header = response.headers.get("x-error-message", "")
        assert all(" " <= char <= "~" for char in header), header
        return response


def repo_state(api: HfApi, repo_id: str) -> tuple:
    refs = api.list_repo_refs(repo_id)
    files = sorted((f.path, getattr(f, "blob_id", None)) for f in api.list_repo_tree(repo_id, recursive=True))
    return (sorted((b.name, b.target_commit) for b in refs.branches), sorted((t.name, t.target_commit)
            for t in refs.tags), [c.commit_id for c in api.list_repo_commits(repo_id)], files)


@pytest.fixture(scope="module")
def fuzzer(server: Server) -> Iterator[Fuzzer]:
    name, token = server.user()
    api = HfApi(endpoint=server.url, token=token)
    repo_id = f"{name}/fixed-{uuid.uuid4().hex[:6]}"
    api.create_repo(repo_id)
    api.upload_file(path_or_fileobj=b'{"a": 1}', path_in_repo="config.json", repo_id=repo_id)
    api.upload_file(path_or_fileobj=b"\x00weights" * 1000, path_in_repo="sub/model.bin", repo_id=repo_id)
    api.create_branch(repo_id, branch="dev")
    api.create_tag(repo_id, tag="v1")
    before = repo_state(api, repo_id)
    log_start = server.log_path.stat().st_size
    fuzz = Fuzzer(server, name, token, repo_id)
    yield fuzz
    fuzz.client.close()
    assert repo_state(api, repo_id) == before, "fuzzing changed the fixed repo"
    log = server.log_path.read_bytes()[log_start:].decode(errors="replace")
    assert "Exception in ASGI application" not in log, log[log.find("Exception in ASGI application"):][:6000]
    assert list(api.list_jobs(namespace=name)) == [] and list(api.list_scheduled_jobs(namespace=name)) == []


@FUZZ
@given(plural=st.sampled_from(["models", "datasets", "spaces"]), params=st.dictionaries(
    st.sampled_from(["limit", "search", "author", "cursor", "full", "sort", "expand"]), query_value, max_size=4))
def test_list_repos(fuzzer: Fuzzer, plural: str, params: dict) -> None:
    fuzzer.send("GET", f"/api/{plural}", params=params)


@FUZZ
@given(namespace=any_text, name=any_text, revision=any_text, path=any_text, params=st.dictionaries(
    st.sampled_from(["cursor", "recursive", "expand", "blobs"]), query_value, max_size=3))
def test_repo_info_tree_and_resolve(fuzzer: Fuzzer, namespace: str, name: str, revision: str, path: str,
                                    params: dict) -> None:
    repo = fuzzer.repo_id
    for url in (f"/api/models/{segment(namespace)}/{segment(name)}",
                f"/api/models/{repo}/revision/{segment(revision)}",
                f"/api/models/{repo}/tree/{segment(revision)}/{segment(path)}",
                f"/api/models/{repo}/tree/main/{segment(path)}",
                f"/{repo}/resolve/{segment(revision)}/{segment(path)}",
                f"/{repo}/resolve/main/{segment(path)}"):
        fuzzer.send("GET", url, params=params)


@FUZZ
@given(payload=st.one_of(json_value, st.fixed_dictionaries({"paths": st.lists(any_text, max_size=4)},
                                                           optional={"expand": json_value})))
def test_paths_info_and_preupload(fuzzer: Fuzzer, payload: Any) -> None:
    fuzzer.send("POST", f"/api/models/{fuzzer.repo_id}/paths-info/main", content=body(payload))
    paths = payload.get("paths") if isinstance(payload, dict) else payload
    names = [p for p in paths if isinstance(p, str)] if isinstance(paths, list) else []
    preupload = {"files": [{"path": name, "size": 10, "sample": ""} for name in names]}
    for content in (body(payload), body(preupload)):
        fuzzer.send("POST", f"/api/models/{fuzzer.repo_id}/preupload/main", content=content)


@FUZZ
@given(name=st.one_of(unstorable_text, spliced(NOT_IN_A_REF), st.sampled_from(["a" * 97, "-x", "x.git", "a--b"])),
       extra=st.dictionaries(st.sampled_from(["type", "private", "organization", "sdk"]), json_value, max_size=3))
def test_create_repo_with_a_bad_name(fuzzer: Fuzzer, name: str, extra: dict) -> None:
    fuzzer.send("POST", "/api/repos/create", content=body({"name": name, "organization": fuzzer.user, **extra}),
                expect_4xx=True)


@FUZZ
@given(summary=unstorable_text, operations=st.lists(st.fixed_dictionaries(
    {"key": st.sampled_from(["file", "lfsFile", "deletedFile", "deletedFolder", "header"]),
     "value": st.dictionaries(st.sampled_from(["path", "content", "encoding", "oid", "size"]), json_value)}),
    max_size=3))
def test_commit_with_an_unstorable_message(fuzzer: Fuzzer, summary: str, operations: list) -> None:
    lines = [{"key": "header", "value": {"summary": summary}}, *operations]
    ndjson = b"\n".join(body(line) for line in lines)
    fuzzer.send("POST", f"/api/models/{fuzzer.repo_id}/commit/main", content=ndjson, expect_4xx=True)


@FUZZ
@given(in_url=bad_ref_in_url, in_json=bad_ref_in_json, starting_point=json_value)
def test_create_branch_and_tag_with_bad_names(fuzzer: Fuzzer, in_url: str, in_json: str,
                                              starting_point: Any) -> None:
    repo = fuzzer.repo_id
    fuzzer.send("POST", f"/api/models/{repo}/branch/{segment(in_url)}", content=body({}), expect_4xx=True)
    fuzzer.send("POST", f"/api/models/{repo}/branch/{segment(in_url)}",
                content=body({"startingPoint": starting_point}), expect_4xx=True)
    fuzzer.send("POST", f"/api/models/{repo}/tag/main", content=body({"tag": in_json}), expect_4xx=True)


SPEC_FIELDS = ["command", "arguments", "environment", "secrets", "labels", "dockerImage", "spaceId", "flavor",
               "timeoutSeconds", "attempts"]


@st.composite
def hostile_spec(draw: st.DrawFn) -> dict:
    """A job spec whose fields are arbitrary, with one unstorable string planted in one of them."""
    spec = draw(st.dictionaries(st.sampled_from(SPEC_FIELDS), json_value, max_size=5))
    field, bad = draw(st.sampled_from(SPEC_FIELDS)), draw(unstorable_text)
    spec[field] = {"command": [bad], "arguments": [bad], "environment": {"NAME": bad}, "secrets": {bad: "x"},
                   "labels": {"k": bad}}.get(field, bad)
    return spec


@FUZZ
@given(spec=hostile_spec(), schedule=st.one_of(any_text, st.sampled_from(["* * * * * *", "@hourly", "*/5 * * * *"])))
def test_job_and_scheduled_job_specs(fuzzer: Fuzzer, spec: dict, schedule: str) -> None:
    fuzzer.send("POST", f"/api/jobs/{fuzzer.user}", content=body(spec), expect_4xx=True)
    fuzzer.send("POST", f"/api/scheduled-jobs/{fuzzer.user}", content=body({"jobSpec": spec, "schedule": schedule}),
                expect_4xx=True)


@FUZZ
@given(namespace=any_text, job_id=any_text, params=st.dictionaries(
    st.sampled_from(["stage", "label", "tail", "limit"]), query_value, max_size=3))
def test_job_reads(fuzzer: Fuzzer, namespace: str, job_id: str, params: dict) -> None:
    for url in (f"/api/jobs/{segment(namespace)}", f"/api/jobs/{fuzzer.user}",
                f"/api/jobs/{fuzzer.user}/{segment(job_id)}", f"/api/scheduled-jobs/{fuzzer.user}/{segment(job_id)}",
                f"/api/jobs/{segment(namespace)}/{segment(job_id)}"):
        fuzzer.send("GET", url, params=params)


@FUZZ
@given(token=st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e), min_size=1, max_size=60),
       scheme=st.sampled_from(["Bearer", "bearer", "Basic", "", "Bearer  "]))
def test_whoami_with_arbitrary_credentials(fuzzer: Fuzzer, token: str, scheme: str) -> None:
    """Any printable credential (what an HTTP client can send) is answered, with 401 for a wrong one."""
    response = httpx.get(f"{fuzzer.server.url}/api/whoami-v2", headers={"authorization": f"{scheme} {token}".strip()})
    assert response.status_code in (200, 401), (token, response.status_code, response.text)
    assert re.fullmatch(r"[ -~]*", response.headers.get("x-error-message", ""))
