"""Job volumes end to end, through the real clients: `run_uv_job` and `hf jobs uv run` with a local script (the
client uploads it to the `jobs-artifacts` bucket and mounts that at /data), user bucket volumes that keep what a
job writes (even when its timeout kills it), repo volumes mounted read-only from the node's cache, and the
durability record of each sync. Runs on the local executor and on Slurm (KEEPHUB_TEST_EXECUTOR=slurm)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import JOB_XET_ENV, SESSION_DIR, Server, free_port
from huggingface_hub import HfApi, Volume
from huggingface_hub.errors import HfHubHTTPError

import keephub.demo
from keephub.agent import sandbox

UV_IMAGE = "ghcr.io/astral-sh/uv:python3.12-bookworm"
HF_CLI = str(Path(sys.executable).with_name("hf"))


@pytest.fixture(scope="module")
def hub() -> Iterator[Server]:
    srv = Server(data_dir=SESSION_DIR / f"volumes-{uuid.uuid4().hex[:6]}", port=free_port(),
                 env={"KEEPHUB_JOB_GRACE_SECONDS": "3", "KEEPHUB_JOB_CPUS": "2", "KEEPHUB_JOB_MEMORY_GB": "1"})
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def user(hub: Server) -> tuple[str, HfApi, str]:
    name, token = hub.user()
    return name, HfApi(endpoint=hub.url, token=token), token


def finished(api: HfApi, job_id: str) -> tuple[dict, list[str]]:
    """The job's record as the Jobs API returns it (with its durability block) once it has ended, and its log."""
    lines = list(api.fetch_job_logs(job_id=job_id, follow=True))
    api.wait_for_job(job_id=job_id, timeout=120)
    record = httpx.get(f"{api.endpoint}/api/jobs/{api.whoami()['name']}/{job_id}",
                       headers={"authorization": f"Bearer {api.token}"}, timeout=30).json()
    return record, lines


def bucket_files(api: HfApi, bucket: str, prefix: str) -> dict[str, int]:
    return {f.path: f.size for f in api.list_bucket_tree(bucket, prefix, recursive=True)}


def test_run_uv_job_runs_a_local_script_and_keeps_what_it_writes_in_data(user, tmp_path: Path) -> None:
    name, api, _ = user
    script = tmp_path / "local_train.py"
    script.write_text(textwrap.dedent("""
        import os, pathlib
        print("training from", os.path.abspath(__file__), "| token in env:", "HF_TOKEN" in os.environ)
        out = pathlib.Path("/data/out")
        out.mkdir()
        (out / "weights.bin").write_bytes(bytes(range(256)) * 400)
        (out / "metrics.json").write_text('{"loss": 0.1}')
    """))
    job = api.run_uv_job(str(script))
    record, lines = finished(api, job.id)
    assert "training from /data/local_train.py | token in env: False" in lines, lines
    assert record["status"]["stage"] == "COMPLETED", record["status"]
    (volume,) = record["volumes"]
    artifacts, folder = f"{name}/jobs-artifacts", volume["path"]
    assert (volume["source"], volume["mountPath"], volume["readOnly"]) == (artifacts, "/data", False)
    assert bucket_files(api, artifacts, folder) == {
        f"{folder}/local_train.py": len(script.read_bytes()), f"{folder}/out/weights.bin": 102_400,
        f"{folder}/out/metrics.json": 13}
    api.download_bucket_files(artifacts, [(f"{folder}/out/weights.bin", str(tmp_path / "back.bin"))])
    assert (tmp_path / "back.bin").read_bytes() == bytes(range(256)) * 400

    durability = record["durability"]
    assert durability["targetRepo"] is None and durability["verdict"]["status"] == "saved", durability
    (synced,) = durability["buckets"]
    assert synced["saved"] and synced["mountPath"] == "/data" and synced["files"] >= 2 and synced["bytes"] >= 102_413
    assert any("volume /data: saved to bucket" in line and "verified" in line for line in lines), lines
    # The job's token mounted the volume; it writes only that bucket and is revoked with the job.
    assert record["token"]["scopes"] == [f"bucket:{artifacts}"] and record["token"]["state"] == "revoked"
    page = httpx.get(job.url, headers={"authorization": f"Bearer {api.token}"}, timeout=30).text
    # The job page's durability table: the volume's row, saved to the bucket, and the log's verified final push.
    assert "<td>/data</td>" in page and f'bucket <a href="/buckets/{artifacts}">' in page and "✓ saved" in page
    assert "final push" in page and "verified" in page


def test_preflight_accepts_an_output_dir_in_a_read_write_bucket_volume(user, tmp_path: Path) -> None:
    _, api, _ = user
    script = tmp_path / "train.py"
    config = 'TrainingArguments(output_dir="{}", save_strategy="steps", save_steps=10)'
    header = "from transformers import TrainingArguments\n"
    script.write_text(f"{header}print('kept in', {config.format('/data/out')}.output_dir)\n")
    job = api.run_uv_job(str(script))
    record, lines = finished(api, job.id)
    assert "kept in /data/out" in lines and record["status"]["stage"] == "COMPLETED", lines
    assert any(line.startswith("✅ push_to_hub: not needed: output_dir /data/out lies in the read-write volume")
               for line in lines), lines
    script.write_text(f"{header}{config.format('out')}\n")
    with pytest.raises(HfHubHTTPError) as refused:  # the same script writing to its workspace loses everything
        api.run_uv_job(str(script))
    assert refused.value.response.status_code == 422 and "push_to_hub" in str(refused.value)


def test_hf_jobs_uv_run_with_a_local_script_prints_its_output(hub: Server, user, tmp_path: Path) -> None:
    name, _, token = user
    script = tmp_path / "train.py"
    script.write_text("import sys\nprint('hello from', sys.argv[1:])\n")
    cli = subprocess.run([HF_CLI, "jobs", "uv", "run", "--with", "trl", str(script), "--epochs", "2"],
                         capture_output=True, text=True, timeout=180, check=False,
                         env={**os.environ, "HF_TOKEN": token, "HF_ENDPOINT": hub.url})
    output = cli.stdout + cli.stderr
    assert cli.returncode == 0, output
    assert f"saved in this bucket: {hub.url}/buckets/{name}/jobs-artifacts" in output
    assert "hello from ['--epochs', '2']" in output


@pytest.mark.training
def test_the_reference_production_example_as_a_local_script_ends_saved(user, tmp_path: Path) -> None:
    """`run_uv_job("production_train.py")`: preflight reads the script from the jobs-artifacts bucket, so keephub
    guards its repo as for a script sent by URL or inline."""
    from keephub.demo.tiny import build_tiny_base, write_chat_dataset_jsonl

    name, api, _ = user
    api.create_repo(f"{name}/tiny-qwen2")
    api.upload_folder(folder_path=build_tiny_base(tmp_path / "tiny-qwen2"), repo_id=f"{name}/tiny-qwen2")
    data = write_chat_dataset_jsonl(tmp_path / "capybara-tiny" / "train.jsonl", n=200)
    api.create_repo(f"{name}/capybara-tiny", repo_type="dataset")
    api.upload_folder(folder_path=data.parent, repo_id=f"{name}/capybara-tiny", repo_type="dataset")
    script = tmp_path / "production_train.py"
    script.write_bytes(Path(keephub.demo.__file__).with_name("production_train.py").read_bytes())
    job = api.run_uv_job(str(script), flavor="cpu-upgrade", timeout="2h", secrets={"HF_TOKEN": "$HF_TOKEN"},
                         env={"KEEPHUB_DEMO_NAMESPACE": name, **JOB_XET_ENV})
    record, lines = finished(api, job.id)
    assert record["status"]["stage"] == "COMPLETED" and "===== keephub preflight =====" in lines, lines[-20:]
    durability = record["durability"]
    assert durability["targetRepo"] == f"{name}/qwen-capybara-sft", durability
    assert durability["verdict"]["status"] == "saved" and durability["buckets"][0]["saved"], durability


def test_bucket_and_repo_volumes_mount_read_write_and_read_only(user, tmp_path: Path) -> None:
    name, api, _ = user
    bucket = f"{name}/runs"
    api.create_bucket(bucket, private=True)
    api.batch_bucket_files(bucket, add=[(b"resume from here\n", "run-1/state.txt"), (b"other run", "run-2/x")])
    repo = f"{name}/base-model"
    api.create_repo(repo, private=True)
    api.upload_file(path_or_fileobj=b'{"hidden": 8}', path_in_repo="config.json", repo_id=repo)
    code = textwrap.dedent("""
        import os, pathlib
        print("state:", pathlib.Path("/out/state.txt").read_text().strip())
        print("config:", pathlib.Path("/models/base/config.json").read_text())
        try:
            pathlib.Path("/models/base/config.json").write_text("changed")
        except OSError as exc:
            print("repo volume writable: False", exc.errno)
        pathlib.Path("/out/state.txt").unlink()
        pathlib.Path("/out/ckpt").mkdir()
        pathlib.Path("/out/ckpt/model.bin").write_bytes(b"w" * 5000)
        os.symlink("/etc/passwd", "/out/leak")
    """)
    volumes = [Volume(type="bucket", source=bucket, mount_path="/out", path="run-1"),
               Volume(type="model", source=repo, mount_path="/models/base")]
    job = api.run_job(image=UV_IMAGE, command=["python", "-c", code], volumes=volumes)
    record, lines = finished(api, job.id)
    assert record["status"]["stage"] == "COMPLETED", (record["status"], lines)
    assert "state: resume from here" in lines and 'config: {"hidden": 8}' in lines
    assert any(line.startswith("repo volume writable: False") for line in lines), lines
    assert bucket_files(api, bucket, "run-1") == {"run-1/ckpt/model.bin": 5000}, "deleted, added; no symlink"
    assert bucket_files(api, bucket, "run-2") == {"run-2/x": 9}, "only the volume's folder is synced"

    # A second job mounts the same commit from the node's cache, without fetching it again.
    again = api.run_job(image=UV_IMAGE, command=["python", "-c", "print(open('/m/config.json').read())"],
                        volumes=[Volume(type="model", source=repo, mount_path="/m")])
    record, lines = finished(api, again.id)
    assert record["status"]["stage"] == "COMPLETED" and '{"hidden": 8}' in lines, lines
    assert any("volume /m: model" in line and "from this node's cache" in line for line in lines), lines
    assert record["durability"] is None, "no read-write bucket: nothing of the job's is kept"


def test_hf_jobs_run_mounts_a_dataset_from_the_cli(hub: Server, user) -> None:
    name, api, token = user
    api.create_repo(f"{name}/data", repo_type="dataset")
    api.upload_file(path_or_fileobj=b"a,b\n1,2\n", path_in_repo="train/part-0.csv", repo_id=f"{name}/data",
                    repo_type="dataset")
    code = "import os; print(sorted(os.listdir('/data')), open('/data/part-0.csv').read())"
    cli = subprocess.run([HF_CLI, "jobs", "run", "-v", f"hf://datasets/{name}/data/train:/data", "python:3.12",
                          "python", "-c", code],
                         capture_output=True, text=True, timeout=180, check=False,
                         env={**os.environ, "HF_TOKEN": token, "HF_ENDPOINT": hub.url})
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "['part-0.csv'] a,b" in cli.stdout


def test_a_job_killed_by_its_timeout_keeps_every_file_it_closed(user) -> None:
    name, api, _ = user
    bucket = f"{name}/ckpts"
    api.create_bucket(bucket)
    code = textwrap.dedent("""
        import os, signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # so the grace period ends in SIGKILL
        for step in range(10_000):
            with open(f"/ckpt/step-{step}.bin", "wb") as f:
                f.write(os.urandom(50_000))
            print("closed", step, flush=True)
            time.sleep(0.2)
    """)
    job = api.run_job(image=UV_IMAGE, command=["python", "-c", code], timeout=8,
                      volumes=[Volume(type="bucket", source=bucket, mount_path="/ckpt")])
    record, lines = finished(api, job.id)
    assert record["status"]["stage"] == "ERROR" and "timed out" in record["status"]["message"], record["status"]
    closed = max(int(line.split()[1]) for line in lines if line.startswith("closed "))
    held = bucket_files(api, bucket, "")
    assert closed > 5 and all(held.get(f"step-{step}.bin") == 50_000 for step in range(closed + 1)), (closed, held)
    (synced,) = record["durability"]["buckets"]
    assert synced["saved"] and record["durability"]["verdict"]["status"] == "saved", record["durability"]


def test_a_final_push_that_fails_keeps_the_files_on_the_node_and_says_not_saved(user) -> None:
    name, api, _ = user
    bucket = f"{name}/doomed"
    api.create_bucket(bucket)
    code = "import time\nopen('/out/result.txt', 'w').write('42')\nprint('written', flush=True)\ntime.sleep(4)"
    job = api.run_job(image=UV_IMAGE, command=["python", "-c", code],
                      volumes=[Volume(type="bucket", source=bucket, mount_path="/out")])
    for line in api.fetch_job_logs(job_id=job.id, follow=True):
        if line == "written":
            api.delete_bucket(bucket)  # the job's token can no longer push there
            break
    record, lines = finished(api, job.id)
    (kept,) = [line for line in lines if line.startswith("keephub: volume /out: NOT saved to bucket")]
    folder = Path(kept.rsplit(" in ", 1)[1])
    assert (folder / "result.txt").read_text() == "42", kept
    verdict = record["durability"]["verdict"]
    assert verdict["status"] == "not-saved" and f"the final push of /out to bucket {bucket} failed" in verdict["message"]


def test_a_volume_over_the_nodes_own_paths_ends_the_attempt_naming_it(user) -> None:
    """The server knows the system paths; only the node knows where its Python and keephub live."""
    name, api, _ = user
    bucket = f"{name}/scratch"
    api.create_bucket(bucket)
    venv = str(Path(sys.prefix).resolve())
    job = api.run_job(image=UV_IMAGE, command=["python", "-c", "print('never')"],
                      volumes=[Volume(type="bucket", source=bucket, mount_path=f"{venv}/lib")])
    record, lines = finished(api, job.id)
    assert record["status"]["stage"] == "ERROR", record["status"]
    message = record["status"]["message"]
    assert f"volume {venv}/lib (bucket {bucket})" in message and f"would cover {venv}" in message, message
    assert "never" not in lines


def test_a_hostile_mount_path_never_becomes_a_bwrap_option(tmp_path: Path) -> None:
    layout = sandbox.SandboxLayout.for_this_host(tmp_path / "data", 300000)

    def argv(*binds: sandbox.Bind) -> list[str]:
        spec = sandbox.SandboxSpec(workspace=tmp_path, uv_cache=tmp_path, command=["true"], env={}, gpus=[], cpus=[],
                                   limits=sandbox.Limits(2**30, 100, 2**30), user=None, routes=(), hosts=(),
                                   volumes=binds)
        return sandbox.bwrap_argv(layout, spec, {"hosts": 5, "uv": 6}, lambda path: path)

    for hostile in ["--bind", "-x", "data", "/data\n--bind", "/data\x00/x", "/data/../etc", "/a//b", "/a/-b",
                    "/data\\x", "/usr/local", "/run/keephub", "/", "/workspace", str(layout.readonly[-1]),
                    str(layout.readonly[0].parent), "/" + "x" * 2000]:
        with pytest.raises(ValueError):
            argv(sandbox.Bind(tmp_path, hostile, False))
    line = argv(sandbox.Bind(tmp_path / "a", "/data/my-run_1.x", False), sandbox.Bind(tmp_path / "b", "/m", True))
    for mount, source, option in (("/data/my-run_1.x", tmp_path / "a", "--bind"),
                                  ("/m", tmp_path / "b", "--ro-bind")):
        at = line.index(mount)  # a mount path is only ever the destination of its own bind
        assert line[at - 2:at] == [option, str(source)] and line.count(mount) == 1
    assert line[-4:] == [str(layout.python), "-I", "-S", str(sandbox.SANDBOX_INIT)]
