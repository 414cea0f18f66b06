"""The MCP server (hf_jobs and the Hub tools), driven by the `mcp` SDK's own client against a live keephub: over
streamable HTTP at /mcp, and over stdio through `keephub mcp`, which forwards to it."""

from __future__ import annotations

import re
import sys
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import anyio
import httpx2
import pytest
from conftest import JOB_XET_ENV, SESSION_DIR, Server, free_port
from huggingface_hub import HfApi
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from test_preflight import COMPLETE_EXAMPLE

import keephub.demo
from keephub.devserver import keephub_cli

pytestmark = pytest.mark.anyio
SUBMITTED = re.compile(r"Job ([0-9a-f]{24}) submitted")
OPERATIONS = ("uv", "run", "ps", "logs", "inspect", "cancel", "hardware", "scheduled uv", "scheduled run",
              "scheduled ps", "scheduled inspect", "scheduled delete", "scheduled suspend", "scheduled resume")


@asynccontextmanager
async def over_http(server: Server, token: str | None) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=300)) as http:
        async with Client(streamable_http_client(f"{server.url}/mcp", http_client=http)) as client:
            yield client


def over_stdio(endpoint: str, token: str | None, cwd: Path) -> Client:
    """`keephub mcp` as an agent launches it: a subprocess, configured by HF_ENDPOINT and HF_TOKEN."""
    env = {"HF_ENDPOINT": endpoint, "HF_HOME": str(SESSION_DIR / "hf-home-mcp")}
    if token:
        env["HF_TOKEN"] = token
    return Client(StdioServerParameters(command=sys.executable, args=["-m", "keephub.cli", "mcp"], env=env, cwd=cwd))


async def answer(client: Client, tool: str, arguments: dict[str, Any] | None = None) -> str:
    result = await client.call_tool(tool, arguments or {})
    text = result.content[0].text
    assert not result.is_error, text
    return text


async def refusal(client: Client, tool: str, arguments: dict[str, Any]) -> str:
    result = await client.call_tool(tool, arguments)
    text = result.content[0].text
    assert result.is_error, text
    return text


async def jobs(client: Client, operation: str, **args: Any) -> str:
    return await answer(client, "hf_jobs", {"operation": operation, "args": args})


def job_id_in(text: str) -> str:
    match = SUBMITTED.search(text)
    assert match, text
    return match.group(1)


# -- the reference, word for word -------------------------------------------------------------------------------------


@pytest.mark.training
async def test_reference_production_example_through_stdio_ends_saved_with_logs_and_record(
        server: Server, alice, api: HfApi, tmp_path: Path) -> None:
    from keephub.demo.tiny import build_tiny_base, write_chat_dataset_jsonl

    name, token = alice
    api.create_repo(f"{name}/tiny-qwen2")
    api.upload_folder(folder_path=build_tiny_base(tmp_path / "tiny-qwen2"), repo_id=f"{name}/tiny-qwen2")
    data = write_chat_dataset_jsonl(tmp_path / "capybara-tiny" / "train.jsonl", n=200)
    api.create_repo(f"{name}/capybara-tiny", repo_type="dataset")
    api.upload_folder(folder_path=data.parent, repo_id=f"{name}/capybara-tiny", repo_type="dataset")
    (tmp_path / "production_train.py").write_bytes(
        Path(keephub.demo.__file__).with_name("production_train.py").read_bytes())

    async with over_stdio(server.url, token, tmp_path) as agent:
        submitted = await jobs(agent, "uv", script="production_train.py", flavor="cpu-upgrade", timeout="2h",
                               secrets={"HF_TOKEN": "$HF_TOKEN"}, env={"KEEPHUB_DEMO_NAMESPACE": name, **JOB_XET_ENV})
        job_id = job_id_in(submitted)
        assert f"{server.url}/jobs/{name}/{job_id}" in submitted and "uv run production_train.py" in submitted
        assert "===== keephub preflight =====" in submitted, "the first seconds of log come back with the submission"
        assert api.wait_for_job(job_id=job_id, namespace=name, timeout=600).status.stage == "COMPLETED"

        logs = await jobs(agent, "logs", job_id=job_id)
        assert "✅ Training complete!" in logs and "Troubleshooting" not in logs, logs
        assert len(logs.splitlines()) == 21, "the header, then the last 20 lines"
        record = await jobs(agent, "inspect", job_id=job_id)
        assert f"durability record of job {job_id} → {name}/qwen-capybara-sft" in record, record
        assert "verdict: saved at commit" in record and "✅ attempt 1: " in record and "verified" in record, record
        assert "script: uv run production_train.py" in record and '"status"' in record

        details = await answer(agent, "hub_repo_details", {"repo_ids": f"{name}/qwen-capybara-sft"})
        assert f"produced by job {job_id} (COMPLETED)" in details and "verdict: saved" in details, details
        assert "adapter_model.safetensors" in details and "branches: main" in details
        state = await answer(agent, "hub_repo_file", {"repo_id": f"{name}/qwen-capybara-sft",
                                                      "path": "last-checkpoint/trainer_state.json"})
        assert '"global_step": 40' in state, state[:500]


async def test_reference_complete_example_returns_the_checklist_and_creates_nothing(server: Server, alice,
                                                                                    api: HfApi) -> None:
    name, token = alice
    async with over_http(server, token) as agent:
        checklist = await refusal(agent, "hf_jobs", {"operation": "uv", "args": {
            "script": COMPLETE_EXAMPLE, "flavor": "cpu-upgrade", "timeout": "2h",
            "secrets": {"HF_TOKEN": "$HF_TOKEN"}}})
    assert checklist.startswith("preflight refused this job because it would lose its results"), checklist
    for argument, fix in (
            ("push_to_hub_model_id",
             "remove it; hub_model_id='myusername/my-trained-model' already names the same repo"),
            ("push_to_hub_organization", 'hub_model_id="<org>/my-trained-model"'),
            ("push_to_hub_token", "remove it; the token comes from the HF_TOKEN secret")):
        line = next(line for line in checklist.splitlines() if line.startswith(f"❌ argument {argument}"))
        assert "TypeError" in line, line
        assert fix in checklist.split(line, 1)[1].splitlines()[1], checklist
    assert 'the label "keephub.preflight": "override" (in "labels")' in checklist
    assert list(api.list_jobs(namespace=name)) == []


# -- every operation --------------------------------------------------------------------------------------------------


async def test_usage_help_and_the_tool_list_over_both_transports(server: Server, alice, tmp_path: Path) -> None:
    _, token = alice
    async with over_http(server, token) as http, over_stdio(server.url, token, tmp_path) as stdio:
        for agent in (http, stdio):
            names = [tool.name for tool in (await agent.list_tools()).tools]
            assert names == ["hf_jobs", "hf_whoami", "model_search", "dataset_search", "hub_repo_details",
                             "hub_repo_file"]
            usage = await answer(agent, "hf_jobs")
            assert 'hf_jobs("uv", {"script": "train.py"' in usage and "scheduled suspend" in usage
            for operation in OPERATIONS:
                assert (await jobs(agent, operation, help=True)).startswith(f'hf_jobs("{operation}"')
            with pytest.raises(Exception, match="unknown tool 'hf_spaces'"):
                await agent.call_tool("hf_spaces", {})
        assert "flavors" in (await answer(http, "hf_jobs", {"operation": "HARDWARE"})).lower()


async def test_run_uv_ps_logs_inspect_cancel_over_http(server: Server, alice, api: HfApi) -> None:
    name, token = alice
    api.create_repo(f"{name}/scripts")
    api.upload_file(path_or_fileobj=b"import sys\nprint('from the repo', sys.argv[1:])\n", path_in_repo="echo.py",
                    repo_id=f"{name}/scripts")
    async with over_http(server, token) as agent:
        done = await jobs(agent, "run", command="python -c \"print('hello from run')\"")
        assert "hello from run" in done and "Job ended COMPLETED." in done, done
        assert f"URL: {server.url}/jobs/{name}/" in done

        from_repo = await jobs(agent, "uv", script=f"hf://{name}/scripts/echo.py", script_args=["a", "b"])
        assert "from the repo ['a', 'b']" in from_repo and "Job ended COMPLETED." in from_repo, from_repo

        sleeper = job_id_in(await jobs(agent, "uv", script="import time\nprint('working', flush=True)\n"
                                                            "time.sleep(300)\n", detach=True))
        assert next(iter(api.list_jobs(namespace=name))).labels == {"name": "script.py"}
        running = await jobs(agent, "ps")
        assert sleeper in running and "uv run script.py" in running and from_repo.split()[1] not in running
        assert sleeper in await jobs(agent, "ps", status="scheduling") + await jobs(agent, "ps", status="RUNNING")
        assert from_repo.split()[1] in await jobs(agent, "ps", all=True)

        while "working" not in await jobs(agent, "logs", job_id=sleeper):
            await anyio.sleep(0.2)
        canceled = await jobs(agent, "cancel", job_id=sleeper)
        assert f"Cancel requested for job {sleeper}" in canceled, canceled
        assert api.wait_for_job(job_id=sleeper, namespace=name, timeout=120).status.stage == "CANCELED"
        assert "already ended (CANCELED)" in await jobs(agent, "cancel", job_id=sleeper)
        record = await jobs(agent, "inspect", job_id=[sleeper, job_id_in(done)])
        assert f"job {sleeper} in {name}: CANCELED (canceled by {name})" in record, record
        assert f"job {job_id_in(done)} in {name}: COMPLETED" in record
        tail = await jobs(agent, "logs", job_id=sleeper, tail=2)
        assert f"Job {sleeper}: CANCELED" in tail and len(tail.splitlines()) == 3, tail
        legacy = await answer(agent, "hf_jobs", {"operation": "ps", "all": True, "namespace": name})
        assert sleeper in legacy, "arguments beside `operation` are taken as args (the legacy form)"


async def test_a_push_refused_with_403_is_explained_in_the_logs(server: Server, alice) -> None:
    name, token = alice
    async with over_http(server, token) as agent:
        job_id = job_id_in(await jobs(
            agent, "run", command=["python", "-c", "raise SystemExit(1)"], detach=True,
            secrets={"HF_TOKEN": server.token(name, "read")},
            labels={"keephub.repo": f"{name}/never", "keephub.output-dir": "out", "keephub.preflight": "override"}))
        HfApi(endpoint=server.url, token=token).wait_for_job(job_id=job_id, namespace=name, timeout=120)
        logs = await jobs(agent, "logs", job_id=job_id)
    advice = logs.split("Troubleshooting (keephub):", 1)[1]
    assert "Durability: NOT saved" in advice and "read-only" in advice, logs
    assert '- 403 Forbidden: the job\'s token may not write that repo' in advice, advice


async def test_scheduled_jobs_over_stdio_with_a_local_script(server: Server, alice, tmp_path: Path) -> None:
    name, token = alice
    (tmp_path / "nightly.py").write_text("print('nightly')\n")
    async with over_stdio(server.url, token, tmp_path) as agent:
        created = await jobs(agent, "scheduled uv", script="nightly.py", schedule="@daily")
        scheduled_id = re.search(r"scheduled job ([0-9a-f]{24})", created).group(1)  # type: ignore[union-attr]
        assert "command: uv run nightly.py" in created and "@daily, next run" in created, created
        assert scheduled_id in await jobs(agent, "scheduled ps")
        assert "(suspended)" in await jobs(agent, "scheduled suspend", scheduled_job_id=scheduled_id)
        assert "next run" in await jobs(agent, "scheduled resume", scheduled_job_id=scheduled_id)
        inspected = await jobs(agent, "scheduled inspect", scheduled_job_id=scheduled_id)
        assert '"schedule": "@daily"' in inspected and "no run yet" in inspected
        ran = await jobs(agent, "scheduled run", command=["python", "-c", "print(1)"], schedule="0 3 * * *",
                         suspend=True)
        assert "(suspended)" in ran
        assert "deleted" in await jobs(agent, "scheduled delete", scheduled_job_id=scheduled_id)
        listed = await jobs(agent, "scheduled ps")
        assert scheduled_id not in listed and "0 3 * * *" in listed
        bad = await refusal(agent, "hf_jobs", {"operation": "scheduled uv",
                                               "args": {"script": "nightly.py", "schedule": "* * * * * *"}})
        assert "has 6 fields, not 5" in bad, bad
        missing = await refusal(agent, "hf_jobs", {"operation": "uv", "args": {"script": "missing.py"}})
        assert "'missing.py' is not a file here" in missing


# -- the Hub tools ----------------------------------------------------------------------------------------------------


async def test_hub_tools_read_with_the_callers_rights(server: Server, alice, api: HfApi) -> None:
    name, token = alice
    model = f"{name}/mcp-{uuid.uuid4().hex[:6]}"
    api.create_repo(model)
    api.upload_file(path_or_fileobj=b"---\ntags: [sft]\n---\n# A card\n", path_in_repo="README.md", repo_id=model)
    api.upload_file(path_or_fileobj=b"\x00\x01binary", path_in_repo="weights.bin", repo_id=model)
    api.create_branch(model, branch="rescue/0123456789abcdef01234567")
    api.create_repo(f"{name}/hidden", private=True)
    api.create_repo(f"{name}/chats", repo_type="dataset")
    async with over_http(server, token) as agent:
        me = await answer(agent, "hf_whoami")
        assert f"You are {name}" in me and "Token 'default' (write)" in me, me
        found = await answer(agent, "model_search", {"query": "mcp-", "author": name})
        assert model in found and "public" in found, found
        assert f"{name}/chats" in await answer(agent, "dataset_search", {"author": name})
        details = await answer(agent, "hub_repo_details", {"repo_ids": [model, f"{name}/hidden"]})
        assert "rescue/0123456789abcdef01234567 (what job 0123456789abcdef01234567 saved when it failed)" in details
        assert "README.md" in details and "weights.bin" in details and f"{name}/hidden (model, private)" in details
        card = await answer(agent, "hub_repo_file", {"repo_id": model, "path": "README.md"})
        assert card.endswith("# A card\n"), card
        assert "not a text file" in await refusal(agent, "hub_repo_file", {"repo_id": model, "path": "weights.bin"})
        assert "does not exist" in await refusal(agent, "hub_repo_file", {"repo_id": model, "path": "nope.md"})
    async with over_http(server, None) as anonymous:
        assert model in await answer(anonymous, "model_search", {"author": name})
        assert f"{name}/hidden" not in await answer(anonymous, "model_search", {"author": name})
        assert "not found" in await refusal(anonymous, "hub_repo_details", {"repo_ids": f"{name}/hidden"})
        assert "README.md" in await answer(anonymous, "hub_repo_details", {"repo_ids": model})


# -- bad input and refusals -------------------------------------------------------------------------------------------


async def test_bad_input_is_a_readable_tool_error_and_creates_nothing(server: Server, alice, api: HfApi) -> None:
    name, token = alice
    other, _ = server.user()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"operation": "train"}, "unknown operation 'train'; hf_jobs operations: uv, run, ps"),
        ({"operation": 3}, "'operation' must be a string"),
        ({"operation": "ps", "args": [1]}, "'args' must be an object"),
        ({"operation": "logs", "args": {}}, "'job_id' is required"),
        ({"operation": "logs", "args": {"job_id": "0" * 24}}, 'not found in ' + name + '; list jobs with hf_jobs("ps"'),
        ({"operation": "logs", "args": {"job_id": "x", "tail": "20"}}, "'tail' must be an integer from 1 to 5000"),
        ({"operation": "inspect", "args": {"job_id": 7}}, "'job_id' must be a list of strings"),
        ({"operation": "ps", "args": {"status": "done"}}, "'status' 'done' is not a stage; use one of SCHEDULING"),
        ({"operation": "ps", "args": {"verbose": True}}, "takes no argument 'verbose'; its arguments: all, namespace"),
        ({"operation": "uv", "args": {}}, "'script' is required"),
        ({"operation": "uv", "args": {"script": "print(1)", "detach": "yes"}}, "'detach' must be true or false"),
        ({"operation": "uv", "args": {"script": "print(1)", "env": ["A=1"]}}, "'env' must be an object"),
        ({"operation": "uv", "args": {"script": "print(1)", "flavor": "l40sx8"}},
         "unknown flavor 'l40sx8'; this keephub offers: cpu-basic"),
        ({"operation": "uv", "args": {"script": "print(1)", "timeout": "forever"}}, "timeout 'forever' is malformed"),
        ({"operation": "uv", "args": {"script": "print(1)", "env": {"1A": "x"}}}, "'env' name '1A' is not a valid"),
        ({"operation": "uv", "args": {"script": "print(1)", "env": {"HF_TOKEN": "$HF_TOKEN"}}},
         "only secrets replace $HF_TOKEN"),
        ({"operation": "uv", "args": {"script": "print(1)", "volumes": ["/data"]}},
         "volumes[0] '/data' is not a mount; write hf://[TYPE/]NAMESPACE/NAME"),
        ({"operation": "uv", "args": {"script": "x = 1\n" * 50_000}}, "travel inline. Upload it to a repo"),
        ({"operation": "uv", "args": {"script": "train.py"}}, "is a file path, which keephub's server cannot read"),
        ({"operation": "uv", "args": {"script": "hf://just-a-name"}},
         "names no repo: write hf://[TYPE/]NAMESPACE/NAME"),
        ({"operation": "run", "args": {"command": "python -c 'unclosed"}}, "cannot be split into words"),
        ({"operation": "run", "args": {"command": ["python"], "image": "ubuntu:24.04"}}, "cannot be run here"),
        ({"operation": "run", "args": {"command": ["python"], "namespace": other}},
         f"has no write access to namespace '{other}'"),
        ({"operation": "scheduled uv", "args": {"script": "print(1)"}}, "'schedule' is required"),
        ({"operation": "scheduled inspect", "args": {"scheduled_job_id": "nope"}}, "scheduled job nope not found"),
    ]
    async with over_http(server, token) as agent:
        for arguments, expected in cases:
            assert expected in await refusal(agent, "hf_jobs", arguments), arguments
        assert "'repo_ids' must be a list of strings" in await refusal(agent, "hub_repo_details", {"repo_ids": 5})
        assert "invalid repo id" in await refusal(agent, "hub_repo_details", {"repo_ids": "no-slash"})
    read_only = server.token(name, "read")
    async with over_http(server, read_only) as agent:
        refused = await refusal(agent, "hf_jobs", {"operation": "run", "args": {"command": ["python"]}})
        assert "is read-only; create a write token" in refused, refused
    created = [(job.command, job.status) for job in api.list_jobs(namespace=name)]
    assert created == list(api.list_scheduled_jobs(namespace=name)) == [], created


async def test_calls_without_a_valid_token(server: Server, alice, tmp_path: Path) -> None:
    name, _ = alice
    async with over_http(server, None) as anonymous:
        for arguments in ({"operation": "ps"}, {"operation": "ps", "args": {"namespace": name}},
                          {"operation": "uv", "args": {"script": "print(1)"}}):
            refused = await refusal(anonymous, "hf_jobs", arguments)
            assert "authenticated" in refused and "Authorization: Bearer <token>" in refused, refused
        assert "HF_TOKEN or --token" in await refusal(anonymous, "hf_whoami", {})
    reply = httpx2.post(f"{server.url}/mcp", headers={"Authorization": "Bearer kh_not-a-token"},
                        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert reply.status_code == 401 and reply.json()["error"] == "Invalid credentials in Authorization header"
    # A tools/call is authenticated by the tool's first service call, and its answer held until then: an unknown
    # token still gets the 401 (never the answer), and nothing runs.
    call = {"name": "hf_jobs", "arguments": {"operation": "run", "args": {"command": ["python", "-c", "print(1)"],
                                                                          "namespace": name, "detach": True}}}
    as_the_sdk_sends_it = {"Authorization": "Bearer kh_not-a-token", "MCP-Protocol-Version": "2026-07-28",
                           "Accept": "application/json, text/event-stream", "Mcp-Method": "tools/call",
                           "Mcp-Name": "hf_jobs"}
    reply = httpx2.post(f"{server.url}/mcp", json={"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": call},
                        headers=as_the_sdk_sends_it)
    assert reply.status_code == 401 and reply.json()["error"] == "Invalid credentials in Authorization header"
    assert list(HfApi(endpoint=server.url, token=alice[1]).list_jobs(namespace=name)) == []

    async with over_stdio(server.url, "kh_not-a-token", tmp_path) as agent:
        refused = await refusal(agent, "hf_whoami", {})
        assert "refused the token from --token or HF_TOKEN (401: Invalid credentials" in refused, refused
    async with over_stdio(f"http://127.0.0.1:{free_port()}", None, tmp_path) as agent:
        assert [tool.name for tool in (await agent.list_tools()).tools][0] == "hf_jobs"
        assert "cannot reach keephub at http://127.0.0.1:" in await refusal(agent, "hf_jobs", {"operation": "ps"})


def test_mcp_is_a_reserved_name(server: Server) -> None:
    with pytest.raises(RuntimeError, match="reserved"):
        keephub_cli(server.data_dir, "user", "create", "mcp")
