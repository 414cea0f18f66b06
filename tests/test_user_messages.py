"""What users read: errors printed once and intact by huggingface_hub, preflight checks that tell the truth,
sidecar troubleshooting and verdicts that name the real cause, and `keephub jobs` as people use it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import httpx
import pytest
from conftest import SESSION_DIR, Server, free_port
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError

from keephub.devserver import keephub_cli

UV_IMAGE = "ghcr.io/astral-sh/uv:python3.12-bookworm"
HF_CLI = str(Path(sys.executable).with_name("hf"))


def refused(call) -> HfHubHTTPError:  # type: ignore[no-untyped-def]
    with pytest.raises(HfHubHTTPError) as info:
        call()
    return info.value


def keephub_jobs(url: str, token: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_ENDPOINT=url, HF_TOKEN=token)
    return subprocess.run([sys.executable, "-m", "keephub.cli", "jobs", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def record_of(api: HfApi, namespace: str, job_id: str) -> dict:
    reply = httpx.get(f"{api.endpoint}/api/jobs/{namespace}/{job_id}", headers={"authorization": f"Bearer {api.token}"})
    return reply.json()


# -- errors as huggingface_hub prints them -----------------------------------------------------------------------


def test_403_is_printed_once_without_a_doubled_status_or_period(server: Server, api: HfApi) -> None:
    other, _ = server.user()
    text = str(refused(lambda: api.create_repo(f"{other}/mine")))
    assert "403 Forbidden: 403 Forbidden" not in text, text
    assert not re.search(r"\.\.(\s|$)", text), text
    assert text.count(f"no write access to namespace '{other}'") == 1, text
    # The client puts the answer's X-Request-Id first (as for the Hub), then the message, once.
    request_id, _, message = text.partition("\n\n")
    assert re.fullmatch(r"\(Request ID: [0-9a-f]{32}\)", request_id), text
    assert message.startswith("403 Forbidden: user '"), text


def test_preflight_refusal_prints_a_summary_then_the_checklist_once_intact(alice, api: HfApi) -> None:
    name, _ = alice
    script = textwrap.dedent(f"""
        from trl import SFTConfig, SFTTrainer
        config = SFTConfig(output_dir="out", push_to_hub=True, hub_model_id="{name}/tuned", save_steps=50)
        SFTTrainer(model="m", args=config).train()
    """)
    error = refused(lambda: api.run_job(image=UV_IMAGE, command=["python", "-c", script], timeout="2h"))
    assert error.response.status_code == 422
    text = str(error)
    header = error.response.headers["X-Error-Message"]
    assert "\n" not in header and "❌" not in header and "checklist follows" in header, header
    checklist = error.response.json()["error"]
    assert checklist in text, "the checklist is printed intact, with its icons and line breaks"
    assert text.count("preflight refused this job") == 1 and text.count("❌ HF_TOKEN") == 1, text
    assert "✅ push_to_hub" in text and "   fix: add secrets=" in text


# -- preflight judges the token the job will really have ---------------------------------------------------------


def test_job_token_without_a_guarded_repo_is_read_only_and_preflight_says_so(alice, api: HfApi) -> None:
    name, _ = alice
    script = textwrap.dedent(f"""
        import os
        from trl import SFTConfig, SFTTrainer
        config = SFTConfig(output_dir=os.environ["OUT"], push_to_hub=True, hub_model_id="{name}/tuned")
        SFTTrainer(model="m", args=config).train()
    """)
    error = refused(lambda: api.run_job(image=UV_IMAGE, command=["python", "-c", script],
                                        secrets={"HF_TOKEN": "$HF_TOKEN"}))
    assert error.response.status_code == 422, str(error)
    checklist = error.response.json()["error"]
    assert f"❌ write access: the job's token cannot write to {name}/tuned" in checklist, checklist
    assert "will be read-only" in checklist and "keephub.output-dir" in checklist, checklist
    assert list(api.list_jobs(namespace=name)) == []


def test_job_token_writes_only_the_labelled_repo_and_preflight_says_so(alice, api: HfApi) -> None:
    name, _ = alice
    script = textwrap.dedent(f"""
        from trl import SFTConfig, SFTTrainer
        config = SFTConfig(output_dir="out", push_to_hub=True, hub_model_id="{name}/tuned")
        SFTTrainer(model="m", args=config).train()
    """)
    error = refused(lambda: api.run_job(
        image=UV_IMAGE, command=["python", "-c", script], secrets={"HF_TOKEN": "$HF_TOKEN"},
        labels={"keephub.repo": f"{name}/other", "keephub.output-dir": "out"}))
    checklist = error.response.json()["error"]
    assert f"writes only the job's target repo {name}/other" in checklist, checklist
    assert f'fix: push to the target: hub_model_id="{name}/other"' in checklist, checklist


def test_a_token_the_script_brings_itself_is_not_checked_and_says_so(alice, api: HfApi) -> None:
    name, _ = alice
    script = textwrap.dedent(f"""
        import os
        from trl import SFTConfig, SFTTrainer
        config = SFTConfig(output_dir="out", push_to_hub=True, hub_model_id="{name}/tuned",
                           hub_token=os.environ.get("MY_TOKEN"), push_to_hub_token=None)
        SFTTrainer(model="m", args=config).train()
    """)
    error = refused(lambda: api.run_job(image=UV_IMAGE, command=["python", "-c", script],
                                        secrets={"HF_TOKEN": "$HF_TOKEN"}))
    checklist = error.response.json()["error"]
    assert f"⚠️ write access: not checked for {name}/tuned: the script pushes with its own token" in checklist, (
        checklist)
    assert "✅ write access" not in checklist


# -- the sidecar's troubleshooting, from the server's real refusals ---------------------------------------------------


def test_troubleshooting_names_the_real_cause_of_each_refusal(server: Server, alice, api: HfApi) -> None:
    from keephub.durability.sidecar import explain

    name, _ = alice
    repo = f"{name}/target"
    api.create_repo(repo)

    def upload_as(token: str, to: str) -> HfHubHTTPError:
        client = HfApi(endpoint=server.url, token=token)
        return refused(lambda: client.upload_file(path_or_fileobj=b"x", path_in_repo="a.txt", repo_id=to))

    read_only = explain(upload_as(server.token(name, "read"), repo), repo)
    assert read_only.startswith(f"403 Forbidden: the job's token may not push to {repo}: the job's HF_TOKEN is a "
                                "read-only token"), read_only
    assert "$HF_TOKEN" in read_only and "ask an admin" not in read_only and "own namespace" not in read_only
    # huggingface_hub puts the request id first in a 403's text; an id that happens to hold "401" changes nothing.
    unlucky = HfApi(endpoint=server.url, token=server.token(name, "read"), headers={"X-Request-Id": "40140140"})
    refusal = refused(lambda: unlucky.upload_file(path_or_fileobj=b"x", path_in_repo="a.txt", repo_id=repo))
    assert str(refusal).startswith("(Request ID: 40140140)"), str(refusal)
    assert explain(refusal, repo) == read_only

    scoped = keephub_cli(server.data_dir, "token", "create", name, "--role", "write", "--repo",
                         f"model:{name}/elsewhere", "--quiet").strip()
    fine_grained = explain(upload_as(scoped, repo), repo)
    assert f"fine-grained token that does not cover {repo}" in fine_grained, fine_grained

    owner, owner_token = server.user()
    org = f"o{uuid.uuid4().hex[:8]}"
    keephub_cli(server.data_dir, "org", "create", org, "--owner", owner)
    outsider = explain(refused(lambda: api.create_repo(f"{org}/m")), f"{org}/m")
    assert f"not a member of '{org}'" in outsider and f"ask an admin of '{org}'" in outsider, outsider

    HfApi(endpoint=server.url, token=owner_token).create_repo(f"{owner}/secret", private=True)
    hidden = explain(upload_as(api.token, f"{owner}/secret"), f"{owner}/secret")
    assert hidden.startswith("404") and "private repo of someone else" in hidden, hidden


# -- verdicts that name the cause, and rescues that say what they hold --------------------------------------------


def test_failed_job_with_a_read_only_token_has_a_verdict_naming_the_403_and_its_fix(server: Server, alice,
                                                                                      api: HfApi) -> None:
    name, _ = alice
    job = api.run_job(image=UV_IMAGE, command=["python", "-c", "raise SystemExit(1)"],
                      secrets={"HF_TOKEN": server.token(name, "read")},
                      labels={"keephub.repo": f"{name}/never", "keephub.output-dir": "out",
                              "keephub.preflight": "override"})
    lines = list(api.fetch_job_logs(job_id=job.id, follow=True))
    verdict = record_of(api, name, job.id)["durability"]["verdict"]
    message = verdict["message"]
    assert verdict["status"] == "not-saved", verdict
    assert "exited with status 1" in message and "403 Forbidden" in message and "read-only" in message, message
    assert "$HF_TOKEN" in message, message
    assert any("nothing to rescue; the training wrote no checkpoint" in line for line in lines), lines
    assert not any("already on the hub" in line for line in lines), lines


def test_rescue_verdict_says_what_the_branch_holds_that_main_does_not(alice, api: HfApi) -> None:
    name, _ = alice
    repo = f"{name}/rescued"
    api.create_repo(repo)
    api.upload_file(path_or_fileobj=b'{"a": 1}', path_in_repo="config.json", repo_id=repo)

    def failing_job(config: str) -> str:
        code = f"import os; os.makedirs('out'); open('out/config.json', 'w').write({config!r}); raise SystemExit(1)"
        return api.run_job(image=UV_IMAGE, command=["python", "-c", code], secrets={"HF_TOKEN": "$HF_TOKEN"},
                           labels={"keephub.repo": repo, "keephub.output-dir": "out"}).id

    same, changed = failing_job('{"a": 1}'), failing_job('{"a": 2}')
    same_lines = list(api.fetch_job_logs(job_id=same, follow=True))
    list(api.fetch_job_logs(job_id=changed, follow=True))

    nothing_new = record_of(api, name, same)["durability"]["verdict"]
    assert nothing_new["status"] != "rescued", nothing_new
    assert "nothing new to rescue: main already holds the same files" in nothing_new["message"], nothing_new
    assert any(f"rescue/{same} holds nothing new" in line for line in same_lines), same_lines

    rescued = record_of(api, name, changed)["durability"]["verdict"]
    assert rescued["status"] == "rescued", rescued
    assert "it holds the output directory's files, which main does not" in rescued["message"], rescued
    rescued_config = api.hf_hub_download(repo, "config.json", revision=f"rescue/{changed}")
    assert Path(rescued_config).read_text() == '{"a": 2}'
    assert Path(api.hf_hub_download(repo, "config.json")).read_text() == '{"a": 1}', "main is left untouched"


# -- the jobs CLI ---------------------------------------------------------------------------------------------------


def test_listings_show_the_script_and_its_arguments_not_the_inline_payload(server: Server, alice,
                                                                           tmp_path: Path) -> None:
    name, token = alice
    script = tmp_path / "hello.py"
    script.write_text("import sys\nprint('hello', *sys.argv[1:])\n" + "# padding\n" * 200)
    run = keephub_jobs(server.url, token, "uv", "run", "--timeout", "5m", str(script), "a", "b")
    assert run.returncode == 0 and "hello a b" in run.stdout, run.stderr
    job_id = run.stdout.split()[1]

    listing = keephub_jobs(server.url, token, "ps", "--all")
    row = next(line for line in listing.stdout.splitlines() if line.startswith(job_id))
    assert row.endswith("uv run hello.py a b"), row
    readable = keephub_jobs(server.url, token, "inspect", job_id)
    assert "script: uv run hello.py a b (sent inline" in readable.stdout, readable.stdout
    assert "base64" not in readable.stdout and len(readable.stdout) < 2000, readable.stdout
    assert "base64 -d" in keephub_jobs(server.url, token, "inspect", "--json", job_id).stdout
    page = httpx.get(f"{server.url}/jobs/{name}/{job_id}", headers={"authorization": f"Bearer {token}"}).text
    assert "hello.py a b" in page and "base64" not in page

    env = dict(os.environ, HF_ENDPOINT=server.url, HF_TOKEN=token)
    hf_listing = subprocess.run([HF_CLI, "jobs", "ps", "-a"], capture_output=True, text=True, env=env, timeout=60)
    assert "hello.py" in hf_listing.stdout, hf_listing.stdout


def test_ps_into_a_pipe_that_closed_ends_quietly_and_an_absent_server_is_one_line(server: Server, alice) -> None:
    _, token = alice
    env = dict(os.environ, HF_ENDPOINT=server.url, HF_TOKEN=token)
    process = subprocess.Popen([sys.executable, "-m", "keephub.cli", "jobs", "ps", "--all"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=env)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # as `| head` does once it has its lines
    stderr = process.stderr.read().decode()
    assert process.wait(60) == 0 and stderr == "", stderr

    nobody = keephub_jobs(f"http://127.0.0.1:{free_port()}", token, "ps")
    assert nobody.returncode == 2 and "cannot reach keephub at http://127.0.0.1:" in nobody.stderr, nobody.stderr
    assert "Traceback" not in nobody.stderr and len(nobody.stderr.splitlines()) == 1, nobody.stderr


def test_following_a_job_rides_out_a_keephub_restart(tmp_path: Path) -> None:
    hub = Server(data_dir=SESSION_DIR / f"restart-{uuid.uuid4().hex[:6]}", port=free_port(),
                 env={"KEEPHUB_JOB_GRACE_SECONDS": "3"})
    hub.start()
    try:
        _, token = hub.user()
        script = tmp_path / "counting.py"
        script.write_text("import time\nfor i in range(60):\n    print('step', i, flush=True)\n    time.sleep(0.1)\n")
        env = dict(os.environ, HF_ENDPOINT=hub.url, HF_TOKEN=token)
        follower = subprocess.Popen([sys.executable, "-m", "keephub.cli", "jobs", "uv", "run", str(script)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        assert follower.stdout is not None
        seen = []
        deadline = time.time() + 120
        while "step 3" not in seen and time.time() < deadline:
            seen.append(follower.stdout.readline().strip())
        assert "step 3" in seen, seen
        hub.kill()
        time.sleep(3)  # the job goes on meanwhile: its agent keeps the lines keephub cannot take
        hub.start()
        # Read on through the same buffered reader: communicate() would skip what readline() buffered.
        rest = follower.stdout.read()
        stderr = follower.stderr.read() if follower.stderr else ""
        follower.wait(150)
        output = "\n".join(seen) + "\n" + rest
        assert follower.returncode == 0, output + stderr
        steps = [line for line in output.splitlines() if line.startswith("step ")]
        assert steps == [f"step {i}" for i in range(60)], output
        assert stderr.count("lost the connection to") == 1, stderr
        assert "logs --follow" in stderr and "Traceback" not in stderr, stderr
    finally:
        hub.stop()
