"""The Slurm executor against a real (throwaway, one-machine) Slurm cluster: no mocks.

Each attempt runs a small stand-in for the agent (AGENT below) through real sbatch, so these tests see what a
real agent would: its stdin, environment and argv, the signals Slurm delivers, and what Slurm says of the job.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from slurm_cluster import SlurmCluster

from keephub.config import ConfigError
from keephub.jobs.executors.base import ExecutorUnavailable, Launch, LaunchRefused, Observed
from keephub.jobs.executors.slurm import SlurmExecutor
from keephub.jobs.flavors import Flavor

# The agent's stand-in: records what it was given, sleeps, and on SIGTERM does `grace` seconds of work and
# exits 0. Its child records a SIGTERM too: only the batch script (the agent) may get Slurm's signal. The
# stand-in kills its child (SIGKILL, which the child cannot record) when it ends, so no sleeper outlives a test.
AGENT = r"""
import json, os, signal, subprocess, sys, time
out, seconds, grace = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
os.makedirs(out, exist_ok=True)
def record(name, **data):
    with open(os.path.join(out, name + ".tmp"), "w") as fh:
        json.dump(data, fh)
    os.replace(os.path.join(out, name + ".tmp"), os.path.join(out, name))
def on_term(number, frame):
    record("term", at=time.time())
    time.sleep(grace)
    record("grace-done")
    child.kill()
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
child = subprocess.Popen([sys.executable, "-c", "import json, signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: (open(sys.argv[1], 'w').write('TERM'), sys.exit(0)))\n"
    "time.sleep(3600)", os.path.join(out, "child-term")])
record("started", at=time.time(), stdin=sys.stdin.readline().strip(), argv=sys.argv, env=dict(os.environ))
time.sleep(seconds)
record("finished")
child.kill()
"""
CREDENTIAL = "khagent_" + uuid.uuid4().hex
# A secret in keephub's own environment: it must not reach a job.
SERVER_SECRET = "kh_server_" + uuid.uuid4().hex


def flavor(cpus: int = 1, memory_gb: int = 1, gpus: int = 0, name: str = "cpu-basic") -> Flavor:
    return Flavor(name, name, cpus, memory_gb, gpus, 10)


def attempt(the_flavor: Flavor | None = None, time_limit: int = 600) -> Launch:
    return Launch(job_id=uuid.uuid4().hex[:12], attempt=1, flavor=the_flavor or flavor(),
                  time_limit_seconds=time_limit, grace_seconds=30, credential=CREDENTIAL,
                  server_url="http://127.0.0.1:9")


def executor(cluster: SlurmCluster, out: Path, seconds: float = 30, grace: float = 0.5,
             **table: object) -> SlurmExecutor:
    """A SlurmExecutor whose jobs run AGENT, each writing into out/<job id>."""
    def command(launch: Launch) -> list[str]:
        return [sys.executable, "-I", "-c", AGENT, str(out / launch.job_id), str(seconds), str(grace)]
    return SlurmExecutor({"work_dir": str(out / "node"), **table}, agent_command=command,
                         env={**cluster.env, "SECRET": SERVER_SECRET})


def wait_for(check: Callable[[], object], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def wait_state(slurm: SlurmExecutor, ref: str, state: str, timeout: float = 15) -> Observed:
    deadline = time.monotonic() + timeout
    while (seen := slurm.observe(ref)).state != state:
        assert time.monotonic() < deadline, f"Slurm job {ref} is still {seen}"
        time.sleep(0.1)
    return seen


def record(out: Path, launch: Launch, name: str) -> dict | None:
    """What the agent's stand-in recorded under `name`, or None if it did not."""
    path = out / launch.job_id / name
    return json.loads(path.read_text()) if path.exists() else None


def scontrol(cluster: SlurmCluster, *args: str) -> str:
    return subprocess.run(["scontrol", *args], env=cluster.env, capture_output=True, text=True,
                          check=True).stdout


def test_an_attempt_waits_in_the_queue_runs_on_the_node_and_ends(slurm_cluster: SlurmCluster,
                                                                  tmp_path: Path) -> None:
    filler = executor(slurm_cluster, tmp_path, seconds=3)
    full = filler.launch(attempt(flavor(cpus=slurm_cluster.cpus)))
    wait_state(filler, full, "running")
    slurm = executor(slurm_cluster, tmp_path, seconds=0.5, partitions={"cpu-basic": "small"})
    launch = attempt()
    started = time.monotonic()
    ref = slurm.launch(launch)
    seen = [slurm.observe(ref)]
    while seen[-1].state != "gone":
        assert time.monotonic() - started < 20, seen[-1]
        time.sleep(0.1)
        seen.append(slurm.observe(ref))
    states = [s.state for i, s in enumerate(seen) if i == 0 or s.state != seen[i - 1].state]
    assert states == ["queued", "running", "gone"], seen
    assert any("partition small (reason: Resources)" in s.reason for s in seen if s.state == "queued"), seen
    assert {s.node for s in seen if s.state != "queued"} == {slurm_cluster.node}
    assert seen[-1].reason == f"Slurm job {ref} ended COMPLETED on {slurm_cluster.node}: the agent exited 0"
    assert filler.observe(full).state == "gone"

    # What sbatch was asked: the flavor, its partition, the time limit past timeout + grace, no requeue.
    job = scontrol(slurm_cluster, "show", "job", "--oneliner", "--details", ref)
    for field in (f"JobName=keephub-{launch.job_id}-1", "Partition=small", "NumCPUs=1", "TimeLimit=00:13:00",
                  "Requeue=0", "MinMemoryNode=1G", "StdOut=/dev/null", "WorkDir=/ "):
        assert field in job
    # The credential reaches the agent on stdin alone: not in its argv or environment, not in what Slurm
    # shows; nothing of keephub's environment but the locale, PATH and Slurm's own reaches the job.
    agent = record(tmp_path, launch, "started")
    assert agent is not None and agent["stdin"] == CREDENTIAL
    assert CREDENTIAL not in json.dumps(agent["argv"]) + json.dumps(agent["env"]) + job
    assert SERVER_SECRET not in json.dumps(agent["env"]) and agent["env"]["SLURM_JOB_ID"] == ref
    script = scontrol(slurm_cluster, "write", "batch_script", ref, "-")
    assert script.count(CREDENTIAL) == 1
    assert script.splitlines()[-2:] == [CREDENTIAL, "KEEPHUB_AGENT_CREDENTIAL"]
    assert record(tmp_path, launch, "finished") is not None
    assert (tmp_path / "node" / f"slurm-{ref}.log").exists()


def test_stop_sends_sigterm_to_the_agent_alone_which_finishes_its_grace_work(slurm_cluster: SlurmCluster,
                                                                              tmp_path: Path) -> None:
    slurm = executor(slurm_cluster, tmp_path, seconds=60, grace=1)
    launch = attempt()
    ref = slurm.launch(launch)
    wait_for(lambda: record(tmp_path, launch, "started"), "the agent to start")
    slurm.stop(ref)
    ended = wait_state(slurm, ref, "gone")
    assert record(tmp_path, launch, "term") is not None and record(tmp_path, launch, "grace-done") is not None
    assert not (tmp_path / launch.job_id / "child-term").exists()  # the agent forwards the signal, not Slurm
    assert record(tmp_path, launch, "finished") is None
    assert ended.reason.startswith(f"Slurm job {ref} ended COMPLETED on {slurm_cluster.node}")


def test_stop_removes_a_queued_attempt_and_kill_ends_a_running_one(slurm_cluster: SlurmCluster,
                                                                    tmp_path: Path) -> None:
    slurm = executor(slurm_cluster, tmp_path, seconds=60)
    full = slurm.launch(attempt(flavor(cpus=slurm_cluster.cpus)))
    wait_state(slurm, full, "running")
    queued = attempt()
    ref = slurm.launch(queued)
    assert slurm.observe(ref).state == "queued"
    slurm.stop(ref)
    assert slurm.observe(ref).reason.startswith(f"Slurm job {ref} ended CANCELLED before it started: "
                                                f"cancelled in Slurm")
    assert not (tmp_path / queued.job_id).exists()
    slurm.kill(full)
    ended = wait_state(slurm, full, "gone")
    assert ended.reason.startswith(f"Slurm job {full} ended CANCELLED on {slurm_cluster.node}")
    assert slurm.observe("999999999").state == "gone"  # a job Slurm does not know


@pytest.mark.parametrize(("table", "the_flavor", "words"), [
    ({"partition": "nope"}, flavor(), "Invalid partition name specified"),
    ({}, flavor(memory_gb=10**6), "Requested node configuration is not available"),
    ({}, flavor(gpus=1, name="a10g-small"), "Invalid generic resource (gres) specification"),
    ({}, flavor(cpus=512), "PartitionConfig"),
], ids=["partition", "memory", "gpus", "cpus"])
def test_slurm_refusing_a_job_refuses_the_launch_in_slurms_words(slurm_cluster: SlurmCluster, tmp_path: Path,
                                                                   table: dict, the_flavor: Flavor,
                                                                   words: str) -> None:
    slurm = executor(slurm_cluster, tmp_path, **table)
    launch = attempt(the_flavor)
    with pytest.raises(LaunchRefused, match=re.escape(words)):
        slurm.launch(launch)
    queue = subprocess.run(["squeue", "--noheader", f"--name=keephub-{launch.job_id}-1"],
                           env=slurm_cluster.env, capture_output=True, text=True, check=True)
    assert queue.stdout.strip() == ""  # a job Slurm queued but can never run was cancelled


def test_check_names_the_setting_of_a_partition_slurm_lacks(slurm_cluster: SlurmCluster,
                                                            tmp_path: Path) -> None:
    executor(slurm_cluster, tmp_path, partition="cpu", partitions={"cpu-basic": "small"},
             sbatch_options=["--comment=keephub"]).check()
    with pytest.raises(ConfigError, match=r"^\[jobs.slurm\] partitions: cpu-basic = 'gpu' is not a partition "
                                          r"of this Slurm cluster \(it has cpu, small\)"):
        executor(slurm_cluster, tmp_path, partitions={"cpu-basic": "gpu"}).check()
    with pytest.raises(ConfigError, match=r"^\[jobs.slurm\] partition = 'gpu' is not a partition"):
        executor(slurm_cluster, tmp_path, partition="gpu").check()
    with pytest.raises(ConfigError, match=r"^\[jobs.slurm\] sbatch_options: sbatch refuses --bogus: "
                                          r"unrecognized option '--bogus'"):
        executor(slurm_cluster, tmp_path, sbatch_options=["--bogus"]).check()


@pytest.mark.parametrize(("table", "words"), [
    ({"partitons": {}}, r"\[jobs.slurm\] partitons is not a setting keephub knows; remove it"),
    ({"partitions": {"a10g-huge": "gpu"}}, r"\[jobs.slurm\] partitions: a10g-huge is not a flavor keephub"),
    ({"partitions": ["gpu"]}, r"\[jobs.slurm\] partitions = \['gpu'\] must be a table"),
    ({"sbatch_options": "--qos=high"}, r"\[jobs.slurm\] sbatch_options = '--qos=high' must be a list"),
    ({"sbatch_options": ["--export=ALL"]}, r"\[jobs.slurm\] sbatch_options: keephub sets --export itself"),
    ({"sbatch_options": ["-pgpu"]}, r"\[jobs.slurm\] sbatch_options: keephub sets --partition itself"),
    ({"work_dir": "agent"}, r"\[jobs.slurm\] work_dir = 'agent' must be an absolute path"),
    ({"memory": "yes"}, r"\[jobs.slurm\] memory = 'yes' must be true"),
])
def test_bad_settings_stop_keephub_with_the_setting_named(table: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=f"^{words}"):
        SlurmExecutor(table)


def test_a_controller_that_is_down_makes_jobs_wait_and_loses_none(slurm_cluster: SlurmCluster, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    slurm = executor(slurm_cluster, tmp_path, seconds=60, grace=0)
    ref = slurm.launch(attempt())
    wait_state(slurm, ref, "running")
    slurm_cluster.stop_controller()
    try:
        with pytest.raises(ExecutorUnavailable, match="Unable to contact slurm controller"):
            slurm.observe(ref)
        with pytest.raises(ExecutorUnavailable, match="Slurm cannot take the job now: .*Unable to contact"):
            slurm.launch(attempt())
        with caplog.at_level(logging.WARNING, "keephub.jobs"):
            slurm.check()
        assert "Slurm cannot be reached now" in caplog.text
    finally:
        slurm_cluster.start_controller()
    assert slurm.observe(ref) == Observed("running", f"Slurm job {ref} is running on {slurm_cluster.node}",
                                          slurm_cluster.node)
    slurm.kill(ref)
    wait_state(slurm, ref, "gone")
