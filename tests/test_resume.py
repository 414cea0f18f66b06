"""Retried attempts resume from the hub for the scripts people actually write, and the log stays readable.

Real TRL training jobs against a live server: the reference's production example, unmodified, killed
mid-training; a script that decides about resuming itself; and the sidecar's lines under a flood of output.
"""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from conftest import JOB_XET_ENV, Server, WAIT_ON_HUB, agent_root, guarded_job
from huggingface_hub import HfApi
from test_durability import TRAIN, UV_IMAGE, hub, losses, record_of, submit, trainer_user  # noqa: F401 - fixtures

import keephub.demo

pytestmark = pytest.mark.training
PRODUCTION_TRAIN = Path(keephub.demo.__file__).with_name("production_train.py").read_text()
ATTEMPT_2 = "===== Attempt 2"


@pytest.fixture(scope="module")
def production_users(hub: Server, tmp_path_factory) -> list[tuple[str, HfApi]]:  # noqa: F811
    """Two users, each holding the production example's inputs under the names it reads (a tiny base model and
    chat data, built locally once): it pushes to a fixed repo name, so two runs need two namespaces."""
    from keephub.demo.tiny import build_tiny_base, write_chat_dataset_jsonl

    work = tmp_path_factory.mktemp("production-inputs")
    base = build_tiny_base(work / "tiny-qwen2")
    data = write_chat_dataset_jsonl(work / "capybara-tiny" / "train.jsonl", n=200)
    users = []
    for _ in range(2):
        name, token = hub.user()
        api = HfApi(endpoint=hub.url, token=token)
        api.create_repo(f"{name}/tiny-qwen2")
        api.upload_folder(folder_path=base, repo_id=f"{name}/tiny-qwen2")
        api.create_repo(f"{name}/capybara-tiny", repo_type="dataset")
        api.upload_folder(folder_path=data.parent, repo_id=f"{name}/capybara-tiny", repo_type="dataset")
        users.append((name, api))
    return users


def run_production_example(api: HfApi, name: str, **options) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """Submit the production example as users do (`uv run` of a file on the hub): (job id, script file name)."""
    api.create_repo(f"{name}/scripts", exist_ok=True)
    script = f"production-{uuid.uuid4().hex[:6]}.py"
    api.upload_file(path_or_fileobj=PRODUCTION_TRAIN.encode(), path_in_repo=script, repo_id=f"{name}/scripts")
    job = api.run_job(image=UV_IMAGE, command=["uv", "run", f"{api.endpoint}/{name}/scripts/resolve/main/{script}"],
                      env={"KEEPHUB_DEMO_NAMESPACE": name, **JOB_XET_ENV}, secrets={"HF_TOKEN": "$HF_TOKEN"},
                      namespace=name, **options)
    return job.id, script


def kill_training_once_saved(hub: Server, job_id: str, script: str, checkpoint: str) -> None:  # noqa: F811
    """SIGKILL attempt 1's training process (not the sidecar) as soon as `checkpoint` is complete in its output
    directory, as an out-of-memory kill would: the script itself stays as the user wrote it."""
    state = agent_root(hub) / "workspaces" / f"{job_id}-1" / checkpoint / "trainer_state.json"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            json.loads(state.read_text())
        except (OSError, ValueError):
            time.sleep(0.01)
            continue
        training = [pid for pid in os.listdir("/proc") if pid.isdigit() and _runs_script(pid, script)]
        assert training, f"no process runs {script}"
        for pid in training:
            os.kill(int(pid), signal.SIGKILL)
        return
    raise AssertionError(f"{checkpoint} of job {job_id} never appeared")


def _runs_script(pid: str, script: str) -> bool:
    """The training process runs `python .../<script>`; the sidecar only names the script's URL."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return len(argv) > 1 and argv[1].decode(errors="replace").endswith(f"/{script}")


def logged_metrics(lines: list[str]) -> list[dict[str, str]]:
    """The Trainer's log lines, e.g. {'loss': '4.12', 'grad_norm': ..., 'learning_rate': ..., 'epoch': ...},
    without TRL's num_tokens: it counts the tokens this process has seen, and a resumed one starts at 0."""
    return [{key: value for key, value in ast.literal_eval(line).items() if key != "num_tokens"}
            for line in lines if line.startswith("{'loss'")]


def logged_losses(api: HfApi, repo: str, step: int) -> list[tuple[int, float]]:
    state = json.loads(Path(api.hf_hub_download(repo, f"checkpoint-{step}/trainer_state.json")).read_text())
    return [(entry["step"], entry["loss"]) for entry in state["log_history"] if "loss" in entry]


def test_unmodified_production_example_killed_mid_training_resumes_from_the_hub(hub: Server,  # noqa: F811
                                                                                 production_users) -> None:
    (name, api), (reference_name, reference_api) = production_users
    reference, _ = run_production_example(reference_api, reference_name)
    killed, script = run_production_example(api, name, attempts=2)
    kill_training_once_saved(hub, killed, script, "qwen-capybara-sft/checkpoint-20")
    reference_lines = list(reference_api.fetch_job_logs(job_id=reference, namespace=reference_name, follow=True))
    lines = list(api.fetch_job_logs(job_id=killed, namespace=name, follow=True))
    assert api.inspect_job(job_id=killed, namespace=name).status.stage == "COMPLETED", "\n".join(lines)
    assert any(line.startswith("✅ resume: keephub will resume Trainer.train() (line ") for line in lines), lines
    retried = lines[lines.index(next(line for line in lines if line.startswith(ATTEMPT_2))):]
    assert "[keephub] resuming Trainer.train() from checkpoint-20 restored from the hub (the script does not pass " \
           "resume_from_checkpoint; a value it passes takes precedence)" in retried, retried
    # Attempt 2 logged steps 30 and 40 only (not 1, 10 and 20 again), exactly as the uninterrupted run did.
    assert logged_metrics(retried) == logged_metrics(reference_lines)[-2:], (retried, reference_lines)
    repo = f"{name}/qwen-capybara-sft"
    assert logged_losses(api, repo, 40) == logged_losses(reference_api, f"{reference_name}/qwen-capybara-sft", 40)
    assert "adapter_model.safetensors" in api.list_repo_files(repo)


def test_a_script_that_passes_resume_from_checkpoint_keeps_control(trainer_user) -> None:  # noqa: F811
    """It says False: attempt 2 trains from step 1 again, rewriting the checkpoint keephub restored (whose
    files once came read-only out of huggingface_hub's Xet cache: Permission denied, and the job failed)."""
    name, api = trainer_user
    repo = f"{name}/from-scratch"
    api.create_repo(repo)
    # The script's own expression, turned into one that always says False.
    script = TRAIN.replace("trainer.train(resume_from_checkpoint=any(", "trainer.train(resume_from_checkpoint=False and any(")
    assert script != TRAIN
    job = submit(api, name, repo, script, env={"KILL_AT_STEP": "15", "MAX_STEPS": "20"}, attempts=2)
    lines = list(api.fetch_job_logs(job_id=job, namespace=name, follow=True))
    assert api.inspect_job(job_id=job, namespace=name).status.stage == "COMPLETED", "\n".join(lines)
    retried = lines[lines.index(next(line for line in lines if line.startswith(ATTEMPT_2))):]
    assert any("resume: downloaded" in line and "global_step 10" in line for line in retried), retried
    assert "[keephub] the script passes resume_from_checkpoint=False itself, so keephub leaves resuming to it " \
           "(checkpoint-10, restored from the hub, is in the output directory)" in retried, retried
    assert sorted(losses(retried)) == list(range(1, 21)), "attempt 2 trained from step 1, as the script said"
    assert api.file_exists(repo, "checkpoint-20/trainer_state.json")
    pushes = record_of(api, name, job)["durability"]["pushes"]
    assert any(p["label"] == "checkpoint-10" and p["attempt"] == 2 and p["verified"] for p in pushes), \
        "the checkpoint-10 attempt 2 wrote anew went up too, not only the one restored from the hub"


FLOOD = WAIT_ON_HUB + textwrap.dedent('''
    import json, os, sys, threading, time

    done = threading.Event()

    def flood():
        """Output as training makes it, never pausing: partial lines written unbuffered (one byte at a time,
        every 20 microseconds), a progress bar on stderr redrawn with \\\\r and never ended, block-buffered
        print()s, and lines whose end comes in a write of its own."""
        buffered = open(sys.stdout.fileno(), "w", buffering=8192, closefd=False)
        n, due = 0, time.perf_counter()
        while not done.is_set():
            due += 2e-5
            while time.perf_counter() < due:
                pass
            n += 1
            os.write(1, b"~")
            if n % 1000 == 0:
                os.write(2, b"\\r %d%%|~~~~" % (n // 1000 % 100))
            if n % 3000 == 0:
                print(f"~buffered {n}", file=buffered)
                os.write(1, b"~step %d loss 0.5" % n)
                os.write(1, b"\\n")
        buffered.flush()

    thread = threading.Thread(target=flood)
    thread.start()
    for step in range(1, 31):
        os.makedirs(f"out/checkpoint-{step}")
        with open(f"out/checkpoint-{step}/trainer_state.json", "w") as state:
            json.dump({"global_step": step}, state)
        time.sleep(0.1)
    wait_on_hub("checkpoint-30/trainer_state.json", 60, 0.1)
    done.set()
    thread.join()
''')


def test_sidecar_lines_stay_whole_under_a_flood_of_partial_lines(trainer_user) -> None:  # noqa: F811
    name, api = trainer_user
    repo = f"{name}/flooded"
    job = guarded_job(api, name, repo, FLOOD)
    info = api.wait_for_job(job_id=job.id, namespace=name, timeout=120)
    lines = list(api.fetch_job_logs(job_id=job.id, namespace=name))
    sidecar = [line for line in lines if "[keephub]" in line]
    assert info.status.stage == "COMPLETED", sidecar
    assert api.file_exists(repo, "checkpoint-30/trainer_state.json"), sidecar
    pushes = [line for line in sidecar if re.match(r"\[keephub\] Pushing checkpoint-", line)]
    assert len(sidecar) >= 20 and pushes, sidecar
    # The script's output (every piece of it holds a "~") never shares a line with the sidecar's.
    glued = [line for line in sidecar if not line.startswith("[keephub]") or "~" in line]
    assert glued == [], glued
    assert all(re.fullmatch(r"\[keephub\] Pushing (checkpoint-\d+, )*checkpoint-\d+ to \S+@main "
                            r"\(\d+ files, [\d,]+ bytes\)", line) for line in pushes), pushes
