"""The README's run command: start an embedded keephub, train the reference's production example against it,
and show where the results are.

Everything is local: the base model and data are built on the spot, the hub is a keephub server on
127.0.0.1 with its data under `.keephub-demo/`, and nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _keephub(data_dir: Path, *args: str) -> str:
    return subprocess.run([sys.executable, "-m", "keephub.cli", "--data-dir", str(data_dir), *args],
                          check=True, capture_output=True, text=True).stdout.strip()


def _wait_ready(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + 30
    while time.time() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"keephub exited at start-up; its log:\n{log.read_text()}")
        try:
            httpx.get(f"{url}/api/models", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise SystemExit(f"keephub did not answer on {url} within 30 s; see {log}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path(".keephub-demo"), help="where the demo keeps its data")
    parser.add_argument("--keep-serving", action="store_true", help="leave keephub running at the end")
    args = parser.parse_args(argv)

    workdir = args.workdir.resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    data_dir, inputs, run_dir = workdir / "data", workdir / "inputs", workdir / "run"
    for directory in (data_dir, inputs, run_dir):
        directory.mkdir(parents=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = workdir / "keephub.log"

    print(f"▶ starting keephub at {url} (data in {data_dir})", flush=True)
    server = subprocess.Popen(
        [sys.executable, "-m", "keephub.cli", "--data-dir", str(data_dir), "serve", "--port", str(port),
         "--log-level", "warning"],
        stdout=open(log, "wb"), stderr=subprocess.STDOUT,
    )
    try:
        _wait_ready(url, server, log)
        _keephub(data_dir, "user", "create", "alice")
        token = _keephub(data_dir, "token", "create", "alice", "--role", "write", "--name", "demo", "--quiet")
        print("▶ created user alice and a write token", flush=True)

        # huggingface_hub reads these when first imported; keephub does not speak Xet yet.
        os.environ.update(HF_HUB_DISABLE_XET="1", HF_HOME=str(workdir / "hf-home"))
        from huggingface_hub import HfApi

        from keephub.demo.tiny import build_tiny_base, write_chat_dataset_jsonl
        from keephub.jobs import client

        api = HfApi(endpoint=url, token=token)
        base = build_tiny_base(inputs / "tiny-qwen2")
        dataset = write_chat_dataset_jsonl(inputs / "capybara-tiny" / "train.jsonl", n=400)
        api.create_repo("alice/tiny-qwen2")
        api.upload_folder(folder_path=base, repo_id="alice/tiny-qwen2")
        api.create_repo("alice/capybara-tiny", repo_type="dataset")
        api.upload_folder(folder_path=dataset.parent, repo_id="alice/capybara-tiny", repo_type="dataset")
        print("▶ pushed a tiny base model (alice/tiny-qwen2) and chat data (alice/capybara-tiny) to keephub; "
              "nothing downloaded", flush=True)

        script = Path(__file__).with_name("production_train.py")
        run = client.UvRun(script=str(script), flavor="cpu-upgrade", timeout="30m", secrets=["HF_TOKEN"])
        job = client.submit_uv(api, run)
        print(f"▶ submitted {script.name} as job {job.id} (flavor cpu-upgrade, timeout 30m, "
              "secrets HF_TOKEN=$HF_TOKEN); its log:\n", flush=True)
        client.follow_logs(api, job.id, "alice")
        final = api.wait_for_job(job_id=job.id, namespace="alice", poll_interval=0.5)
        if final.status.stage != "COMPLETED":
            print(f"\n✗ job {job.id} ended {final.status.stage}: {final.status.message}", flush=True)
            return 1

        model_id = "alice/qwen-capybara-sft"
        files = {f.path: f.size for f in api.list_repo_tree(model_id, recursive=True) if hasattr(f, "size")}
        commits = api.list_repo_commits(model_id)
        print(f"\n✅ job {job.id} {final.status.stage}; results saved in keephub: {url}/{model_id}")
        print(f"   latest commit {commits[0].commit_id[:12]} \"{commits[0].title}\" ({len(commits)} commits)")
        for path, size in sorted(files.items()):
            print(f"   {size:>10,d}  {path}")
        print("\n" + client.durability_summary(json.loads(client.inspect_json(api, job.id, "alice"))))
        if not args.keep_serving:
            print(f"   keephub stops now; its data stays in {data_dir}. Serve it again with:\n"
                  f"   .venv/bin/keephub --data-dir {data_dir} serve --port {port}")
        else:
            print(f"\nkeephub keeps serving at {url}; press Ctrl-C to stop", flush=True)
            server.wait()
        return 0
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    sys.exit(main())
