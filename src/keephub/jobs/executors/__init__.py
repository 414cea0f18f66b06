"""Executors: what runs job attempts. `local` (this machine) is the default; `slurm` hands them to a cluster."""

from __future__ import annotations

from keephub.agent import sandbox
from keephub.config import ConfigError, Settings
from keephub.jobs.executors.base import Executor
from keephub.jobs.executors.local import LocalExecutor
from keephub.jobs.executors.slurm import SlurmExecutor

EXECUTORS = ("local", "slurm")


def make_executor(settings: Settings, layout: sandbox.SandboxLayout, cpus: list[int], gpus: list[str]) -> Executor:
    """The executor `job_executor` names, checked against its settings; a mistake stops keephub at start."""
    executor = check_settings(settings)
    if executor is not None:
        return executor
    return LocalExecutor(layout, cpus, gpus, sandbox.hub_socket_path(settings.data_dir))


def check_settings(settings: Settings) -> Executor | None:
    """ConfigError naming the setting for an unknown executor or a bad [jobs.slurm] table; the cluster executor
    itself, checked against its cluster, when one is configured."""
    if settings.job_executor == "local":
        if settings.job_slurm:
            raise ConfigError("[jobs.slurm] is set but [jobs] executor is \"local\"; set executor = \"slurm\" to "
                              "use the cluster, or remove the [jobs.slurm] table")
        return None
    if settings.job_executor == "slurm":
        executor = SlurmExecutor(settings.job_slurm, hub_socket=str(sandbox.hub_socket_path(settings.data_dir)))
        executor.check()
        return executor
    raise ConfigError(f"[jobs] executor = {settings.job_executor!r} is not an executor keephub has; "
                      f"use one of {', '.join(EXECUTORS)}")
