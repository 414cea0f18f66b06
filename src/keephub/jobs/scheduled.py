"""Scheduled jobs: a job spec and a cron schedule; each due run becomes an ordinary job.

Secrets are sealed once at creation; a `$HF_TOKEN` secret stays a placeholder here and becomes a
fresh job-scoped token for every run.
"""

from __future__ import annotations

import json
import logging
import secrets as random_secrets
from datetime import datetime

from croniter import CroniterBadDateError, croniter
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from keephub.accounts import Actor
from keephub.jobs.service import TERMINAL, JobService, aware, iso, utcnow
from keephub.jobs.spec import parse_spec, spec_from_wire
from keephub.storage.schema import Job, ScheduledJob
from keephub.wire import BadRequest, Conflict, Forbidden, Unauthorized
from keephub.wire.errors import NotFound, Unprocessable

log = logging.getLogger("keephub.jobs")


def next_run(schedule: str, after: datetime) -> datetime:
    return croniter(schedule, after).get_next(datetime)


# The Hub's aliases, as huggingface_hub documents them for create_scheduled_job.
SCHEDULE_ALIASES = ("@annually", "@yearly", "@monthly", "@weekly", "@daily", "@hourly")
CRON_FIELDS = 5
_SCHEDULE_HELP = ("use a five-field cron expression (minute hour day-of-month month day-of-week, e.g. '*/5 * * * *') "
                  f"or one of {', '.join(SCHEDULE_ALIASES)}")


def check_schedule(schedule: object) -> str:
    """A schedule the Hub accepts: exactly five cron fields or an alias, so no run comes sooner than a minute
    after the last. croniter alone also takes a sixth (seconds) field, which fired a job every second."""
    if not isinstance(schedule, str):
        raise Unprocessable(f"'schedule' must be a string; {_SCHEDULE_HELP}")
    if schedule.startswith("@"):
        if schedule not in SCHEDULE_ALIASES:
            raise Unprocessable(f"'schedule' {schedule!r} is not a known alias; {_SCHEDULE_HELP}")
    elif (fields := len(schedule.split())) != CRON_FIELDS:
        no_seconds = " (there is no seconds field: runs are at least a minute apart)" if fields > CRON_FIELDS else ""
        raise Unprocessable(f"'schedule' {schedule!r} has {fields} fields, not {CRON_FIELDS}{no_seconds}; "
                            f"{_SCHEDULE_HELP}")
    if not croniter.is_valid(schedule):
        raise Unprocessable(f"'schedule' {schedule!r} is not a valid cron expression; {_SCHEDULE_HELP}")
    try:
        next_run(schedule, utcnow())
    except CroniterBadDateError:
        raise Unprocessable(f"'schedule' {schedule!r} never fires (no such date); check the day and month fields")
    return schedule


def _flag(body: dict, key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise BadRequest(f"'{key}' must be true or false")
    return value


class ScheduledJobs:
    def __init__(self, jobs: JobService) -> None:
        self.jobs = jobs
        self.db = jobs.db

    def create(self, actor: Actor | None, namespace: str, body: object) -> dict:
        actor = self.jobs.check_write(actor, namespace, "scheduled_jobs.create")
        if not isinstance(body, dict):
            raise BadRequest("the body must be {jobSpec: {...}, schedule: '...'}")
        schedule = check_schedule(body.get("schedule"))
        spec, secret_values = parse_spec(body.get("jobSpec"), self.jobs.flavors,
                                         self.jobs.settings.job_default_timeout_seconds)
        spec = self.jobs.preflight_spec(actor, spec, secret_values)
        suspend, concurrency = _flag(body, "suspend"), _flag(body, "concurrency")
        scheduled_id = random_secrets.token_hex(12)
        with self.db.write() as session:
            session.add(ScheduledJob(
                id=scheduled_id, namespace=namespace, owner=actor.name,
                owner_token_role="write" if self.jobs.job_token_scopes(actor, spec) else "read",
                owner_token_id=actor.token_id,
                spec_json=json.dumps(spec.to_wire()),
                secrets_sealed=self.jobs.box.seal(secret_values) if secret_values else None,
                schedule=schedule, suspend=suspend, concurrency=concurrency, created_at=utcnow(),
                next_run_at=next_run(schedule, utcnow()),
            ))
        return self.get(actor, namespace, scheduled_id)

    def _load(self, namespace: str, scheduled_id: str) -> ScheduledJob:
        with self.db.read() as session:
            row = session.get(ScheduledJob, scheduled_id)
        if row is None or row.namespace != namespace:
            raise NotFound(f"scheduled job {scheduled_id} not found in {namespace}")
        return row

    @staticmethod
    def _locked(session: Session, namespace: str, scheduled_id: str) -> ScheduledJob:
        """The schedule's row, locked until the write commits; NotFound if it was deleted since it was read."""
        row = session.get(ScheduledJob, scheduled_id, with_for_update=True)
        if row is None:
            raise NotFound(f"scheduled job {scheduled_id} not found in {namespace}: it was deleted meanwhile")
        return row

    def get(self, actor: Actor | None, namespace: str, scheduled_id: str) -> dict:
        self.jobs.check_read(actor, namespace)
        return self.to_wire(self._load(namespace, scheduled_id))

    def list(self, actor: Actor | None, namespace: str) -> list[dict]:
        self.jobs.check_read(actor, namespace)
        with self.db.read() as session:
            rows = session.execute(select(ScheduledJob).where(ScheduledJob.namespace == namespace)
                                   .order_by(ScheduledJob.created_at)).scalars().all()
        return [self.to_wire(row) for row in rows]

    def delete(self, actor: Actor | None, namespace: str, scheduled_id: str) -> None:
        self.jobs.check_write(actor, namespace)
        self._load(namespace, scheduled_id)
        with self.db.write() as session:
            if not session.execute(delete(ScheduledJob).where(ScheduledJob.id == scheduled_id)).rowcount:
                raise NotFound(f"scheduled job {scheduled_id} not found in {namespace}: it was deleted meanwhile")

    def set_suspended(self, actor: Actor | None, namespace: str, scheduled_id: str, suspend: bool) -> dict:
        self.jobs.check_write(actor, namespace)
        self._load(namespace, scheduled_id)
        with self.db.write() as session:
            row = self._locked(session, namespace, scheduled_id)
            row.suspend = suspend
            if not suspend:
                row.next_run_at = next_run(row.schedule, utcnow())
        return self.get(actor, namespace, scheduled_id)

    def set_schedule(self, actor: Actor | None, namespace: str, scheduled_id: str, body: object) -> dict:
        self.jobs.check_write(actor, namespace)
        schedule = check_schedule(body.get("schedule") if isinstance(body, dict) else None)
        self._load(namespace, scheduled_id)
        with self.db.write() as session:
            row = self._locked(session, namespace, scheduled_id)
            row.schedule, row.next_run_at = schedule, next_run(schedule, utcnow())
        return self.get(actor, namespace, scheduled_id)

    def trigger(self, actor: Actor | None, namespace: str, scheduled_id: str) -> dict:
        """Run now, whatever the schedule says (409 if a run is still going and concurrency is off)."""
        actor = self.jobs.check_write(actor, namespace)
        row = self._load(namespace, scheduled_id)
        if (why := self._why_creator_may_not_run(row)) is not None:
            self._suspend_orphaned(row, why)
            raise Forbidden(f"scheduled job {scheduled_id} runs as its creator {row.owner}, but {why}; it is now "
                            "suspended: delete it and create it again as yourself")
        job_id = self._start_run(row, respect_concurrency=True)
        if job_id is None:
            raise Conflict(f"scheduled job {scheduled_id}'s previous run {row.last_job_id} is still running and "
                           "concurrency is off; wait for it or cancel it")
        return self.jobs.get(actor, namespace, job_id)

    def run_due(self) -> int:
        """Start every run that is due (called by the scheduler loop); returns how many started."""
        now = utcnow()
        with self.db.read() as session:
            due = session.execute(select(ScheduledJob).where(ScheduledJob.suspend.is_(False))).scalars().all()
        started = 0
        for row in due:
            if aware(row.next_run_at) > now or not self._claim_run(row, now):
                continue
            try:
                if (why := self._why_creator_may_not_run(row)) is not None:
                    self._suspend_orphaned(row, why)
                    continue
                if self._start_run(row, respect_concurrency=True) is not None:
                    started += 1
            except Exception:  # noqa: BLE001 - one broken schedule must not stop the others
                log.exception("scheduled job %s could not start a run", row.id)
        return started

    def _claim_run(self, row: ScheduledJob, now: datetime) -> bool:
        """Move the schedule's next run on, if no one else did since `row` was read: of several keephub servers
        sharing the database, only the one whose update lands starts the run (compare-and-swap on next_run_at)."""
        with self.db.write() as session:
            moved = session.execute(
                update(ScheduledJob).where(ScheduledJob.id == row.id, ScheduledJob.next_run_at == row.next_run_at,
                                           ScheduledJob.suspend.is_(False))
                .values(next_run_at=next_run(row.schedule, now)))
            return moved.rowcount == 1

    def _why_creator_may_not_run(self, row: ScheduledJob) -> str | None:
        """Runs act with their creator's rights as they are now, and through the token that made the schedule:
        a revoked or expired token stops the schedule (a stolen token's schedule dies with it)."""
        if row.owner_token_id is not None:
            try:
                self.jobs.accounts.actor_of_token(row.owner_token_id)
            except Unauthorized as exc:
                return f"the token that created the schedule no longer works ({exc.message})"
        if self.jobs.accounts.namespace_role_of(row.owner, row.namespace) not in ("write", "admin"):
            return f"{row.owner} can no longer write to {row.namespace}"
        return None

    def _suspend_orphaned(self, row: ScheduledJob, why: str) -> None:
        log.warning("scheduled job %s suspended: %s", row.id, why)
        with self.db.write() as session:
            fresh = session.get(ScheduledJob, row.id)
            if fresh is not None:
                fresh.suspend = True

    def _start_run(self, row: ScheduledJob, respect_concurrency: bool) -> str | None:
        if respect_concurrency and not row.concurrency and row.last_job_id:
            with self.db.read() as session:
                last = session.get(Job, row.last_job_id)
            if last is not None and last.stage not in TERMINAL:
                return None
        spec = spec_from_wire(json.loads(row.spec_json))
        secrets = self.jobs.box.open(row.secrets_sealed)
        # Each run's token writes the target only if the schedule's creator could, and lives while their token does.
        scopes = self.jobs.target_scopes(spec, row.owner) if row.owner_token_role == "write" else []
        job_id = self.jobs.create_job(row.owner, row.namespace, spec, secrets, scopes, row.owner_token_id)
        with self.db.write() as session:
            fresh = session.get(ScheduledJob, row.id)
            if fresh is not None:
                fresh.last_job_id, fresh.last_job_at = job_id, utcnow()
        return job_id

    def to_wire(self, row: ScheduledJob) -> dict:
        spec = json.loads(row.spec_json)
        spec["secrets"] = {name: "<hidden>" for name in spec["secrets"]}
        last = {"id": row.last_job_id, "at": iso(row.last_job_at)} if row.last_job_id else None
        return {
            "id": row.id,
            "createdAt": iso(row.created_at),
            "jobSpec": spec,
            "schedule": row.schedule,
            "suspend": row.suspend,
            "concurrency": row.concurrency,
            "status": {"lastJob": last, "nextJobRunAt": None if row.suspend else iso(row.next_run_at)},
            "owner": {"id": row.owner, "name": row.namespace, "type": "user" if row.owner == row.namespace else "org"},
        }
