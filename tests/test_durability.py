"""No lost results: real TRL training jobs with fault injection, checked against what is on the hub afterwards."""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from huggingface_hub import HfApi

from conftest import SESSION_DIR, Server, free_port

pytestmark = pytest.mark.training
UV_IMAGE = "ghcr.io/astral-sh/uv:python3.12-bookworm"

TRAIN = textwrap.dedent('''
    # /// script
    # dependencies = ["trl", "datasets"]
    # ///
    import os, signal, time
    from datasets import load_dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    ns = os.environ["NS"]
    attempt = int(os.environ.get("KEEPHUB_ATTEMPT", "1"))

    class Faults(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if attempt == 1 and state.global_step == int(os.environ.get("KILL_AT_STEP", "0")):
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(float(os.environ.get("SLEEP_PER_STEP", "0")))

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                print(f"step {state.global_step} loss {logs['loss']}", flush=True)

    dataset = load_dataset(f"{ns}/chats", split="train")
    config = SFTConfig(
        output_dir="out",
        save_strategy="steps",
        save_steps=10,
        save_total_limit=1,
        max_steps=int(os.environ.get("MAX_STEPS", "30")),
        per_device_train_batch_size=4,
        logging_steps=1,
        seed=7,
        disable_tqdm=True,
        bf16=False, use_cpu=True, activation_checkpointing=False, report_to=[],
    )
    trainer = SFTTrainer(model=f"{ns}/tiny-base", train_dataset=dataset, args=config, callbacks=[Faults()])
    trainer.train(resume_from_checkpoint=any(p.startswith("checkpoint-") for p in os.listdir("out"))
                  if os.path.isdir("out") else False)
    trainer.save_model()
    print("training done", flush=True)
    time.sleep(float(os.environ.get("SLEEP_AFTER", "0")))
''')


@pytest.fixture(scope="module")
def hub() -> Iterator[Server]:
    """A dedicated server with a short grace period, so timeout rescues finish quickly."""
    srv = Server(data_dir=SESSION_DIR / f"durability-{uuid.uuid4().hex[:6]}", port=free_port(),
                 env={"KEEPHUB_JOB_GRACE_SECONDS": "15", "KEEPHUB_JOB_CPUS": "2"})
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def trainer_user(hub: Server, tmp_path_factory) -> tuple[str, HfApi]:
    """A user whose namespace holds a tiny base model and a chat data set, built locally and pushed once."""
    from keephub.demo.tiny import build_tiny_base, write_chat_dataset_jsonl

    name, token = hub.user()
    api = HfApi(endpoint=hub.url, token=token)
    work = tmp_path_factory.mktemp("inputs")
    api.create_repo(f"{name}/tiny-base")
    api.upload_folder(folder_path=build_tiny_base(work / "base"), repo_id=f"{name}/tiny-base")
    api.create_repo(f"{name}/chats", repo_type="dataset")
    data = write_chat_dataset_jsonl(work / "chats" / "train.jsonl", n=200)
    api.upload_folder(folder_path=data.parent, repo_id=f"{name}/chats", repo_type="dataset")
    return name, api


def submit(api: HfApi, name: str, repo: str, script: str = TRAIN, **options) -> str:  # type: ignore[no-untyped-def]
    env = {"NS": name, **options.pop("env", {})}
    labels = {"keephub.repo": repo, "keephub.output-dir": "out", **options.pop("labels", {})}
    script_repo = f"{name}/scripts"
    api.create_repo(script_repo, exist_ok=True)
    path = f"train-{uuid.uuid4().hex[:6]}.py"
    api.upload_file(path_or_fileobj=script.encode(), path_in_repo=path, repo_id=script_repo)
    job = api.run_job(image=UV_IMAGE, command=["uv", "run", f"{api.endpoint}/{script_repo}/resolve/main/{path}"],
                      env=env, secrets={"HF_TOKEN": "$HF_TOKEN"}, labels=labels, namespace=name, **options)
    return job.id


def record_of(api: HfApi, name: str, job_id: str) -> dict:
    import httpx

    reply = httpx.get(f"{api.endpoint}/api/jobs/{name}/{job_id}", headers={"authorization": f"Bearer {api.token}"})
    return reply.json()


def losses(lines: list[str]) -> dict[int, str]:
    return {int(line.split()[1]): line.split()[3] for line in lines if line.startswith("step ")}


def test_every_checkpoint_is_pushed_and_verified(trainer_user) -> None:
    name, api = trainer_user
    repo = f"{name}/every-ckpt"
    api.create_repo(repo)
    job_id = submit(api, name, repo)
    lines = list(api.fetch_job_logs(job_id=job_id, namespace=name, follow=True))
    assert api.wait_for_job(job_id=job_id, namespace=name, timeout=60).status.stage == "COMPLETED", lines
    files = set(api.list_repo_files(repo))
    for step in (10, 20, 30):
        assert f"checkpoint-{step}/trainer_state.json" in files, "save_total_limit=1 must not lose a checkpoint"
    assert "model.safetensors" in files and "config.json" in files
    record = record_of(api, name, job_id)["durability"]
    assert record["verdict"]["status"] == "saved", record
    labels = [p["label"] for p in record["pushes"]]
    assert labels == ["checkpoint-10", "checkpoint-20", "checkpoint-30", "final model files"]
    assert all(p["verified"] for p in record["pushes"]) and all(len(p["commit"]) == 40 for p in record["pushes"])
    assert any("Pushing checkpoint-10" in line for line in lines)


def test_sigkilled_attempt_resumes_from_the_hub_with_identical_losses(trainer_user) -> None:
    name, api = trainer_user
    reference_repo, resumed_repo = f"{name}/uninterrupted", f"{name}/killed-at-25"
    api.create_repo(reference_repo)
    api.create_repo(resumed_repo)
    reference = submit(api, name, reference_repo)
    killed = submit(api, name, resumed_repo, env={"KILL_AT_STEP": "25"}, attempts=2)
    reference_lines = list(api.fetch_job_logs(job_id=reference, namespace=name, follow=True))
    killed_lines = list(api.fetch_job_logs(job_id=killed, namespace=name, follow=True))
    info = api.wait_for_job(job_id=killed, namespace=name, timeout=60)
    assert info.status.stage == "COMPLETED", killed_lines
    assert any("resume: downloaded" in line and "global_step 20" in line for line in killed_lines), killed_lines
    first_attempt, second_attempt = killed_lines[: killed_lines.index(next(
        line for line in killed_lines if line.startswith("===== Attempt 2")))], killed_lines
    resumed = losses(second_attempt[second_attempt.index(next(
        line for line in second_attempt if line.startswith("===== Attempt 2"))):])
    assert resumed and min(resumed) == 21, f"attempt 2 continues at global_step 20, logging from step 21: {resumed}"
    expected = losses(reference_lines)
    assert {step: resumed[step] for step in range(21, 31)} == {step: expected[step] for step in range(21, 31)}
    assert max(losses(first_attempt)) == 24, "attempt 1 died at step 25, before logging it"
