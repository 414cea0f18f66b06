"""The Slurm executor: each attempt is one Slurm batch job whose script execs keephub's agent on the node.

Slurm queues, places, limits and ends the job; keephub drives it only through Slurm's own commands (sbatch,
scontrol, scancel, sinfo), which every cluster's users have, so nothing here is tied to one Slurm version's
library, and nothing needs slurmdbd. The ref of an attempt is its Slurm job id: all that a restarted keephub
needs to find it again. The node needs no shared filesystem with keephub: the agent reaches keephub over HTTP.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import PurePosixPath

from keephub.config import ConfigError
from keephub.jobs.executors.base import ExecutorUnavailable, Launch, LaunchRefused, Observed, agent_argv
from keephub.jobs.flavors import FLAVOR_NAMES, Flavor

log = logging.getLogger("keephub.jobs")

DEFAULT_WORK_DIR = "/var/tmp/keephub-agent"
# Slurm's time limit is only a backstop: the agent holds the job's deadline itself and stops the script with
# the grace period. This margin past deadline + grace leaves the agent time to send its last lines and report.
TIME_MARGIN_SECONDS = 120
# A Slurm command waits about MessageTimeout per try for a controller that does not answer (scontrol show job
# tries twice: 18 s at Slurm's default of 10 s); past this it counts as Slurm being unreachable.
COMMAND_TIMEOUT_SECONDS = 60
_HEREDOC_END = "KEEPHUB_AGENT_CREDENTIAL"
# The environment Slurm's commands run with, which --export=ALL also makes the job's: what finds and reaches
# Slurm (PATH, SLURM_CONF and the other SLURM_*, an admin's SBATCH_* defaults) and the locale, so no secret of
# keephub's reaches a node. (--export=NONE would keep it out too, but makes slurmd load the user's login
# environment with `su -` first: a second or more per attempt, measured.)
_COMMAND_ENV = ("PATH", "LANG", "LC_ALL", "TZ")

_SETTINGS = ("partition", "partitions", "sbatch_options", "work_dir", "python", "memory")
# Options keephub sets on every job from the attempt, its flavor and the other settings; sbatch_options may
# not change them.
_RESERVED_OPTIONS = {"--partition", "--job-name", "--cpus-per-task", "--gres", "--gpus", "--mem", "--time",
                     "--export", "--output", "--error", "--input", "--requeue", "--no-requeue", "--chdir",
                     "--wrap", "--array", "--parsable", "--test-only", "--wait", "--nodes", "--ntasks"}
_SHORT_OPTIONS = {"-p": "--partition", "-J": "--job-name", "-c": "--cpus-per-task", "-G": "--gpus",
                  "-t": "--time", "-o": "--output", "-e": "--error", "-i": "--input", "-D": "--chdir",
                  "-a": "--array", "-W": "--wait", "-N": "--nodes", "-n": "--ntasks"}
# The batch script's exit status when the node's work dir is not the job user's own (EX_CONFIG).
_WORK_DIR_REFUSED = "78"

# Job states (scontrol's JobState) in which the batch script runs or is being started or ended on a node.
_RUNNING_STATES = {"RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT",
                   "RESIZING"}
# States of a job that has ended, with what each means for the attempt.
_ENDED_STATES = {
    "COMPLETED": "the agent exited 0", "FAILED": "the agent failed", "CANCELLED": "cancelled in Slurm",
    "TIMEOUT": "it reached its Slurm time limit", "NODE_FAIL": "its node failed",
    "OUT_OF_MEMORY": "it ran out of memory", "BOOT_FAIL": "its node failed to boot",
    "PREEMPTED": "preempted by another job", "DEADLINE": "it passed its Slurm deadline",
    "REVOKED": "revoked (it runs on another cluster)",
}
# Reasons Slurm gives a pending job it can never run as asked: with its default EnforcePartLimits=NO Slurm
# queues such a job for ever instead of refusing it, so keephub refuses it.
_NEVER_RUNS = {
    "PartitionConfig": "the partition's nodes cannot give what the flavor asks (CPUs, memory, GPUs)",
    "PartitionTimeLimit": "the job's timeout is past the partition's MaxTime",
    "PartitionNodeLimit": "the partition does not allow the node count",
    "BadConstraints": "its constraints cannot be satisfied",
}
# Words of a Slurm command that could not reach the controller or munge: the job waits, it is not refused.
_UNREACHABLE = ("unable to contact slurm controller", "socket timed out", "zero bytes were transmitted",
                "resource temporarily unavailable", "temporarily unable", "communication connection failure",
                "protocol authentication error", "munge", "connection refused",
                "could not establish a configuration", "slurmctld is shutting down", "in standby mode")
# Words of scontrol/scancel about a job the controller no longer has, or that has already ended.
_NO_SUCH_JOB = ("invalid job id specified", "already completing or completed")
_FIELD = re.compile(r"(?:^|(?<=\s))([A-Za-z][\w:/.]*)=")


class SlurmExecutor:
    """Attempts as Slurm batch jobs, configured by the [jobs.slurm] table (docs/jobs.md lists its keys)."""

    name = "slurm"

    def __init__(self, table: Mapping[str, object], *, env: Mapping[str, str] | None = None,
                 agent_command: Callable[[Launch], list[str]] | None = None, hub_socket: str | None = None) -> None:
        """`env`: where Slurm's commands find Slurm (None: keephub's environment, of which only PATH, the
        locale, SLURM_* and SBATCH_* are used); `agent_command`: what the batch script execs (tests run
        another program through real Slurm); `hub_socket`: keephub's own Unix socket, which an agent uses
        when its node is keephub's machine (elsewhere the path does not exist and it uses TCP)."""
        unknown = sorted(set(table) - set(_SETTINGS))
        if unknown:
            raise ConfigError(f"[jobs.slurm] {unknown[0]} is not a setting keephub knows; remove it (the "
                              f"table takes {', '.join(_SETTINGS)})")
        self.partition = _text(table, "partition", "")
        self.partitions = _partitions(table.get("partitions", {}))
        self.sbatch_options = _sbatch_options(table.get("sbatch_options", []))
        self.work_dir = _absolute(table, "work_dir", DEFAULT_WORK_DIR)
        self.python = _absolute(table, "python", sys.executable)
        memory = table.get("memory", True)
        if not isinstance(memory, bool):
            raise ConfigError(f"[jobs.slurm] memory = {memory!r} must be true (ask Slurm for the flavor's "
                              f"memory with --mem) or false (the cluster does not track memory)")
        self.memory = memory
        self._env = {name: value for name, value in (os.environ if env is None else env).items()
                     if name in _COMMAND_ENV or name.startswith(("SLURM_", "SBATCH_"))}
        extra = [f"--hub-socket={hub_socket}"] if hub_socket else []
        self._agent_command = agent_command or (lambda launch: agent_argv(self.python, launch, self.work_dir, *extra))

    # -- start-up -------------------------------------------------------------------------------------------

    def check(self) -> None:
        """At start-up: the partitions named exist and sbatch takes the extra options (a test submission:
        nothing is queued). A Slurm that cannot be reached earns a warning only: jobs wait in SCHEDULING
        until it can."""
        try:
            result = self._slurm("sinfo", "--all", "--noheader", "--format=%R")
        except ExecutorUnavailable as exc:
            log.warning("Slurm cannot be reached now (%s); jobs wait until it can", exc)
            return
        if result.returncode != 0:
            log.warning("Slurm cannot be reached now (sinfo: %s); jobs wait until it can", _words(result))
            return
        known = sorted(set(result.stdout.split()))
        has = f"it has {', '.join(known) or 'none'}"
        if self.partition and self.partition not in known:
            raise ConfigError(f"[jobs.slurm] partition = {self.partition!r} is not a partition of this Slurm "
                              f"cluster ({has}); name one of them")
        for flavor, partition in sorted(self.partitions.items()):
            if partition not in known:
                raise ConfigError(f"[jobs.slurm] partitions: {flavor} = {partition!r} is not a partition of "
                                  f"this Slurm cluster ({has}); name one of them")
        if self.sbatch_options:
            default = [f"--partition={self.partition}"] if self.partition else []
            test = self._slurm("sbatch", "--test-only", *default, *self.sbatch_options,
                               stdin="#!/bin/sh\ntrue\n")
            if test.returncode != 0 and not _unreachable(_words(test)):
                raise ConfigError(f"[jobs.slurm] sbatch_options: sbatch refuses "
                                  f"{shlex.join(self.sbatch_options)}: {_words(test)}; fix or remove the "
                                  f"option")

    # -- the Executor protocol ------------------------------------------------------------------------------

    def has_room(self, flavor: Flavor) -> bool:
        """Always: Slurm's queue is where an attempt waits for room."""
        return True

    def launch(self, launch: Launch) -> str:
        """sbatch; Slurm's refusal in its own words, or its silence as unavailability. A job Slurm queues
        but can never run as asked is cancelled and refused too. An earlier try whose answer was lost (sbatch
        timed out while the controller came back, yet queued the job) is adopted, never submitted twice."""
        earlier = self._slurm("squeue", "--noheader", "--name", _job_name(launch), "--format=%i")
        if earlier.returncode != 0:
            if _unreachable(_words(earlier)):
                raise ExecutorUnavailable(f"Slurm cannot take the job now: {_words(earlier)}")
        elif queued := earlier.stdout.split():
            job_id = min(queued, key=int)
            log.info("keephub job %s attempt %d is already Slurm job %s (an earlier sbatch went unanswered)",
                     launch.job_id, launch.attempt, job_id)
            return job_id
        result = self._slurm("sbatch", *self.sbatch_args(launch), stdin=self.batch_script(launch))
        words = _words(result)
        if result.returncode != 0:
            if _unreachable(words):
                raise ExecutorUnavailable(f"Slurm cannot take the job now: {words}")
            raise LaunchRefused(f"Slurm refused the job: {words}")
        job_id = result.stdout.strip().split(";")[0]  # --parsable prints "id" or "id;cluster"
        if not job_id.isdigit():
            raise LaunchRefused(f"sbatch answered {result.stdout.strip()!r}, not a Slurm job id: {words}")
        log.info("keephub job %s attempt %d is Slurm job %s", launch.job_id, launch.attempt, job_id)
        try:
            job = self._show(job_id) or {}
        except ExecutorUnavailable:
            return job_id  # it was submitted: saying otherwise would have it submitted twice
        reason = job.get("Reason", "")
        if job.get("JobState") == "PENDING" and reason in _NEVER_RUNS:
            try:
                self._scancel(job_id)
            except ExecutorUnavailable as exc:
                log.warning("could not cancel Slurm job %s, which can never run: %s", job_id, exc)
            raise LaunchRefused(f"Slurm cannot run the job in partition {job.get('Partition', '?')}: "
                                f"{reason} ({_NEVER_RUNS[reason]}); its Slurm job {job_id} was cancelled")
        return job_id

    def adopt(self, refs: list[str]) -> None:
        """Nothing to account for: Slurm holds what each job has."""

    def observe(self, ref: str) -> Observed:
        job = self._show(ref)
        if job is None:
            return Observed("gone", f"Slurm no longer knows job {ref} (it ended longer ago than Slurm's "
                                    f"MinJobAge)")
        state = job["JobState"]
        node = _value(job.get("BatchHost", "")) or _value(job.get("NodeList", ""))
        if state in _RUNNING_STATES:
            return Observed("running", f"Slurm job {ref} is {state.lower()} on {node}", node)
        if state in _ENDED_STATES:
            return Observed("gone", _ended(ref, state, node, job), node)
        reason = _value(job.get("Reason", "")) or "None"
        where = f" in partition {job['Partition']}" if _value(job.get("Partition", "")) else ""
        return Observed("queued", f"Slurm job {ref} is {state.lower()}{where} (reason: {reason})")

    def stop(self, ref: str) -> None:
        """A pending job leaves the queue; a running one's batch script, which is the agent, gets SIGTERM
        alone and ends the job itself after the grace. Each scancel is filtered by state, so a job that starts
        between the two is signalled, never killed; one still being launched gets the signal once its script
        runs (scancel retries until then)."""
        self._scancel(ref, "--state=PENDING")
        self._scancel(ref, "--state=RUNNING", "--batch", "--signal=TERM")

    def kill(self, ref: str) -> None:
        """scancel: SIGTERM to every process of the job, SIGKILL after Slurm's KillWait."""
        self._scancel(ref)

    def release(self, ref: str) -> None:
        """Nothing to give back: Slurm freed the job's resources when it ended."""

    # -- what is submitted ----------------------------------------------------------------------------------

    def sbatch_args(self, launch: Launch) -> list[str]:
        """sbatch's options for the attempt; the script comes on sbatch's stdin."""
        flavor = launch.flavor
        seconds = launch.time_limit_seconds + launch.grace_seconds + TIME_MARGIN_SECONDS
        partition = self.partitions.get(flavor.name, self.partition)
        return ["--parsable", f"--job-name={_job_name(launch)}", "--nodes=1",
                "--ntasks=1", f"--cpus-per-task={flavor.cpus}", f"--time={max(1, math.ceil(seconds / 60))}",
                "--no-requeue", "--export=ALL", "--chdir=/", "--output=/dev/null",
                *([f"--partition={partition}"] if partition else []),
                *([f"--gres=gpu:{flavor.gpus}"] if flavor.gpus else []),
                *([f"--mem={flavor.memory_gb}G"] if self.memory else []),
                *self.sbatch_options]

    def batch_script(self, launch: Launch) -> str:
        """A /bin/sh script that execs the agent with its credential on stdin from a quoted heredoc: never in
        argv or the environment, where `ps` or `scontrol show job` would show it. The agent's own output goes
        to a log in the node's work dir (Slurm cannot open --output in a directory that does not exist yet);
        the script refuses a work dir that is not the job user's own (one another user made in /var/tmp)."""
        credential = launch.credential
        # The heredoc ends at the line equal to its delimiter: the credential is one line, and not that one.
        one_line = bool(credential) and credential == credential.strip() and "\n" not in credential
        if not one_line or credential == _HEREDOC_END:
            raise ValueError("an agent credential must be one line of text")
        work_dir = shlex.quote(self.work_dir)
        agent_log = shlex.quote(f"{self.work_dir}/slurm-") + '"$SLURM_JOB_ID".log'
        return (f"#!/bin/sh\n"
                f"# keephub's agent for one job attempt (the job name says which).\n"
                f"mkdir -p -m 700 {work_dir} && [ -O {work_dir} ] && [ ! -h {work_dir} ] "
                f"|| exit {_WORK_DIR_REFUSED}\n"
                f"exec {shlex.join(self._agent_command(launch))} >>{agent_log} 2>&1 <<'{_HEREDOC_END}'\n"
                f"{credential}\n"
                f"{_HEREDOC_END}\n")

    # -- Slurm's commands -----------------------------------------------------------------------------------

    def _slurm(self, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(argv, input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
                                  capture_output=True, text=True, env=self._env, check=False,
                                  timeout=COMMAND_TIMEOUT_SECONDS)
        except FileNotFoundError:
            raise ExecutorUnavailable(f"{argv[0]} is not on keephub's PATH: install Slurm's client commands "
                                      f"(Debian: slurm-client) on the keephub machine") from None
        except subprocess.TimeoutExpired:
            raise ExecutorUnavailable(f"Slurm did not answer {argv[0]} within {COMMAND_TIMEOUT_SECONDS} "
                                      f"s") from None

    def _show(self, ref: str) -> dict[str, str] | None:
        """scontrol's fields of the job (Key=Value on one line), or None when the controller no longer has
        it."""
        result = self._slurm("scontrol", "show", "job", "--oneliner", _job_id(ref))
        words = _words(result)
        if result.returncode != 0:
            if any(marker in words.lower() for marker in _NO_SUCH_JOB):
                return None
            raise ExecutorUnavailable(f"Slurm cannot say what became of job {ref}: {words}")
        line = (result.stdout.strip().splitlines() or [""])[0]
        marks = list(_FIELD.finditer(line))
        ends = [mark.start() for mark in marks[1:]] + [len(line)]
        job = {mark.group(1): line[mark.end():end].strip() for mark, end in zip(marks, ends)}
        if "JobState" not in job:
            raise ExecutorUnavailable(f"scontrol said nothing readable of job {ref}: {line!r}")
        return job

    def _scancel(self, ref: str, *options: str) -> None:
        result = self._slurm("scancel", *options, _job_id(ref))
        words = _words(result)
        failed = result.returncode != 0 or "error" in words.lower()
        if failed and not any(marker in words.lower() for marker in _NO_SUCH_JOB):
            raise ExecutorUnavailable(f"Slurm could not signal job {ref}: {words}")


def _job_id(ref: str) -> str:
    if not ref.isdigit():
        raise ValueError(f"{ref!r} is not a Slurm job id")
    return ref


def _words(result: subprocess.CompletedProcess[str]) -> str:
    """What a Slurm command said on stderr, its prefixes dropped ("sbatch: error: "), one line."""
    lines = [re.sub(r"^\w+: (error: |fatal: )?", "", line).strip() for line in result.stderr.splitlines()]
    return "; ".join(line for line in lines if line) or f"exit status {result.returncode}"


def _unreachable(words: str) -> bool:
    return any(marker in words.lower() for marker in _UNREACHABLE)


def _value(text: str) -> str:
    return "" if text in ("", "(null)", "None") else text


def _ended(ref: str, state: str, node: str, job: Mapping[str, str]) -> str:
    """Why a job is over, in words: its state, where, and the exit code or signal when it says anything."""
    code, _, signal = job.get("ExitCode", "0:0").partition(":")
    details = [_ENDED_STATES[state]]
    if code == _WORK_DIR_REFUSED:
        details.append("the node's work dir ([jobs.slurm] work_dir) is missing, a link or another user's")
    elif code not in ("", "0"):
        details.append(f"exit code {code}")
    if signal not in ("", "0"):
        details.append(f"signal {signal}")
    if _value(job.get("Reason", "")):
        details.append(f"Slurm's reason: {job['Reason']}")
    where = f" on {node}" if node else " before it started"
    return f"Slurm job {ref} ended {state}{where}: {', '.join(details)}"


def _text(table: Mapping[str, object], key: str, default: str) -> str:
    value = table.get(key, default)
    if not isinstance(value, str):
        raise ConfigError(f"[jobs.slurm] {key} = {value!r} must be a string")
    return value


def _absolute(table: Mapping[str, object], key: str, default: str) -> str:
    value = _text(table, key, default)
    if not PurePosixPath(value).is_absolute():
        raise ConfigError(f"[jobs.slurm] {key} = {value!r} must be an absolute path on the cluster's nodes")
    return value


def _partitions(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(isinstance(p, str) and p for p in value.values()):
        raise ConfigError(f"[jobs.slurm] partitions = {value!r} must be a table of flavor = \"partition\", "
                          f"e.g. partitions = {{ a10g-large = \"gpu\" }}")
    unknown = sorted(set(value) - set(FLAVOR_NAMES))
    if unknown:
        raise ConfigError(f"[jobs.slurm] partitions: {unknown[0]} is not a flavor keephub has; use one of "
                          f"{', '.join(FLAVOR_NAMES)}")
    return dict(value)


def _job_name(launch: Launch) -> str:
    """The Slurm job name of an attempt: how a resubmission finds a job an earlier, unanswered sbatch queued."""
    return f"keephub-{launch.job_id}-{launch.attempt}"


def _sbatch_options(value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(o, str) and o.startswith("-") for o in value):
        raise ConfigError(f"[jobs.slurm] sbatch_options = {value!r} must be a list of sbatch options, one "
                          f"string each, e.g. [\"--account=ml\", \"--qos=normal\"]")
    for option in value:
        name = option.split("=", 1)[0] if option.startswith("--") else _SHORT_OPTIONS.get(option[:2], "")
        if name in _RESERVED_OPTIONS:
            raise ConfigError(f"[jobs.slurm] sbatch_options: keephub sets {name} itself (from the attempt, "
                              f"its flavor and partition, partitions, memory); remove {option}")
    return list(value)
