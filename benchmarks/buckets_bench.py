"""Bucket figures (issue 15), each measured against a baseline taken in the same run on the same machine.

1. Bucket volume, last byte after the job: a job writes --size-mib of checkpoints (--checkpoints files) into
   its read-write bucket volume at /data, which its agent pushes every few seconds and once more, verified,
   after the job's last process has gone. Timed from the script's exit (the time it prints last) to the
   agent's "saved to bucket" line in the job's log (same machine, same clock). Two shapes: "spread" (a
   checkpoint every --pause s, as training saves) and "at exit" (all checkpoints written in /dev/shm, then
   moved into the volume just before the script exits: nothing can be pushed early, the worst case; RAM as
   the staging place, so the disk sees the checkpoints written once, as in the baseline).
   Baseline: a plain `HfApi.sync_bucket` of the same amount of fresh random files (no dedup with the above),
   after the job, timed from call to return; taken before and after the two shapes, the faster kept (the
   stricter comparison). Target: <= 1.2x.
2. `run_uv_job` with a local script (the client uploads it to {ns}/jobs-artifacts, the job mounts that at
   /data), submit -> first log line, <= 1.5x of the same script by URL. Runs of the two alternate after one
   warm-up each; medians of --repeats.
3. Diagnostics (no target): sync_bucket up and down against upload_folder / snapshot_download of the
   same files to a model repo, both through hf_xet.

Run:  .venv/bin/python benchmarks/buckets_bench.py [--size-mib 1024] [--checkpoints 4]
Work dir under --tmp (default /tmp), removed unless --keep. Exit status 1 if a figure fails.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from report import Figure, add_work_dir_options, at_least, client_environment, print_table, work_dir

from keephub.devserver import LocalServer

TAIL_TARGET = 1.2
UV_LOCAL_TARGET = 1.5
IMAGE = "python:3.12"
HI_SCRIPT = '# /// script\n# requires-python = ">=3.10"\n# dependencies = []\n# ///\nprint("hi")\n'
WRITER = """
import os, shutil, sys, time
folder, count, size, pause, staging = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
if staging:
    os.makedirs(staging)
for step in range(count):
    time.sleep(pause)
    with open(os.path.join(staging or folder, f"checkpoint-{step}.bin"), "wb") as out:
        for _ in range(size // (16 << 20)):
            out.write(os.urandom(16 << 20))
        out.write(os.urandom(size % (16 << 20)))
for name in os.listdir(staging) if staging else []:
    shutil.move(os.path.join(staging, name), os.path.join(folder, name))
print("exit at", repr(time.time()), flush=True)
"""


def write_files(folder: Path, count: int, size: int, pause: float) -> subprocess.Popen:
    """A child process writing `count` random files of `size` bytes into `folder`, `pause` s apart."""
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-c", WRITER, str(folder), str(count), str(size), str(pause), ""],
                            stdout=subprocess.DEVNULL)


def tail_seconds(api, server: LocalServer, bucket: str, prefix: str, args: argparse.Namespace,  # type: ignore[no-untyped-def]
                 pause: float, at_exit: bool) -> float:
    """Seconds from the job script's exit to its agent's verified final push of the volume."""
    from huggingface_hub import Volume

    size = args.size_mib * 2**20 // args.checkpoints
    job = api.run_job(image=IMAGE, timeout="1h", volumes=[Volume(type="bucket", source=bucket, mount_path="/data",
                                                                  path=prefix)],
                      command=["python", "-c", WRITER, "/data", str(args.checkpoints), str(size), str(pause),
                               "/dev/shm/staging" if at_exit else ""])
    if api.wait_for_job(job_id=job.id, timeout=3600).status.stage != "COMPLETED":
        raise RuntimeError(f"job {job.id} did not complete: {api.inspect_job(job_id=job.id).status}")
    log = server.data_dir / "jobs" / "logs" / job.id / "attempt-01.jsonl"
    events = [json.loads(line) for line in log.read_text().splitlines()]
    exited = next(float(e["data"].split()[-1]) for e in events if e["data"].startswith("exit at "))
    saved = next(e for e in events if "volume /data: saved to bucket" in e["data"])
    tail = datetime.fromisoformat(saved["timestamp"]).timestamp() - exited
    print(f"{prefix}: {saved['data'].split(': ', 2)[2]}, {tail:.2f} s after the script exited")
    return tail


def plain_sync_seconds(api, bucket: str, folder: Path, args: argparse.Namespace) -> float:  # type: ignore[no-untyped-def]
    write_files(folder, args.checkpoints, args.size_mib * 2**20 // args.checkpoints, 0).wait()
    start = time.perf_counter()
    api.sync_bucket(str(folder), f"hf://buckets/{bucket}/{folder.name}", quiet=True)
    seconds = time.perf_counter() - start
    print(f"{folder.name}: sync_bucket of {args.size_mib} MiB in {seconds:.2f} s")
    return seconds


def figures_tail(api, server: LocalServer, bucket: str, work: Path, args: argparse.Namespace) -> list[Figure]:  # type: ignore[no-untyped-def]
    before = plain_sync_seconds(api, bucket, work / "baseline-1", args)
    spread = tail_seconds(api, server, bucket, "spread", args, args.pause, at_exit=False)
    burst = tail_seconds(api, server, bucket, "at-exit", args, 0.0, at_exit=True)
    after = plain_sync_seconds(api, bucket, work / "baseline-2", args)
    baseline = min(before, after)
    return [
        Figure(f"volume: last byte after the job, {args.pause:g} s between saves", spread, baseline, "s",
               spread / baseline, f"<= {TAIL_TARGET:g}x", spread / baseline <= TAIL_TARGET),
        Figure("volume: last byte after the job, all moved in at exit", burst, baseline, "s", burst / baseline,
               f"<= {TAIL_TARGET:g}x", burst / baseline <= TAIL_TARGET),
    ]


def first_log_line(api, namespace: str, script: str) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    job = api.run_uv_job(script, namespace=namespace)
    for line in api.fetch_job_logs(job_id=job.id, namespace=namespace, follow=True):
        if line == "hi":  # the script's first line (keephub's own lines, e.g. the volume's, come before it)
            break
        if not line.startswith("keephub: "):
            raise RuntimeError(f"job {job.id}: first line of the script {line!r}, not 'hi'")
    else:
        raise RuntimeError(f"job {job.id} printed no 'hi'")
    api.wait_for_job(job_id=job.id, namespace=namespace, timeout=120, poll_interval=0.2)  # a free core for the next
    return time.perf_counter() - start


def figure_uv_local(api, namespace: str, work: Path, server: LocalServer, args: argparse.Namespace) -> Figure:  # type: ignore[no-untyped-def]
    repo = f"{namespace}/scripts"
    api.create_repo(repo)
    script = work / "hi.py"
    script.write_text(HI_SCRIPT)
    api.upload_file(path_or_fileobj=str(script), path_in_repo="hi.py", repo_id=repo)
    script_url = f"{server.url}/{repo}/resolve/main/hi.py"
    first_log_line(api, namespace, script_url)
    first_log_line(api, namespace, str(script))
    by_url, local = [], []
    for _ in range(args.repeats):
        by_url.append(first_log_line(api, namespace, script_url))
        local.append(first_log_line(api, namespace, str(script)))
    baseline, measured = statistics.median(by_url), statistics.median(local)
    print(f"submit -> first line, s: by URL {' '.join(f'{s:.2f}' for s in by_url)}; local script "
          f"{' '.join(f'{s:.2f}' for s in local)}")
    return Figure("run_uv_job of a local script -> first log line", measured, baseline, "s",
                  measured / baseline, f"<= {UV_LOCAL_TARGET:g}x", measured / baseline <= UV_LOCAL_TARGET)


def timed(action) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def figures_against_repo(api, namespace: str, bucket: str, work: Path, args: argparse.Namespace) -> list[Figure]:  # type: ignore[no-untyped-def]
    """Two interleaved rounds of fresh random files each way, the faster of each kept (the machine is shared)."""
    ups: dict[str, list[float]] = {"repo": [], "bucket": []}
    downs: dict[str, list[float]] = {"repo": [], "bucket": []}
    size = args.size_mib * 2**20 // args.checkpoints
    for round_ in range(2):
        repo, prefix = f"{namespace}/compare-{round_}", f"compare-{round_}"
        api.create_repo(repo)
        write_files(work / repo, args.checkpoints, size, 0).wait()
        write_files(work / prefix, args.checkpoints, size, 0).wait()
        ups["repo"].append(timed(lambda: api.upload_folder(folder_path=str(work / repo), repo_id=repo)))
        ups["bucket"].append(timed(lambda: api.sync_bucket(str(work / prefix), f"hf://buckets/{bucket}/{prefix}",
                                                           quiet=True)))
        downs["repo"].append(timed(lambda: api.snapshot_download(repo, local_dir=str(work / f"down-{repo}"))))
        downs["bucket"].append(timed(lambda: api.sync_bucket(f"hf://buckets/{bucket}/{prefix}",
                                                             str(work / f"down-{prefix}"), quiet=True)))
    repo_up, bucket_up = min(ups["repo"]), min(ups["bucket"])
    repo_down, bucket_down = min(downs["repo"]), min(downs["bucket"])
    return [
        Figure("sync_bucket up (vs upload_folder to a repo)", bucket_up, repo_up, "s", bucket_up / repo_up, "—", None),
        Figure("sync_bucket down (vs snapshot_download)", bucket_down, repo_down, "s", bucket_down / repo_down, "—",
               None),
    ]


def run(args: argparse.Namespace, work: Path) -> list[Figure]:
    client_environment(work, xet=True)
    from huggingface_hub import HfApi

    server = LocalServer(data_dir=work / "data")
    server.start()
    try:
        name, token = server.user("alice")
        api = HfApi(endpoint=server.url, token=token)
        bucket = f"{name}/bench"
        api.create_bucket(bucket)
        figures = figures_tail(api, server, bucket, work, args)
        figures.append(figure_uv_local(api, name, work, server, args))
        figures += figures_against_repo(api, name, bucket, work, args)
    finally:
        server.stop()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=at_least(4), default=1024, help="checkpoint bytes per job (MiB)")
    parser.add_argument("--checkpoints", type=at_least(1), default=4, help="files the job writes")
    parser.add_argument("--pause", type=float, default=3.0, help="seconds between saves in the spread shape")
    parser.add_argument("--repeats", type=at_least(1), default=5, help="timed runs of each kind in figure 2")
    add_work_dir_options(parser)
    args = parser.parse_args()
    with work_dir(parser, args, "keephub-buckets-bench-") as work:
        figures = run(args, work)
    print_table(figures, {
        "volume baselines": "plain sync_bucket of the same amount of fresh random data after the job; faster of "
                            "a run before and one after the two shapes",
        "uv run local script": "run_uv_job of the same script by its resolve URL on this keephub (no bucket, no "
                               "volume), runs alternating",
    })
    return 0 if all(f.passed is not False for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
