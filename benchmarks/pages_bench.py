"""Web pages: how long each page takes for a repo of 10,000 files and a job of 100,000 log lines, and how soon a
line a job prints shows in the live log.

Starts its own keephub on 127.0.0.1, signs in with a password as a browser does (the session cookie), and times
each page with httpx over the loopback (so the figure is the server's time plus a local round trip: an upper
bound of the server time). Exit status 1 if a figure misses its target (page ≤ 100 ms median, live line ≤ 1 s).

    .venv/bin/python benchmarks/pages_bench.py [--files 10000] [--lines 100000] [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from keephub.devserver import LocalServer, keephub_cli

UV_IMAGE = "ghcr.io/astral-sh/uv:python3.12-bookworm"
PAGE_TARGET_MS = 100.0
LIVE_TARGET_S = 1.0
WARM_UP = 10
PASSWORD = "benchmark password"


def signed_in_client(server: LocalServer, name: str) -> httpx.Client:
    client = httpx.Client(base_url=server.url, timeout=120, headers={"accept": "text/html"})
    form_token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
    reply = client.post("/login", data={"csrf_token": form_token, "username": name, "password": PASSWORD})
    assert reply.status_code == 303, reply.text
    return client


def time_page(client: httpx.Client, path: str, repeats: int) -> tuple[float, float, float]:
    """Milliseconds of GET `path`: the first (cold) one, then the median and worst of `repeats` after WARM_UP
    more (the server's worker threads each open their own database connection, whose cache starts cold)."""
    started = time.perf_counter()
    assert client.get(path).status_code == 200, path
    cold = (time.perf_counter() - started) * 1000
    for _ in range(WARM_UP):
        client.get(path)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        reply = client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        assert reply.status_code == 200, (path, reply.status_code)
    return cold, statistics.median(times), max(times)


def big_repo(api, repo: str, files: int) -> None:  # type: ignore[no-untyped-def]
    from huggingface_hub import CommitOperationAdd

    operations = [CommitOperationAdd(f"file-{i}.txt", f"file {i}\n".encode()) for i in range(files)]
    operations += [CommitOperationAdd("src/deep/train.py", b"def train():\n    return 1\n" * 200),
                   CommitOperationAdd("README.md", b"# Big repo\n\n```\ncode\n```\n")]
    history = [{"step": s, "loss": 3.0 / s, "learning_rate": 1e-4} for s in range(1, 2001)]
    operations += [CommitOperationAdd(f"checkpoint-{s}/trainer_state.json",
                                      json.dumps({"log_history": history[:s]}).encode()) for s in (1000, 2000)]
    api.create_commit(repo, operations=operations, commit_message="10,000 files")


def pull_request(api, repo: str, changed: int) -> int:  # type: ignore[no-untyped-def]
    """A pull request changing `changed` of the repo's files; its number."""
    from huggingface_hub import CommitOperationAdd

    operations = [CommitOperationAdd(f"file-{i}.txt", f"file {i}, changed\n".encode()) for i in range(changed)]
    commit = api.create_commit(repo, operations=operations, commit_message="change some files", create_pr=True)
    return commit.pr_num


def live_latency(server: LocalServer, client: httpx.Client, api, name: str) -> list[float]:  # type: ignore[no-untyped-def]
    """Seconds from a job printing a line (its time.time() in the line) to the line arriving on the page's
    event stream."""
    code = "import time\nfor i in range(40):\n    print(f'at {time.time():.6f}', flush=True)\n    time.sleep(0.25)\n"
    job = api.run_job(image=UV_IMAGE, command=["python", "-c", code], namespace=name)
    delays = []
    with client.stream("GET", f"/jobs/{name}/{job.id}/events?after=0.0", timeout=120) as events:
        for line in events.iter_lines():
            if line.startswith("data: ") and '"at ' in line:
                printed = float(json.loads(line[6:])["data"].split()[1])
                delays.append(time.time() - printed)
            if line.startswith("event: end"):
                break
    return delays


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--tmp", default="/tmp")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pages-bench-", dir=args.tmp))
    server = LocalServer(data_dir=work / "data", env={"HF_HUB_DISABLE_XET": "1"})
    server.start()
    try:
        from huggingface_hub import HfApi

        name, token = server.user()
        keephub_cli(server.data_dir, "user", "passwd", name, stdin=PASSWORD + "\n")
        api = HfApi(endpoint=server.url, token=token)
        repo = f"{name}/big"
        api.create_repo(repo)
        big_repo(api, repo, args.files)
        code = (f"import sys\nsys.stdout.write(''.join(f'line {{i:06d}} loss 0.{{i}} lr 1e-4 epoch 1\\n' "
                f"for i in range({args.lines})))")
        job = api.run_job(image=UV_IMAGE, command=["python", "-c", code], namespace=name)
        assert api.wait_for_job(job_id=job.id, namespace=name, timeout=300).status.stage == "COMPLETED"
        head = api.list_repo_commits(repo)[0].commit_id
        changed = max(1, args.files // 10)
        pull_request_number = pull_request(api, repo, changed)
        client = signed_in_client(server, name)
        pages = {
            f"repo page ({args.files:,} files in one folder)": f"/{repo}",
            "nested folder": f"/{repo}/tree/main/src/deep",
            "file (highlighted)": f"/{repo}/blob/main/src/deep/train.py",
            "history": f"/{repo}/commits/main",
            f"commit page ({args.files:,} changed files)": f"/{repo}/commit/{head}",
            "training curve (2,000 steps, SVG)": f"/{repo}/curves/main/loss.svg",
            f"pull request page ({changed:,} changed files)": f"/{repo}/discussions/{pull_request_number}",
            f"job page ({args.lines:,} log lines)": f"/jobs/{name}/{job.id}",
            "job list": f"/jobs/{name}",
            "home": "/",
            "token settings": "/settings/tokens",
        }
        failed = False
        print(f"{'page':48} {'first ms':>9} {'median ms':>10} {'max ms':>8}")
        for label, path in pages.items():
            cold, median, worst = time_page(client, path, args.repeats)
            verdict = "ok" if median <= PAGE_TARGET_MS else "SLOW"
            failed |= median > PAGE_TARGET_MS
            print(f"{label:48} {cold:9.1f} {median:10.1f} {worst:8.1f}  {verdict}")
        delays = live_latency(server, client, api, name)
        worst_delay = max(delays)
        failed |= worst_delay > LIVE_TARGET_S
        print(f"live log: {len(delays)} lines, delay median {statistics.median(delays):.3f} s, "
              f"max {worst_delay:.3f} s  {'ok' if worst_delay <= LIVE_TARGET_S else 'SLOW'}")
        return 1 if failed else 0
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
