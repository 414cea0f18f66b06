"""What the job sandbox's network route costs: a job reaches keephub only through a loopback listener in its
own network namespace that forwards to keephub's Unix socket (keephub.agent.sandbox_init).

Figure: download of a --mib MiB file (`resolve`, streamed to nowhere with httpx) from inside a cpu-basic job
(one core, which the route's forwarding shares), through that route. Baseline: the same code run on the host
on the job's core, straight to keephub's TCP port, in the same run. Median of --repeats, alternating the
two. Target (ours; the issue names none): the route costs at most 25%.

Run:  .venv/bin/python benchmarks/sandbox_bench.py [--mib 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import textwrap

from report import Figure, add_work_dir_options, at_least, client_environment, print_table, work_dir

from keephub.devserver import LocalServer

TARGET_RATIO = 1.25
# The core keephub gives the first cpu-basic job (the first of its job cores).
JOB_CORE = {sorted(os.sched_getaffinity(0))[0]}
DOWNLOAD = textwrap.dedent("""
    import os, sys, time, httpx
    url = sys.argv[1]
    started = time.perf_counter()
    with httpx.stream("GET", url, headers={"authorization": "Bearer " + os.environ["HF_TOKEN"]},
                      follow_redirects=True, timeout=600) as response:
        response.raise_for_status()
        size = sum(len(chunk) for chunk in response.iter_raw(1 << 20))
    print(f"seconds {time.perf_counter() - started:.4f} bytes {size}", flush=True)
""")


def seconds_from(lines: list[str], mib: int) -> float:
    line = next(line for line in lines if line.startswith("seconds "))
    _, seconds, _, size = line.split()
    assert int(size) == mib << 20, f"downloaded {size} bytes, expected {mib << 20}"
    return float(seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=at_least(1), default=256, help="size of the file downloaded")
    parser.add_argument("--repeats", type=at_least(1), default=3)
    add_work_dir_options(parser)
    args = parser.parse_args()
    with work_dir(parser, args, "keephub-sandbox-bench-") as work:
        client_environment(work, xet=False)
        from huggingface_hub import HfApi

        server = LocalServer(data_dir=work / "data", env={"KEEPHUB_JOB_GRACE_SECONDS": "3"})
        server.start()
        try:
            name, token = server.user()
            api = HfApi(endpoint=server.url, token=token)
            repo = f"{name}/blob"
            api.create_repo(repo)
            payload = work / "blob.bin"
            with open(payload, "wb") as fh:
                for _ in range(args.mib):
                    fh.write(os.urandom(1 << 20))
            api.upload_file(path_or_fileobj=str(payload), path_in_repo="blob.bin", repo_id=repo)
            url = f"{server.url}/{repo}/resolve/main/blob.bin"
            inside, outside = [], []
            for _ in range(args.repeats):
                job = api.run_job(image="python:3.12", command=["python", "-c", DOWNLOAD, url],
                                  secrets={"HF_TOKEN": token})
                inside.append(seconds_from(list(api.fetch_job_logs(job_id=job.id, follow=True)), args.mib))
                host = subprocess.run([sys.executable, "-c", DOWNLOAD, url], capture_output=True, text=True,
                                      env={**os.environ, "HF_TOKEN": token}, check=True,
                                      preexec_fn=lambda: os.sched_setaffinity(0, JOB_CORE))
                outside.append(seconds_from(host.stdout.splitlines(), args.mib))
        finally:
            server.stop()
    measured, baseline = statistics.median(inside), statistics.median(outside)
    ratio = measured / baseline
    figure = Figure(f"download {args.mib} MiB from inside a job (median of {args.repeats})", measured, baseline,
                    "s", ratio, f"<= {TARGET_RATIO}x", ratio <= TARGET_RATIO)
    print_table([figure], {
        "measured": "through the sandbox's loopback listener and keephub's Unix socket",
        "baseline": "the same code on the host, on the job's core, to keephub's TCP port",
        "runs": f"inside {[round(s, 3) for s in inside]}, host {[round(s, 3) for s in outside]}",
    })
    return 0 if figure.passed else 1


if __name__ == "__main__":
    sys.exit(main())
