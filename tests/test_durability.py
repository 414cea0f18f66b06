"""No lost results: real TRL training jobs with fault injection, checked against what is on the hub afterwards."""

from __future__ import annotations

import textwrap
import time
import uuid
from typing import Iterator

import httpx
import pytest
from conftest import JOB_XET_ENV, SESSION_DIR, WAIT_ON_HUB, JobSocketProxy, Server, free_port, guarded_job
from huggingface_hub import HfApi

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
    env = {"NS": name, **JOB_XET_ENV, **options.pop("env", {})}
    labels = {"keephub.repo": repo, "keephub.output-dir": "out", **options.pop("labels", {})}
    script_repo = f"{name}/scripts"
    api.create_repo(script_repo, exist_ok=True)
    path = f"train-{uuid.uuid4().hex[:6]}.py"
    api.upload_file(path_or_fileobj=script.encode(), path_in_repo=path, repo_id=script_repo)
    job = api.run_job(image=UV_IMAGE, command=["uv", "run", f"{api.endpoint}/{script_repo}/resolve/main/{path}"],
                      env=env, secrets={"HF_TOKEN": "$HF_TOKEN"}, labels=labels, namespace=name, **options)
    return job.id


def offer_rescue(hub: Server, api: HfApi, name: str, job_id: str) -> httpx.Response:
    return httpx.post(f"{hub.url}/api/jobs/{name}/{job_id}/rescue-pr", timeout=30,
                      headers={"Authorization": f"Bearer {api.token}"})


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
    # The script does not push: its final files were uploaded while the training process exited, and the
    # verdict came after that exit, which it records.
    ahead = [i for i, line in enumerate(lines) if line.startswith("[keephub] Uploading final model files")]
    final = [i for i, line in enumerate(lines) if line.startswith(f"[keephub] Pushing model to {repo}@main")]
    assert ahead and final and ahead[0] < final[0], lines
    # The reference workflow's progress lines, as users look for them.
    assert any(line.startswith("[keephub] Upload file model.safetensors: 100%") for line in lines), lines
    assert any(line.startswith(f"[keephub] ✅ Model pushed successfully: {api.endpoint}/{repo}") for line in lines)
    verdict = record["verdict"]
    assert verdict["trainingEnded"] <= verdict["time"] and verdict["time"] >= record["pushes"][-1]["time"]


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
    assert info.status.stage == "COMPLETED", "\n".join(killed_lines)
    assert any("resume: downloaded" in line and "global_step 20" in line for line in killed_lines), killed_lines
    first_attempt, second_attempt = killed_lines[: killed_lines.index(next(
        line for line in killed_lines if line.startswith("===== Attempt 2")))], killed_lines
    resumed = losses(second_attempt[second_attempt.index(next(
        line for line in second_attempt if line.startswith("===== Attempt 2"))):])
    assert resumed and min(resumed) == 21, f"attempt 2 continues at global_step 20, logging from step 21: {resumed}"
    expected = losses(reference_lines)
    assert {step: resumed[step] for step in range(21, 31)} == {step: expected[step] for step in range(21, 31)}
    assert max(losses(first_attempt)) == 24, "attempt 1 died at step 25, before logging it"


REFERENCE_COMPLETE_EXAMPLE = textwrap.dedent('''
    # /// script
    # dependencies = ["trl"]
    # ///

    from trl import SFTTrainer, SFTConfig
    from datasets import load_dataset

    dataset = load_dataset("trl-lib/Capybara", split="train")

    config = SFTConfig(
        output_dir="my-model",
        num_train_epochs=3,
        push_to_hub=True,
        hub_model_id="NAMESPACE/my-trained-model",
        push_to_hub_model_id="NAMESPACE/my-trained-model",
        push_to_hub_organization=None,
        push_to_hub_token=None,
    )

    trainer = SFTTrainer(model="Qwen/Qwen2.5-0.5B", train_dataset=dataset, args=config)
    trainer.train()
    trainer.push_to_hub()
''')


def run_inline(api: HfApi, name: str, script: str, **options):  # type: ignore[no-untyped-def]
    """Submit a script the way `keephub jobs uv run` and the hf_jobs tool do: inline, base64-encoded."""
    import base64

    encoded = base64.b64encode(script.encode()).decode()
    options["env"] = {**JOB_XET_ENV, **options.get("env", {})}
    return api.run_job(image=UV_IMAGE, command=["sh", "-c", f"echo {encoded} | base64 -d > train.py && uv run train.py"],
                       namespace=name, **options)


def test_reference_invalid_sftconfig_arguments_are_refused_before_running(trainer_user) -> None:
    from huggingface_hub.errors import HfHubHTTPError

    name, api = trainer_user
    before = len(list(api.list_jobs(namespace=name)))
    with pytest.raises(HfHubHTTPError) as info:
        run_inline(api, name, REFERENCE_COMPLETE_EXAMPLE.replace("NAMESPACE", name),
                   secrets={"HF_TOKEN": "$HF_TOKEN"}, timeout="2h")
    assert info.value.response.status_code == 422
    body = info.value.response.json()
    message = body["error"]
    for argument in ("push_to_hub_model_id", "push_to_hub_organization", "push_to_hub_token"):
        assert "❌" in message and argument in message, message
    assert "hub_model_id" in message and "keephub.preflight=override" in message
    assert body["preflight"]["ok"] is False
    assert len(list(api.list_jobs(namespace=name))) == before, "a refused job is never stored or started"


def test_missing_token_and_foreign_namespace_are_refused(hub: Server, trainer_user) -> None:
    from huggingface_hub.errors import HfHubHTTPError

    name, api = trainer_user
    owner, _ = hub.user()
    script = TRAIN.replace('output_dir="out",', f'output_dir="out", push_to_hub=True, hub_model_id="{owner}/theirs",')
    with pytest.raises(HfHubHTTPError) as info:
        run_inline(api, name, script, env={"NS": name})
    message = info.value.response.json()["error"]
    assert "HF_TOKEN" in message and '"$HF_TOKEN"' in message
    assert f"namespace '{owner}'" in message, message


def test_overridden_job_without_write_access_reports_not_saved_with_the_reason(hub: Server, trainer_user) -> None:
    name, api = trainer_user
    owner, owner_token = hub.user()
    HfApi(endpoint=hub.url, token=owner_token).create_repo(f"{owner}/not-mine")
    job = submit(api, name, f"{owner}/not-mine", env={"MAX_STEPS": "10"},
                 labels={"keephub.preflight": "override"})
    lines = list(api.fetch_job_logs(job_id=job, namespace=name, follow=True))
    assert any(line.startswith("===== keephub preflight (overridden)") for line in lines), lines
    verdict = record_of(api, name, job)["durability"]["verdict"]
    assert verdict["status"] == "not-saved", verdict
    assert "403" in verdict["message"] and owner in verdict["message"]
    refused = offer_rescue(hub, api, name, job)
    assert refused.status_code == 409 and "no rescue to offer" in refused.json()["error"]


def test_timeout_rescues_unsaved_final_files_to_a_branch_not_main(hub: Server, trainer_user) -> None:
    name, api = trainer_user
    repo = f"{name}/timed-out"
    api.create_repo(repo)
    job = submit(api, name, repo, env={"MAX_STEPS": "10", "SLEEP_AFTER": "600"}, timeout=45)
    lines = list(api.fetch_job_logs(job_id=job, namespace=name, follow=True))
    info = api.inspect_job(job_id=job, namespace=name)
    assert info.status.stage == "ERROR" and info.status.message == "timed out after 45s", lines
    assert "training done" in lines
    branch = f"rescue/{job}"
    rescued = set(api.list_repo_files(repo, revision=branch))
    assert "model.safetensors" in rescued and "config.json" in rescued
    assert "model.safetensors" not in api.list_repo_files(repo), "main never gets partial results"
    assert "checkpoint-10/trainer_state.json" in api.list_repo_files(repo)
    verdict = record_of(api, name, job)["durability"]["verdict"]
    assert verdict["status"] == "rescued" and verdict["branch"] == branch
    assert any(f"results rescued to {repo}@{branch}" in line for line in lines)
    # Restoring the rescue is one merge of the pull request keephub offers for it (the same one when asked twice).
    offered = offer_rescue(hub, api, name, job).json()
    assert offer_rescue(hub, api, name, job).json() == offered and offered["branch"] == branch
    api.merge_pull_request(repo, offered["num"])
    assert "model.safetensors" in api.list_repo_files(repo)
    # The final files went up during the sleep after save_model(); the rescue only had to commit them.
    assert any(line.startswith("[keephub] Uploading final model files") for line in lines), lines


def test_hub_unreachable_for_30s_during_training_loses_nothing(hub: Server, trainer_user) -> None:
    name, api = trainer_user
    repo = f"{name}/through-an-outage"
    api.create_repo(repo)
    with JobSocketProxy(hub) as proxy:
        job = submit(api, name, repo, env={"SLEEP_PER_STEP": "0.2"})
        lines = []
        for line in api.fetch_job_logs(job_id=job, namespace=name, follow=True):
            lines.append(line)
            if line.startswith("step 5 "):
                proxy.outage(30)
        info = api.wait_for_job(job_id=job, namespace=name, timeout=120)
    assert info.status.stage == "COMPLETED", lines
    assert any("failed" in line and "retrying" in line for line in lines), "pushes were retried during the outage"
    files = set(api.list_repo_files(repo))
    assert {"checkpoint-10/trainer_state.json", "checkpoint-20/trainer_state.json",
            "checkpoint-30/trainer_state.json", "model.safetensors"} <= files
    record = record_of(api, name, job)["durability"]
    assert record["verdict"]["status"] == "saved" and all(p["verified"] for p in record["pushes"])
    # The three checkpoints saved during the outage waited in the queue and went up in one commit when the
    # hub came back, each still recorded (and verified) on its own.
    commits = {p["label"]: p["commit"] for p in record["pushes"]}
    assert commits["checkpoint-10"] == commits["checkpoint-20"] == commits["checkpoint-30"], record["pushes"]
    assert any(line.startswith("[keephub] Pushing checkpoint-10, checkpoint-20, checkpoint-30 to") for line in lines)


def test_a_kill_9_of_keephub_mid_training_loses_nothing(hub: Server, trainer_user) -> None:
    """keephub dies (SIGKILL) while a training job runs on this pass's executor and comes back 3 s later: the
    job trains on, its log has every step once, and its results are saved."""
    name, api = trainer_user
    repo = f"{name}/through-a-crash"
    api.create_repo(repo)
    job = submit(api, name, repo, env={"SLEEP_PER_STEP": "0.2"})
    for line in api.fetch_job_logs(job_id=job, namespace=name, follow=True):
        if line.startswith("step 5 "):
            break
    hub.kill()
    time.sleep(3)
    hub.start()
    info = api.wait_for_job(job_id=job, namespace=name, timeout=180)
    lines = list(api.fetch_job_logs(job_id=job, namespace=name))
    assert info.status.stage == "COMPLETED", lines
    steps = [int(line.split()[1]) for line in lines if line.startswith("step ")]
    assert steps == list(range(1, 31)), steps
    record = record_of(api, name, job)
    assert [a["outcome"] for a in record["attempts"]] == ["COMPLETED"]
    assert record["durability"]["verdict"]["status"] == "saved", record["durability"]
    assert {"checkpoint-30/trainer_state.json", "model.safetensors"} <= set(api.list_repo_files(repo))


def test_a_job_cannot_forge_its_durability_record(trainer_user) -> None:
    name, api = trainer_user
    repo = f"{name}/forged"
    forged = ('{"kind": "push", "label": "checkpoint-99", "revision": "main", "commit": "' + "0" * 40
              + '", "files": ["x"], "bytes": 1, "verified": true}')
    job = api.run_job(image=UV_IMAGE, command=["python", "-c", f"print('keephub-durability ' + {forged!r})"],
                      secrets={"HF_TOKEN": "$HF_TOKEN"}, namespace=name,
                      labels={"keephub.repo": repo, "keephub.output-dir": "out"})
    api.wait_for_job(job_id=job.id, namespace=name, timeout=60)
    record = record_of(api, name, job.id)["durability"]
    claimed = [p for p in record["pushes"] if p["label"] == "checkpoint-99"]
    assert claimed == [], "what the script prints is log text, never a record (records come over the sidecar's channel)"
    assert record["verdict"]["status"] != "saved" or "checkpoint-99" not in record["verdict"]["message"]


MID_LINE = WAIT_ON_HUB + textwrap.dedent('''
    import json, os, sys
    sys.stdout.write("step 21 loss 6.5")  # a line begun and not ended while the sidecar speaks
    sys.stdout.flush()
    os.makedirs("out/checkpoint-10")
    with open("out/checkpoint-10/trainer_state.json", "w") as state:
        json.dump({"global_step": 10}, state)
    wait_on_hub("checkpoint-10/trainer_state.json", 60, 0.1)
    print(" and its end")
''')


def test_the_sidecar_never_glues_its_lines_to_the_scripts_unfinished_line(trainer_user) -> None:
    name, api = trainer_user
    repo = f"{name}/mid-line"
    job = guarded_job(api, name, repo, MID_LINE)
    info = api.wait_for_job(job_id=job.id, namespace=name, timeout=90)
    lines = list(api.fetch_job_logs(job_id=job.id, namespace=name))
    assert info.status.stage == "COMPLETED", lines
    assert api.file_exists(repo, "checkpoint-10/trainer_state.json"), lines
    assert "step 21 loss 6.5" in lines, lines
    assert any(line.startswith(f"[keephub] Pushing checkpoint-10 to {repo}@main") for line in lines), lines
    assert all(line.startswith("[keephub]") for line in lines if "[keephub]" in line), lines
