"""keephub against MLflow, the tool users would run instead to keep training results themselves (issue 22).

MLflow comes from PyPI into its own virtualenv (MLFLOW_VERSION, kept under --mlflow-venv and reused), never
into keephub's; `mlflow server` runs on 127.0.0.1 with its defaults (4 worker processes) on a local SQLite
backend store and a local artifact store it proxies (`--serve-artifacts`). Both sides are driven by their own
client in a child process (peers_driver.py) that times the operation alone; each figure is a ratio of medians
from runs taken in turns, the order rotating each round, with a timed `sync` after each turn so that neither
side pays for the other's writeback (MLflow does not fsync; keephub does before it acknowledges).

a. The seed's workload: --checkpoints random checkpoints of --checkpoint-mib, 2% of each overwritten in
   place (ten spread-out regions) before the next save, pushed one after another: keephub through hf_xet,
   `upload_file` to `checkpoint-N/model.bin` of one repo, one commit each, against MLflow's `log_artifact`
   to `checkpoint-N/` of one run. Time and the disk each server's storage grew by; the first, full
   checkpoint alone as a diagnostic. Fresh content every round, so no round dedups against an earlier one.
b. A fresh random file of --upload-mib: `upload_file` through hf_xet and through the git-lfs path
   (HF_HUB_DISABLE_XET=1), each against MLflow's `log_artifact` of a file as fresh.
c. That file back down: `hf_hub_download` with hf_xet (the Xet-stored copy) and over plain HTTP (the
   LFS-stored copy) against MLflow's `download_artifacts` (diagnostic).
Ceilings: for (a) and (b), another contender in the same turns uploads the same files through the same
client code (huggingface_hub's own Xet upload function; for git-lfs, the file's sha256 and its own PUT
function) to xet_sink.py, a server that reads every byte and keeps none: the client's own time. Where it is
already over the target, no server can meet the target on this machine, and the row says so ("target beyond
the client"), as the issue asks of such figures. For the hf_xet figures, one more contender uploads to
`xet_sink.py --check`, which does only the hashing a server must do before it accepts anything (each chunk's
BLAKE3 against the xorb's name, each file's sha256, from memory) and stores nothing: the floor for any server
that checks what it is sent, as keephub must, on this machine ("target beyond a checking server").
d. Small calls over raw REST with the same httpx client: keephub's `model_info` against MLflow's
   `registered-models/get` (a model with one version), and keephub's tree listing of a folder of 100 files
   against MLflow's `artifacts/list` of a run folder of 100 files; p50 with one thread, req/s with 8.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from peers_bench import latency_ms, requests_per_s
from report import Figure, at_least
from xet_sink import XetSink

from keephub.devserver import LocalServer, free_port

MLFLOW_VERSION = "3.17.2"
MLFLOW_WORKERS = 4  # `mlflow server`'s default, which is what users run
# The one setting changed from MLflow's defaults: uvicorn kills a worker that misses its 5 s health check, and
# on a loaded 2-core machine a busy worker misses it; each restart re-imports MLflow (seconds of CPU), which
# then makes the others miss theirs. A longer wait changes nothing while the machine keeps up.
MLFLOW_HEALTH_CHECK_SECONDS = 60
MIB = 1024 * 1024
DRIVER = Path(__file__).with_name("peers_driver.py")
CHECKPOINT_TIME_TARGET = 0.45
CHECKPOINT_DISK_TARGET = 0.15
XET_UPLOAD_TARGET = 0.9
LFS_UPLOAD_TARGET = 0.7
# The checking floor's row (xet_sink.py --check): what it hashes, and whose reach its verdict names.
CHECKS = "BLAKE3, sha256"
CHECKING = "a checking server"
SMALL_CALL_RATE_TARGET = 2.5
# How each checkpoint differs from the one before: this fraction of its bytes, in this many spread-out
# regions.
CHANGED_FRACTION = 0.02
CHANGED_REGIONS = 10
LISTED_FILES = 100
# Neither side may reach out: MLflow 3 sends usage telemetry unless told not to.
NO_TELEMETRY = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "HF_HUB_DISABLE_TELEMETRY": "1"}


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoints", type=at_least(2), default=10,
                        help="checkpoints pushed one after another per run (MLflow figures)")
    parser.add_argument("--checkpoint-mib", type=at_least(1), default=200,
                        help="size of each checkpoint (MLflow figures)")
    parser.add_argument("--upload-mib", type=at_least(1), default=1024,
                        help="size of the fresh upload and download (MLflow figures)")
    parser.add_argument("--mlflow-venv", type=Path,
                        default=Path.home() / ".cache" / "keephub-bench" / f"mlflow-{MLFLOW_VERSION}",
                        help="MLflow's own virtualenv, created with pip on first use and reused after")


def mlflow_python(venv: Path) -> Path:
    """The python of a virtualenv holding MLFLOW_VERSION from PyPI, created on first use. A marker file
    written after pip succeeded tells a finished virtualenv from one an interrupted install left behind."""
    python, marker = venv / "bin" / "python", venv / f".installed-mlflow-{MLFLOW_VERSION}"
    if marker.exists():
        return python
    print(f"installing mlflow=={MLFLOW_VERSION} from PyPI into {venv} (once; about 2 minutes)", flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    f"mlflow=={MLFLOW_VERSION}"], check=True)
    marker.touch()
    return python


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by a process and its living descendants (MLflow's server forks workers)."""
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        total += times.get(current, 0.0)
        pending += children.get(current, [])
    return total


def disk_bytes(root: Path) -> int:
    """Bytes allocated under `root` (st_blocks, as du counts); call it after a sync, so none are pending."""
    total = 0
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


class MlflowServer:
    """`mlflow server` from its own virtualenv on a free 127.0.0.1 port, its stores under `root`."""

    def __init__(self, python: Path, root: Path) -> None:
        self.python, self.root, self.port = python, root, free_port()
        root.mkdir()
        self.artifacts = root / "artifacts"
        self.log_path = root.parent / "mlflow-server.log"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [str(python), "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
                 "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                 "--artifacts-destination", str(self.artifacts), "--serve-artifacts",
                 "--workers", str(MLFLOW_WORKERS),
                 "--uvicorn-opts", f"--timeout-worker-healthcheck {MLFLOW_HEALTH_CHECK_SECONDS}"],
                stdout=log, stderr=subprocess.STDOUT, cwd=root, env={**os.environ, **NO_TELEMETRY},
                start_new_session=True)
        try:
            self._wait_for_workers(deadline=time.monotonic() + 180)
        except BaseException:  # a timeout, or a SIGTERM while waiting: leave no server behind
            self.stop()
            raise

    def _wait_for_workers(self, deadline: float) -> None:
        """Its workers start one by one, each taking seconds of CPU: wait for all of them, so that no figure
        pays for a start-up."""
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                sys.exit(f"mlflow server exited at start-up; see {self.log_path}")
            started = self.log_path.read_text(errors="replace").count("Application startup complete")
            if started >= MLFLOW_WORKERS:
                try:
                    httpx.get(f"{self.url}/health", timeout=1).raise_for_status()
                    return
                except httpx.HTTPError:
                    pass
            time.sleep(0.2)
        sys.exit(f"mlflow server did not start {MLFLOW_WORKERS} workers in time; see {self.log_path}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def drop_run(self, run_id: str) -> None:
        """Delete a measured run's artifacts from the store behind MLflow's back, to spare the disk."""
        for folder in self.artifacts.glob(f"*/{run_id}"):
            shutil.rmtree(folder)

    def stop(self) -> None:
        """SIGTERM the server's whole process group, then SIGKILL what is left of it: its job runner's queue
        consumers outlive the server otherwise."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()


@dataclass
class Sample:
    seconds: list[float]  # wall time of each item the driver timed
    server_cpu: float
    client_cpu: float
    result: dict
    # The sync right after the turn: the writeback a server left pending (MLflow does not fsync), plus
    # whatever the machine's other tenants had dirty.
    sync_seconds: float = 0.0

    @property
    def total(self) -> float:
        return sum(self.seconds)


@dataclass
class Sides:
    """Both servers and how to drive each with its own client."""

    work: Path
    keephub: LocalServer
    token: str
    user: str
    mlflow: MlflowServer
    sink: XetSink
    checker: XetSink  # the checking floor: xet_sink.py --check

    def hf(self, *args: str, xet: bool = True) -> Sample:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
        env |= NO_TELEMETRY | {"HF_HOME": str(self.work / f"hf-home-{uuid.uuid4().hex[:8]}"),
                               "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DOWNLOAD_TIMEOUT": "300",
                               "HF_HUB_ETAG_TIMEOUT": "60", **({} if xet else {"HF_HUB_DISABLE_XET": "1"})}
        try:
            sinks = {sink.url: sink.process for sink in (self.sink, self.checker)}
            server = sinks.get(args[1], self.keephub.process)
            return drive(sys.executable, env, server.pid, args)  # type: ignore[union-attr]
        finally:
            shutil.rmtree(env["HF_HOME"], ignore_errors=True)

    def ml(self, *args: str) -> Sample:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | NO_TELEMETRY
        return drive(str(self.mlflow.python), env, self.mlflow.process.pid, args)

    def new_repo(self, kind: str) -> str:
        return f"{self.user}/{kind}-{uuid.uuid4().hex[:6]}"


def drive(python: str, env: dict[str, str], server_pid: int, args: tuple[str, ...]) -> Sample:
    server_cpu = tree_cpu_seconds(server_pid)
    done = subprocess.run([python, str(DRIVER), *args], env=env, capture_output=True, text=True, check=False)
    server_cpu = tree_cpu_seconds(server_pid) - server_cpu
    if done.returncode != 0:
        raise RuntimeError(f"{args[0]} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return Sample(result.pop("seconds"), server_cpu, result.pop("cpu"), result)


def in_turns(runs: int, contenders: dict[str, Callable[[], Sample]],
             prepare: Callable[[], None] = lambda: None,
             after: Callable[[str, Sample], None] = lambda name, sample: None) -> dict[str, list[Sample]]:
    """`runs` rounds, each contender once a round after `prepare` (fresh content), the order rotating every
    round. A timed sync follows each turn, so that no one pays for the writeback of the one before; `after`
    runs once it is done (the disk is measured there)."""
    results: dict[str, list[Sample]] = {name: [] for name in contenders}
    names = list(contenders)
    for round_number in range(runs):
        prepare()
        os.sync()
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            sample = contenders[name]()
            started = time.perf_counter()
            os.sync()
            sample.sync_seconds = time.perf_counter() - started
            after(name, sample)
            results[name].append(sample)
            print(f"  round {round_number + 1} {name:<18} {sample.total:7.2f} s  (CPU: server "
                  f"{sample.server_cpu:5.2f} s, client {sample.client_cpu:5.2f} s; then sync "
                  f"{sample.sync_seconds:5.2f} s)", flush=True)
    return results


def median_total(samples: list[Sample]) -> float:
    return statistics.median(sample.total for sample in samples)


def at_most(name: str, measured: float, baseline: float, unit: str, target: float | None,
            digits: int = 2) -> Figure:
    """A figure where keephub's share of MLflow's cost must stay at or under `target` (None: diagnostic)."""
    ratio = measured / baseline
    return Figure(name, measured, baseline, unit, ratio, "(diag.)" if target is None else f"<= {target}x",
                  None if target is None else ratio <= target, digits)


def ceiling(name: str, measured: float, baseline: float, target: float, reach: str = "the client") -> Figure:
    """The client's own time for what a figure measures (see the module's docstring), or the checking floor's,
    as a diagnostic row that says whether the figure's target is within `reach` here at all."""
    ratio = measured / baseline
    return Figure(name, measured, baseline, "s", ratio,
                  f"target {'beyond' if ratio > target else 'within'} {reach}", None)


def runs_note(results: dict[str, list[Sample]]) -> str:
    """Each contender's range of times, and medians of its CPU seconds (server, client) and the sync after."""
    return "; ".join(
        f"{name} {min(s.total for s in samples):.2f}–{max(s.total for s in samples):.2f} s (CPU: server "
        f"{statistics.median(s.server_cpu for s in samples):.1f} s, client "
        f"{statistics.median(s.client_cpu for s in samples):.1f} s; sync after "
        f"{statistics.median(s.sync_seconds for s in samples):.1f} s)" for name, samples in results.items())


def write_random(path: Path, size_mib: int) -> None:
    with open(path, "wb") as fh:
        fh.writelines(os.urandom(MIB) for _ in range(size_mib))


def checkpoint_versions(folder: Path, count: int, size_mib: int) -> list[Path]:
    """`count` checkpoint files: a random first one, each later one the one before with CHANGED_FRACTION of it
    overwritten in place in CHANGED_REGIONS evenly spread regions (shifted every save, so different bytes
    change each time), as a training run's saves differ."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    size = size_mib * MIB
    region, stride = int(size * CHANGED_FRACTION) // CHANGED_REGIONS, size // CHANGED_REGIONS
    paths = [folder / "checkpoint-1.bin"]
    write_random(paths[0], size_mib)
    for number in range(2, count + 1):
        path = folder / f"checkpoint-{number}.bin"
        shutil.copyfile(paths[-1], path)
        shift = (number * 7919 * region) % (stride - region)
        with open(path, "r+b") as fh:
            for index in range(CHANGED_REGIONS):
                fh.seek(index * stride + shift)
                fh.write(os.urandom(region))
        paths.append(path)
    return paths


def checkpoint_figures(sides: Sides, runs: int, count: int,
                       size_mib: int) -> tuple[list[Figure], dict[str, str]]:
    """(a) the seed's workload, time and disk."""
    folder = sides.work / "checkpoints"
    sources: list[Path] = []
    roots = {"keephub": sides.keephub.data_dir, "mlflow": sides.mlflow.root}
    before: dict[str, int] = {}
    disk: dict[str, list[int]] = {"keephub": [], "mlflow": []}

    def keephub() -> Sample:
        before["keephub"] = disk_bytes(roots["keephub"])
        return sides.hf("hf-upload", sides.keephub.url, sides.token, sides.new_repo("checkpoints"),
                        *(f"{path}=checkpoint-{n}/model.bin" for n, path in enumerate(sources, 1)))

    def client_alone(sink: XetSink) -> Callable[[], Sample]:
        return lambda: sides.hf("hf-xet-sink", sink.url,
                                *(f"{path}=checkpoint-{n}/model.bin" for n, path in enumerate(sources, 1)))

    def mlflow() -> Sample:
        before["mlflow"] = disk_bytes(roots["mlflow"])
        return sides.ml("mlflow-upload", sides.mlflow.url,
                        *(f"{path}=checkpoint-{n}" for n, path in enumerate(sources, 1)))

    def measure_disk(name: str, sample: Sample) -> None:
        if name not in disk:
            return
        disk[name].append(disk_bytes(roots[name]) - before[name])
        if name == "mlflow":
            sides.mlflow.drop_run(sample.result["run_id"])  # measured; its gigabytes are not read again

    def fresh_checkpoints() -> None:  # fresh content every round, so no round dedups against an earlier one
        sources[:] = checkpoint_versions(folder, count, size_mib)

    print(f"a. {count} checkpoints of {size_mib} MiB, {CHANGED_FRACTION:.0%} changed between saves",
          flush=True)
    results = in_turns(runs, {"keephub": keephub, "mlflow": mlflow, "ceiling": client_alone(sides.sink),
                              "checking floor": client_alone(sides.checker)}, fresh_checkpoints, measure_disk)
    shutil.rmtree(folder)
    firsts = {name: statistics.median(s.seconds[0] for s in samples) for name, samples in results.items()}
    laters = {name: statistics.median(statistics.median(s.seconds[1:]) for s in samples)
              for name, samples in results.items()}
    label = f"{count} x {size_mib} MiB checkpoints"
    figures = [
        at_most(f"{label}, time vs MLflow", median_total(results["keephub"]), median_total(results["mlflow"]),
                "s", CHECKPOINT_TIME_TARGET),
        ceiling("  ceiling: hf_xet alone, to a server keeping nothing", median_total(results["ceiling"]),
                median_total(results["mlflow"]), CHECKPOINT_TIME_TARGET),
        ceiling(f"  floor: to a server that only checks ({CHECKS})", median_total(results["checking floor"]),
                median_total(results["mlflow"]), CHECKPOINT_TIME_TARGET, CHECKING),
        at_most(f"{label}, disk vs MLflow", statistics.median(disk["keephub"]) / MIB,
                statistics.median(disk["mlflow"]) / MIB, "MiB", CHECKPOINT_DISK_TARGET, digits=0),
        at_most("  its first, full checkpoint", firsts["keephub"], firsts["mlflow"], "s", None),
        at_most("  each later checkpoint (median)", laters["keephub"], laters["mlflow"], "s", None),
    ]
    return figures, {"checkpoint runs": runs_note(results)}


def transfer_figures(sides: Sides, runs: int, size_mib: int) -> tuple[list[Figure], dict[str, str]]:
    """(b) a fresh upload through hf_xet and through git-lfs against MLflow's, (c) the same file back down."""
    sources = {name: sides.work / f"upload-{name}.bin"
               for name in ("xet", "lfs", "mlflow", "sink", "checker", "lfs-sink")}
    last: dict[str, str] = {}

    def hf_upload(kind: str) -> Callable[[], Sample]:
        def upload() -> Sample:
            last[kind] = sides.new_repo(kind)
            return sides.hf("hf-upload", sides.keephub.url, sides.token, last[kind],
                            f"{sources[kind]}=file.bin", xet=kind == "xet")
        return upload

    def client_alone(name: str, sink: XetSink) -> Callable[[], Sample]:
        return lambda: sides.hf("hf-xet-sink", sink.url, f"{sources[name]}=file.bin")

    def lfs_client_alone() -> Sample:
        return sides.hf("hf-lfs-sink", sides.sink.url, f"{sources['lfs-sink']}=file.bin")

    def mlflow_upload() -> Sample:
        sample = sides.ml("mlflow-upload", sides.mlflow.url, f"{sources['mlflow']}=upload")
        if "mlflow" in last:  # only the last round's run is read back: spare the disk the earlier ones
            sides.mlflow.drop_run(last["mlflow"])
        last["mlflow"] = sample.result["run_id"]
        return sample

    def fresh_sources() -> None:  # fresh bytes for every upload, so nothing dedups or is already there
        for path in sources.values():
            write_random(path, size_mib)

    print(f"b. fresh {size_mib} MiB uploads", flush=True)
    up = in_turns(runs, {"hf_xet": hf_upload("xet"), "git-lfs": hf_upload("lfs"), "mlflow": mlflow_upload,
                         "hf_xet ceiling": client_alone("sink", sides.sink),
                         "hf_xet floor": client_alone("checker", sides.checker), "git-lfs ceiling": lfs_client_alone},
                  fresh_sources)
    for path in sources.values():
        path.unlink()

    def download(name: str, run: Callable[[Path], Sample]) -> Callable[[], Sample]:
        def measure() -> Sample:
            target = sides.work / f"download-{name}"
            try:
                return run(target)
            finally:
                shutil.rmtree(target, ignore_errors=True)
        return measure

    artifact = f"upload/{sources['mlflow'].name}"
    print(f"c. {size_mib} MiB downloads", flush=True)
    down = in_turns(runs, {
        "hf_xet": download("xet", lambda target: sides.hf("hf-download", sides.keephub.url, sides.token,
                                                          last["xet"], "file.bin", str(target))),
        "HTTP (LFS-stored)": download("lfs", lambda target: sides.hf(
            "hf-download", sides.keephub.url, sides.token, last["lfs"], "file.bin", str(target), xet=False)),
        "mlflow": download("mlflow", lambda target: sides.ml("mlflow-download", sides.mlflow.url,
                                                             last["mlflow"], artifact, str(target))),
    })
    ml_up, ml_down = median_total(up["mlflow"]), median_total(down["mlflow"])
    figures = [
        at_most(f"fresh {size_mib} MiB upload, hf_xet vs MLflow", median_total(up["hf_xet"]), ml_up, "s",
                XET_UPLOAD_TARGET),
        ceiling("  ceiling: hf_xet alone, to a server keeping nothing", median_total(up["hf_xet ceiling"]), ml_up,
                XET_UPLOAD_TARGET),
        ceiling(f"  floor: to a server that only checks ({CHECKS})", median_total(up["hf_xet floor"]), ml_up,
                XET_UPLOAD_TARGET, CHECKING),
        at_most(f"fresh {size_mib} MiB upload, git-lfs vs MLflow", median_total(up["git-lfs"]), ml_up, "s",
                LFS_UPLOAD_TARGET),
        ceiling("  ceiling: its sha256 and PUT, to a server keeping nothing", median_total(up["git-lfs ceiling"]),
                ml_up, LFS_UPLOAD_TARGET),
        *(at_most(f"{size_mib} MiB download, {name} vs MLflow", median_total(down[name]), ml_down, "s", None)
          for name in ("hf_xet", "HTTP (LFS-stored)")),
    ]
    return figures, {"upload runs": runs_note(up), "download runs": runs_note(down)}


Call = tuple[str, str, dict[str, str]]  # method, URL, headers


def small_call_setup(sides: Sides) -> dict[str, tuple[Call, Call]]:
    """What the small calls read, made first: it also warms both servers up (MLflow's workers import lazily).
    keephub: a repo with LISTED_FILES files in `folder`; MLflow: a run with as many artifacts in `folder` and
    a registered model with one version."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(endpoint=sides.keephub.url, token=sides.token)
    repo = api.create_repo(sides.new_repo("small")).repo_id
    files = [CommitOperationAdd(f"folder/file-{i}.txt", f"{i}".encode()) for i in range(LISTED_FILES)]
    api.create_commit(repo, files, commit_message=f"{LISTED_FILES} files")
    listed = sides.work / "listed"
    listed.mkdir()
    for i in range(LISTED_FILES):
        (listed / f"file-{i}.txt").write_text(f"{i}")
    model = f"model-{uuid.uuid4().hex[:6]}"
    run_id = sides.ml("mlflow-small-setup", sides.mlflow.url, str(listed), model).result["run_id"]
    shutil.rmtree(listed)
    auth = {"authorization": f"Bearer {sides.token}"}
    return {
        "model_info vs get-registered-model": (
            ("GET", f"{sides.keephub.url}/api/models/{repo}", auth),
            ("GET", f"{sides.mlflow.url}/api/2.0/mlflow/registered-models/get?name={model}", {})),
        f"list a folder of {LISTED_FILES} vs list artifacts": (
            ("GET", f"{sides.keephub.url}/api/models/{repo}/tree/main/folder", auth),
            ("GET", f"{sides.mlflow.url}/api/2.0/mlflow/artifacts/list?run_id={run_id}&path=folder", {})),
    }


def small_call_figures(calls: dict[str, tuple[Call, Call]], runs: int,
                       requests: int) -> tuple[list[Figure], dict[str, str]]:
    """(d) keephub's model_info and folder listing against MLflow's comparable REST calls, same httpx client,
    taking turns; p50 with one thread, req/s with 8."""
    figures = []
    notes = {}
    print("d. small calls", flush=True)
    for name, (keephub_call, mlflow_call) in calls.items():
        p50: dict[str, list[float]] = {"keephub": [], "mlflow": []}
        rate: dict[str, list[float]] = {"keephub": [], "mlflow": []}
        for round_number in range(runs):
            turns = [("keephub", keephub_call), ("mlflow", mlflow_call)]
            for side, (method, url, headers) in turns if round_number % 2 == 0 else turns[::-1]:
                p50[side].append(latency_ms(method, url, headers, None, requests))
                rate[side].append(requests_per_s(method, url, headers, None, requests // 4))
        keep_p50, ml_p50 = statistics.median(p50["keephub"]), statistics.median(p50["mlflow"])
        keep_rate, ml_rate = statistics.median(rate["keephub"]), statistics.median(rate["mlflow"])
        figures.append(at_most(f"{name} p50, 1 thread", keep_p50, ml_p50, "ms", None))
        figures.append(Figure(f"{name}, 8 threads", keep_rate, ml_rate, "req/s", keep_rate / ml_rate,
                              f">= {SMALL_CALL_RATE_TARGET}x", keep_rate / ml_rate >= SMALL_CALL_RATE_TARGET,
                              digits=0))
        notes[f"{name} runs"] = ", ".join(f"{side} {min(rates):.0f}–{max(rates):.0f} req/s"
                                          for side, rates in rate.items())
    return figures, notes


def mlflow_figures(args: argparse.Namespace, work: Path, keephub: LocalServer, user: str,
                   token: str) -> tuple[list[Figure], dict[str, str]]:
    """All MLflow figures, with an MLflow server of its own for their duration."""
    mlflow = MlflowServer(mlflow_python(args.mlflow_venv), work / "mlflow")
    sink, checker = XetSink(), XetSink(check=True)
    sides = Sides(work, keephub, token, user, mlflow, sink, checker)
    figures: list[Figure] = []
    notes = {"MLflow": f"mlflow {MLFLOW_VERSION} from PyPI (its own virtualenv), `mlflow server` defaults "
                       f"({MLFLOW_WORKERS} workers), SQLite backend store, local artifact store served "
                       "through it, no auth; keephub: one process, token auth, fsync before acknowledging"}
    try:
        calls = small_call_setup(sides)
        for group in (lambda: checkpoint_figures(sides, args.runs, args.checkpoints, args.checkpoint_mib),
                      lambda: transfer_figures(sides, args.runs, args.upload_mib),
                      lambda: small_call_figures(calls, args.runs, args.requests)):
            group_figures, group_notes = group()
            figures += group_figures
            notes |= group_notes
    finally:
        mlflow.stop()
        sink.stop()
        checker.stop()
    return figures, notes
