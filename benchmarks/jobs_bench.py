"""Jobs performance figures, each measured against a baseline taken in the same run on the same machine.

1. Submit -> first log line of a `print("hi")` uv job with a warm cache: `HfApi.run_uv_job` with the
   URL of a PEP 723 script hosted on this keephub (`{endpoint}/{repo}/resolve/main/hi.py`), timed
   from the call to the first line `fetch_job_logs(follow=True)` yields; median of --repeats runs
   after --warmup untimed ones. Baseline: the same script as a local subprocess (`python hi.py`),
   from launch to its first stdout line. Target: the absolute median <= 2 s.
   Each run is also split into stages from the server's own records (createdAt, the "Job started"
   log event, the "hi" log event), to show where the time goes when the figure fails.
2. --jobs tiny jobs submitted at once (from parallel threads) on a server with KEEPHUB_JOB_CPUS=2:
   each prints start/end timestamps around a 0.5 s sleep. All must end COMPLETED (none lost or
   stuck), at most 2 may overlap (computed from the printed timestamps), and the wall time from the
   first submit to the last completion is reported against the ideal jobs x 0.5 s / 2 cores.

Run:  .venv/bin/python benchmarks/jobs_bench.py [--repeats 5] [--jobs 20]
The data dir and server log live in a temporary directory under --tmp (default /tmp), removed at
the end unless --keep. Exit status 1 if a figure fails.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

from report import Figure, add_work_dir_options, print_table, work_dir

from keephub.devserver import LocalServer

FIRST_LINE_TARGET_S = 2.0
JOB_CPUS = 2
SLEEP_S = 0.5
# The issue asks only that all jobs complete within capacity; this bound on the overhead over the
# ideal (jobs x sleep / cores) is ours, so that a scheduler that dawdles between jobs shows up.
THROUGHPUT_TARGET_RATIO = 2.0
HI_SCRIPT = '# /// script\n# requires-python = ">=3.10"\n# dependencies = []\n# ///\nprint("hi")\n'
TINY_JOB = (
    "import time\n"
    "print('start', repr(time.time()), flush=True)\n"
    f"time.sleep({SLEEP_S})\n"
    "print('end', repr(time.time()), flush=True)\n"
)
UV_IMAGE = "ghcr.io/astral-sh/uv:python3.12-bookworm"


def epoch(iso: str) -> float:
    """Seconds since the epoch from the server's `2024-01-01T00:00:00.000Z` timestamps."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def raw_events(url: str, token: str, namespace: str, job_id: str) -> list[dict]:
    """A finished job's log events with their server timestamps (fetch_job_logs drops both these and the
    "Job started" event, which is what the stage breakdown needs)."""
    import httpx

    response = httpx.get(f"{url}/api/jobs/{namespace}/{job_id}/logs", headers={"Authorization": f"Bearer {token}"},
                         timeout=30)
    response.raise_for_status()
    return [json.loads(line[len("data: "):]) for line in response.text.splitlines() if line.startswith("data: {")]


def local_first_line(script: Path) -> float:
    """Seconds from launching `python script` to reading its first stdout line: the baseline for figure 1."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    elapsed = time.perf_counter() - start
    process.wait()
    if line.strip() != "hi":
        raise RuntimeError(f"local run printed {line!r}")
    return elapsed


def first_log_line(api, url: str, token: str, namespace: str, script_url: str) -> tuple[float, dict[str, float]]:  # type: ignore[no-untyped-def]
    """One timed uv job: seconds from run_uv_job to the first log line, and that time split into stages."""
    wall_start = time.time()
    start = time.perf_counter()
    job = api.run_uv_job(script_url, namespace=namespace)
    submitted = time.perf_counter()
    first = None
    for line in api.fetch_job_logs(job_id=job.id, namespace=namespace, follow=True):
        first = line
        break
    elapsed = time.perf_counter() - start
    if first != "hi":
        raise RuntimeError(f"job {job.id}: first log line was {first!r}, not 'hi'")
    info = api.wait_for_job(job_id=job.id, namespace=namespace, timeout=60, poll_interval=0.1)
    if info.status.stage != "COMPLETED":
        raise RuntimeError(f"job {job.id} ended {info.status.stage}: {info.status.message}")
    events = raw_events(url, token, namespace, job.id)
    started = next(epoch(e["timestamp"]) for e in events if e["data"].startswith("===== Job started"))
    hi = next(epoch(e["timestamp"]) for e in events if e["data"] == "hi")
    created = epoch(api.inspect_job(job_id=job.id, namespace=namespace).created_at.isoformat())
    stages = {
        "submit round trip": submitted - start,
        "created -> scheduler starts it": started - created,
        "start -> 'hi' logged (sandbox+shim+python)": hi - started,
        "'hi' logged -> client reads it": wall_start + elapsed - hi,
    }
    return elapsed, stages


def figure_first_line(args: argparse.Namespace, server: LocalServer, work: Path, namespace: str, token: str) -> Figure:
    from huggingface_hub import HfApi

    api = HfApi(endpoint=server.url, token=token)
    repo = f"{namespace}/scripts"
    api.create_repo(repo)
    script = work / "hi.py"
    script.write_text(HI_SCRIPT)
    api.upload_file(path_or_fileobj=str(script), path_in_repo="hi.py", repo_id=repo)
    script_url = f"{server.url}/{repo}/resolve/main/hi.py"

    for _ in range(args.warmup):
        first_log_line(api, server.url, token, namespace, script_url)
        local_first_line(script)
    remote, local, stage_runs = [], [], []
    for _ in range(args.repeats):  # interleaved, so machine noise hits both alike
        seconds, stages = first_log_line(api, server.url, token, namespace, script_url)
        remote.append(seconds)
        stage_runs.append(stages)
        local.append(local_first_line(script))
    measured, baseline = statistics.median(remote), statistics.median(local)
    print(f"submit -> first log line, s: {' '.join(f'{s:.2f}' for s in remote)}")
    print(f"local python hi.py -> first line, s: {' '.join(f'{s:.3f}' for s in local)}")
    print("stages (median over runs, s):")
    for stage in stage_runs[0]:
        print(f"  {stage:<44} {statistics.median(r[stage] for r in stage_runs):6.3f}")
    return Figure("uv job submit -> first log line", measured, baseline, "s", measured / baseline,
                  f"<= {FIRST_LINE_TARGET_S:g} s", measured <= FIRST_LINE_TARGET_S)


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant (an end at the same instant as a start does not overlap it)."""
    points = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda p: (p[0], p[1]))
    running = peak = 0
    for _, step in points:
        running += step
        peak = max(peak, running)
    return peak


def figures_burst(args: argparse.Namespace, server: LocalServer, namespace: str, token: str) -> list[Figure]:
    from huggingface_hub import HfApi

    api = HfApi(endpoint=server.url, token=token)

    def submit(_: int) -> str:
        return api.run_job(image=UV_IMAGE, command=["python", "-c", TINY_JOB], namespace=namespace).id

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        job_ids = list(pool.map(submit, range(args.jobs)))
    submitted = time.perf_counter() - start
    try:
        infos = api.wait_for_job(job_id=job_ids, namespace=namespace, timeout=args.burst_timeout, poll_interval=0.1)
    except TimeoutError:
        infos = [api.inspect_job(job_id=j, namespace=namespace) for j in job_ids]
    wall = time.perf_counter() - start
    completed = sum(1 for info in infos if info.status.stage == "COMPLETED")
    intervals = []
    for job_id in job_ids:
        # Raw events, not fetch_job_logs(follow=False): that one drops events logged after the response's
        # Date header + 1 s, and uvicorn's Date lags the clock by up to ~1.8 s, so it often misses the last
        # job's lines.
        lines = [event["data"] for event in raw_events(server.url, token, namespace, job_id)]
        marks = dict(line.split(" ", 1) for line in lines if line.startswith(("start ", "end ")))
        if "start" in marks and "end" in marks:
            intervals.append((float(marks["start"]), float(marks["end"])))
    peak = max_overlap(intervals)
    ideal = args.jobs * SLEEP_S / JOB_CPUS
    stages = sorted({info.status.stage for info in infos})
    print(f"burst: {args.jobs} submitted in {submitted:.2f} s, all ended after {wall:.2f} s; stages {stages}; "
          f"{len(intervals)} with both timestamps; peak overlap {peak}")
    return [
        Figure(f"{args.jobs} jobs COMPLETED", completed, args.jobs, "jobs", completed / args.jobs,
               f"= {args.jobs}", completed == args.jobs, digits=0),
        Figure(f"max concurrent ({JOB_CPUS} cores)", peak, JOB_CPUS, "jobs", peak / JOB_CPUS,
               f"<= {JOB_CPUS}", peak <= JOB_CPUS and len(intervals) == args.jobs, digits=0),
        Figure(f"{args.jobs} jobs wall time", wall, ideal, "s", wall / ideal,
               f"<= {THROUGHPUT_TARGET_RATIO:g}x", wall / ideal <= THROUGHPUT_TARGET_RATIO),
    ]


def run(args: argparse.Namespace, work: Path) -> list[Figure]:
    server = LocalServer(data_dir=work / "data", env={"KEEPHUB_JOB_CPUS": str(JOB_CPUS)})
    server.start()
    try:
        _, token = server.user("alice")
        figures = [figure_first_line(args, server, work, "alice", token)]
        figures += figures_burst(args, server, "alice", token)
    finally:
        server.stop()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed uv jobs for figure 1 (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed uv jobs first, to warm caches (default 1)")
    parser.add_argument("--jobs", type=int, default=20, help="tiny jobs submitted at once (default 20)")
    parser.add_argument("--burst-timeout", type=float, default=120.0,
                        help="seconds to wait for the burst before counting what is left as stuck (default 120)")
    add_work_dir_options(parser)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_DISABLE_EXPERIMENTAL_WARNING", "1")  # run_uv_job warns on every call
    with work_dir(parser, args, "keephub-jobs-bench-") as work:
        figures = run(args, work)
    print_table(figures, {
        "first-line baseline": "median of `python hi.py` run locally, launch to first stdout line; "
                               "the target is on the absolute median",
        "COMPLETED baseline": "jobs submitted",
        "concurrency baseline": f"KEEPHUB_JOB_CPUS={JOB_CPUS} (cpu-basic = 1 core); overlap from the jobs' own "
                                "printed start/end timestamps",
        "wall-time baseline": f"ideal: jobs x {SLEEP_S:g} s / {JOB_CPUS} cores; measured from the first submit to "
                              "the last job seen COMPLETED (0.1 s polling)",
    })
    return 0 if all(f.passed for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
