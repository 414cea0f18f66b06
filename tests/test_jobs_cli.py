"""`keephub jobs ...` and the README's run command, end to end against live servers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import Server

pytestmark = pytest.mark.training
HF_CLI = str(Path(sys.executable).with_name("hf"))


def keephub_jobs(server: Server, token: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_ENDPOINT=server.url, HF_TOKEN=token)
    return subprocess.run([sys.executable, "-m", "keephub.cli", "jobs", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_jobs_uv_run_ps_logs_inspect_cancel(server: Server, tmp_path: Path) -> None:
    name, token = server.user()
    script = tmp_path / "hello.py"
    script.write_text(textwrap.dedent("""
        # /// script
        # dependencies = ["packaging"]
        # ///
        import sys
        print("hello", *sys.argv[1:])
    """))
    run = keephub_jobs(server, token, "uv", "run", "--secrets", "HF_TOKEN", "--timeout", "5m", str(script), "a", "b")
    assert run.returncode == 0, run.stderr
    assert "hello a b" in run.stdout
    job_id = run.stdout.split()[1]
    assert "COMPLETED" in run.stdout.splitlines()[-1]

    ps = keephub_jobs(server, token, "ps", "--all")
    assert job_id in ps.stdout and "COMPLETED" in ps.stdout
    logs = keephub_jobs(server, token, "logs", job_id)
    assert "hello a b" in logs.stdout
    inspect = keephub_jobs(server, token, "inspect", "--json", job_id)
    assert f'"id": "{job_id}"' in inspect.stdout and '"HF_TOKEN": "<hidden>"' in inspect.stdout
    readable = keephub_jobs(server, token, "inspect", job_id)
    assert f"job {job_id} in {name}: COMPLETED" in readable.stdout and "attempt 1: COMPLETED" in readable.stdout

    sleeper = tmp_path / "sleep.py"
    sleeper.write_text("import time\nprint('sleeping', flush=True)\ntime.sleep(600)\n")
    detached = keephub_jobs(server, token, "uv", "run", "--detach", str(sleeper))
    sleeper_id = detached.stdout.split()[1]
    cancel = keephub_jobs(server, token, "cancel", sleeper_id)
    assert cancel.returncode == 0
    follow = keephub_jobs(server, token, "logs", "--follow", sleeper_id)
    assert follow.returncode == 0
    final = keephub_jobs(server, token, "inspect", "--json", sleeper_id)
    assert '"stage": "CANCELED"' in final.stdout and f"canceled by {name}" in final.stdout


def test_jobs_cli_errors_are_clear(server: Server, tmp_path: Path) -> None:
    _, token = server.user()
    missing = keephub_jobs(server, token, "uv", "run", str(tmp_path / "nope.py"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    flavor = keephub_jobs(server, token, "uv", "run", "--flavor", "a100x8", "https://example.invalid/x.py")
    assert flavor.returncode == 2 and "unknown flavor" in flavor.stderr and "cpu-basic" in flavor.stderr


def test_readme_run_command_trains_as_a_job_and_saves_to_keephub(tmp_path: Path) -> None:
    """The production example runs as a keephub job with HF_TOKEN=$HF_TOKEN; its pushes land in keephub."""
    result = subprocess.run([sys.executable, "-m", "keephub.demo.run", "--workdir", str(tmp_path / "demo")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "✅ Dataset loaded: 400 examples" in out
    assert "🚀 Starting training..." in out and "✅ Training complete!" in out
    assert "COMPLETED; results saved in keephub" in out
    assert "last-checkpoint/adapter_model.safetensors" in out and "adapter_model.safetensors" in out
    assert "verdict: saved at commit" in out, "the run command ends with the job's durability record"
    assert "checkpoint-10 → main" in out and "final model files → main" in out
    # The script pushed its final model itself (trainer.push_to_hub()); the sidecar verifies it, commits nothing.
    final = next(line for line in out.splitlines() if "final model files → main" in line)
    assert "verified" in final and "already there, identical" in final, final


def test_hf_jobs_cli_runs_against_keephub(server: Server) -> None:
    """The unmodified `hf jobs` CLI works with only HF_ENDPOINT and HF_TOKEN pointed at keephub."""
    _, token = server.user()
    env = dict(os.environ, HF_ENDPOINT=server.url, HF_TOKEN=token)
    run = subprocess.run([HF_CLI, "jobs", "run", "python:3.12", "python", "-c", "print('from the hf cli')"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "from the hf cli" in run.stdout
    listing = subprocess.run([HF_CLI, "jobs", "ps", "-a", "--format", "json"], capture_output=True, text=True,
                             env=env, timeout=60)
    assert listing.returncode == 0, listing.stderr
    assert "COMPLETED" in listing.stdout
    hardware = subprocess.run([HF_CLI, "jobs", "hardware"], capture_output=True, text=True, env=env, timeout=60)
    assert "cpu-basic" in hardware.stdout



@pytest.mark.once  # the checklist is worked out before submission: no backend or executor is involved
def test_keephub_preflight_prints_the_executable_checklist(server: Server, tmp_path: Path) -> None:
    name, token = server.user()
    other, _ = server.user()
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(f"""
        from trl import SFTConfig, SFTTrainer
        config = SFTConfig(output_dir="my-model", push_to_hub=True, hub_model_id="{other}/my-model",
                           push_to_hub_token=None, save_strategy="no")
        trainer = SFTTrainer(model="m", args=config)
        trainer.train()
    """))
    env = dict(os.environ, HF_ENDPOINT=server.url, HF_TOKEN=token)
    result = subprocess.run([sys.executable, "-m", "keephub.cli", "preflight", "--timeout", "2h", str(script)],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 1, result.stderr
    out = result.stdout
    assert "❌ argument push_to_hub_token" in out and "fix: remove it" in out
    assert "❌ HF_TOKEN" in out
    assert f"no write access to namespace '{other}'" in out
    assert "keephub would refuse this job" in out
    fixed = script.read_text().replace(f"{other}/", f"{name}/").replace("push_to_hub_token=None, ", "")
    fixed = fixed.replace('save_strategy="no"', "save_steps=100")
    script.write_text(fixed)
    result = subprocess.run([sys.executable, "-m", "keephub.cli", "preflight", "--secrets", "HF_TOKEN", "--timeout",
                             "2h", str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stdout
    assert "❌" not in result.stdout and "✅ hub_model_id" in result.stdout
