"""Jobs through the real huggingface_hub Jobs client: lifecycle, sandbox isolation, ephemerality, secrets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from conftest import EXECUTOR, SESSION_DIR, SLURM, Server, agent_root, free_port, stored_metadata
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError

from keephub.devserver import keephub_cli

UV_IMAGE = "ghcr.io/astral-sh/uv:python3.12-bookworm"


@pytest.fixture(scope="module")
def jobs_server() -> Iterator[Server]:
    """A dedicated server with a short grace period and two job cores, so timing tests stay fast."""
    srv = Server(data_dir=SESSION_DIR / f"jobs-{uuid.uuid4().hex[:6]}", port=free_port(),
                 env={"KEEPHUB_JOB_GRACE_SECONDS": "3", "KEEPHUB_JOB_CPUS": "2", "KEEPHUB_JOB_MEMORY_GB": "1"})
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def user(jobs_server: Server) -> tuple[str, HfApi, str]:
    name, token = jobs_server.user()
    return name, HfApi(endpoint=jobs_server.url, token=token), token


def python_job(api: HfApi, code: str, **kwargs):  # type: ignore[no-untyped-def]
    return api.run_job(image=UV_IMAGE, command=["python", "-c", textwrap.dedent(code)], **kwargs)


def logs(api: HfApi, job_id: str) -> list[str]:
    return list(api.fetch_job_logs(job_id=job_id, follow=True))


def test_run_job_streams_logs_and_completes(user) -> None:
    name, api, _ = user
    job = python_job(api, "print('hello from the sandbox')", labels={"team": "nlp"})
    assert job.status.stage in ("SCHEDULING", "RUNNING")
    assert job.owner.name == name
    lines = logs(api, job.id)
    assert "hello from the sandbox" in lines
    done = api.wait_for_job(job_id=job.id, timeout=30)
    assert done.status.stage == "COMPLETED"
    assert done.durations is not None and done.durations.total_secs is not None
    # list_jobs needs an explicit namespace: without one it calls the module-level whoami, not this HfApi's.
    assert [j.id for j in api.list_jobs(namespace=name, labels={"team": "nlp"})] == [job.id]
    assert job.id in [j.id for j in api.list_jobs(namespace=name)]
    page = httpx.get(job.url, headers={"authorization": f"Bearer {api.token}"})
    assert page.status_code == 200 and "hello from the sandbox" in page.text and "COMPLETED" in page.text
    assert httpx.get(job.url).status_code == 401, "a job page needs a token with access to its namespace"


def test_failed_attempt_is_retried_in_a_fresh_sandbox(user) -> None:
    _, api, _ = user
    code = """
        import os, pathlib, sys
        marker = pathlib.Path('/workspace/previous-attempt')
        print('attempt', os.environ['KEEPHUB_ATTEMPT'], 'sees leftover:', marker.exists())
        marker.write_text('x')
        sys.exit(0 if os.environ['KEEPHUB_ATTEMPT'] == '3' else 1)
    """
    job = api.run_job(image=UV_IMAGE, command=["python", "-c", textwrap.dedent(code)], attempts=3)
    lines = logs(api, job.id)
    assert [line for line in lines if line.startswith("attempt")] == [
        "attempt 1 sees leftover: False", "attempt 2 sees leftover: False", "attempt 3 sees leftover: False"]
    assert api.inspect_job(job_id=job.id).status.stage == "COMPLETED"


def test_exhausted_attempts_end_in_error_with_reason(user) -> None:
    _, api, _ = user
    job = api.run_job(image=UV_IMAGE, command=["python", "-c", "raise SystemExit(3)"], attempts=2)
    info = api.wait_for_job(job_id=job.id, timeout=30)
    assert info.status.stage == "ERROR"
    assert "exited with status 3" in info.status.message and "attempt 2 of 2" in info.status.message


def test_sandbox_isolation_and_ephemerality(jobs_server: Server, user) -> None:
    _, api, _ = user
    data_dir = jobs_server.data_dir.resolve()
    code = f"""
        import os, subprocess, pathlib
        subprocess.Popen(['sleep', '1234'])
        pathlib.Path('/workspace/scratch.bin').write_bytes(b'x' * 100)
        print('data dir visible:', os.path.exists({str(data_dir)!r}))
        print('pids:', sorted(int(p) for p in os.listdir('/proc') if p.isdigit())[:3])
        try:
            open('/usr/keephub-was-here', 'w')
            print('usr writable: True')
        except OSError:
            print('usr writable: False')
        print('workspace:', os.getcwd())
        status = open('/proc/self/status').read()
        print('caps:', [l.split()[1] for l in status.splitlines() if l.startswith('CapEff')][0], 'uid:', os.getuid())
    """
    job = python_job(api, code)
    lines = logs(api, job.id)
    assert "data dir visible: False" in lines
    assert "usr writable: False" in lines
    assert "workspace: /workspace" in lines
    assert "caps: 0000000000000000 uid: 65534" in lines, "jobs run as an unprivileged user with no capabilities"
    assert any(line.startswith("pids: [1, 2") for line in lines), lines
    assert api.wait_for_job(job_id=job.id, timeout=30).status.stage == "COMPLETED"
    assert not (agent_root(jobs_server) / "workspaces" / f"{job.id}-1").exists(), "the workspace goes with the attempt"
    leftover = subprocess.run(["pgrep", "-f", "sleep 1234"], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", "no process outlives its attempt"


def test_timeout_sends_sigterm_then_reports(user) -> None:
    _, api, _ = user
    code = """
        import signal, sys, time
        def on_term(*_):
            print('got SIGTERM, saving', flush=True)
            sys.exit(0)
        signal.signal(signal.SIGTERM, on_term)
        print('working', flush=True)
        time.sleep(120)
    """
    job = python_job(api, code, timeout=2)
    lines = logs(api, job.id)
    assert "got SIGTERM, saving" in lines
    info = api.inspect_job(job_id=job.id)
    assert info.status.stage == "ERROR" and info.status.message == "timed out after 2s"


def test_cancel_kills_after_grace_and_names_who(user) -> None:
    name, api, _ = user
    job = python_job(api, """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print('ignoring SIGTERM', flush=True)
        time.sleep(300)
    """)
    for line in api.fetch_job_logs(job_id=job.id, follow=True):
        if line == "ignoring SIGTERM":
            break
    started = time.monotonic()
    api.cancel_job(job_id=job.id)
    info = api.wait_for_job(job_id=job.id, timeout=30, poll_interval=0.2)
    assert info.status.stage == "CANCELED" and info.status.message == f"canceled by {name}"
    assert 2 <= time.monotonic() - started < 15, "SIGKILL follows the 3 s grace period"


def test_secrets_are_redacted_and_hf_token_is_job_scoped(jobs_server: Server, user) -> None:
    name, api, _ = user
    repo = f"{name}/from-job-{uuid.uuid4().hex[:6]}"
    code = f"""
        import json, os, urllib.parse
        from huggingface_hub import HfApi
        token = os.environ['HF_TOKEN']
        print('my secret is', os.environ['MY_SECRET'])
        print('as json', json.dumps({{'k': os.environ['MY_SECRET']}}))
        print('in a url', urllib.parse.quote(os.environ['MY_SECRET'], safe=''))
        print('key line', os.environ['MY_KEY'].splitlines()[1])
        print('token reversed', token[::-1])
        api = HfApi()
        print('whoami', api.whoami()['name'])
        api.create_repo({repo!r}, exist_ok=True)
        api.upload_file(path_or_fileobj=b'made in a job', path_in_repo='job.txt', repo_id={repo!r})
    """
    key = "-----BEGIN KEY-----\nQUJDREVGR0hJSktMTU5PUA==\n-----END KEY-----"
    # The job's token may write only the repo the job is submitted for (its keephub.repo label).
    job = python_job(api, code, secrets={"HF_TOKEN": "$HF_TOKEN", "MY_SECRET": "s3cr3t/value \"42\"", "MY_KEY": key},
                     labels={"keephub.repo": repo, "keephub.output-dir": "out", "keephub.preflight": "override"})
    lines = logs(api, job.id)
    assert api.wait_for_job(job_id=job.id, timeout=60).status.stage == "COMPLETED", "\n".join(lines)
    assert "my secret is ***" in lines
    assert 'as json {"k": "***"}' in lines and "in a url ***" in lines and "key line ***" in lines
    assert f"whoami {name}" in lines
    assert api.hf_hub_download(repo, "job.txt", cache_dir=str(jobs_server.data_dir.parent / "dl"))
    info = httpx.get(f"{jobs_server.url}/api/jobs/{name}/{job.id}", headers={"authorization": f"Bearer {api.token}"})
    assert "s3cr3t" not in info.text
    job_token = next(line for line in lines if line.startswith("token reversed")).split()[-1][::-1]
    assert job_token != api.token, "the job gets its own token, not the user's"
    revoked = httpx.get(f"{jobs_server.url}/api/whoami-v2", headers={"authorization": f"Bearer {job_token}"})
    assert revoked.status_code == 401, "the job token is revoked when the job ends"
    stored = stored_metadata(jobs_server)
    assert b"s3cr3t" not in stored and job_token.encode() not in stored


def test_uv_run_script_from_keephub_url_with_inline_dependencies(jobs_server: Server, user) -> None:
    name, api, _ = user
    repo = f"{name}/scripts"
    api.create_repo(repo)
    script = textwrap.dedent("""
        # /// script
        # dependencies = ["huggingface_hub>=1.0", "packaging"]
        # ///
        import sys
        import huggingface_hub
        print("args", sys.argv[1:], "hub", huggingface_hub.__version__)
    """)
    api.upload_file(path_or_fileobj=script.encode(), path_in_repo="train.py", repo_id=repo)
    job = api.run_uv_job(f"{jobs_server.url}/{repo}/resolve/main/train.py", script_args=["--epochs", "1"],
                         secrets={"HF_TOKEN": "$HF_TOKEN"})
    lines = logs(api, job.id)
    assert any(line.startswith("args ['--epochs', '1'] hub ") for line in lines), lines
    assert any("reusing host packages: huggingface_hub" in line for line in lines), lines
    assert api.inspect_job(job_id=job.id).status.stage == "COMPLETED"


def test_bad_specs_are_refused_with_the_field_named(jobs_server: Server, user) -> None:
    name, api, token = user
    url = f"{jobs_server.url}/api/jobs/{name}"
    auth = {"authorization": f"Bearer {token}"}
    cases = [
        ({"command": [], "flavor": "cpu-basic"}, "command"),
        ({"command": ["python"], "flavor": "gpu-9000"}, "flavor"),
        ({"command": ["python"], "timeoutSeconds": "soon"}, "timeout"),
        ({"command": ["python"], "secrets": {"1BAD NAME": "x"}}, "environment variable name"),
        ({"command": ["python"], "dockerImage": "nvidia/cuda:12"}, "image"),
        ({"command": ["python"], "attempts": 0}, "attempts"),
        ({"command": ["x" * 600_000]}, "bytes"),
        ({"command": ["python"], "environment": {"LD_PRELOAD": "/tmp/evil.so"}}, "dynamic loader"),
        ('{"command": ["python"], "timeoutSeconds": Infinity}', "finite"),
    ]
    before = len(list(api.list_jobs(namespace=name)))
    for body, word in cases:
        if isinstance(body, str):
            response = httpx.post(url, content=body, headers={**auth, "content-type": "application/json"})
        else:
            response = httpx.post(url, json=body, headers=auth)
        assert 400 <= response.status_code < 500, (body, response.text)
        assert word in response.json()["error"], (word, response.json())
    assert len(list(api.list_jobs(namespace=name))) == before, "nothing is stored for a refused spec"
    other, other_token = jobs_server.user()
    with pytest.raises(HfHubHTTPError) as info:
        HfApi(endpoint=jobs_server.url, token=other_token).run_job(
            image=UV_IMAGE, command=["true"], namespace=name)
    assert info.value.response.status_code == 403 and name in str(info.value)


def test_cancel_while_waiting_for_a_slot_is_immediate_and_revokes_the_job_token(user) -> None:
    name, api, _ = user
    blocker = python_job(api, "import time; time.sleep(60)", flavor="cpu-upgrade")
    waiting = python_job(api, "print('never runs')", flavor="cpu-upgrade", secrets={"HF_TOKEN": "$HF_TOKEN"})
    assert api.inspect_job(job_id=waiting.id).status.stage == "SCHEDULING"
    started = time.monotonic()
    api.cancel_job(job_id=waiting.id)
    assert time.monotonic() - started < 5
    info = api.inspect_job(job_id=waiting.id)
    assert info.status.stage == "CANCELED" and info.status.message == f"canceled by {name}"
    api.cancel_job(job_id=blocker.id)
    assert api.wait_for_job(job_id=blocker.id, timeout=30).status.stage == "CANCELED"
    assert "never runs" not in list(api.fetch_job_logs(job_id=waiting.id))


def test_memory_limit_of_the_flavor_is_enforced(user) -> None:
    _, api, _ = user
    job = python_job(api, """
        import time
        hoard = []
        for i in range(30):
            hoard.append(bytearray(100 * 1024 * 1024))
            print('holding', (i + 1) * 100, 'MB', flush=True)
            time.sleep(0.1)
        print('survived')
    """)
    lines = logs(api, job.id)
    info = api.inspect_job(job_id=job.id)
    assert "survived" not in lines
    assert info.status.stage == "ERROR" and "exceeded the memory limit of 1 GB of flavor cpu-basic" in info.status.message


def test_hardware_lists_configured_flavors(user) -> None:
    _, api, _ = user
    names = [h.name for h in api.list_jobs_hardware()]
    assert "cpu-basic" in names and "cpu-upgrade" in names


def test_many_jobs_never_exceed_capacity(user) -> None:
    _, api, _ = user
    code = """
        import os, time
        print('start', time.time(), flush=True)
        time.sleep(0.3)
        print('end', time.time(), flush=True)
    """
    jobs = [python_job(api, code) for _ in range(8)]
    spans = []
    for job in jobs:
        info = api.wait_for_job(job_id=job.id, timeout=120, poll_interval=0.3)
        assert info.status.stage == "COMPLETED"
        lines = list(api.fetch_job_logs(job_id=job.id))
        start = float(next(line for line in lines if line.startswith("start")).split()[1])
        end = float(next(line for line in lines if line.startswith("end")).split()[1])
        spans.append((start, end))
    most = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert most <= 2, f"{most} cpu-basic jobs ran at once on 2 job cores"


COUNTING_JOB = """
    import os, time
    print('attempt', os.environ['KEEPHUB_ATTEMPT'], flush=True)
    for i in range(40):
        print('line', i, flush=True)
        time.sleep(0.1)
"""


def test_job_outlives_a_kill_9_of_keephub_with_a_gap_free_log(jobs_server: Server, user) -> None:
    _, api, _ = user
    job = python_job(api, COUNTING_JOB)
    for line in api.fetch_job_logs(job_id=job.id, follow=True):
        if line == "line 5":
            break
    jobs_server.kill()
    time.sleep(2)  # the job prints on while keephub is down; its agent keeps the lines
    jobs_server.start()
    info = api.wait_for_job(job_id=job.id, timeout=60, poll_interval=0.3)
    assert info.status.stage == "COMPLETED", info.status
    lines = list(api.fetch_job_logs(job_id=job.id))
    assert [line for line in lines if line.startswith("line ")] == [f"line {i}" for i in range(40)]
    assert lines.count("attempt 1") == 1 and "attempt 2" not in lines
    raw = httpx.get(f"{jobs_server.url}/api/jobs/{info.owner.name}/{job.id}",
                    headers={"authorization": f"Bearer {api.token}"}).json()
    assert [a["outcome"] for a in raw["attempts"]] == ["COMPLETED"]
    executor = raw["attempts"][0]["executor"]
    assert executor["name"] == EXECUTOR and executor["id"] and executor["node"], executor
    if EXECUTOR == "slurm":
        assert executor["node"] == SLURM.node


def test_an_agent_that_dies_fails_its_attempt_and_the_job_is_retried(jobs_server: Server, user) -> None:
    _, api, _ = user
    code = """
        import os, time
        print('attempt', os.environ['KEEPHUB_ATTEMPT'], flush=True)
        if os.environ['KEEPHUB_ATTEMPT'] == '1':
            time.sleep(300)
    """
    job = python_job(api, code, attempts=2)
    for line in api.fetch_job_logs(job_id=job.id, follow=True):
        if line == "attempt 1":
            break
    (pid,) = jobs_server.agent_pids()
    os.killpg(pid, signal.SIGKILL)  # the agent and, with it, its sandbox: as if the node were lost
    info = api.wait_for_job(job_id=job.id, timeout=60, poll_interval=0.3)
    assert info.status.stage == "COMPLETED"
    lines = list(api.fetch_job_logs(job_id=job.id))
    assert "attempt 2" in lines
    assert any("the job's agent ended without reporting" in line for line in lines), lines
    leftover = subprocess.run(["pgrep", "-af", "KEEPHUB_ATTEMPT"], capture_output=True, text=True)
    assert job.id not in leftover.stdout and "time.sleep(300)" not in leftover.stdout, leftover.stdout


def test_log_files_survive_restart(jobs_server: Server, user) -> None:
    _, api, _ = user
    job = python_job(api, "print('persisted line')")
    assert "persisted line" in logs(api, job.id)
    jobs_server.stop(keep_agents=True)
    jobs_server.start()
    assert "persisted line" in list(api.fetch_job_logs(job_id=job.id))
    assert Path(jobs_server.data_dir, "jobs", "logs", job.id).is_dir()


def test_scheduled_job_runs_on_trigger_and_can_be_suspended(user) -> None:
    name, api, _ = user
    scheduled = api.create_scheduled_job(image=UV_IMAGE, command=["python", "-c", "print('scheduled run')"],
                                         schedule="@hourly", secrets={"HF_TOKEN": "$HF_TOKEN"})
    assert scheduled.schedule == "@hourly" and scheduled.status.next_job_run_at is not None
    job = api.trigger_scheduled_job(scheduled_job_id=scheduled.id)
    assert "scheduled run" in logs(api, job.id)
    assert api.inspect_scheduled_job(scheduled_job_id=scheduled.id).status.last_job.id == job.id
    api.suspend_scheduled_job(scheduled_job_id=scheduled.id)
    assert api.inspect_scheduled_job(scheduled_job_id=scheduled.id).suspend is True
    api.resume_scheduled_job(scheduled_job_id=scheduled.id)
    assert [s.id for s in api.list_scheduled_jobs(namespace=name)] == [scheduled.id]
    api.delete_scheduled_job(scheduled_job_id=scheduled.id)
    assert list(api.list_scheduled_jobs(namespace=name)) == []


def test_scheduled_job_stops_when_its_creator_loses_write_access(jobs_server: Server, user) -> None:
    admin, admin_api, _ = user
    org = f"org{uuid.uuid4().hex[:8]}"
    keephub_cli(jobs_server.data_dir, "org", "create", org, "--owner", admin)
    member, member_token = jobs_server.user()
    keephub_cli(jobs_server.data_dir, "org", "add-member", org, member, "--role", "write")
    member_api = HfApi(endpoint=jobs_server.url, token=member_token)
    scheduled = member_api.create_scheduled_job(image=UV_IMAGE, command=["python", "-c", "print('hi')"],
                                                schedule="@hourly", namespace=org)
    keephub_cli(jobs_server.data_dir, "org", "add-member", org, member, "--role", "read")
    with pytest.raises(HfHubHTTPError) as info:
        admin_api.trigger_scheduled_job(scheduled_job_id=scheduled.id, namespace=org)
    assert info.value.response.status_code == 403
    assert f"{member} can no longer write to {org}" in info.value.response.json()["error"]
    assert admin_api.inspect_scheduled_job(scheduled_job_id=scheduled.id, namespace=org).suspend is True
    assert list(admin_api.list_jobs(namespace=org)) == []


def test_scheduled_job_fires_when_due(user) -> None:
    name, api, _ = user
    scheduled = api.create_scheduled_job(image=UV_IMAGE, command=["python", "-c", "print('cron fired')"],
                                         schedule="* * * * *")
    deadline = time.time() + 75
    while time.time() < deadline:
        info = api.inspect_scheduled_job(scheduled_job_id=scheduled.id)
        if info.status.last_job is not None:
            break
        time.sleep(1)
    assert info.status.last_job is not None, "a '* * * * *' schedule fires within a minute"
    assert "cron fired" in logs(api, info.status.last_job.id)
    api.delete_scheduled_job(scheduled_job_id=scheduled.id)


def test_run_uv_job_with_a_local_file_runs_it(user, tmp_path: Path) -> None:
    _, api, _ = user
    script = tmp_path / "local.py"
    script.write_text("print('hi')\n")
    job = api.run_uv_job(str(script))  # uploaded to the jobs-artifacts bucket, mounted at /data (test_job_volumes)
    assert "hi" in logs(api, job.id)
    assert api.inspect_job(job_id=job.id).status.stage == "COMPLETED"


def test_a_cancel_at_any_moment_of_the_start_ends_the_job_promptly(jobs_server: Server, user) -> None:
    """Cancels sent from the moment of submission to well into the sandbox's start: each job ends CANCELED
    within a second or two of the cancel, never after the grace period's SIGKILL (the grace here is 3 s)."""
    _, api, _ = user
    for delay in (0.0, 0.05, 0.1, 0.2, 0.35, 0.5, 0.8, 1.2):
        job = python_job(api, "import time\nprint('started', flush=True)\ntime.sleep(60)")
        time.sleep(delay)
        sent = time.monotonic()
        api.cancel_job(job_id=job.id)
        info = api.wait_for_job(job_id=job.id, timeout=30, poll_interval=0.1)
        took = time.monotonic() - sent
        assert info.status.stage == "CANCELED", (delay, info.status)
        assert took < 2.9, f"a cancel {delay} s after submission took {took:.1f} s"


def test_executor_mistakes_in_the_config_stop_keephub_serve(tmp_path: Path) -> None:
    def serve(**env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "keephub.cli", "--data-dir", str(tmp_path / "data"), "serve",
                               "--port", str(free_port())], capture_output=True, text=True, timeout=60,
                              env={**os.environ, **env})
    unknown = serve(KEEPHUB_JOB_EXECUTOR="kubernetes")
    assert unknown.returncode == 2 and "[jobs] executor = 'kubernetes'" in unknown.stderr and "local, slurm" in unknown.stderr
    stray = serve(KEEPHUB_JOB_EXECUTOR="slurm", KEEPHUB_JOB_SLURM='{"partitoin": "gpu"}')
    assert stray.returncode == 2 and "[jobs.slurm] partitoin" in stray.stderr
    if SLURM is not None:
        missing = serve(KEEPHUB_JOB_EXECUTOR="slurm", KEEPHUB_JOB_SLURM='{"partitions": {"cpu-basic": "gpu-a100"}}')
        assert missing.returncode == 2 and "gpu-a100" in missing.stderr and "partitions" in missing.stderr


slurm_only = pytest.mark.skipif(SLURM is None, reason="needs the Slurm pass (KEEPHUB_TEST_EXECUTOR=slurm)")


@slurm_only
def test_slurm_refusing_a_job_ends_it_error_in_slurms_words(user) -> None:
    _, api, _ = user
    job = api.run_job(image=UV_IMAGE, command=["python", "-c", "print(1)"], flavor="cpu-xl")  # 8 CPUs, node has fewer
    info = api.wait_for_job(job_id=job.id, timeout=60, poll_interval=0.3)
    assert info.status.stage == "ERROR" and "Slurm cannot run the job" in info.status.message, info.status


@slurm_only
def test_a_job_waits_in_scheduling_while_slurm_is_down_and_runs_once_it_is_back(user) -> None:
    _, api, _ = user
    assert SLURM is not None
    SLURM.stop_controller()
    try:
        job = python_job(api, "print('ran after the outage')")
        deadline = time.time() + 60
        while time.time() < deadline:
            status = api.inspect_job(job_id=job.id).status
            if status.message and "Slurm" in status.message:  # first "waiting for a free slot", then Slurm's wait
                break
            time.sleep(0.5)
        assert status.stage == "SCHEDULING" and "Slurm" in status.message, status
    finally:
        SLURM.start_controller()
    try:
        assert "ran after the outage" in logs(api, job.id)
        assert api.wait_for_job(job_id=job.id, timeout=60).status.stage == "COMPLETED"
    finally:
        SLURM.cancel_jobs_of(job.id)  # seen once (load ~8): a second Slurm job of this one held the node after it
