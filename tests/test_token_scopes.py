"""Least privilege through the real huggingface_hub client: a fine-grained token writes only what it lists, a
job's `$HF_TOKEN` writes only the repo the job was submitted for, and every credential made from a token (signed
upload URLs, CAS tokens, job tokens) stops working with it."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import httpx
import pytest
from conftest import JOB_XET_ENV, Server
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError

from keephub.devserver import keephub_cli

UV_IMAGE = "ghcr.io/astral-sh/uv:python3.12-bookworm"


def scoped_token(server: Server, user: str, *flags: str) -> str:
    return keephub_cli(server.data_dir, "token", "create", user, "--role", "write", "--quiet", *flags).strip()


def refusal(call) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    """The status and message of the error a client call raises."""
    with pytest.raises(HfHubHTTPError) as info:
        call()
    return info.value.response.status_code, info.value.response.json()["error"]


def lfs_upload_href(server: Server, token: str, repo_id: str, data: bytes) -> str:
    """What git-lfs is handed for an upload: a self-authenticating URL the client PUTs to without a token."""
    reply = httpx.post(f"{server.url}/{repo_id}.git/info/lfs/objects/batch",
                       headers={"authorization": f"Bearer {token}"},
                       json={"operation": "upload", "transfers": ["basic"],
                             "objects": [{"oid": hashlib.sha256(data).hexdigest(), "size": len(data)}]})
    assert reply.status_code == 200, reply.text
    return reply.json()["objects"][0]["actions"]["upload"]["href"]


def cas_write_token(server: Server, token: str, repo_id: str) -> str:
    reply = httpx.get(f"{server.url}/api/models/{repo_id}/xet-write-token/main",
                      headers={"authorization": f"Bearer {token}"})
    assert reply.status_code == 200, reply.text
    return reply.json()["accessToken"]


def cas_upload(server: Server, cas_token: str) -> httpx.Response:
    return httpx.post(f"{server.url}/cas/v1/xorbs/default/{'ab' * 32}", content=b"not a xorb",
                      headers={"authorization": f"Bearer {cas_token}"})


def still_needs_upload(server: Server, token: str, repo_id: str, data: bytes) -> bool:
    """Whether the repo still lacks the object: nothing was linked by a refused upload."""
    return "upload" in httpx.post(
        f"{server.url}/{repo_id}.git/info/lfs/objects/batch", headers={"authorization": f"Bearer {token}"},
        json={"operation": "upload", "objects": [{"oid": hashlib.sha256(data).hexdigest(), "size": len(data)}]},
    ).json()["objects"][0].get("actions", {})


def test_fine_grained_token_writes_only_what_it_lists_and_whoami_says_so(server: Server, alice, api: HfApi,
                                                                         tmp_path: Path) -> None:
    name, _ = alice
    org = f"org{uuid.uuid4().hex[:8]}"
    keephub_cli(server.data_dir, "org", "create", org, "--owner", name)
    api.create_repo(f"{name}/bar")
    api.create_repo(f"{name}/secret", private=True)
    api.upload_file(path_or_fileobj=b"private words", path_in_repo="s.txt", repo_id=f"{name}/secret")
    token = scoped_token(server, name, "--repo", f"model:{name}/foo", "--repo", f"dataset:{name}/d",
                         "--namespace", org, "--expires", "30d")
    scoped = HfApi(endpoint=server.url, token=token)

    access = scoped.whoami()["auth"]["accessToken"]
    assert access["role"] == "fineGrained"
    entities = {(e["entity"]["type"], e["entity"]["name"]): e["permissions"]
                for e in access["fineGrained"]["scoped"]}
    assert set(entities) == {("model", f"{name}/foo"), ("dataset", f"{name}/d"), ("org", org)}
    assert all("repo.write" in permissions for permissions in entities.values())

    scoped.create_repo(f"{name}/foo")
    scoped.upload_file(path_or_fileobj=b"mine", path_in_repo="a.txt", repo_id=f"{name}/foo")
    scoped.create_repo(f"{name}/d", repo_type="dataset")
    scoped.create_repo(f"{org}/anything")
    scoped.auth_check(f"{name}/foo", write=True)
    scoped.auth_check(f"{name}/secret")
    downloaded = scoped.hf_hub_download(f"{name}/secret", "s.txt", cache_dir=str(tmp_path))
    assert Path(downloaded).read_bytes() == b"private words", "it reads what its user reads"

    for attempt in (lambda: scoped.create_repo(f"{name}/other"),
                    lambda: scoped.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=f"{name}/bar"),
                    lambda: scoped.auth_check(f"{name}/bar", write=True),
                    lambda: scoped.create_repo(f"{name}/foo", repo_type="dataset"),
                    lambda: scoped.update_repo_settings(f"{name}/bar", private=True)):
        status, message = refusal(attempt)
        assert status == 403 and "may write only to" in message and "keephub token create" in message, message
    assert not api.repo_exists(f"{name}/other")
    assert api.list_repo_files(f"{name}/bar") == [".gitattributes"]
    assert api.repo_info(f"{name}/bar").private is False

    status, message = refusal(lambda: scoped.run_job(image=UV_IMAGE, command=["true"], namespace=name))
    assert status == 403 and f"--namespace {name}" in message, message
    assert list(api.list_jobs(namespace=name)) == []


def test_token_create_refuses_what_it_cannot_honour(server: Server, alice) -> None:
    name, _ = alice
    for flags, problem in ((["--repo", "model:no-slash"], "invalid scope"),
                           (["--repo", "bucket-ish:a/b"], "invalid scope"),
                           (["--namespace", f"nobody{uuid.uuid4().hex[:6]}"], "no user or organization"),
                           (["--expires", "10 years"], "not a lifetime"),
                           (["--expires", "0d"], "not a lifetime")):
        with pytest.raises(RuntimeError, match=problem):
            scoped_token(server, name, *flags)
    with pytest.raises(RuntimeError, match="a read token writes nothing"):
        keephub_cli(server.data_dir, "token", "create", name, "--role", "read", "--repo", f"{name}/foo")


def test_expired_token_is_401_naming_expiry_and_its_upload_url_and_cas_token_end_with_it(
        server: Server, alice, api: HfApi) -> None:
    name, owner_token = alice
    repo = f"{name}/target"
    api.create_repo(repo)
    token = scoped_token(server, name, "--expires", "4s")
    expires = time.monotonic() + 4
    data = os.urandom(2000)
    href = lfs_upload_href(server, token, repo, data)
    cas_token = cas_write_token(server, token, repo)
    assert HfApi(endpoint=server.url, token=token).whoami()["name"] == name
    time.sleep(max(0.0, expires - time.monotonic()) + 1)

    whoami = httpx.get(f"{server.url}/api/whoami-v2", headers={"authorization": f"Bearer {token}"})
    assert whoami.status_code == 401 and "expired" in whoami.json()["error"], whoami.text
    put = httpx.put(href, content=data)
    assert put.status_code == 401 and "expired" in put.json()["error"], put.text
    assert still_needs_upload(server, owner_token, repo, data), "a refused upload links nothing"
    cas = cas_upload(server, cas_token)
    assert cas.status_code == 401 and "expired" in cas.json()["error"], cas.text


JOB_CODE = """
import os
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import get_session
api, ns, target, other = HfApi(), os.environ['NS'], os.environ['TARGET'], os.environ['OTHER']

def attempt(label, call):
    try:
        call()
        print(label, 'allowed')
    except HfHubHTTPError as exc:
        print(label, exc.response.status_code, exc.response.json().get('error', ''))

api.create_repo(target, exist_ok=True)
api.upload_file(path_or_fileobj=b'made in a job', path_in_repo='job.txt', repo_id=target)
api.create_branch(target, branch='rescue/job-1')
print('reads private:', open(api.hf_hub_download(os.environ['PRIVATE'], 'p.txt'), 'rb').read().decode())
attempt('create-other', lambda: api.create_repo(ns + '/elsewhere'))
attempt('write-other', lambda: api.upload_file(path_or_fileobj=b'x', path_in_repo='x.txt', repo_id=other))
attempt('write-org', lambda: api.create_repo(os.environ['ORG'] + '/x'))
attempt('delete', lambda: api.delete_repo(target))
attempt('visibility', lambda: api.update_repo_settings(target, private=True))
attempt('move', lambda: api.move_repo(target, ns + '/moved'))
attempt('job', lambda: api.run_job(image=os.environ['IMAGE'], command=['true'], namespace=ns))
attempt('scheduled', lambda: api.create_scheduled_job(image=os.environ['IMAGE'], command=['true'],
                                                      schedule='@hourly', namespace=ns))
headers = api._build_hf_headers()
batch = get_session().post(f"{api.endpoint}/{target}.git/info/lfs/objects/batch", headers=headers,
                           json={'operation': 'upload', 'objects': [{'oid': os.environ['OID'], 'size': 3000}]})
print('href', batch.json()['objects'][0]['actions']['upload']['href'])
cas = get_session().get(f"{api.endpoint}/api/models/{target}/xet-write-token/main", headers=headers)
print('cas', cas.json()['accessToken'])
print('token reversed', os.environ['HF_TOKEN'][::-1])
"""


def test_job_token_writes_only_its_target_and_everything_from_it_ends_with_the_job(
        server: Server, alice, api: HfApi) -> None:
    name, owner_token = alice
    org = f"org{uuid.uuid4().hex[:8]}"
    keephub_cli(server.data_dir, "org", "create", org, "--owner", name)
    target, other, private = f"{name}/trained", f"{name}/keep-out", f"{name}/private-data"
    api.create_repo(other)
    api.create_repo(private, private=True)
    api.upload_file(path_or_fileobj=b"secret data", path_in_repo="p.txt", repo_id=private)
    data = os.urandom(3000)
    job = api.run_job(
        image=UV_IMAGE, command=["python", "-c", JOB_CODE], secrets={"HF_TOKEN": "$HF_TOKEN"},
        env={"NS": name, "TARGET": target, "OTHER": other, "PRIVATE": private, "ORG": org, "IMAGE": UV_IMAGE,
             "OID": hashlib.sha256(data).hexdigest(), **JOB_XET_ENV},
        labels={"keephub.repo": target, "keephub.output-dir": "out", "keephub.preflight": "override"})
    api.wait_for_job(job_id=job.id, timeout=120)
    lines = list(api.fetch_job_logs(job_id=job.id))
    said = {line.split()[0]: line for line in lines if line and line.split()[0] in (
        "create-other", "write-other", "write-org", "delete", "visibility", "move", "job", "scheduled")}
    assert "reads private: secret data" in lines, lines
    for label in ("create-other", "write-other", "write-org"):
        assert said[label].startswith(f"{label} 403") and f"may write only to model:{target}" in said[label], said
    for label in ("delete", "visibility", "move"):
        assert said[label].startswith(f"{label} 403") and "job tokens cannot delete, move" in said[label], said
    assert said["job"].startswith("job 403") and "job tokens cannot create jobs" in said["job"], said
    assert said["scheduled"].startswith("scheduled 403") and "cannot create scheduled jobs" in said["scheduled"]

    assert "job.txt" in api.list_repo_files(target) and api.repo_info(target).private is False
    assert "rescue/job-1" in [b.name for b in api.list_repo_refs(target).branches]
    assert api.list_repo_files(other) == [".gitattributes"]
    assert not api.repo_exists(f"{name}/elsewhere") and not api.repo_exists(f"{org}/x")
    assert [j.id for j in api.list_jobs(namespace=name)] == [job.id]
    assert list(api.list_scheduled_jobs(namespace=name)) == []

    job_token = next(line for line in lines if line.startswith("token reversed")).split()[-1][::-1]
    record = httpx.get(f"{server.url}/api/jobs/{name}/{job.id}", headers={"authorization": f"Bearer {api.token}"})
    assert record.json()["token"] == {"name": f"job-{job.id}", "role": "write", "scopes": [f"model:{target}"],
                                      "state": "revoked", "expiresAt": record.json()["token"]["expiresAt"]}
    assert job_token not in record.text
    inspect = subprocess.run([sys.executable, "-m", "keephub.cli", "jobs", "inspect", job.id], capture_output=True,
                             text=True, timeout=60, env={**os.environ, "HF_ENDPOINT": server.url,
                                                         "HF_TOKEN": owner_token})
    assert f"token job-{job.id}: writes model:{target}; revoked" in inspect.stdout, inspect.stdout + inspect.stderr

    whoami = httpx.get(f"{server.url}/api/whoami-v2", headers={"authorization": f"Bearer {job_token}"})
    assert whoami.status_code == 401 and f"revoked when job {job.id} ended" in whoami.json()["error"]
    href = next(line for line in lines if line.startswith("href ")).split()[1]
    put = httpx.put(href, content=data)
    assert put.status_code == 401 and f"job {job.id} ended" in put.json()["error"], put.text
    assert still_needs_upload(server, owner_token, target, data), "a job's upload URL links nothing after the job"
    cas = cas_upload(server, next(line for line in lines if line.startswith("cas ")).split()[1])
    assert cas.status_code == 401 and f"job {job.id} ended" in cas.json()["error"], cas.text


def test_job_without_target_gets_a_read_only_token_that_ends_with_its_parent(server: Server, alice) -> None:
    name, _ = alice
    lifetime = 25
    parent = scoped_token(server, name, "--expires", f"{lifetime}s")
    parent_expires = time.time() + lifetime
    submitter = HfApi(endpoint=server.url, token=parent)
    code = textwrap.dedent("""
        import os, time
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError
        api = HfApi()
        print('role', api.whoami()['auth']['accessToken']['role'])
        try:
            api.create_repo(os.environ['NS'] + '/from-read-only-job')
        except HfHubHTTPError as exc:
            print('create', exc.response.status_code, exc.response.json()['error'])
        time.sleep(max(0, float(os.environ['PARENT_EXPIRES']) - time.time()) + 1)
        try:
            api.whoami()
        except HfHubHTTPError as exc:
            print('after parent', exc.response.status_code, exc.response.json()['error'])
    """)
    job = submitter.run_job(image=UV_IMAGE, command=["python", "-c", code], secrets={"HF_TOKEN": "$HF_TOKEN"},
                            env={"NS": name, "PARENT_EXPIRES": str(parent_expires)}, timeout=120)
    watcher = HfApi(endpoint=server.url, token=server.token(name))
    watcher.wait_for_job(job_id=job.id, namespace=name, timeout=120)
    lines = list(watcher.fetch_job_logs(job_id=job.id, namespace=name))
    assert "role read" in lines, lines
    created = next(line for line in lines if line.startswith("create "))
    assert created.startswith("create 403") and "this job's token is read-only" in created, created
    after = next(line for line in lines if line.startswith("after parent"))
    assert after.startswith("after parent 401") and "ended with the token it was made from" in after, after


def test_preflight_judges_a_literal_hf_token_secret_as_the_token_it_is(server: Server, alice, api: HfApi) -> None:
    name, _ = alice
    read_only = server.token(name, "read")
    script = textwrap.dedent(f"""
        from trl import SFTConfig, SFTTrainer
        config = SFTConfig(output_dir="out", push_to_hub=True, hub_model_id="{name}/tuned", save_steps=50)
        SFTTrainer(model="m", args=config).train()
    """)
    status, message = refusal(lambda: api.run_job(image=UV_IMAGE, command=["python", "-c", script],
                                                  secrets={"HF_TOKEN": read_only}, timeout="2h"))
    assert status == 422, message
    assert f"❌ write access: the job's token cannot write to {name}/tuned" in message and "read-only" in message
    assert list(api.list_jobs(namespace=name)) == [], "a refused job is never stored"


@pytest.mark.parametrize("label", ["alice/foo bar", "alice/a:b", "a/b/c", "alice/" + "x" * 120])
def test_a_target_repo_no_repo_can_have_is_refused_at_submission(label: str, server, alice) -> None:  # type: ignore[no-untyped-def]
    """Found by review: such a label became a job token scope that nothing could read back, and the job, its
    namespace's job list and the job's own token answered 500."""
    name, token = alice
    api = HfApi(endpoint=server.url, token=token)
    with pytest.raises(HfHubHTTPError) as info:
        api.run_job(image="python:3.12", command=["python", "-c", "pass"], secrets={"HF_TOKEN": "$HF_TOKEN"},
                    labels={"keephub.repo": label.replace("alice", name), "keephub.output-dir": "out"})
    assert info.value.response.status_code == 422 and "keephub.repo" in str(info.value)
    assert list(api.list_jobs(namespace=name)) == []


def test_a_schedule_stops_with_the_token_that_created_it(server: Server, alice) -> None:
    """Found by review: a schedule made with a short-lived (or stolen, then revoked) token kept starting runs
    as its creator after the token ended."""
    name, _ = alice
    # Long enough to make the schedule with it on a loaded machine (3 s ran out first at load 12 on 2 cores).
    token = scoped_token(server, name, "--expires", "6s")
    expires = time.monotonic() + 6
    scheduled = HfApi(endpoint=server.url, token=token).create_scheduled_job(
        image="python:3.12", command=["python", "-c", "pass"], schedule="@hourly", namespace=name)
    time.sleep(max(0.0, expires - time.monotonic()) + 1)
    _, owner_token = alice
    trigger = httpx.post(f"{server.url}/api/scheduled-jobs/{name}/{scheduled.id}/run",
                         headers={"authorization": f"Bearer {owner_token}"})
    assert trigger.status_code == 403, trigger.text
    assert "the token that created the schedule no longer works" in trigger.json()["error"]
    assert HfApi(endpoint=server.url, token=owner_token).inspect_scheduled_job(
        scheduled_job_id=scheduled.id, namespace=name).suspend is True
