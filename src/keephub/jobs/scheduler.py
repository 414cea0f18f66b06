"""The job lifecycle, written once above the executors: claim SCHEDULING jobs, hand each attempt to the
executor, take what its agent reports (start, heartbeats, log lines, exit), retry failed attempts, and give up
on attempts whose agent died.

Every transition is a conditional write to the database, so several keephub processes sharing one database
never both start, fail or finish the same attempt: a job is claimed by inserting its next attempt row (the
primary key lets one insert win), and an attempt ends by the update that finds it still active. Agents
outlive keephub: after a restart nothing is stopped; each active attempt's agent reports again, and only an
attempt the executor says is gone, or whose agent stays silent past the heartbeat deadline, is marked ERROR.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import secrets
import signal
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update

from keephub.agent import egress, sandbox
from keephub.agent.output import timestamp
from keephub.config import ConfigError, Settings
from keephub.durability import record as durability_record
from keephub.jobs import executors
from keephub.jobs.executors.base import Executor, ExecutorUnavailable, Launch, LaunchRefused
from keephub.jobs.logs import append_events, attempt_log
from keephub.jobs.plan import AttemptFacts, build_plan, job_network
from keephub.jobs.scheduled import ScheduledJobs
from keephub.jobs.service import TERMINAL, JobService, aware, human_duration, utcnow
from keephub.storage.db import Database, WriteConflict
from keephub.storage.schema import Job, JobAttempt
from keephub.wire import Forbidden
from keephub.wire.errors import Conflict

log = logging.getLogger("keephub.jobs")
POLL_SECONDS = 1.0
WATCH_SECONDS = 2.0
ACTIVE = ("PENDING", "RUNNING")
CREDENTIAL_PREFIX = "khagent_"
REFUSED = ("the credential is not this attempt's agent credential, or the attempt has ended; an agent "
           "credential is valid only for the attempt it was made for, while that attempt runs")
# An agent that exits reports first; one the executor sees gone without a report for this long has died.
GONE_GRACE_SECONDS = 5.0
# A claimed attempt not handed to its executor within this long was left by a keephub that stopped meanwhile.
LAUNCH_GRACE_SECONDS = 300.0
# Heartbeats come every second; the time of the last one is written at most this often.
HEARTBEAT_WRITE_SECONDS = 10.0


def digest(credential: str) -> str:
    return hashlib.sha256(credential.encode()).hexdigest()


def new_credential() -> str:
    return CREDENTIAL_PREFIX + secrets.token_urlsafe(32)


def keep_to(cpus: list[int]) -> None:
    """Pin every thread of the server (and what it starts later, which inherits it) to `cpus`, the cores
    left over when `job_cpus` gives jobs fewer than all: a job's cores are then its own, as a cpuset would
    make them. Nothing changes when jobs may use every core."""
    if not cpus:
        return
    for task in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(task), cpus)
        except OSError:  # a thread that has just exited
            pass


def check_job_settings(settings: Settings) -> None:
    """The job settings keephub cannot run with, as a ConfigError naming the setting: `keephub serve` checks
    them before it listens."""
    if settings.job_uid_base <= 0:
        raise ConfigError(f"job_uid_base={settings.job_uid_base} must be a positive uid: jobs never run as root")
    try:
        egress.parse_allow_list(settings.job_egress_allow)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    job_network(settings)
    executors.check_settings(settings)


@dataclass(frozen=True)
class Outcome:
    kind: str  # COMPLETED | ERROR | CANCELED | TIMEOUT
    message: str
    exit_code: int | None = None


class Scheduler:
    def __init__(self, settings: Settings, db: Database, service: JobService) -> None:
        self.settings = settings
        self.db = db
        self.service = service
        self.jobs_dir = service.jobs_dir
        check_job_settings(settings)
        self.network = job_network(settings)
        self.layout = sandbox.SandboxLayout.for_this_host(settings.data_dir, settings.job_uid_base)
        self.layout.check_isolated_from(settings.data_dir)
        self.layout.check_uid_range()
        available = sorted(os.sched_getaffinity(0))
        job_cpus = available[: settings.job_cpus or len(available)]
        keep_to(available[len(job_cpus):])
        gpus = [g.strip() for g in settings.job_gpus.split(",") if g.strip()]
        self.executor: Executor = executors.make_executor(settings, self.layout, job_cpus, gpus)
        self.scheduled = ScheduledJobs(service)
        self.wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.started_at = time.time()
        self._stopping: set[tuple[str, int]] = set()
        self._gone_since: dict[tuple[str, int], float] = {}

    # -- main loop -----------------------------------------------------------------------------------
    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        adopted = False
        next_watch = 0.0
        while True:
            try:
                if not adopted:
                    await asyncio.to_thread(self.adopt)
                    adopted = True
                await self.schedule_once()
                if time.monotonic() >= next_watch:
                    next_watch = time.monotonic() + WATCH_SECONDS
                    await asyncio.to_thread(self.watch_once)
            except Exception:  # noqa: BLE001 - the loop must survive any single job's failure
                log.exception("scheduler pass failed")
            try:
                await asyncio.wait_for(self.wake.wait(), POLL_SECONDS)
            except TimeoutError:
                pass
            self.wake.clear()

    def poke(self) -> None:
        """Wake the loop now; callable from any thread (the agent API ends attempts from request threads)."""
        if self._loop is None:
            return
        try:
            self._loop.call_soon_threadsafe(self.wake.set)
        except RuntimeError:  # the loop has closed: keephub is shutting down
            pass

    def adopt(self) -> None:
        """After (re)starting: the executor accounts for the attempts still active; their agents go on.
        Attempts of a keephub before executors (no executor recorded) had their sandboxes die with it: they end
        ERROR and are retried."""
        with self.db.read() as session:
            refs = session.execute(select(JobAttempt.executor_ref).where(
                JobAttempt.outcome.in_(ACTIVE), JobAttempt.executor == self.executor.name,
                JobAttempt.executor_ref.is_not(None))).scalars().all()
            orphans = session.execute(select(JobAttempt.job_id, JobAttempt.number).where(
                JobAttempt.outcome.in_(ACTIVE), JobAttempt.executor.is_(None))).all()
        self.executor.adopt(list(refs))
        for job_id, number in orphans:
            self.finish_attempt(job_id, number, Outcome("ERROR", "keephub was upgraded while this attempt ran; "
                                                                 "its sandbox stopped with the old keephub"))

    async def schedule_once(self) -> None:
        await asyncio.to_thread(self.scheduled.run_due)
        for job_id, flavor_name, cancel_by in await asyncio.to_thread(self._waiting_jobs):
            if cancel_by:
                await asyncio.to_thread(self.service.finish, job_id, "CANCELED", f"canceled by {cancel_by}")
                continue
            flavor = self.service.flavors.get(flavor_name)
            if flavor is None:
                await asyncio.to_thread(self.service.finish, job_id, "ERROR",
                                        f"flavor {flavor_name!r} is no longer configured on this keephub")
                continue
            if not self.executor.has_room(flavor):
                continue
            if not await asyncio.to_thread(self.start_attempt, job_id):
                return  # the executor is unavailable: try again on the next pass

    def _waiting_jobs(self) -> list[tuple[str, str, str | None]]:
        """SCHEDULING jobs with no active attempt, oldest first."""
        active = select(JobAttempt.job_id).where(JobAttempt.outcome.in_(ACTIVE))
        with self.db.read() as session:
            rows = session.execute(
                select(Job.id, Job.flavor, Job.cancel_requested_by)
                .where(Job.stage == "SCHEDULING", Job.id.not_in(active)).order_by(Job.created_at)
            ).all()
            return [(r[0], r[1], r[2]) for r in rows]

    def request_cancel(self, job_id: str) -> None:
        """Act on a cancel now: an attempt whose agent has not started yet (queued in the cluster) ends
        CANCELED and leaves the queue; a running one is stopped through its executor (its agent also hears it
        on its next heartbeat)."""
        with self.db.read() as session:
            row = session.execute(
                select(JobAttempt.number, JobAttempt.outcome, JobAttempt.executor_ref, Job.cancel_requested_by)
                .join(Job, Job.id == JobAttempt.job_id)
                .where(JobAttempt.job_id == job_id, JobAttempt.outcome.in_(ACTIVE))).first()
        if row is not None:
            number, state, ref, cancel_by = row
            canceled = Outcome("CANCELED", f"canceled by {cancel_by}")
            if state == "PENDING" and self.finish_attempt(job_id, number, canceled, only_if=("PENDING",)):
                if ref:  # else it is being launched: start_attempt withdraws it once it has its ref
                    try:
                        self.executor.stop(ref)
                    except ExecutorUnavailable as exc:
                        log.warning("canceled attempt %s/%d stays in the executor's queue for now: %s",
                                    job_id, number, exc)
            elif ref:
                self._stop(job_id, number, ref)
        self.poke()

    # -- starting an attempt -------------------------------------------------------------------------
    def start_attempt(self, job_id: str) -> bool:
        """Claim the job by inserting its next attempt, then hand that attempt to the executor. Returns False
        when the executor is unavailable (the claim is withdrawn and the job waits with the reason)."""
        credential = new_credential()
        claimed = self._claim(job_id, credential)
        if claimed is None:
            return True
        number, flavor, time_left = claimed
        launch = Launch(job_id=job_id, attempt=number, flavor=flavor, time_limit_seconds=max(1, int(time_left)),
                        grace_seconds=self.settings.job_grace_seconds, credential=credential,
                        server_url=self.agent_url())
        try:
            ref = self.executor.launch(launch)
        except ExecutorUnavailable as exc:
            with self.db.write() as session:
                session.execute(delete(JobAttempt).where(JobAttempt.job_id == job_id, JobAttempt.number == number,
                                                         JobAttempt.outcome == "PENDING"))
                job = session.get(Job, job_id)
                if job is not None and job.stage == "SCHEDULING":
                    job.message = f"waiting: {exc}"
            return False
        except LaunchRefused as exc:
            self.finish_attempt(job_id, number, Outcome("ERROR", f"{self.executor.name} refused the job: {exc}"),
                                retry=False)
            return True
        except Exception as exc:  # noqa: BLE001 - a claimed attempt must never be left without an end
            log.exception("launching attempt %d of job %s failed", number, job_id)
            self.finish_attempt(job_id, number, Outcome("ERROR", f"keephub could not start the attempt: {exc!r}"))
            return True
        with self.db.write() as session:
            session.execute(update(JobAttempt).where(JobAttempt.job_id == job_id, JobAttempt.number == number)
                            .values(executor_ref=ref))
            still_wanted = session.get(JobAttempt, (job_id, number)).outcome in ACTIVE  # type: ignore[union-attr]
        if not still_wanted:  # canceled while it was being launched: its end could not give this back
            self.executor.stop(ref)
            self.executor.release(ref)
        return True

    def _claim(self, job_id: str, credential: str) -> tuple[int, object, float] | None:
        try:
            with self.db.write() as session:
                # The job's row is locked until the claim commits: a cancel (on any server) waits for it and
                # then sees the attempt, or goes first and this claim sees the cancel.
                job = session.get(Job, job_id, with_for_update=True)
                if job is None or job.stage != "SCHEDULING" or job.cancel_requested_by:
                    return None
                if session.execute(select(JobAttempt.number).where(
                        JobAttempt.job_id == job_id, JobAttempt.outcome.in_(ACTIVE))).first() is not None:
                    return None
                last = session.execute(select(func.max(JobAttempt.number)).where(JobAttempt.job_id == job_id)).scalar()
                number = (last or 0) + 1
                now = utcnow()
                session.add(JobAttempt(job_id=job_id, number=number, started_at=now, outcome="PENDING",
                                       executor=self.executor.name, agent_credential_hash=digest(credential),
                                       heartbeat_at=now))
                if self.executor.name != "local":
                    job.message = f"submitted to {self.executor.name}"
                flavor = self.service.flavors[job.flavor]
                return number, flavor, self._time_left(job)
        except WriteConflict:  # another keephub claimed the same attempt first (the attempt's key is taken)
            return None

    def _time_left(self, job: Job) -> float:
        """The timeout covers the whole job, retries included, counted from its first start."""
        if job.started_at is None:
            return float(job.timeout_seconds)
        return job.timeout_seconds - (utcnow() - aware(job.started_at)).total_seconds()

    def agent_url(self) -> str:
        """Where agents reach keephub: this server directly on its own machine, public_url from a cluster."""
        if self.executor.name == "local":
            host = self.settings.host if self.settings.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
            return f"http://{'[' + host + ']' if ':' in host else host}:{self.settings.port}"
        return self.settings.base_url

    # -- what agents report (called from the agent API's request threads) ------------------------------
    def _agent_row(self, session, job_id: str, number: int, credential: str,  # type: ignore[no-untyped-def]
                   lock: bool = False) -> JobAttempt:
        """The attempt the credential belongs to while it is active; `lock` (in a write) holds its row until the
        commit, so that reports of one attempt (a log batch and its resend, a start and a cancel) apply one at a
        time on PostgreSQL as under SQLite's write lock."""
        row = session.get(JobAttempt, (job_id, number), with_for_update=lock)
        expected = row.agent_credential_hash if row is not None and row.outcome in ACTIVE else None
        if expected is None or not hmac.compare_digest(expected, digest(credential)):
            raise Forbidden(REFUSED)
        return row

    def agent_start(self, job_id: str, number: int, credential: str, node: str) -> dict:
        """The agent is up: mark the attempt RUNNING and hand it the plan; a job canceled meanwhile is not
        started at all (409). The plan carries a fresh credential for the attempt's later calls and the one used
        here dies: the launch credential has sat in the executor's hands (a Slurm batch script), and a second
        agent of the same attempt (a batch job queued twice) is refused instead of running the job again."""
        with self.db.write() as session:
            row = self._agent_row(session, job_id, number, credential, lock=True)
            job = session.get(Job, job_id)
            assert job is not None
            if job.cancel_requested_by:
                canceled_by = job.cancel_requested_by
            else:
                canceled_by = None
                now = utcnow()
                if job.started_at is None:
                    job.started_at = now
                job.stage, job.message = "RUNNING", None
                row.outcome, row.node, row.heartbeat_at = "RUNNING", node[:200] or None, now
                sidecar_credential = new_credential() if json.loads(job.spec_json).get("durability") else None
                row.sidecar_credential_hash = digest(sidecar_credential) if sidecar_credential else None
                running_credential = new_credential()
                row.agent_credential_hash = digest(running_credential)
                time_left = self._time_left(job)
                owner = job.owner
                facts_base = (job.max_attempts, job.flavor)
        if canceled_by is not None:
            self.finish_attempt(job_id, number, Outcome("CANCELED", f"canceled by {canceled_by}"))
            raise Conflict(f"the job was canceled by {canceled_by} before this attempt started")
        try:
            plan = self._plan(job_id, number, owner, facts_base, time_left, sidecar_credential)
        except Exception as exc:  # noqa: BLE001 - the agent would retry a 500 for a day
            log.exception("the plan of attempt %d of job %s could not be made", number, job_id)
            reason = f"keephub could not prepare the attempt: {exc!r}"
            self.finish_attempt(job_id, number, Outcome("ERROR", reason), retry=False)
            raise Conflict(reason) from None
        return {**plan, "agentCredential": running_credential}

    def _plan(self, job_id: str, number: int, owner: str, facts_base: tuple[int, str], time_left: float,
              sidecar_credential: str | None) -> dict:
        record = self.service.load(None, job_id)
        account = self.service.accounts.find(owner)
        user = self.layout.user_for(account.id) if account is not None else None
        secrets, volume_token = self.service.secrets_of(record.job)
        facts = AttemptFacts(job_id=job_id, attempt=number, max_attempts=facts_base[0], owner=owner,
                             uid=user.uid if user else None, spec=record.spec, secrets=secrets,
                             flavor=self.service.flavors[facts_base[1]], deadline=time.time() + time_left,
                             sidecar_credential=sidecar_credential, volume_token=volume_token)
        return build_plan(facts, self.settings, self.network)

    def agent_heartbeat(self, job_id: str, number: int, credential: str, node: str) -> dict:
        """A read, mostly: the heartbeat time is written only when it is HEARTBEAT_WRITE_SECONDS old (the
        deadline it feeds is far longer), so a hundred agents do not cost a hundred commits a second."""
        with self.db.read() as session:
            row = self._agent_row(session, job_id, number, credential)
            stale = row.heartbeat_at is None or (utcnow() - aware(row.heartbeat_at)).total_seconds() > \
                HEARTBEAT_WRITE_SECONDS or (node and row.node != node[:200])
            cancel_by = session.execute(select(Job.cancel_requested_by).where(Job.id == job_id)).scalar()
        if stale:
            with self.db.write() as session:
                row = self._agent_row(session, job_id, number, credential, lock=True)
                row.heartbeat_at = utcnow()
                if node:
                    row.node = node[:200]
        if cancel_by:
            return {"stop": "cancel", "message": f"canceled by {cancel_by}"}
        return {}

    def agent_log(self, job_id: str, number: int, credential: str, first: int, events: list[tuple[str, str]]) -> dict:
        """Store the lines keephub does not have yet; lines it has are ignored (a resend), a gap is refused."""
        with self.db.write() as session:
            row = self._agent_row(session, job_id, number, credential, lock=True)
            expected = row.log_seq + 1
            if first > expected:
                raise Conflict(f"log lines from {first} arrived but keephub has lines up to {row.log_seq}; "
                               f"send from line {expected}", extra_body={"next": expected})
            fresh = events[expected - first:]
            if fresh:
                row.log_bytes = append_events(attempt_log(self.jobs_dir, job_id, number), row.log_bytes, fresh)
                row.log_seq += len(fresh)
            row.heartbeat_at = utcnow()
            return {"next": row.log_seq + 1, "stored": len(fresh)}

    def agent_exit(self, job_id: str, number: int, credential: str, report: dict) -> dict:
        with self.db.read() as session:
            self._agent_row(session, job_id, number, credential)
            job = session.get(Job, job_id)
            assert job is not None
            cancel_by, timeout = job.cancel_requested_by, job.timeout_seconds
        outcome = _outcome_of(report, cancel_by, timeout)
        self.finish_attempt(job_id, number, outcome)
        return {"outcome": outcome.kind, "message": outcome.message}

    # -- ending an attempt ---------------------------------------------------------------------------
    def finish_attempt(self, job_id: str, number: int, outcome: Outcome, retry: bool = True,
                       only_if: tuple[str, ...] = ACTIVE, silent_since: datetime | None = None) -> bool:
        """End an attempt still in one of the `only_if` states (and, with `silent_since`, whose agent has not
        reported since then), once: False if it had already ended or moved on. Then its job, or its retry."""
        still_silent = [JobAttempt.heartbeat_at < silent_since] if silent_since is not None else []
        with self.db.write() as session:
            ended = session.execute(
                update(JobAttempt).where(JobAttempt.job_id == job_id, JobAttempt.number == number,
                                         JobAttempt.outcome.in_(only_if), *still_silent)
                .values(outcome=outcome.kind, message=outcome.message, exit_code=outcome.exit_code,
                        finished_at=utcnow(), agent_credential_hash=None, sidecar_credential_hash=None)
            ).rowcount
            if not ended:
                return False
            row = session.get(JobAttempt, (job_id, number))
            assert row is not None
            row.log_bytes = append_events(attempt_log(self.jobs_dir, job_id, number), row.log_bytes,
                                          [(timestamp(), f"===== {outcome.message} =====")])
            ref = row.executor_ref if row.executor == self.executor.name else None
            job = session.get(Job, job_id, with_for_update=True)
            assert job is not None
            spec_has_durability = bool(json.loads(job.spec_json).get("durability"))
            again = (retry and outcome.kind == "ERROR" and number < job.max_attempts
                     and not job.cancel_requested_by)
            if again:
                job.stage, job.message = "SCHEDULING", f"attempt {number} failed ({outcome.message}); retrying"
            elif job.stage not in TERMINAL:  # with the attempt's end, in one transaction: never a job left RUNNING
                suffix = (f" (attempt {number} of {job.max_attempts})"
                          if outcome.kind == "ERROR" and job.max_attempts > 1 else "")
                job.stage, job.message = {"TIMEOUT": "ERROR"}.get(outcome.kind, outcome.kind), outcome.message + suffix
                job.finished_at = utcnow()
        self._stopping.discard((job_id, number))
        self._gone_since.pop((job_id, number), None)
        if ref:
            self.executor.release(ref)
        if spec_has_durability:
            durability_record.add_missing_verdict(self.db, job_id, number)
        if not again:
            self.service.revoke_job_token(job_id)
        self.poke()
        return True

    # -- watching active attempts --------------------------------------------------------------------
    def watch_once(self) -> None:
        """Follow each active attempt through its executor: queue reasons, cancels, agents that died."""
        with self.db.read() as session:
            rows = session.execute(
                select(JobAttempt.job_id, JobAttempt.number, JobAttempt.outcome, JobAttempt.executor_ref,
                       JobAttempt.heartbeat_at, Job.cancel_requested_by, Job.stage, Job.message)
                .join(Job, Job.id == JobAttempt.job_id)
                .where(JobAttempt.outcome.in_(ACTIVE), JobAttempt.executor == self.executor.name)
            ).all()
        for job_id, number, state, ref, heartbeat_at, cancel_by, stage, message in rows:
            if ref is None:
                self._unlaunched(job_id, number, heartbeat_at)
                continue
            try:
                self._watch(job_id, number, state, ref, heartbeat_at, cancel_by, message)
            except ExecutorUnavailable as exc:
                log.warning("cannot see attempt %s/%d: %s", job_id, number, exc)

    def _watch(self, job_id: str, number: int, state: str, ref: str, heartbeat_at, cancel_by: str | None,  # type: ignore[no-untyped-def]
               message: str | None) -> None:
        key = (job_id, number)
        seen = self.executor.observe(ref)
        if cancel_by and state == "PENDING" and seen.state != "running":
            self.executor.stop(ref)
            self.finish_attempt(job_id, number, Outcome("CANCELED", f"canceled by {cancel_by}"))
            return
        if cancel_by and state == "RUNNING" and key not in self._stopping:
            self._stop(job_id, number, ref)
        if seen.state == "queued":
            self._gone_since.pop(key, None)
            reason = f"waiting in {self.executor.name}'s queue" + (f": {seen.reason}" if seen.reason else "")
            if reason != message:
                with self.db.write() as session:
                    session.execute(update(Job).where(Job.id == job_id, Job.stage == "SCHEDULING")
                                    .values(message=reason))
            return
        if seen.state == "gone":
            first_seen = self._gone_since.setdefault(key, time.monotonic())
            if time.monotonic() - first_seen >= GONE_GRACE_SECONDS:
                reason = f"the job's agent ended without reporting: {seen.reason}" if seen.reason else \
                    "the job's agent ended without reporting"
                self.finish_attempt(job_id, number, Outcome("CANCELED", f"canceled by {cancel_by}") if cancel_by
                                    else Outcome("ERROR", reason))
            return
        self._gone_since.pop(key, None)
        if heartbeat_at is not None and (state == "RUNNING" or seen.state == "running"):
            silent = time.time() - max(aware(heartbeat_at).timestamp(), self.started_at)
            if silent > self.settings.job_heartbeat_timeout_seconds:
                cutoff = utcnow() - timedelta(seconds=self.settings.job_heartbeat_timeout_seconds)
                if self.finish_attempt(job_id, number, Outcome(
                        "ERROR", f"the job's agent stopped reporting for {int(silent)} s (on "
                        f"{seen.node or 'its node'}); it was stopped"), silent_since=cutoff):
                    self.executor.kill(ref)

    def _unlaunched(self, job_id: str, number: int, claimed_at: datetime | None) -> None:
        """An attempt claimed but never given its executor ref: keephub stopped between the two. Past the time
        a launch may take it is given up (its agent, if one started, is refused) and retried."""
        if claimed_at is None or time.time() - aware(claimed_at).timestamp() < LAUNCH_GRACE_SECONDS:
            return
        self.finish_attempt(job_id, number, Outcome("ERROR", "keephub stopped while handing the attempt to "
                                                             f"{self.executor.name}; it was not started"))

    def _stop(self, job_id: str, number: int, ref: str) -> None:
        self._stopping.add((job_id, number))
        try:
            self.executor.stop(ref)
        except ExecutorUnavailable as exc:
            log.warning("cannot stop attempt %s/%d now: %s", job_id, number, exc)
            self._stopping.discard((job_id, number))


def _outcome_of(report: dict, cancel_by: str | None, timeout_seconds: int) -> Outcome:
    """The attempt's outcome from the agent's report: why it stopped, if it was stopped, else its exit status."""
    code, stopped, reason = report.get("exitCode"), report.get("stopped"), report.get("reason")
    if cancel_by and stopped in ("cancel", "signal", None) and code != 0:
        return Outcome("CANCELED", f"canceled by {cancel_by}", code)
    if stopped == "timeout":
        return Outcome("TIMEOUT", f"timed out after {human_duration(timeout_seconds)}", code)
    if stopped in ("limit", "start-failed", "agent-failed", "lost", "signal") and reason:
        return Outcome("ERROR", str(reason), code)
    if code == 0:
        return Outcome("COMPLETED", "completed", 0)
    if isinstance(code, int) and code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        return Outcome("ERROR", f"killed by signal {name}", code)
    return Outcome("ERROR", f"exited with status {code}" if code is not None else "ended without an exit status",
                   code)
