"""The client side of peers_mlflow.py: one operation of one client, timed inside a child process.

Each side runs in its own interpreter and virtualenv (huggingface_hub in keephub's, mlflow in the benchmark's
MLflow virtualenv, never both in one), so this file imports only the standard library at the top and the
client it drives inside each command. The timed window holds the operation alone: interpreter start, imports
and setup (creating the repo or the run) are outside it on both sides. The last line printed is JSON:
`seconds` (one wall time per item), `cpu` (this process's CPU seconds in the timed window, its threads
included) and whatever the command returns (a run id).

    python peers_driver.py hf-upload ENDPOINT TOKEN REPO FILE=PATH_IN_REPO...
    python peers_driver.py hf-download ENDPOINT TOKEN REPO FILENAME CACHE_DIR [REVISION]
    python peers_driver.py hf-xet-sink SINK_URL FILE=PATH_IN_REPO...
    python peers_driver.py hf-lfs-sink SINK_URL FILE=PATH_IN_REPO...
    python peers_driver.py mlflow-upload TRACKING_URI FILE=ARTIFACT_DIR...
    python peers_driver.py mlflow-download TRACKING_URI RUN_ID ARTIFACT_PATH DEST_DIR
    python peers_driver.py mlflow-small-setup TRACKING_URI SOURCE_DIR MODEL_NAME
"""

from __future__ import annotations

import json
import sys
import time


def pairs(items: list[str]) -> list[tuple[str, str]]:
    """FILE=DESTINATION arguments as (file, destination) pairs."""
    return [tuple(item.split("=", 1)) for item in items]  # type: ignore[misc]


def timed_each(steps: list) -> dict:  # type: ignore[type-arg]
    """Run each zero-argument step in turn; wall seconds of each, and the CPU time of all of them."""
    seconds = []
    cpu_start = time.process_time()
    for step in steps:
        started = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - started)
    return {"seconds": seconds, "cpu": time.process_time() - cpu_start}


def hf_upload(endpoint: str, token: str, repo: str, *items: str) -> dict:
    """Create `repo`, then `upload_file` each file to its path, one commit each (Xet or not: the caller's
    HF_HUB_DISABLE_XET decides, as it does for any huggingface_hub user)."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    api.create_repo(repo)
    return timed_each([
        lambda source=source, target=target: api.upload_file(path_or_fileobj=source, path_in_repo=target,
                                                             repo_id=repo, commit_message=f"save {target}")
        for source, target in pairs(list(items))
    ])


def hf_xet_sink(sink_url: str, *items: str) -> dict:
    """hf_xet's part of `hf-upload` alone, each file in its own upload session as `upload_file` makes it (the
    very function it calls), against xet_sink.py: the client's own ceiling. The Hub calls around it (preupload,
    commit) are left out: they cost milliseconds."""
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub._commit_api import _upload_xet_files
    from huggingface_hub.utils import build_hf_headers

    headers = build_hf_headers(token="sink")
    return timed_each([
        lambda source=source, target=target: _upload_xet_files(
            additions=[CommitOperationAdd(path_in_repo=target, path_or_fileobj=source)], repo_type="model",
            repo_id="sink/ceiling", headers=headers, endpoint=sink_url, revision="main", create_pr=False)
        for source, target in pairs(list(items))
    ])


def hf_lfs_sink(sink_url: str, *items: str) -> dict:
    """The git-lfs part of `hf-upload` with `HF_HUB_DISABLE_XET=1`, alone, against xet_sink.py: the file's
    sha256 (what the LFS batch call names it by), then its basic-transfer PUT through huggingface_hub's own
    function. The calls around it (preupload, the batch, verify, commit) are left out: they cost milliseconds."""
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub.lfs import _upload_single_part

    def upload(source: str, target: str) -> None:
        operation = CommitOperationAdd(path_in_repo=target, path_or_fileobj=source)
        _upload_single_part(operation, f"{sink_url}/lfs/{operation.upload_info.sha256.hex()}")

    return timed_each([lambda source=source, target=target: upload(source, target)
                       for source, target in pairs(list(items))])


def hf_download(endpoint: str, token: str, repo: str, filename: str, cache_dir: str, revision: str = "main") -> dict:
    from huggingface_hub import hf_hub_download

    return timed_each([lambda: hf_hub_download(repo, filename, revision=revision, cache_dir=cache_dir, token=token,
                                               endpoint=endpoint)])


def mlflow_upload(tracking_uri: str, *items: str) -> dict:
    """Create a run in the default experiment, then `log_artifact` each file into its artifact directory."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    run_id = client.create_run("0").info.run_id
    result = timed_each([
        lambda source=source, target=target: client.log_artifact(run_id, source, artifact_path=target)
        for source, target in pairs(list(items))
    ])
    client.set_terminated(run_id)
    return result | {"run_id": run_id}


def mlflow_download(tracking_uri: str, run_id: str, artifact_path: str, dest_dir: str) -> dict:
    import mlflow.artifacts

    return timed_each([lambda: mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path=artifact_path, dst_path=dest_dir, tracking_uri=tracking_uri)])


def mlflow_small_setup(tracking_uri: str, source_dir: str, model_name: str) -> dict:
    """What the small calls read: a run whose `folder` holds the files of `source_dir`, and a registered
    model with one version made from that run."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    run_id = client.create_run("0").info.run_id
    client.log_artifacts(run_id, source_dir, artifact_path="folder")
    client.set_terminated(run_id)
    client.create_registered_model(model_name, description="peers_bench small calls")
    client.create_model_version(model_name, source=f"runs:/{run_id}/folder", run_id=run_id)
    return {"seconds": [], "cpu": 0.0, "run_id": run_id}


COMMANDS = {
    "hf-upload": hf_upload,
    "hf-download": hf_download,
    "hf-xet-sink": hf_xet_sink,
    "hf-lfs-sink": hf_lfs_sink,
    "mlflow-upload": mlflow_upload,
    "mlflow-download": mlflow_download,
    "mlflow-small-setup": mlflow_small_setup,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(f"usage: peers_driver.py {{{','.join(COMMANDS)}}} ARGS... (see the docstring)")
    print(json.dumps(COMMANDS[sys.argv[1]](*sys.argv[2:])))
