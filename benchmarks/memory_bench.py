"""Server memory after many large transfers (issue 22, item 4): does RSS come back once the bytes have gone by?

The server is warmed up (a repo of each kind, one small file up and down through hf_xet and through git-lfs),
its VmRSS read as the idle figure; then `--rounds` fresh random files of `--size-mib` each go up and come back
down with the real client, alternating hf_xet and git-lfs (`HF_HUB_DISABLE_XET=1`), each transfer in a fresh
client process (huggingface_hub reads the Xet switch at import). After the last one and `--settle` seconds of
quiet, VmRSS again: it must be at most the idle figure + 50 MB. RSS after each round is printed, to show a trend.

Run:  .venv/bin/python benchmarks/memory_bench.py [--rounds 20] [--size-mib 512]   (10 GiB up and 10 GiB down)
Work dir under --tmp (default /tmp), removed unless --keep; exit status 1 if the figure fails.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from hub_bench import MIB, cpu_seconds, proc_status_kib, write_random_file
from report import Figure, add_work_dir_options, at_least, client_environment, print_table, work_dir

from keephub.devserver import LocalServer

GROWTH_LIMIT_MB = 50.0

TRANSFER = """
import sys
from pathlib import Path
from huggingface_hub import HfApi, hf_hub_download
api = HfApi()
repo, path, cache = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
api.upload_file(path_or_fileobj=str(path), path_in_repo=path.name, repo_id=repo)
got = Path(hf_hub_download(repo, path.name, cache_dir=cache))
if got.stat().st_size != path.stat().st_size:
    raise SystemExit(f"downloaded {got.stat().st_size} bytes, not {path.stat().st_size}")
"""


def transfer(server: LocalServer, token: str, repo: str, path: Path, work: Path, xet: bool) -> None:
    """`path` up to `repo` and back down into a fresh cache, in a client process of its own; the cache is removed."""
    cache = work / f"cache-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "HF_ENDPOINT": server.url, "HF_TOKEN": token}
    if xet:
        env.pop("HF_HUB_DISABLE_XET", None)
    else:
        env["HF_HUB_DISABLE_XET"] = "1"
    try:
        result = subprocess.run([sys.executable, "-c", TRANSFER, repo, str(path), str(cache)], env=env,
                                capture_output=True, text=True, timeout=900, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"transfer of {path.name} ({'xet' if xet else 'lfs'}) failed: {result.stderr[-3000:]}")
    finally:
        subprocess.run(["rm", "-rf", str(cache)], check=False)


def run(args: argparse.Namespace, work: Path) -> list[Figure]:
    client_environment(work, xet=True)
    server = LocalServer(data_dir=work / "data")
    server.start()
    try:
        assert server.process is not None
        pid = server.process.pid
        user, token = server.user(f"mem{uuid.uuid4().hex[:6]}")
        from huggingface_hub import HfApi

        api = HfApi(endpoint=server.url, token=token)
        repos = {True: f"{user}/via-xet", False: f"{user}/via-lfs"}
        for repo in repos.values():
            api.create_repo(repo)
        warm = work / "warm.bin"
        write_random_file(warm, 4 * MIB)
        for xet, repo in repos.items():
            transfer(server, token, repo, warm, work, xet)
        time.sleep(args.settle)
        idle_kib = proc_status_kib(pid, "VmRSS")
        print(f"server pid {pid}; idle RSS after warm-up: {idle_kib / 1024:.1f} MiB", flush=True)
        size = args.size_mib * MIB
        moved = 0
        started, cpu_before = time.perf_counter(), cpu_seconds(pid)
        for number in range(args.rounds):
            xet = number % 2 == 0
            path = work / f"round-{number:02d}.bin"
            write_random_file(path, size)
            start = time.perf_counter()
            transfer(server, token, repos[xet], path, work, xet)
            path.unlink()
            moved += size
            print(f"round {number + 1:2d} ({'xet' if xet else 'lfs'}): {time.perf_counter() - start:6.1f} s; "
                  f"{moved / 2**30:5.1f} GiB up and down so far; RSS {proc_status_kib(pid, 'VmRSS') / 1024:6.1f} MiB",
                  flush=True)
        print(f"all rounds: {time.perf_counter() - started:.0f} s, server CPU {cpu_seconds(pid) - cpu_before:.1f} s",
              flush=True)
        time.sleep(args.settle)
        after_kib = proc_status_kib(pid, "VmRSS")
        hwm_kib = proc_status_kib(pid, "VmHWM")
        print(f"RSS after {args.settle:.0f} s of quiet: {after_kib / 1024:.1f} MiB (VmHWM {hwm_kib / 1024:.1f} MiB)",
              flush=True)
    finally:
        server.stop()
    growth_mb = (after_kib - idle_kib) * 1024 / 1e6
    return [Figure(f"server RSS after {moved / 2**30:.0f} GiB up and down", after_kib * 1024 / 1e6,
                   idle_kib * 1024 / 1e6, "MB", after_kib / idle_kib, f"<= idle + {GROWTH_LIMIT_MB:.0f} MB",
                   growth_mb <= GROWTH_LIMIT_MB, digits=1)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=at_least(1), default=20, help="files moved up and down (default 20)")
    parser.add_argument("--size-mib", type=at_least(1), default=512, help="size of each file (default 512)")
    parser.add_argument("--settle", type=float, default=2.0, help="quiet seconds before each RSS reading")
    add_work_dir_options(parser)
    args = parser.parse_args()
    with work_dir(parser, args, "keephub-memory-bench-") as work:
        figures = run(args, work)
    print_table(figures, {
        "baseline": "the server's VmRSS after start-up and one small file up and down each way, before the rounds",
        "rounds": "fresh random files, alternately through hf_xet and git-lfs, each uploaded then downloaded",
    })
    return 0 if all(f.passed is not False for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
