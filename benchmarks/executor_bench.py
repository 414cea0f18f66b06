"""Executor and agent figures, each against a baseline measured in the same run on the same machine.

1. Restart cost. --jobs CPU-bound jobs (a fixed amount of arithmetic, one core each, each printing a
   numbered line every 0.1 s and, at the end, the seconds its work took by its own clock). Baseline: the
   jobs undisturbed. Measured: the same jobs while keephub is killed with SIGKILL once they are training
   and started again --down seconds later. Figure: median training time disturbed / undisturbed
   (target <= 1.02x: the restart costs the jobs nothing), and the numbered lines missing or repeated in
   their logs (target 0).
2. Submit -> first log line through Slurm (only with --slurm: starts a throwaway one-machine cluster as
   the tests do; needs root and `scripts/setup.sh`). Baseline: the same `print` job through the local
   executor. Target <= 1.5x.

Run:  .venv/bin/python benchmarks/executor_bench.py [--jobs 4] [--slurm]
Exit status 1 if a figure fails.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import textwrap
import time
from pathlib import Path

from report import Figure, add_work_dir_options, at_least, print_table, work_dir

from keephub.devserver import LocalServer

RESTART_TARGET = 1.02
SLURM_TARGET = 1.5
UV_IMAGE = "ghcr.io/astral-sh/uv:python3.12-bookworm"
TRAIN = textwrap.dedent("""
    import threading, time
    done = threading.Event()
    def tick():
        n = 0
        while not done.is_set():
            print('line', n, flush=True)
            n += 1
            time.sleep(0.1)
    threading.Thread(target=tick, daemon=True).start()
    start = time.perf_counter()
    total = 0
    for i in range({work}):
        total += i * i % 7
    took = time.perf_counter() - start
    done.set()
    time.sleep(0.2)
    print('trained', repr(took), flush=True)
""")


def run_jobs(server: LocalServer, token: str, count: int, work: int, disturb: float | None
             ) -> tuple[dict[int, float], set[int], int]:
    """Run `count` jobs at once; with `disturb`, SIGKILL keephub once jobs are training, start it again
    `disturb` seconds later. Returns each job's own training time by submission order, which jobs were
    training when keephub died, and the numbered lines lost or repeated."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=server.url, token=token)
    jobs = [api.run_job(image=UV_IMAGE, command=["python", "-c", TRAIN.format(work=work)], flavor="cpu-basic")
            for _ in range(count)]
    crossed: set[int] = set()
    if disturb is not None:
        deadline = time.time() + 120
        while time.time() < deadline and not crossed:
            crossed = {i for i, j in enumerate(jobs) if api.inspect_job(job_id=j.id).status.stage == "RUNNING"}
            time.sleep(0.2)
        time.sleep(1.0)
        server.kill()
        time.sleep(disturb)
        server.start()
    times, damaged = {}, 0
    for index, job in enumerate(jobs):
        info = api.wait_for_job(job_id=job.id, timeout=900, poll_interval=0.5)
        if info.status.stage != "COMPLETED":
            raise SystemExit(f"job {job.id} ended {info.status.stage}: {info.status.message}")
        lines = list(api.fetch_job_logs(job_id=job.id))
        numbers = [int(line.split()[1]) for line in lines if line.startswith("line ")]
        damaged += len(numbers) - len(set(numbers)) + (max(numbers) + 1 - len(set(numbers)) if numbers else 0)
        times[index] = next(float(line.split()[1]) for line in lines if line.startswith("trained "))
    return times, crossed, damaged


def first_line_seconds(server: LocalServer, token: str, repeats: int) -> float:
    from huggingface_hub import HfApi

    api = HfApi(endpoint=server.url, token=token)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        job = api.run_job(image=UV_IMAGE, command=["python", "-c", "print('hi', flush=True)"])
        for line in api.fetch_job_logs(job_id=job.id, follow=True):
            if line == "hi":
                samples.append(time.perf_counter() - start)
                break
        api.wait_for_job(job_id=job.id, timeout=120)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=at_least(1), default=4)
    parser.add_argument("--work", type=at_least(1), default=30_000_000, help="loop iterations per job")
    parser.add_argument("--down", type=float, default=3.0, help="seconds keephub stays down")
    parser.add_argument("--repeats", type=at_least(1), default=5)
    parser.add_argument("--slurm", action="store_true", help="also measure figure 2 on a throwaway Slurm cluster")
    add_work_dir_options(parser)
    args = parser.parse_args()
    figures: list[Figure] = []
    with work_dir(parser, args, "keephub-executor-bench-") as work:
        os.environ["HF_HOME"] = str(work / "hf-home")
        # As deployed on a shared machine: jobs get all cores but one, which keephub keeps to (job_cpus).
        job_cpus = max(1, len(os.sched_getaffinity(0)) - 1)
        server = LocalServer(data_dir=work / "data", env={"KEEPHUB_JOB_CPUS": str(job_cpus)})
        server.start()
        try:
            _, token = server.user("bench")
            quiet, _, _ = run_jobs(server, token, args.jobs, args.work, None)
            disturbed, crossed, damaged = run_jobs(server, token, args.jobs, args.work, args.down)
            measured = statistics.mean(disturbed[i] for i in crossed)
            baseline = statistics.mean(quiet[i] for i in crossed)
            ratio = measured / baseline
            figures.append(Figure(f"training across a kill -9 + restart ({len(crossed)} jobs)", measured, baseline,
                                  "s", ratio, f"<= {RESTART_TARGET}x", ratio <= RESTART_TARGET))
            figures.append(Figure("log lines lost or repeated", damaged, 0, "lines", float(damaged),
                                  "0", damaged == 0, digits=0))
            local_first = first_line_seconds(server, token, args.repeats) if args.slurm else 0.0
        finally:
            server.stop()
        if args.slurm:
            figures += slurm_figures(work, args.repeats, local_first)
    print_table(figures, {
        "training": f"{args.jobs} jobs on {job_cpus} job core(s) (keephub keeps to the others); mean of the own "
                    f"clocks of the jobs training while keephub was killed and down {args.down} s, against the "
                    "same jobs of an undisturbed run",
        "log lines": "numbered lines missing or repeated in the disturbed jobs' logs",
        "Slurm": "a print job through keephub on a throwaway one-machine cluster (batch_sched_delay=0), against "
                 "the same job on the local executor; the floor row is a bare sbatch of the same print",
    })
    return 0 if all(f.passed is not False for f in figures) else 1


def slurm_figures(work: Path, repeats: int, local_first: float) -> list[Figure]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from slurm_cluster import SlurmCluster, keephub_slurm_env

    cluster = SlurmCluster(work / "slurm")
    cluster.start()
    try:
        floor = statistics.median(plain_sbatch_seconds(cluster, work) for _ in range(repeats))
        server = LocalServer(data_dir=work / "slurm-data", env=keephub_slurm_env(cluster))
        server.start()
        try:
            _, token = server.user("bench")
            measured = first_line_seconds(server, token, repeats)
        finally:
            server.stop()
    finally:
        cluster.stop()
    ratio = measured / local_first
    return [Figure("submit -> first log line, Slurm", measured, local_first, "s", ratio, f"<= {SLURM_TARGET}x",
                   ratio <= SLURM_TARGET),
            Figure("  Slurm's own floor: sbatch -> first line", floor, measured, "s", floor / measured, "", None)]


def plain_sbatch_seconds(cluster, work: Path) -> float:  # type: ignore[no-untyped-def]
    """sbatch of `python -c print(...)` writing to a file, timed to the line's arrival: what Slurm itself
    takes to start a batch job on this cluster, with no keephub in the way."""
    import subprocess

    out = work / f"plain-{time.monotonic_ns()}.out"
    start = time.perf_counter()
    subprocess.run(["sbatch", "--parsable", f"--output={out}", "--export=ALL", "--wrap",
                    f"{sys.executable} -c \"print('hi', flush=True)\""], env=cluster.env, check=True,
                   capture_output=True)
    while not (out.exists() and "hi" in out.read_text()):
        time.sleep(0.005)
    return time.perf_counter() - start


if __name__ == "__main__":
    sys.exit(main())
