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
import sys
from pathlib import Path

from keephub.devserver import LocalServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path(".keephub-demo"), help="where the demo keeps its data")
    parser.add_argument("--keep-serving", action="store_true", help="leave keephub running at the end")
    args = parser.parse_args(argv)

    workdir = args.workdir.resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    data_dir, inputs = workdir / "data", workdir / "inputs"
    inputs.mkdir(parents=True)
    server = LocalServer(data_dir=data_dir)
    url = server.url
    print(f"▶ starting keephub at {url} (data in {data_dir})", flush=True)
    server.start()
    try:
        _, token = server.user("alice")
        print("▶ created user alice and a write token", flush=True)

        # huggingface_hub reads this when first imported.
        os.environ.update(HF_HOME=str(workdir / "hf-home"))
        from huggingface_hub import HfApi

        from keephub.demo.tiny import build_tiny_base, write_chat_dataset_jsonl
        from keephub.jobs import client
        from keephub.jobs.describe import durability_summary

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
        print("\n" + durability_summary(json.loads(client.inspect_json(api, job.id, "alice"))))
        if not args.keep_serving:
            print(f"   keephub stops now; its data stays in {data_dir}. Serve it again with:\n"
                  f"   .venv/bin/keephub --data-dir {data_dir} serve --port {server.port}")
        else:
            print(f"\nkeephub keeps serving at {url}; press Ctrl-C to stop", flush=True)
            assert server.process is not None
            server.process.wait()
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
