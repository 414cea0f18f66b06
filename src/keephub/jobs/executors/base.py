"""The executor seam: what keephub needs from whatever runs a job attempt (this machine, Slurm, later
Kubernetes or Ray), and nothing more.

An executor starts one attempt's agent (`keephub.agent.main`), says what became of it, signals it and stops
it. Everything else — stages, attempts and retries, timeouts, cancel, logs, durability records, secrets,
job tokens — lives above it in `keephub.jobs.scheduler` (the lifecycle), written once, and reaches the attempt only through
the agent's HTTP contract (`keephub.jobs.agent_api`). An executor keeps no state keephub cannot rebuild
from the `ref` it returned: after a restart, `adopt` is handed the refs of every attempt still active.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from keephub.jobs.flavors import Flavor

State = Literal["queued", "running", "gone"]


class LaunchRefused(Exception):
    """The executor will never run this attempt as asked (a bad partition, resources the cluster lacks):
    the attempt ends ERROR with this message, which should be the executor's own words."""


class ExecutorUnavailable(Exception):
    """The executor cannot take the attempt now (Slurm's controller is down): the job stays SCHEDULING
    with this message as its reason and is offered again later; nothing is lost."""


@dataclass(frozen=True)
class Launch:
    """One attempt to start, and how its agent finds keephub."""

    job_id: str
    attempt: int
    flavor: Flavor
    # Seconds the attempt may run (what is left of the job's timeout) and the grace after a stop signal.
    time_limit_seconds: int
    grace_seconds: int
    # The agent's credential for this attempt: handed to the agent on its stdin, never on a command line.
    credential: str
    # The URL the agent reaches keephub at (HTTP is its only link to keephub).
    server_url: str


@dataclass(frozen=True)
class Observed:
    """What the executor sees of an attempt: queued (with the reason it waits), running (on which node),
    or gone (with why, when the executor knows: node failure, killed, out of memory)."""

    state: State
    reason: str = ""
    node: str = ""


class Executor(Protocol):
    """Start, watch, signal and stop one attempt's agent. Methods block (commands, /proc); keephub calls
    them from worker threads."""

    name: str

    def has_room(self, flavor: Flavor) -> bool:
        """Whether an attempt of `flavor` can be handed over now (the local executor's free cores); a
        cluster executor says yes and lets its queue wait."""

    def launch(self, launch: Launch) -> str:
        """Start the attempt's agent; return the ref keephub stores to find it again (a Slurm job id, a
        process id). Raises LaunchRefused or ExecutorUnavailable."""

    def adopt(self, refs: list[str]) -> None:
        """After keephub (re)starts: these attempts are still active; account for what they hold."""

    def observe(self, ref: str) -> Observed:
        """The attempt's state as the executor sees it."""

    def stop(self, ref: str) -> None:
        """Ask the agent to stop the job (SIGTERM: the script gets it, the sidecar rescues, the agent kills
        after the grace and reports); for a queued attempt, remove it from the queue."""

    def kill(self, ref: str) -> None:
        """End the attempt now, agent included: for an agent keephub has given up on."""

    def release(self, ref: str) -> None:
        """The attempt has ended: give back what it held."""


def agent_argv(python: str, launch: Launch, work_dir: str, *extra: str) -> list[str]:
    """The agent's command line: keephub's own values only (ids, paths, numbers). The agent reads its
    credential from the first line of stdin and everything else about the attempt from keephub over HTTP."""
    return [python, "-I", "-m", "keephub.agent.main", f"--server={launch.server_url}", f"--job={launch.job_id}",
            f"--attempt={launch.attempt}", f"--work-dir={work_dir}", *extra]
