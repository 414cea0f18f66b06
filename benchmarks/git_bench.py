"""git over HTTP figures (issue 21), each against a baseline taken in the same run on the same machine.

1. `git clone` of a repo of --files small files and --commits commits from keephub, against `git clone` of a bare
   copy of the same history served by `git daemon` on 127.0.0.1. Each round, keephub is cloned three ways:
   - first after a restart of the server, a new head just pushed: nothing cached, every object read from the
     database and compressed (diagnostic, held to the same target);
   - after another new head is pushed: the pack built for a head no clone has seen, the older objects' pack
     entries cached by the clone before, as on a server in use. Target: <= 1.5x;
   - again, same head: answered from the cache of recent clone packs (diagnostic).
   Clones alternate with the daemon's after one untimed round; medians of --repeats.
2. `git lfs pull` of a --size-mib file (default 1 GiB) uploaded with `HfApi.upload_file` (git-lfs path,
   HF_HUB_DISABLE_XET=1), into a clone made with GIT_LFS_SKIP_SMUDGE=1, against `hf_hub_download` of the same file
   into a fresh cache: throughput. Target: >= 0.9x. Diagnostics, in a second such clone: its two halves timed
   apart, `git lfs fetch` (the download, which git-lfs hashes as it writes) and `git lfs checkout` (local: git-lfs
   copies the object into the work tree and git re-runs the clean filter over it to refresh the index); the
   ceiling, `git lfs pull` as fast as a server taking no time at all could make it (the checkout alone); and `curl`
   of the LFS download href (what keephub serves, without git-lfs).
3. Diagnostic (no target): `git push` of the history of figure 1 to keephub, against the same push to an empty bare
   repo through `git daemon` (receive-pack enabled).

Run:  .venv/bin/python benchmarks/git_bench.py [--size-mib 1024] [--files 1000] [--commits 100] [--repeats 5]
Work dir under --tmp (default /tmp), removed unless --keep. Exit status 1 if a figure fails.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

from report import Figure, add_work_dir_options, at_least, client_environment, print_table, work_dir

from keephub.devserver import LocalServer, free_port

CLONE_TARGET = 1.5
LFS_TARGET = 0.9


def git(env: dict[str, str], *args: str, cwd: Path | None = None) -> None:
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def timed(action) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and of its children it has reaped (git daemon's upload-pack, pack-objects)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(field) for field in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def build_history(env: dict[str, str], work: Path, files: int, commits: int) -> None:
    """`commits` commits on top of `work`'s clone, adding files/commits files each, touching one older file too."""
    per_commit = max(1, files // commits)
    for number in range(commits):
        for index in range(per_commit):
            folder = work / f"part-{index % 10}"
            folder.mkdir(exist_ok=True)
            (folder / f"file-{number:03d}-{index:03d}.txt").write_text(f"file {number}/{index}\n" * 20)
        (work / "CHANGELOG.md").write_text("".join(f"- change {n}\n" for n in range(number + 1)))
        git(env, "add", "-A", cwd=work)
        git(env, "commit", "-q", "-m", f"change {number}", cwd=work)


def clone_figures(args: argparse.Namespace, work: Path, env: dict[str, str], server: LocalServer,
                  token: str, repo_id: str) -> list[Figure]:
    source = work / "source"
    authed = server.url.replace("http://", f"http://user:{token}@")
    git(env, "clone", "-q", f"{authed}/{repo_id}", str(source))
    build_history(env, source, args.files, args.commits)
    bare = work / "served" / "repo.git"
    empty = work / "served" / "empty.git"
    git(env, "clone", "-q", "--bare", str(source), str(bare))
    git(env, "init", "-q", "--bare", str(empty))
    port = free_port()
    daemon = subprocess.Popen(["git", "daemon", "--reuseaddr", f"--base-path={work / 'served'}", "--export-all",
                               "--enable=receive-pack", f"--port={port}", "--listen=127.0.0.1",
                               str(work / "served")], env=env, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        # `git daemon` runs git-daemon as its child, which forks a process per connection and reaps it.
        daemon_pid = int(Path(f"/proc/{daemon.pid}/task/{daemon.pid}/children").read_text().split()[0])
        keephub_push = timed(lambda: git(env, "push", "-q", "origin", "main", cwd=source))
        daemon_push = timed(lambda: git(env, "push", "-q", f"git://127.0.0.1:{port}/empty.git", "main", cwd=source))
        keephub, daemon_url = f"{server.url}/{repo_id}", f"git://127.0.0.1:{port}/repo.git"
        times: dict[str, list[float]] = {"restarted": [], "daemon": [], "keephub": [], "cached": []}
        cpu: dict[str, list[float]] = {name: [] for name in times}

        def new_head(message: str) -> None:
            """A commit no clone has asked for yet, so that keephub builds its pack (no answer of a recent clone)."""
            (source / "CHANGELOG.md").write_text(f"{message}\n")
            git(env, "commit", "-q", "-am", message, cwd=source)
            git(env, "push", "-q", "origin", "main", cwd=source)

        def clone(name: str, url: str, run: int) -> None:
            target = work / f"clone-{name}-{run}"
            serving = daemon_pid if name == "daemon" else server.process.pid  # type: ignore[union-attr]
            before = cpu_seconds(serving)
            seconds = timed(lambda: git(env, "clone", "-q", url, str(target)))
            count = subprocess.run(["git", "ls-files"], cwd=target, env=env, capture_output=True, text=True,
                                   check=True)
            if run:
                times[name].append(seconds)
                cpu[name].append(cpu_seconds(serving) - before)  # the daemon has reaped its upload-pack by now
            assert len(count.stdout.splitlines()) >= args.files, f"{name} clone is incomplete"
            subprocess.run(["rm", "-rf", str(target)], check=True)

        for run in range(args.repeats + 1):
            new_head(f"run {run}")
            server.stop()
            server.start()
            clone("restarted", keephub, run)
            clone("daemon", daemon_url, run)
            new_head(f"run {run}, again")
            clone("keephub", keephub, run)
            clone("cached", keephub, run)
    finally:
        daemon.terminate()
        daemon.wait()
    medians = {name: statistics.median(values) for name, values in times.items()}
    print("clone seconds:", {name: [round(t, 3) for t in values] for name, values in times.items()})
    print("server CPU seconds per clone:", {name: [round(t, 3) for t in values] for name, values in cpu.items()})
    server_cpu = {name: statistics.median(values) for name, values in cpu.items()}
    restarted, cold, baseline, cached = (medians[name] for name in ("restarted", "keephub", "daemon", "cached"))
    shape = f"{args.files} files / {args.commits + 1} commits"
    return [
        Figure(f"git clone, {shape}, new head", cold, baseline, "s", cold / baseline, f"≤ {CLONE_TARGET}x",
               cold / baseline <= CLONE_TARGET),
        Figure("  first clone after a server restart", restarted, baseline, "s", restarted / baseline,
               f"≤ {CLONE_TARGET}x", restarted / baseline <= CLONE_TARGET),
        Figure("  again, same head (cached pack)", cached, baseline, "s", cached / baseline, "—", None),
        *(Figure(f"  server CPU per clone, {label}", server_cpu[name], server_cpu["daemon"], "s",
                 server_cpu[name] / max(server_cpu["daemon"], 0.001), "—", None, digits=3)
          for label, name in (("new head", "keephub"), ("after a restart", "restarted"), ("same head", "cached"))),
        Figure("git push of that history", keephub_push, daemon_push, "s", keephub_push / daemon_push, "—", None),
    ]


def lfs_figures(args: argparse.Namespace, work: Path, env: dict[str, str], server: LocalServer, token: str,
                repo_id: str) -> list[Figure]:
    """`git lfs pull` is `git lfs fetch` (the download from keephub) then `git lfs checkout` (local: git-lfs copies
    the object into the work tree and git re-runs the clean filter over it to refresh the index). The pull is timed
    as one command, and in a second clone as its two halves; the checkout alone is what a pull would take from a
    server that took no time at all: the ceiling of the ratio on this machine."""
    from huggingface_hub import HfApi, hf_hub_download

    size = args.size_mib * 2**20
    big = work / "weights.bin"
    with big.open("wb") as out:
        for _ in range(size // (16 << 20)):
            out.write(os.urandom(16 << 20))
        out.write(os.urandom(size % (16 << 20)))
    api = HfApi(endpoint=server.url, token=token)
    api.upload_file(path_or_fileobj=str(big), path_in_repo="weights.bin", repo_id=repo_id)
    big.unlink()
    oid = api.get_paths_info(repo_id, ["weights.bin"])[0].lfs.sha256
    href = f"{server.url}/{repo_id}.git/info/lfs/objects/{oid}"
    runs: dict[str, list[float]] = {"download": [], "pull": [], "fetch": [], "checkout": [], "curl": []}

    def pointers_only(name: str) -> Path:
        clone = work / name
        git({**env, "GIT_LFS_SKIP_SMUDGE": "1"}, "clone", "-q", f"{server.url}/{repo_id}", str(clone))
        return clone

    for run in range(args.lfs_repeats):
        cache = work / f"hf-cache-{run}"
        runs["download"].append(timed(lambda cache=cache: hf_hub_download(repo_id, "weights.bin", token=token,
                                                                          endpoint=server.url, cache_dir=str(cache))))
        subprocess.run(["rm", "-rf", str(cache)], check=True)
        pulled, halves = pointers_only(f"lfs-pull-{run}"), pointers_only(f"lfs-halves-{run}")
        runs["pull"].append(timed(partial(git, env, "lfs", "pull", cwd=pulled)))
        assert (pulled / "weights.bin").stat().st_size == size, "git lfs pull did not write the whole file"
        subprocess.run(["rm", "-rf", str(pulled)], check=True)
        runs["fetch"].append(timed(partial(git, env, "lfs", "fetch", cwd=halves)))
        runs["checkout"].append(timed(partial(git, env, "lfs", "checkout", cwd=halves)))
        assert (halves / "weights.bin").stat().st_size == size, "git lfs checkout did not write the whole file"
        subprocess.run(["rm", "-rf", str(halves)], check=True)
        runs["curl"].append(timed(lambda: subprocess.run(["curl", "-sf", "-o", str(work / "curl.bin"), href],
                                                         check=True)))
        (work / "curl.bin").unlink()
    print("lfs seconds:", {name: [round(t, 2) for t in times] for name, times in runs.items()})
    seconds = {name: statistics.median(times) for name, times in runs.items()}
    baseline = size / seconds["download"] / 1e6
    speed = {name: size / time / 1e6 for name, time in seconds.items()}
    ratio = {name: seconds["download"] / time for name, time in seconds.items()}
    return [
        Figure(f"git lfs pull, {args.size_mib} MiB", speed["pull"], baseline, "MB/s", ratio["pull"],
               f"≥ {LFS_TARGET}x", ratio["pull"] >= LFS_TARGET),
        Figure("  its git lfs fetch (the download)", speed["fetch"], baseline, "MB/s", ratio["fetch"], "—", None),
        Figure("  its git lfs checkout = the ceiling: a pull from a server taking no time", speed["checkout"], baseline,
               "MB/s", ratio["checkout"], f"≥ {LFS_TARGET}x", ratio["checkout"] >= LFS_TARGET),
        Figure("  LFS download href, curl", speed["curl"], baseline, "MB/s", ratio["curl"], "—", None),
    ]


def run(args: argparse.Namespace, work: Path) -> list[Figure]:
    client_environment(work, xet=False)
    home = work / "git-home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0",
           "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.com", "GIT_COMMITTER_NAME": "bench",
           "GIT_COMMITTER_EMAIL": "bench@example.com"}
    subprocess.run(["git", "lfs", "install", "--skip-repo"], env=env, check=True, capture_output=True)
    server = LocalServer(data_dir=work / "data")
    server.start()
    try:
        user, token = server.user("bench")
        from huggingface_hub import HfApi

        api = HfApi(endpoint=server.url, token=token)
        figures = []
        if args.only in (None, "clone"):
            api.create_repo(f"{user}/history")
            figures += clone_figures(args, work, env, server, token, f"{user}/history")
        if args.only in (None, "lfs"):
            api.create_repo(f"{user}/weights")
            figures += lfs_figures(args, work, env, server, token, f"{user}/weights")
        return figures
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=at_least(1), default=1024, help="size of the LFS file (MiB)")
    parser.add_argument("--files", type=at_least(1), default=1000, help="small files in the cloned repo")
    parser.add_argument("--commits", type=at_least(1), default=100, help="commits that add them")
    parser.add_argument("--repeats", type=at_least(1), default=5, help="timed clones of each kind")
    parser.add_argument("--lfs-repeats", type=at_least(1), default=3, help="timed runs of each LFS download")
    parser.add_argument("--only", choices=("clone", "lfs"), help="one figure only")
    add_work_dir_options(parser)
    args = parser.parse_args()
    with work_dir(parser, args, "keephub-git-bench-") as work:
        figures = run(args, work)
    print_table(figures, {
        "git clone": "the same history cloned from a bare copy served by `git daemon` on 127.0.0.1, clones "
                     "alternating, medians; keephub's for a head no clone has asked for (older objects' pack entries "
                     "cached), the first after a server restart (nothing cached), then the same head again",
        "git lfs pull": "hf_hub_download of the same file into a fresh cache (git-lfs upload path, no Xet); the "
                        "checkout half is git-lfs copying the object and git re-hashing it through the clean filter, "
                        "which no server takes part in",
        "git push": "the same push to an empty bare repo through `git daemon` (diagnostic)",
    })
    return 0 if all(f.passed is not False for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
