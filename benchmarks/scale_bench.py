"""How keephub's cost grows with what it holds (issue 22, item 5): the same small operations on a repo of 1, 100,
10,000 and 100,000 files, and on one repo among 1, 10 and 100 repos of 100 commits each.

At each size, medians of interleaved calls through real clients:
- commit latency: `HfApi.upload_file` of one small new file into a folder of 10 files;
- list, fixed work: `list_repo_tree` of that folder (10 entries whatever the repo holds; 1 in the 1-file repo);
- list, whole repo: `list_repo_tree(recursive=True)` (returns every entry: its time per entry is what must stay flat);
- time to first byte of a `resolve` download of a small file (httpx, streamed).
The baseline of each row is the same figure at the smallest size, measured in the same run; a row passes when
the figure grows by at most GROWTH_LIMIT (per entry for the whole-repo listing, whose work grows with the repo).

Run:  .venv/bin/python benchmarks/scale_bench.py [--max-files 100000] [--max-repos 100] [--repeats 7]
Exit status 1 if a figure fails.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
from report import Figure, add_work_dir_options, at_least, client_environment, print_table, work_dir

from keephub.devserver import LocalServer

FILE_SIZES = (1, 100, 10_000, 100_000)
REPO_COUNTS = (1, 10, 100)
COMMITS_PER_REPO = 100
FILES_PER_COMMIT = 10_000
GROWTH_LIMIT = 2.0
FIXED_FOLDER = "small"


class Probe:
    """The four measured operations on one repo; each call returns seconds (or seconds per entry)."""

    def __init__(self, api, server: LocalServer, token: str, repo: str,  # type: ignore[no-untyped-def]
                 files: int) -> None:
        self.api, self.repo, self.made, self.fixed_entries = api, repo, 0, min(10, files)
        self.client = httpx.Client(headers={"authorization": f"Bearer {token}"})
        self.resolve_url = f"{server.url}/{repo}/resolve/main/{FIXED_FOLDER}/f0.txt"

    def commit(self) -> float:
        self.made += 1
        started = time.perf_counter()
        self.api.upload_file(path_or_fileobj=f"probe {self.made}".encode(), repo_id=self.repo,
                             path_in_repo=f"probes/p{self.made}-{uuid.uuid4().hex[:6]}.txt")
        return time.perf_counter() - started

    def list_fixed(self) -> float:
        started = time.perf_counter()
        entries = list(self.api.list_repo_tree(self.repo, path_in_repo=FIXED_FOLDER))
        elapsed = time.perf_counter() - started
        assert len(entries) == self.fixed_entries, entries
        return elapsed

    def list_all_per_entry(self) -> float:
        started = time.perf_counter()
        count = sum(1 for _ in self.api.list_repo_tree(self.repo, recursive=True))
        return (time.perf_counter() - started) / count

    def first_byte(self) -> float:
        started = time.perf_counter()
        with self.client.stream("GET", self.resolve_url, follow_redirects=True) as response:
            response.raise_for_status()
            elapsed = None
            for _ in response.iter_raw():
                elapsed = elapsed or time.perf_counter() - started
        assert elapsed is not None, "the download was empty"
        return elapsed


def fill_repo(api, repo: str, files: int) -> None:  # type: ignore[no-untyped-def]
    """`files` small files in one repo: FIXED_FOLDER's 10 and the rest in folders of 1,000, committed in batches."""
    from huggingface_hub import CommitOperationAdd

    names = [f"{FIXED_FOLDER}/f{i}.txt" for i in range(min(10, files))]
    names += [f"data/shard-{i // 1000:03d}/f{i}.txt" for i in range(files - len(names))]
    for first in range(0, len(names), FILES_PER_COMMIT):
        batch = names[first:first + FILES_PER_COMMIT]
        api.create_commit(repo, [CommitOperationAdd(name, name.encode()) for name in batch],
                          commit_message=f"files {first}..{first + len(batch)}")


def add_commits(api, repo: str, count: int) -> None:  # type: ignore[no-untyped-def]
    for number in range(count):
        api.upload_file(path_or_fileobj=f"commit {number}".encode(), repo_id=repo, path_in_repo=f"log/{number}.txt")


def medians(probe: Probe, repeats: int, include_all: bool = True) -> dict[str, float]:
    """Interleaved rounds of every operation, one untimed round first (cold caches are not what is measured)."""
    operations: dict[str, Callable[[], float]] = {"commit": probe.commit, "list_fixed": probe.list_fixed,
                                                  "first_byte": probe.first_byte}
    if include_all:
        operations["list_all"] = probe.list_all_per_entry
    samples: dict[str, list[float]] = {name: [] for name in operations}
    for round_number in range(repeats + 1):
        for name, operation in operations.items():
            value = operation()
            if round_number:
                samples[name].append(value)
    return {name: statistics.median(values) for name, values in samples.items()}


LABELS = {"commit": ("commit one small file", "ms", 1e3), "list_fixed": ("list a folder of 10 files", "ms", 1e3),
          "list_all": ("list the whole repo, per entry", "µs", 1e6), "first_byte": ("resolve: time to first byte", "ms", 1e3)}


def growth_figures(axis: str, results: dict[int, dict[str, float]], per_entry_base: int | None) -> list[Figure]:
    """One figure per operation and size: that size's median against the smallest size's."""
    figures = []
    sizes = sorted(results)
    for name, (label, unit, scale) in LABELS.items():
        base_size = per_entry_base if name == "list_all" and per_entry_base else sizes[0]
        if name not in results[base_size]:
            continue
        base = results[base_size][name] * scale
        for size in sizes:
            if size <= base_size or name not in results[size]:
                continue
            value = results[size][name] * scale
            ratio = value / base
            figures.append(Figure(f"{label}, {axis} {size:,} (vs {base_size:,})", value, base, unit, ratio,
                                  f"<= {GROWTH_LIMIT}x", ratio <= GROWTH_LIMIT))
    return figures


def markdown(axis: str, results: dict[int, dict[str, float]]) -> str:
    header = f"| {axis} | " + " | ".join(f"{label} ({unit})" for label, unit, _ in LABELS.values()) + " |"
    lines = [header, "|" + "---|" * (len(LABELS) + 1)]
    for size, values in sorted(results.items()):
        cells = [f"{values[name] * scale:.2f}" if name in values else "—" for name, (_, _, scale) in LABELS.items()]
        lines.append(f"| {size:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-files", type=at_least(100), default=FILE_SIZES[-1], help="largest repo, in files")
    parser.add_argument("--max-repos", type=at_least(1), default=REPO_COUNTS[-1], help="most repos")
    parser.add_argument("--repeats", type=at_least(3), default=7, help="timed rounds per size")
    parser.add_argument("--only", choices=["files", "repos"], help="one axis")
    add_work_dir_options(parser)
    args = parser.parse_args()
    with work_dir(parser, args, "keephub-scale-") as work:
        client_environment(work, xet=False)
        from huggingface_hub import HfApi

        server = LocalServer(data_dir=work / "data")
        server.start()
        figures: list[Figure] = []
        tables: list[str] = []
        try:
            name, token = server.user()
            api = HfApi(endpoint=server.url, token=token)
            if args.only in (None, "files"):
                by_files: dict[int, dict[str, float]] = {}
                for files in (size for size in FILE_SIZES if size <= args.max_files):
                    repo = api.create_repo(f"{name}/files-{files}").repo_id
                    started = time.perf_counter()
                    fill_repo(api, repo, files)
                    print(f"repo of {files:,} files made in {time.perf_counter() - started:.1f} s", flush=True)
                    by_files[files] = medians(Probe(api, server, token, repo, files), args.repeats)
                figures += growth_figures("files", by_files, per_entry_base=100 if 100 in by_files else None)
                tables.append(markdown("files", by_files))
            if args.only in (None, "repos"):
                by_repos: dict[int, dict[str, float]] = {}
                repos: list[str] = []
                for count in (size for size in REPO_COUNTS if size <= args.max_repos):
                    fresh = [api.create_repo(f"{name}/history-{number}").repo_id
                             for number in range(len(repos), count)]
                    started = time.perf_counter()
                    with ThreadPoolExecutor(4) as pool:
                        list(pool.map(lambda repo: (fill_repo(api, repo, 10), add_commits(api, repo, COMMITS_PER_REPO)),
                                      fresh))
                    repos += fresh
                    print(f"{count} repos of {COMMITS_PER_REPO} commits ready ({time.perf_counter() - started:.1f} s)",
                          flush=True)
                    by_repos[count] = medians(Probe(api, server, token, repos[0], 10), args.repeats, include_all=False)
                figures += growth_figures("repos", by_repos, per_entry_base=None)
                tables.append(markdown("repos", by_repos))
        finally:
            server.stop()
        print_table(figures, {"baseline": "the same figure at the smallest size, measured in the same run",
                              "per entry": "the whole-repo listing is compared per entry returned, from 100 files"})
        for table in tables:
            print()
            print(table)
    return 0 if all(f.passed is not False for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
