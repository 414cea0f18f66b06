"""Storage figures for PostgreSQL + S3 (issue 18), each against a baseline measured in the same run.

It starts a throwaway PostgreSQL cluster and a SeaweedFS S3 server on 127.0.0.1 (the test suite's own
tests/postgres_cluster.py and tests/seaweedfs.py), and keephub servers on them.

1. Download through keephub without the bytes passing through it: `hf_hub_download` (git-lfs path,
   HF_HUB_DISABLE_XET=1) of a --size-mib file from keephub on S3, which answers with a redirect to a presigned
   URL, against the same client's download function (`huggingface_hub.file_download.http_get`) fetching the
   same object straight from a presigned URL made with boto3. Alternating runs, medians. Target >= 0.9x.
2. Server RSS while that file goes up (`upload_file`) and comes down through the S3 backend: peak VmRSS,
   sampled every 50 ms, and the kernel's high-water mark. Target < 300 MB.
3. Two servers vs one on the same PostgreSQL + S3: --clients client processes, each pushing small commits
   (`upload_file` of a few bytes) to a repo of its own for --seconds; client i talks to server i % servers.
   Throughput in commits/s and p99 latency. Target: throughput >= 1.6x, p99 not worse (<= 1.0x).
   Bounded by the machine's cores: the clients, PostgreSQL, SeaweedFS and the servers share them.

Run:  .venv/bin/python benchmarks/storage_bench.py [--size-mib 1024] [--clients 16] [--seconds 20]
Exit status 1 if a figure fails.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from hub_bench import RssSampler, cpu_seconds, mb_per_s, proc_status_kib, write_random_file  # noqa: E402
from postgres_cluster import PostgresCluster  # noqa: E402
from report import Figure, add_work_dir_options, at_least, client_environment, print_table, work_dir  # noqa: E402
from seaweedfs import SeaweedFS  # noqa: E402

from keephub.devserver import LocalServer  # noqa: E402

MIB = 1024 * 1024
DOWNLOAD_TARGET = 0.9
RSS_LIMIT_MB = 300.0
SCALE_TARGET = 1.6


def start_servers(count: int, postgres: PostgresCluster, store: SeaweedFS, work: Path, tag: str) -> list[LocalServer]:
    """`count` servers on one fresh database and one fresh bucket, sharing their keys."""
    from cryptography.fernet import Fernet

    shared = {"KEEPHUB_DATABASE_URL": postgres.create_database(tag), **store.settings_env(store.create_bucket()),
              "KEEPHUB_SIGNING_KEY": uuid.uuid4().hex * 2, "KEEPHUB_SECRETS_KEY": Fernet.generate_key().decode()}
    servers = [LocalServer(data_dir=work / f"{tag}-{i}" / "data", env=dict(shared)) for i in range(count)]
    for server in servers:
        server.start()
    return servers


def transfer_figures(server: LocalServer, store: SeaweedFS, work: Path, size: int, repeats: int) -> list[Figure]:
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.file_download import http_get

    user, token = server.user()
    api = HfApi(endpoint=server.url, token=token)
    repo = f"{user}/big"
    api.create_repo(repo)
    source = work / "big.bin"
    oid = write_random_file(source, size)
    pid = server.process.pid  # type: ignore[union-attr]
    idle_kib = proc_status_kib(pid, "VmRSS")
    sampler = RssSampler(pid)
    sampler.start()
    api.upload_file(path_or_fileobj=str(source), path_in_repo="big.bin", repo_id=repo)
    bucket = store.client()
    prefix = server.env["KEEPHUB_BLOB_PREFIX"]
    key = next(item["Key"] for item in bucket.list_objects_v2(
        Bucket=server.env["KEEPHUB_BLOB_BUCKET"], Prefix=prefix)["Contents"] if item["Key"].endswith(oid))

    def through_keephub(n: int) -> float:
        started = time.perf_counter()
        hf_hub_download(repo, "big.bin", endpoint=server.url, token=token, cache_dir=work / f"cache-{n}")
        took = time.perf_counter() - started
        shutil.rmtree(work / f"cache-{n}")
        return took

    def straight_from_s3(n: int) -> float:
        url = bucket.generate_presigned_url("get_object", Params={"Bucket": server.env["KEEPHUB_BLOB_BUCKET"],
                                                                  "Key": key}, ExpiresIn=300)
        target = work / f"straight-{n}.bin"
        started = time.perf_counter()
        with open(target, "wb") as fh:
            http_get(url, fh, expected_size=size)
        took = time.perf_counter() - started
        target.unlink()
        return took

    keephub_runs, s3_runs = [], []
    for n in range(repeats):
        s3_runs.append(straight_from_s3(n))
        keephub_runs.append(through_keephub(n))
    sampler.stop()
    peak_kib = max(sampler.peak_kib, proc_status_kib(pid, "VmHWM"))
    ours, theirs = mb_per_s(size, statistics.median(keephub_runs)), mb_per_s(size, statistics.median(s3_runs))
    print(f"download runs (s): keephub {[round(t, 2) for t in keephub_runs]}, S3 {[round(t, 2) for t in s3_runs]}")
    peak_mb = peak_kib * 1024 / 1e6
    return [
        Figure("hf_hub_download via redirect", ours, theirs, "MB/s", ours / theirs, f">= {DOWNLOAD_TARGET}x",
               ours / theirs >= DOWNLOAD_TARGET),
        Figure("server peak RSS (1 GiB up + down, S3)", peak_mb, idle_kib * 1024 / 1e6, "MB", peak_kib / idle_kib,
               f"< {RSS_LIMIT_MB:.0f} MB", peak_mb < RSS_LIMIT_MB),
    ]


def push_small_commits(endpoint: str, token: str, repo: str, until: float, results: "multiprocessing.Queue") -> None:
    """One client process: small commits to its own repo until `until`; puts its latencies (seconds)."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    latencies = []
    n = 0
    while time.time() < until:
        started = time.perf_counter()
        api.upload_file(path_or_fileobj=f"{n}\n".encode(), path_in_repo=f"step-{n}.txt", repo_id=repo)
        latencies.append(time.perf_counter() - started)
        n += 1
    results.put(latencies)


def scale_run(servers: list[LocalServer], clients: int, seconds: float) -> tuple[float, float]:
    """Commits/s and p99 latency of `clients` processes spread over `servers`; prints the cores each server
    kept busy (one server near 1.0 is the bottleneck a second one removes, given cores to run on)."""
    from huggingface_hub import HfApi

    user, token = servers[0].user()
    repos = []
    for i in range(clients):
        repo = f"{user}/r{i}"
        HfApi(endpoint=servers[i % len(servers)].url, token=token).create_repo(repo)
        repos.append(repo)
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    start_at = time.time() + 3  # every process started and imported before the clock runs
    until = start_at + seconds
    processes = [context.Process(target=_delayed, args=(start_at, servers[i % len(servers)].url, token, repos[i],
                                                        until, results)) for i in range(clients)]
    for process in processes:
        process.start()
    time.sleep(max(0.0, start_at - time.time()))
    pids = [server.process.pid for server in servers]  # type: ignore[union-attr]
    before = [cpu_seconds(pid) for pid in pids]
    time.sleep(seconds)
    busy = [(cpu_seconds(pid) - used) / seconds for pid, used in zip(pids, before)]
    load = os.getloadavg()[0]
    print(f"  {len(servers)} server(s) busy {', '.join(f'{b:.2f}' for b in busy)} core(s); load average {load:.1f} "
          f"on {os.cpu_count()} cores")
    latencies: list[float] = []
    for _ in processes:
        latencies.extend(results.get(timeout=seconds + 120))
    for process in processes:
        process.join()
    latencies.sort()
    return len(latencies) / seconds, latencies[int(0.99 * (len(latencies) - 1))]


def _delayed(start_at: float, *args: object) -> None:
    time.sleep(max(0.0, start_at - time.time()))
    push_small_commits(*args)  # type: ignore[arg-type]


def scale_figures(postgres: PostgresCluster, store: SeaweedFS, work: Path, clients: int,
                  seconds: float) -> list[Figure]:
    measured = {}
    for count in (1, 2):
        servers = start_servers(count, postgres, store, work, f"scale{count}")
        try:
            measured[count] = scale_run(servers, clients, seconds)
        finally:
            for server in servers:
                server.stop()
        print(f"{count} server(s): {measured[count][0]:.1f} commits/s, p99 {measured[count][1] * 1000:.0f} ms")
    (one_rate, one_p99), (two_rate, two_p99) = measured[1], measured[2]
    return [
        Figure(f"commits/s, 2 servers vs 1 ({clients} clients)", two_rate, one_rate, "commit/s",
               two_rate / one_rate, f">= {SCALE_TARGET}x", two_rate / one_rate >= SCALE_TARGET),
        Figure("p99 commit latency, 2 servers vs 1", two_p99 * 1000, one_p99 * 1000, "ms", two_p99 / one_p99,
               "<= 1.0x", two_p99 <= one_p99),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=at_least(1), default=1024)
    parser.add_argument("--repeats", type=at_least(1), default=3, help="download runs of each kind")
    parser.add_argument("--clients", type=at_least(1), default=16)
    parser.add_argument("--seconds", type=at_least(1), default=20, help="length of each scaling run")
    parser.add_argument("--only", choices=["transfer", "scale"])
    add_work_dir_options(parser)
    args = parser.parse_args()
    with work_dir(parser, args, "keephub-storage-bench-") as work:
        client_environment(work, xet=False)
        postgres = PostgresCluster()
        store = SeaweedFS(work / "seaweedfs")
        postgres.start()
        store.start()
        figures: list[Figure] = []
        try:
            if args.only != "scale":
                server = start_servers(1, postgres, store, work, "transfer")[0]
                try:
                    figures += transfer_figures(server, store, work, args.size_mib * MIB, args.repeats)
                finally:
                    server.stop()
            if args.only != "transfer":
                figures += scale_figures(postgres, store, work, args.clients, args.seconds)
        finally:
            store.stop()
            postgres.close()
    print_table(figures, {
        "download baseline": "huggingface_hub's http_get of a presigned URL made with boto3, same object",
        "scaling": f"{os.cpu_count()} cores shared by clients, PostgreSQL, SeaweedFS and the servers",
    })
    return 0 if all(f.passed is not False for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
