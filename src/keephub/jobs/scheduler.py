"""The local scheduler: start SCHEDULING jobs when their flavor's cores and GPUs are free, run each attempt
in a fresh sandbox, enforce timeout, cancel (SIGTERM, grace, SIGKILL) and the flavor's limits (memory,
processes, disk), retry failed attempts, and recover after a restart.

Every transition is written to the database before it is acted on. Sandboxes die with the server
(bwrap --die-with-parent), so after a restart no attempt can still be running: those recorded as
RUNNING are marked ERROR with the reason and retried if attempts remain.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy import select

from keephub.config import ConfigError, Settings
from keephub.durability import record as durability_record
from keephub.jobs import agent_api, egress, sandbox
from keephub.jobs.flavors import Flavor
from keephub.jobs.logs import LogWriter, attempt_log, timestamp
from keephub.jobs.scheduled import ScheduledJobs
from keephub.jobs.secrets import Redactor
from keephub.jobs.service import JobService, human_duration, mark_interrupted, utcnow
from keephub.storage.db import Database
from keephub.storage.schema import Job, JobAttempt

log = logging.getLogger("keephub.jobs")
POLL_SECONDS = 1.0
USAGE_SAMPLE_SECONDS = 0.25
DISK_SAMPLE_SECONDS = 2.0
EGRESS_PORT = 3128
JOB_NETWORKS = ("isolated", "host")


@dataclass
class Allocation:
    cpus: list[int]
    gpus: list[str]


@dataclass
class Running:
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None


@dataclass(frozen=True)
class Outcome:
    kind: str  # COMPLETED | ERROR | CANCELED | TIMEOUT
    message: str
    exit_code: int | None = None


def keep_to(cpus: list[int]) -> None:
    """Pin every thread of the server (and what it starts later, which inherits it) to `cpus`, the cores
    left over when `job_cpus` gives jobs fewer than all: a job's cores are then its own, as a cpuset would
    make them, and its training does not share them with the hub's request handling. Jobs are pinned to
    their own cores when they start. Nothing changes when jobs may use every core."""
    if not cpus:
        return
    for task in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(task), cpus)
        except OSError:  # a thread that has just exited
            pass


@dataclass(frozen=True)
class JobNetwork:
    """How jobs reach keephub and the egress proxy: routes into isolated sandboxes, or the host's network."""

    endpoint: str
    routes: tuple[sandbox.Route, ...] = ()
    host_names: tuple[str, ...] = ()
    proxy_env: dict[str, str] = field(default_factory=dict)


def job_network(settings: Settings, layout: sandbox.SandboxLayout) -> JobNetwork:
    """In an isolated sandbox, keephub's URL leads to the sandbox's own loopback, where a route forwards it to
    keephub's Unix socket: a host name in the URL is pointed at loopback, a non-loopback address is replaced
    by 127.0.0.1, as is an IPv6 one (links keephub returns with it will not work from jobs: give public_url a
    host name)."""
    if settings.job_network == "host":
        return JobNetwork(endpoint=settings.base_url)
    url = urlsplit(settings.base_url)
    if url.scheme != "http":
        raise ConfigError(f"public_url {settings.base_url} is not http://: jobs in isolated networks reach keephub "
                          "over plain HTTP on a socket of their own; set job_network = \"host\" to let jobs use it")
    host, port = (url.hostname or "127.0.0.1"), url.port or 80
    names: tuple[str, ...] = ()
    try:
        address = ipaddress.ip_address(host)
        listen = host if address.version == 4 and address.is_loopback else "127.0.0.1"
    except ValueError:
        listen, names = "127.0.0.1", (host,)
    endpoint = f"http://{host if names else listen}:{port}"
    egress_port = EGRESS_PORT if port != EGRESS_PORT else EGRESS_PORT + 1
    proxy = f"http://127.0.0.1:{egress_port}"
    no_proxy = ",".join(["127.0.0.1", "localhost", "::1", *names])
    return JobNetwork(
        endpoint=endpoint,
        routes=(sandbox.Route(listen, port, layout.hub_socket), sandbox.Route("127.0.0.1", egress_port,
                                                                               layout.egress_socket)),
        host_names=names,
        proxy_env={"HTTPS_PROXY": proxy, "HTTP_PROXY": proxy, "https_proxy": proxy, "http_proxy": proxy,
                   "NO_PROXY": no_proxy, "no_proxy": no_proxy},
    )


class Scheduler:
    def __init__(self, settings: Settings, db: Database, service: JobService) -> None:
        self.settings = settings
        self.db = db
        self.service = service
        self.jobs_dir = service.jobs_dir
        if settings.job_network not in JOB_NETWORKS:
            raise ConfigError(f"job_network={settings.job_network!r} must be one of {', '.join(JOB_NETWORKS)}")
        if settings.job_uid_base <= 0:
            raise ConfigError(f"job_uid_base={settings.job_uid_base} must be a positive uid: jobs never run as root")
        self.layout = sandbox.SandboxLayout.for_this_host(settings.data_dir, settings.job_uid_base)
        self.layout.check_isolated_from(settings.data_dir)
        self.layout.check_uid_range()
        self.egress = egress.EgressProxy(self.layout.egress_socket,
                                         egress.parse_allow_list(settings.job_egress_allow))
        self.network = job_network(settings, self.layout)
        self.watch_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="keephub-limits")
        available = sorted(os.sched_getaffinity(0))
        self.free_cpus: list[int] = available[: settings.job_cpus or len(available)]
        keep_to(available[len(self.free_cpus):])
        self.free_gpus: list[str] = [g.strip() for g in settings.job_gpus.split(",") if g.strip()]
        self.running: dict[str, Running] = {}
        self.scheduled = ScheduledJobs(service)
        self.wake = asyncio.Event()

    # -- main loop -----------------------------------------------------------------------------------
    async def run(self) -> None:
        await asyncio.to_thread(self.recover)
        if self.settings.job_network == "isolated":
            await self.egress.start()
        while True:
            try:
                await self.schedule_once()
            except Exception:  # noqa: BLE001 - the loop must survive any single job's failure
                log.exception("scheduler pass failed")
            try:
                await asyncio.wait_for(self.wake.wait(), POLL_SECONDS)
            except TimeoutError:
                pass
            self.wake.clear()

    def poke(self) -> None:
        self.wake.set()

    async def schedule_once(self) -> None:
        await asyncio.to_thread(self.scheduled.run_due)
        waiting = await asyncio.to_thread(self._waiting_jobs)
        for job_id, flavor_name, cancel_by in waiting:
            if job_id in self.running:
                continue
            if cancel_by:
                await asyncio.to_thread(self.service.finish, job_id, "CANCELED", f"canceled by {cancel_by}")
                continue
            flavor = self.service.flavors.get(flavor_name)
            if flavor is None:
                await asyncio.to_thread(self.service.finish, job_id, "ERROR",
                                        f"flavor {flavor_name!r} is no longer configured on this keephub")
                continue
            allocation = self._allocate(flavor.cpus, flavor.gpus)
            if allocation is None:
                continue
            handle = Running()
            self.running[job_id] = handle
            handle.task = asyncio.create_task(self._run_job(job_id, allocation, handle))

    def _waiting_jobs(self) -> list[tuple[str, str, str | None]]:
        with self.db.read() as session:
            rows = session.execute(
                select(Job.id, Job.flavor, Job.cancel_requested_by).where(Job.stage == "SCHEDULING")
                .order_by(Job.created_at)
            ).all()
            return [(r[0], r[1], r[2]) for r in rows]

    def _allocate(self, cpus: int, gpus: int) -> Allocation | None:
        if len(self.free_cpus) < cpus or len(self.free_gpus) < gpus:
            return None
        allocation = Allocation(self.free_cpus[:cpus], self.free_gpus[:gpus])
        self.free_cpus = self.free_cpus[cpus:]
        self.free_gpus = self.free_gpus[gpus:]
        return allocation

    def _release(self, allocation: Allocation) -> None:
        self.free_cpus = sorted(self.free_cpus + allocation.cpus)
        self.free_gpus = self.free_gpus + allocation.gpus

    def request_cancel(self, job_id: str) -> None:
        handle = self.running.get(job_id)
        if handle is not None:
            handle.cancel.set()
        self.poke()

    # -- one job -------------------------------------------------------------------------------------
    async def _run_job(self, job_id: str, allocation: Allocation, handle: Running) -> None:
        try:
            loaded = await asyncio.to_thread(self.service.load, None, job_id)
            max_attempts = loaded.job.max_attempts
            number = (loaded.attempts[-1].number if loaded.attempts else 0) + 1
            while True:
                outcome = await self._run_attempt(job_id, number, allocation, handle)
                if outcome.kind == "COMPLETED":
                    await asyncio.to_thread(self.service.finish, job_id, "COMPLETED", outcome.message)
                    return
                if outcome.kind == "CANCELED":
                    await asyncio.to_thread(self.service.finish, job_id, "CANCELED", outcome.message)
                    return
                if outcome.kind == "TIMEOUT":
                    await asyncio.to_thread(self.service.finish, job_id, "ERROR", outcome.message)
                    return
                if number >= max_attempts:
                    suffix = f" (attempt {number} of {max_attempts})" if max_attempts > 1 else ""
                    await asyncio.to_thread(self.service.finish, job_id, "ERROR", outcome.message + suffix)
                    return
                number += 1
        except Exception as exc:  # noqa: BLE001 - a job must never be left RUNNING by a keephub bug
            log.exception("job %s failed inside keephub", job_id)
            await asyncio.to_thread(self.service.finish, job_id, "ERROR", f"keephub failed to run the job: {exc}")
        finally:
            self._release(allocation)
            self.running.pop(job_id, None)
            self.poke()

    async def _run_attempt(self, job_id: str, number: int, allocation: Allocation, handle: Running) -> Outcome:
        loaded = await asyncio.to_thread(self.service.load, None, job_id)
        job, spec = loaded.job, loaded.spec
        secrets = await asyncio.to_thread(self.service.secrets_of, job)
        redact = Redactor(list(secrets.values()))
        account = await asyncio.to_thread(self.service.accounts.find, job.owner)
        if account is None:
            return Outcome("ERROR", f"the job's owner {job.owner!r} no longer exists")
        user = self.layout.user_for(account.id)
        workspace = self.layout.job_dir(self.layout.workspaces / f"{job_id}-{number}", user)
        writer = LogWriter(attempt_log(self.jobs_dir, job_id, number), self.settings.job_log_max_bytes)
        try:
            if number == 1:
                writer.note(f"===== Job started at {timestamp()} =====")
                for note in spec.get("preflightNotes", []):
                    writer.note(note)
            else:
                writer.note(f"===== Attempt {number} of {job.max_attempts}: starting in a fresh sandbox =====")
            deadline = await asyncio.to_thread(self._mark_running, job_id, number)
            if deadline is None:
                return Outcome("CANCELED", f"canceled by {await asyncio.to_thread(self._canceller, job_id)}")
            if spec.get("durability"):
                await asyncio.to_thread(self._open_record_channel, job_id, number, workspace)
            env = sandbox.sandbox_env(
                self.layout,
                {"HF_ENDPOINT": self.network.endpoint, **self.network.proxy_env,
                 "OMP_NUM_THREADS": str(max(1, len(allocation.cpus)))},
                {**spec["environment"], **secrets},
                {"JOB_ID": job_id, "KEEPHUB_JOB_ID": job_id, "KEEPHUB_ATTEMPT": str(number),
                 "KEEPHUB_AGENT_URL": self.network.endpoint,
                 "CUDA_VISIBLE_DEVICES": ",".join(allocation.gpus)},
            )
            flavor = self.service.flavors[job.flavor]
            uv_cache = self.layout.uv_cache_for(job.owner, user)
            box = sandbox.SandboxSpec(
                workspace=workspace, uv_cache=uv_cache, command=self._with_sidecar(spec, job_id, number),
                env=env, gpus=allocation.gpus, cpus=allocation.cpus, limits=self._limits(flavor), user=user,
                routes=self.network.routes, hosts=self.network.host_names)
            try:
                process = await sandbox.start(self.layout, box)
            except (sandbox.SandboxUnavailable, OSError, subprocess.SubprocessError) as exc:
                outcome = Outcome("ERROR", f"the sandbox could not start: {exc}")
                writer.note(f"keephub: {outcome.message}")
                if spec.get("durability"):
                    await asyncio.to_thread(self._close_record_channel, job_id, number)
                await asyncio.to_thread(self._finish_attempt, job_id, number, outcome)
                return outcome
            pump = asyncio.create_task(sandbox.pump_output(process, lambda line: writer.write(redact(line))))
            outcome = await self._supervise(process, handle, deadline, job, box)
            try:
                await asyncio.wait_for(pump, 10)
            except TimeoutError:
                pump.cancel()
            if spec.get("durability"):
                await asyncio.to_thread(self._close_record_channel, job_id, number)
            writer.end_output()
            writer.note(f"===== {outcome.message} =====")
            await asyncio.to_thread(self._finish_attempt, job_id, number, outcome)
            return outcome
        finally:
            writer.close()
            await asyncio.to_thread(sandbox.remove_tree, workspace)
            stripped = await asyncio.to_thread(sandbox.clear_setid_bits, self.layout.uv_cache_for(job.owner, user),
                                               user)
            if stripped:
                log.warning("job %s left %d setuid/setgid files in the uv cache of %s; their bits were cleared",
                            job_id, stripped, job.owner)

    def _open_record_channel(self, job_id: str, number: int, workspace: Path) -> None:
        """Make the attempt's agent credential and leave it for the sidecar in the private workspace (mode
        600), never on a command line or in the environment: the sidecar reads and deletes the file before
        the training script starts."""
        credential = agent_api.issue_credential(self.db, job_id, number)
        owner = workspace.stat()
        fd = os.open(workspace / agent_api.CREDENTIAL_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            if owner.st_uid != os.geteuid():  # the job runs as a uid of its own, which owns its workspace
                os.fchown(fh.fileno(), owner.st_uid, owner.st_gid)
            fh.write(credential)

    def _close_record_channel(self, job_id: str, number: int) -> None:
        """Once the sandbox has ended: revoke the credential, and say so if no verdict came."""
        agent_api.revoke_credential(self.db, job_id, number)
        durability_record.add_missing_verdict(self.db, job_id, number)

    def _with_sidecar(self, spec: dict, job_id: str, number: int) -> list[str]:
        """Wrap the user's command in the durability sidecar when keephub guards this job's results. Values that
        come from the user (repo, output directory) are given as `--option=value`, so none can be read as an
        option of its own."""
        plan = spec.get("durability")
        if not plan:
            return spec["command"]
        wrapper = [str(self.layout.python), "-I", "-m", "keephub.durability.sidecar", f"--repo={plan['repo']}",
                   f"--output-dir={plan['outputDir']}", "--job-id", job_id, "--attempt", str(number),
                   "--grace", str(max(1, self.settings.job_grace_seconds - 5)),
                   "--agent-credential-file", f"{sandbox.WORKSPACE}/{agent_api.CREDENTIAL_FILE}"]
        if plan.get("resume"):
            wrapper.append("--resume")
        if plan.get("scriptPushes") is False:
            wrapper.append("--sole-pusher")
        return [*wrapper, "--", *spec["command"]]

    async def _supervise(self, process: asyncio.subprocess.Process, handle: Running, deadline: float,
                         job: Job, box: sandbox.SandboxSpec) -> Outcome:
        waiter = asyncio.create_task(process.wait())
        canceller = asyncio.create_task(handle.cancel.wait())
        limits = asyncio.create_task(self._watch_limits(process, box, job.flavor, self.watch_pool))
        remaining = max(0.0, deadline - time.monotonic())
        done, _ = await asyncio.wait({waiter, canceller, limits}, timeout=remaining,
                                     return_when=asyncio.FIRST_COMPLETED)
        canceller.cancel()
        limits.cancel()
        if limits in done and not limits.cancelled():
            if limits.exception() is not None:
                log.error("the limit watch of job %s failed", job.id, exc_info=limits.exception())
                sandbox.kill_sandbox(process)
            await waiter
            reason = limits.result() if limits.exception() is None else (
                f"stopped: keephub could not check the job's limits ({limits.exception()!r})")
            return Outcome("ERROR", reason, process.returncode)
        if waiter in done:
            code = waiter.result()
            if code == 0:
                return Outcome("COMPLETED", "completed", 0)
            if code < 0:
                return Outcome("ERROR", f"killed by signal {signal.Signals(-code).name}", code)
            return Outcome("ERROR", f"exited with status {code}", code)
        if handle.cancel.is_set():
            cancel_by = await asyncio.to_thread(self._canceller, job.id)
            result = Outcome("CANCELED", f"canceled by {cancel_by}")
        else:
            result = Outcome("TIMEOUT", f"timed out after {human_duration(job.timeout_seconds)}")
        await self._stop(process, waiter)
        return Outcome(result.kind, result.message, process.returncode)

    def _limits(self, flavor: Flavor) -> sandbox.Limits:
        """The flavor's limits, each capped by its job_* setting when that is set."""
        def capped(own: int, cap: int) -> int:
            return min(own, cap) if cap else own
        return sandbox.Limits(memory_bytes=capped(flavor.memory_gb, self.settings.job_memory_gb) * 1024**3,
                              processes=capped(flavor.processes, self.settings.job_processes),
                              disk_bytes=capped(flavor.disk_gb, self.settings.job_disk_gb) * 1024**3)

    @staticmethod
    async def _watch_limits(process: asyncio.subprocess.Process, box: sandbox.SandboxSpec, flavor: str,
                            pool: ThreadPoolExecutor) -> str:
        """Kill the sandbox and return the reason once it holds more than a limit of its flavor.

        Enforced from user space by sampling, since the machines keephub runs on may offer no writable
        cgroup: memory and tasks every quarter second (RLIMIT_NPROC on the job's own uid stops a fork or
        thread bomb outright), disk every two seconds (RLIMIT_FSIZE caps any single file). Samples run on
        threads of their own, so a sandbox that is slow to look through delays no request."""
        loop = asyncio.get_running_loop()
        limits = box.limits
        cache_before = await loop.run_in_executor(pool, sandbox.disk_bytes, [box.uv_cache])
        next_disk_sample = 0.0
        while True:
            await asyncio.sleep(USAGE_SAMPLE_SECONDS)
            if process.returncode is not None:
                continue
            used = await loop.run_in_executor(pool, sandbox.usage, process)
            reason = None
            if used.memory_bytes > limits.memory_bytes:
                reason = (f"exceeded the memory limit of {limits.memory_bytes // 1024**3} GB of flavor {flavor} "
                          "(processes, files in /tmp and /dev/shm, memfds, shared memory); choose a bigger "
                          "flavor or use less memory")
            elif used.tasks >= limits.processes:
                reason = (f"reached the limit of {limits.processes} processes and threads of flavor {flavor}; "
                          "start fewer workers or threads")
            elif used.open_files >= sandbox.MAX_OPEN_FILES_SEEN:
                reason = (f"holds {sandbox.MAX_OPEN_FILES_SEEN} or more open files across its processes; "
                          "close files it no longer needs")
            elif time.monotonic() >= next_disk_sample:
                next_disk_sample = time.monotonic() + DISK_SAMPLE_SECONDS
                workspace, cache = await asyncio.gather(
                    loop.run_in_executor(pool, sandbox.disk_bytes, [box.workspace]),
                    loop.run_in_executor(pool, sandbox.disk_bytes, [box.uv_cache]))
                disk = workspace + max(0, cache - cache_before) + used.deleted_bytes
                if disk > limits.disk_bytes:
                    reason = (f"exceeded the disk limit of {limits.disk_bytes // 1024**3} GB of flavor {flavor} "
                              "(/workspace, deleted files still open and what the job added to its uv cache); "
                              "write less or push checkpoints and delete old ones")
            if reason is not None:
                sandbox.kill_sandbox(process)
                return reason

    async def _stop(self, process: asyncio.subprocess.Process, waiter: asyncio.Task) -> None:
        sandbox.terminate_sandbox(process)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self.settings.job_grace_seconds)
        except TimeoutError:
            sandbox.kill_sandbox(process)
            await waiter

    # -- persistence helpers (run in threads) --------------------------------------------------------
    def _mark_running(self, job_id: str, number: int) -> float | None:
        """Record the attempt as running; returns the job's deadline on the monotonic clock, or None when a
        cancel arrived before the attempt could start.

        The timeout covers the whole job, retries included, counted from its first start.
        """
        with self.db.write() as session:
            job = session.get(Job, job_id)
            assert job is not None
            if job.cancel_requested_by:
                return None
            now = utcnow()
            if job.started_at is None:
                job.started_at = now
            job.stage, job.message = "RUNNING", None
            session.add(JobAttempt(job_id=job_id, number=number, started_at=now, outcome="RUNNING"))
            started = job.started_at if job.started_at.tzinfo else job.started_at.replace(tzinfo=now.tzinfo)
            elapsed = (now - started).total_seconds()
        return time.monotonic() + job.timeout_seconds - elapsed

    def _finish_attempt(self, job_id: str, number: int, outcome: Outcome) -> None:
        with self.db.write() as session:
            attempt = session.get(JobAttempt, (job_id, number))
            assert attempt is not None
            attempt.outcome, attempt.message = outcome.kind, outcome.message
            attempt.exit_code, attempt.finished_at = outcome.exit_code, utcnow()

    def _canceller(self, job_id: str) -> str:
        with self.db.read() as session:
            job = session.get(Job, job_id)
            return (job.cancel_requested_by if job else None) or "an admin"

    def recover(self) -> None:
        """After a restart: interrupted attempts become ERROR; their jobs are retried if attempts remain."""
        with self.db.read() as session:
            rows = session.execute(
                select(JobAttempt.job_id, JobAttempt.number, Job.max_attempts)
                .join(Job, Job.id == JobAttempt.job_id)
                .where(JobAttempt.outcome == "RUNNING", Job.stage.in_(("RUNNING", "SCHEDULING")))
            ).all()
            stuck = session.execute(select(Job.id).where(Job.stage == "RUNNING")).scalars().all()
        reason = "keephub restarted while this attempt was running; its sandbox was stopped"
        handled = set()
        for job_id, number, max_attempts in rows:
            handled.add(job_id)
            mark_interrupted(self.db, job_id, number, reason)
            writer = LogWriter(attempt_log(self.jobs_dir, job_id, number))
            writer.note(f"===== {reason} =====")
            writer.close()
            sandbox.remove_tree(self.layout.workspaces / f"{job_id}-{number}")
            if number < max_attempts:
                with self.db.write() as session:
                    job = session.get(Job, job_id)
                    assert job is not None
                    job.stage, job.message = "SCHEDULING", f"attempt {number} was interrupted by a restart; retrying"
            else:
                self.service.finish(job_id, "ERROR", reason)
        for job_id in stuck:
            if job_id not in handled:
                self.service.finish(job_id, "ERROR", reason)
        for path in self.layout.workspaces.iterdir():
            sandbox.remove_tree(path)
        for cache in self.layout.uv_caches.iterdir():
            owner = cache.stat().st_uid
            user = sandbox.JobUser(owner, owner) if self.layout.uid_base is not None else None
            sandbox.clear_setid_bits(cache, user)

