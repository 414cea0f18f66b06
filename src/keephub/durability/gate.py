"""Preflight at submission: refuse a job that would lose its results, and decide what the sidecar guards.

Checking arguments against the installed transformers/TRL means importing them (~7 s, ~440 MB), so
the checks run in one warm worker process, not in the server; the parts that need the server (may
this user write the target repo? what does it already hold?) are answered here first and passed in.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Callable

from keephub.durability.preflight import UNKNOWN, WriteAccess, analyze_script, preflight
from keephub.wire.errors import Unprocessable

_PR_SET_PDEATHSIG = 1
CHECK_TIMEOUT_SECONDS = 120
OVERRIDE_LABEL = "keephub.preflight"
OVERRIDE_VALUE = "override"


@dataclass(frozen=True)
class Verdict:
    """The outcome of preflight for one submission."""

    ok: bool
    checklist: str
    report: dict
    repo: str | None
    output_dir: str | None
    # The script may push to the hub itself (push_to_hub on or unknown): the sidecar then neither uploads
    # the final files ahead of the script's own push nor commits without first looking for that push.
    script_pushes: bool


def _run(source: str, secret_names: list[str], timeout_seconds: int, environment: dict[str, str],
         writable: dict[str, WriteAccess], listings: dict[str, list[str] | None], keephub_saving: bool,
         bucket_mounts: dict[str, str]) -> tuple:
    """In the worker: the full preflight, with the server's answers looked up from plain dicts."""
    unasked = WriteAccess(None, "keephub could not tell which repo this is before the run")
    report = preflight(source, secret_names=secret_names, timeout_seconds=timeout_seconds,
                       can_write=lambda repo: writable.get(repo, unasked),
                       repo_files=lambda repo: listings.get(repo), keephub_saving=keephub_saving,
                       environment=environment, bucket_mounts=bucket_mounts)
    return not report.failed, report.render(), report.to_wire()


def _worker_setup() -> None:
    """Die with the server (even on SIGKILL, which runs no clean-up), and yield the CPU to requests and jobs."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:
        os._exit(0)
    os.nice(10)


def _warm() -> None:
    _run("from trl import SFTConfig\nSFTConfig(output_dir='o')\n", [], 60, {}, {}, {}, False, {})


class PreflightGate:
    def __init__(self) -> None:
        self.pool = self._new_pool()

    @staticmethod
    def _new_pool() -> ProcessPoolExecutor:
        pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_worker_setup)
        pool.submit(_warm)
        return pool

    def _restart(self) -> None:
        """A worker that died (OOM) or hangs is replaced, so one bad script cannot jam every submission."""
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.pool = self._new_pool()

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def check(self, source: str, *, secret_names: list[str], timeout_seconds: int, environment: dict[str, str],
              labels: dict[str, str], can_write: Callable[[str, str | None], WriteAccess],
              repo_files: Callable[[str], list[str] | None],
              bucket_mounts: dict[str, str] | None = None) -> Verdict | None:
        """The verdict for a training script; None for a script that neither trains nor pushes (nothing to lose).

        `can_write(repo, target)` answers for the token the job will hold, given the repo keephub will guard
        for it (`target`, None when it guards none): a job's own token writes only that repo. `bucket_mounts`
        are the job's read-write bucket volumes (mount path → bucket), which keep what is written under them."""
        repo, output_dir = labels.get("keephub.repo"), labels.get("keephub.output-dir")
        try:
            facts = analyze_script(source, environment=environment)
        except (SyntaxError, RecursionError):
            facts = None
        script_repos: list[str] = []
        if facts is not None:
            if not (facts.configs or facts.lines("push") or repo):
                return None
            repo = repo or _known(facts.hub_model_id)
            output_dir = output_dir or _known(facts.output_dir)
            script_repos = [found for call in facts.configs if (found := _known(call.value("hub_model_id")))]
        guarded = bool(repo and output_dir)
        target = repo if guarded else None
        writable = {name: can_write(name, target) for name in {*script_repos, *([repo] if repo else [])}}
        listings = {repo: repo_files(repo)} if repo else {}
        try:
            ok, checklist, report = self.pool.submit(
                _run, source, secret_names, timeout_seconds, environment, writable, listings, guarded,
                bucket_mounts or {}
            ).result(timeout=CHECK_TIMEOUT_SECONDS)
        except (BrokenProcessPool, TimeoutError) as exc:
            self._restart()
            raise Unprocessable(
                f"keephub could not finish the preflight checks ({type(exc).__name__}); retry, or resubmit with "
                f"the label {OVERRIDE_LABEL}={OVERRIDE_VALUE} to skip them"
            )
        if guarded and labels.get("keephub.repo") and writable[repo].allowed is False:
            ok = False
            checklist += (f"\n❌ keephub.repo: the sidecar could not push to {repo}: {writable[repo].reason}"
                          "\n   fix: name a repo in your own namespace in the keephub.repo label")
            report = {**report, "ok": False, "failed": report.get("failed", 0) + 1}
        return Verdict(ok, checklist, report, repo if guarded else None, output_dir if guarded else None,
                       script_pushes=facts is None or facts.pushes_itself)


def _known(value: object) -> str | None:
    return value if isinstance(value, str) and value is not UNKNOWN and value else None
