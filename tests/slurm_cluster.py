"""A throwaway one-machine Slurm cluster for tests: its own munged, slurmctld and slurmd, with every file in
one temp dir and free ports, so that it never touches a system Slurm or another cluster started in the same
session.

Needs root (slurmd runs jobs as their owner) and the Debian packages scripts/setup.sh installs (slurm-wlm,
munge). Processes started here run in the foreground as our children, so `stop()` ends exactly them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from keephub.devserver import free_port

# Seconds Slurm waits between SIGTERM and SIGKILL when it ends a job itself (scancel, time limit): short here
# so that tests and stop() do not wait Slurm's 30 s default.
KILL_WAIT_SECONDS = 3
# Slurm's commands give up on a controller that does not answer after about this long (twice for scontrol
# show job; Slurm's default of 10 s makes that 9-18 s), so that the tests of a stopped controller stay short.
MESSAGE_TIMEOUT_SECONDS = 2


class SlurmCluster:
    """munged + slurmctld + slurmd on this machine; partitions `cpu` (the default) and `small`, one node."""

    def __init__(self, tmp_dir: Path) -> None:
        self.dir = Path(tmp_dir)
        tag = uuid.uuid4().hex[:6]
        self.name = f"kh{tag}"
        # A node name of our own (slurmd -N): jobs report it, and two clusters on one machine stay apart.
        self.node = f"khnode{tag}"
        self.cpus = len(os.sched_getaffinity(0))
        self.conf = self.dir / "slurm.conf"
        self.munge_socket = self.dir / "munge" / "munge.sock"
        self._munged: subprocess.Popen[bytes] | None = None
        self._slurmctld: subprocess.Popen[bytes] | None = None
        self._slurmd: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        """The environment for Slurm's commands (sbatch, squeue, scontrol, ...) to reach this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def start(self) -> None:
        missing = [cmd for cmd in ("munged", "slurmctld", "slurmd", "sbatch") if not shutil.which(cmd)]
        if missing:
            raise RuntimeError(f"Slurm test cluster: {', '.join(missing)} not found; run scripts/setup.sh as "
                               f"root")
        if os.geteuid() != 0:
            raise RuntimeError("Slurm test cluster: slurmd must run as root")
        # munged refuses a socket whose directories others cannot traverse.
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o711)
        for sub in ("state", "spool", "log"):
            (self.dir / sub).mkdir(mode=0o700, exist_ok=True)
        self.munge_socket.parent.mkdir(mode=0o755, exist_ok=True)
        self._write_config()
        try:
            self._start_munged()
            self.start_controller()
            self._slurmd = self._spawn("slurmd", ["slurmd", "-D", "-N", self.node, "-f", str(self.conf)])
            self.wait_idle()
        except BaseException:
            self.stop()
            raise

    def start_controller(self) -> None:
        """Start slurmctld (again): it recovers its jobs from the state dir."""
        self._slurmctld = self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
        self._wait(lambda: self._command("scontrol", "ping").returncode == 0, 20, "slurmctld to answer")

    def stop_controller(self) -> None:
        """Stop slurmctld only (jobs keep running on the node): Slurm's controller is down."""
        self._end(self._slurmctld)
        self._slurmctld = None

    def wait_idle(self, timeout: float = 30) -> None:
        """Wait until the node has registered and runs nothing."""
        def idle() -> bool:
            out = self._command("sinfo", "--noheader", "--nodes", self.node, "--format=%T").stdout.split()
            return bool(out) and all(state == "idle" for state in out)
        self._wait(idle, timeout, f"node {self.node} to be idle")

    def stop(self) -> None:
        """Cancel every job left in the cluster, wait for them to end, then end the daemons we started and any
        job step (slurmstepd) of this cluster that outlived them."""
        try:
            if self._slurmd is not None and self._slurmd.poll() is None:
                if self._slurmctld is None:
                    self.start_controller()
                jobs = self._jobs()
                if jobs:
                    self._command("scancel", *jobs)
                    self._wait(lambda: not self._jobs(), KILL_WAIT_SECONDS + 15, "the cancelled jobs to end",
                               fail=False)
        finally:
            for proc in (self._slurmd, self._slurmctld, self._munged):
                self._end(proc)
            self._slurmd = self._slurmctld = self._munged = None
            self._kill_leftover_steps()

    def cancel_jobs_of(self, keephub_job_id: str) -> None:
        """Cancel every Slurm job keephub made for one of its jobs (named keephub-<id>-<attempt>), so that one a
        failed test leaves behind cannot hold the node's CPUs through the tests after it."""
        listed = self._command("squeue", "--noheader", "--format=%i %j").stdout.splitlines()
        ids = [slurm_id for slurm_id, _, name in (line.strip().partition(" ") for line in listed)
               if name.startswith(f"keephub-{keephub_job_id}-")]
        if ids:
            self._command("scancel", *ids)

    def _jobs(self) -> list[str]:
        return self._command("squeue", "--noheader", "--format=%i").stdout.split()

    def _kill_leftover_steps(self) -> None:
        """A slurmstepd detaches from slurmd and retries for ever to report to a slurmd that is gone; ours are
        the ones with this cluster's SLURM_CONF in their environment."""
        mark = f"SLURM_CONF={self.conf}".encode()
        for proc in Path("/proc").iterdir():
            try:
                if (proc.name.isdigit() and (proc / "comm").read_text().strip() == "slurmstepd"
                        and mark in (proc / "environ").read_bytes().split(b"\0")):
                    os.kill(int(proc.name), signal.SIGKILL)
            except OSError:
                continue

    def _write_config(self) -> None:
        """slurm.conf: this machine's cores, and a little less than its memory (slurmd drains a node that has
        less than its RealMemory). batch_sched_delay=0 schedules a batch job at once rather than up to 3 s
        later (Slurm's default, for clusters taking many submissions a second): submit -> running in ~1 s."""
        memory_mb = _meminfo_kb("MemTotal") * 95 // 100 // 1024
        host = socket.gethostname().split(".")[0]
        log = self.dir / "log"
        self.conf.write_text(f"""\
ClusterName={self.name}
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={self.dir / "state"}
SlurmdSpoolDir={self.dir / "spool"}
SlurmctldPidFile={self.dir / "slurmctld.pid"}
SlurmdPidFile={self.dir / "slurmd.pid"}
SlurmctldLogFile={log / "slurmctld.log"}
SlurmdLogFile={log / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
KillWait={KILL_WAIT_SECONDS}
SchedulerParameters=batch_sched_delay=0
MessageTimeout={MESSAGE_TIMEOUT_SECONDS}
NodeName={self.node} NodeHostname={host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={memory_mb}
PartitionName=cpu Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
PartitionName=small Nodes={self.node} MaxTime=INFINITE State=UP
""")

    def _start_munged(self) -> None:
        munge = self.munge_socket.parent
        key = munge / "munge.key"
        key.write_bytes(os.urandom(128))
        key.chmod(0o600)
        self._munged = self._spawn("munged", [
            "munged", "--foreground", "--force", f"--socket={self.munge_socket}", f"--key-file={key}",
            f"--pid-file={munge / 'munged.pid'}", f"--seed-file={munge / 'munged.seed'}",
            f"--log-file={self.dir / 'log' / 'munged.log'}"])
        self._wait(self.munge_socket.exists, 10, "munged's socket")

    def _spawn(self, daemon: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with open(self.dir / "log" / f"{daemon}.out", "ab") as out:
            return subprocess.Popen(argv, env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    start_new_session=True)

    def _command(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=60, check=False)

    def _wait(self, ready: Callable[[], bool], timeout: float, what: str, fail: bool = True) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            daemons = {"munged": self._munged, "slurmctld": self._slurmctld, "slurmd": self._slurmd}
            for daemon, proc in daemons.items():
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"Slurm test cluster: {daemon} exited ({proc.returncode}) while "
                                       f"waiting for {what}; logs in {self.dir / 'log'}")
            if time.monotonic() > deadline:
                if fail:
                    raise RuntimeError(f"Slurm test cluster: timed out waiting for {what}; logs in "
                                       f"{self.dir / 'log'}")
                return
            time.sleep(0.2)

    @staticmethod
    def _end(proc: subprocess.Popen[bytes] | None) -> None:
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _meminfo_kb(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == field:
            return int(value.split()[0])
    raise RuntimeError(f"/proc/meminfo has no {field}")


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """One throwaway Slurm cluster for the whole session (import this fixture into conftest.py)."""
    tmp = Path(tempfile.mkdtemp(prefix="keephub-slurm-"))
    cluster = SlurmCluster(tmp)
    cluster.start()
    yield cluster
    cluster.stop()
    shutil.rmtree(tmp, ignore_errors=True)


def keephub_slurm_env(cluster: SlurmCluster) -> dict[str, str]:
    """What a keephub server needs to run its jobs on `cluster` (each attempt a Slurm batch job)."""
    return {"SLURM_CONF": str(cluster.conf), "KEEPHUB_JOB_EXECUTOR": "slurm",
            "KEEPHUB_JOB_SLURM": json.dumps({"work_dir": str(cluster.dir / "agent-work")})}
