"""Bucket figures (issue 15), each measured against a baseline taken in the same run on the same machine.

1. Bucket volume, last byte after the job: a "job" (a child process) writes --size-mib of checkpoints
   (--checkpoints files) into a directory that `keephub.buckets.volume_sync.BucketVolume.follow` keeps in
   step with a bucket (a push every --interval s, the final one when the job ends). Timed from the job's
   exit to the final push returning verified. Two shapes: "spread" (a checkpoint every --pause s, as
   training saves) and "at exit" (all checkpoints written elsewhere, then moved into the volume just before
   the job exits: nothing can be pushed early, the worst case). Baseline: a
   plain `HfApi.sync_bucket` of the same amount of fresh random files (no dedup with the above), after the
   job, timed from call to return; taken before and after the two shapes, the faster kept (the stricter
   comparison). Target: <= 1.2x.
2. `run_uv_job` with a local script, submit -> first log line, <= 1.5x of the same script by URL. The
   volume mount belongs to the job runner, still in progress, so this is a projection: what the client
   does before submitting (create_bucket(exist_ok) of {ns}/jobs-artifacts + batch_bucket_files of the
   script; median of --repeats) added to the by-URL figure (run_uv_job of the script's resolve URL to the
   first line of fetch_job_logs(follow=True); median of --repeats after one warm-up).
3. Diagnostics (no target): sync_bucket up and down against upload_folder / snapshot_download of the
   same files to a model repo, both through hf_xet.

Run:  .venv/bin/python benchmarks/buckets_bench.py [--size-mib 1024] [--checkpoints 4]
Work dir under --tmp (default /tmp), removed unless --keep. Exit status 1 if a figure fails.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from report import Figure, add_work_dir_options, at_least, client_environment, print_table, work_dir

from keephub.devserver import LocalServer

TAIL_TARGET = 1.2
UV_LOCAL_TARGET = 1.5
HI_SCRIPT = '# /// script\n# requires-python = ">=3.10"\n# dependencies = []\n# ///\nprint("hi")\n'
WRITER = """
import os, sys, time
folder, count, size, pause, staging = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
for step in range(count):
    time.sleep(pause)
    with open(os.path.join(staging or folder, f"checkpoint-{step}.bin"), "wb") as out:
        for _ in range(size // (16 << 20)):
            out.write(os.urandom(16 << 20))
        out.write(os.urandom(size % (16 << 20)))
for name in os.listdir(staging) if staging else []:
    os.rename(os.path.join(staging, name), os.path.join(folder, name))
"""


def write_files(folder: Path, count: int, size: int, pause: float, at_exit: bool = False) -> subprocess.Popen:
    """A child process writing `count` random files of `size` bytes into `folder`, `pause` s apart; `at_exit`:
    into a staging folder first, all moved into `folder` at the end."""
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(folder.name + "-staging") if at_exit else None
    if staging is not None:
        staging.mkdir()
    return subprocess.Popen([sys.executable, "-c", WRITER, str(folder), str(count), str(size), str(pause),
                             str(staging or "")])


def tail_seconds(api, bucket: str, folder: Path, args: argparse.Namespace, pause: float,  # type: ignore[no-untyped-def]
                 at_exit: bool) -> tuple[float, int]:
    """Seconds from the job's exit to the final verified push, and how many files the job-time pushes sent."""
    from keephub.buckets.volume_sync import BucketVolume

    volume = BucketVolume(api, bucket, folder.name, folder)
    folder.mkdir(parents=True)
    stop, reports = threading.Event(), []
    follower = threading.Thread(target=volume.follow, args=(stop, reports.append, args.interval))
    follower.start()
    job = write_files(folder, args.checkpoints, args.size_mib * 2**20 // args.checkpoints, pause, at_exit)
    job.wait()
    exited = time.perf_counter()
    stop.set()
    follower.join()
    tail = time.perf_counter() - exited
    final = reports[-1]
    if not (final.final and final.verified and final.error is None):
        raise RuntimeError(f"the final push was not verified: {final}")
    early = sum(r.files for r in reports[:-1])
    print(f"{folder.name}: {early} file(s) pushed while the job ran, {final.files} at the end "
          f"({final.bytes / 1e6:.0f} MB) in {tail:.2f} s")
    return tail, early


def plain_sync_seconds(api, bucket: str, folder: Path, args: argparse.Namespace) -> float:  # type: ignore[no-untyped-def]
    write_files(folder, args.checkpoints, args.size_mib * 2**20 // args.checkpoints, 0).wait()
    start = time.perf_counter()
    api.sync_bucket(str(folder), f"hf://buckets/{bucket}/{folder.name}", quiet=True)
    seconds = time.perf_counter() - start
    print(f"{folder.name}: sync_bucket of {args.size_mib} MiB in {seconds:.2f} s")
    return seconds


def figures_tail(api, bucket: str, work: Path, args: argparse.Namespace) -> list[Figure]:  # type: ignore[no-untyped-def]
    before = plain_sync_seconds(api, bucket, work / "baseline-1", args)
    spread, _ = tail_seconds(api, bucket, work / "spread", args, args.pause, at_exit=False)
    burst, _ = tail_seconds(api, bucket, work / "at-exit", args, 0.0, at_exit=True)
    after = plain_sync_seconds(api, bucket, work / "baseline-2", args)
    baseline = min(before, after)
    return [
        Figure(f"volume: last byte after the job, {args.pause:g} s between saves", spread, baseline, "s",
               spread / baseline, f"<= {TAIL_TARGET:g}x", spread / baseline <= TAIL_TARGET),
        Figure("volume: last byte after the job, all moved in at exit", burst, baseline, "s", burst / baseline,
               f"<= {TAIL_TARGET:g}x", burst / baseline <= TAIL_TARGET),
    ]


def first_log_line(api, namespace: str, script_url: str) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    job = api.run_uv_job(script_url, namespace=namespace)
    for line in api.fetch_job_logs(job_id=job.id, namespace=namespace, follow=True):
        if line != "hi":
            raise RuntimeError(f"job {job.id}: first log line {line!r}, not 'hi'")
        break
    return time.perf_counter() - start


def figure_uv_local(api, namespace: str, work: Path, server: LocalServer, args: argparse.Namespace) -> Figure:  # type: ignore[no-untyped-def]
    repo = f"{namespace}/scripts"
    api.create_repo(repo)
    script = work / "hi.py"
    script.write_text(HI_SCRIPT)
    api.upload_file(path_or_fileobj=str(script), path_in_repo="hi.py", repo_id=repo)
    script_url = f"{server.url}/{repo}/resolve/main/hi.py"
    first_log_line(api, namespace, script_url)
    by_url, upload = [], []
    for run in range(args.repeats):
        by_url.append(first_log_line(api, namespace, script_url))
        start = time.perf_counter()  # what run_uv_job does with a local file before it submits
        api.create_bucket(f"{namespace}/jobs-artifacts", exist_ok=True, private=True)
        api.batch_bucket_files(f"{namespace}/jobs-artifacts", add=[(script, f"run-{run}/hi.py")])
        upload.append(time.perf_counter() - start)
    baseline, extra = statistics.median(by_url), statistics.median(upload)
    print(f"by URL -> first line, s: {' '.join(f'{s:.2f}' for s in by_url)}; script to bucket, s: "
          f"{' '.join(f'{s:.2f}' for s in upload)}")
    projected = baseline + extra
    return Figure("uv run local script -> first log line (projected)", projected, baseline, "s",
                  projected / baseline, f"<= {UV_LOCAL_TARGET:g}x", projected / baseline <= UV_LOCAL_TARGET)


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
        figures = figures_tail(api, bucket, work, args)
        if not args.skip_jobs:
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
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between pushes while the job runs")
    parser.add_argument("--repeats", type=at_least(1), default=5, help="timed runs of figure 2")
    parser.add_argument("--skip-jobs", action="store_true", help="leave out figure 2 (it runs jobs)")
    add_work_dir_options(parser)
    args = parser.parse_args()
    with work_dir(parser, args, "keephub-buckets-bench-") as work:
        figures = run(args, work)
    print_table(figures, {
        "volume baselines": "plain sync_bucket of the same amount of fresh random data after the job; faster of "
                            "a run before and one after the two shapes",
        "uv run local script": "projected: run_uv_job by URL plus what the client does with a local script before "
                               "submitting (bucket create + upload); the mount itself waits on the job runner",
    })
    return 0 if all(f.passed is not False for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
