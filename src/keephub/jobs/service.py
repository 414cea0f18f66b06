"""Jobs as plain method calls: submit, list, inspect, cancel — with access control as for repos.

Every stage transition is saved before it is acted on, so a restarted server knows exactly which
attempts were running and can mark them and retry (see scheduler.py).
"""

from __future__ import annotations

import json
import secrets as random_secrets
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone

from sqlalchemy import select

from keephub.accounts import Actor, NamespaceTarget, RepoTarget, Scope, authorize, refusal_of, require_actor
from keephub.accounts.access import Action
from keephub.buckets.service import Buckets
from keephub.config import Settings
from keephub.durability import record as durability_record
from keephub.durability.gate import OVERRIDE_LABEL, OVERRIDE_VALUE, PreflightGate
from keephub.durability.preflight import WriteAccess
from keephub.durability.script import find_script, inline_script
from keephub.hub.naming import split_repo_id
from keephub.hub.service import Hub
from keephub.jobs.flavors import Flavor, cluster_flavors, machine_flavors
from keephub.jobs.secrets import SecretBox
from keephub.jobs.spec import JobSpec, parse_spec
from keephub.storage.schema import Account, Job, JobAttempt
from keephub.wire import BadRequest, Forbidden, HubError, Unauthorized
from keephub.wire.errors import NotFound, Unprocessable, client_ready

TERMINAL = ("COMPLETED", "CANCELED", "ERROR", "DELETED")
HF_TOKEN_PLACEHOLDER = "$HF_TOKEN"
# The job token its agent mounts volumes with, sealed with the secrets under a name no environment variable has.
VOLUME_TOKEN_KEY = "keephub:volume-token"
# The largest script preflight reads from a volume (as from a repo by URL).
MAX_SCRIPT_BYTES = 1024 * 1024


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def aware(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def iso(moment: datetime | None) -> str | None:
    moment = aware(moment)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z" if moment else None


def human_duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True)
class JobRecord:
    """A job row with its attempts, detached from the session."""

    job: Job
    attempts: list[JobAttempt]

    @property
    def spec(self) -> dict:
        return json.loads(self.job.spec_json)


class JobService:
    def __init__(self, settings: Settings, hub: Hub, gate: PreflightGate | None) -> None:
        self.settings = settings
        self.hub = hub
        self.db = hub.db
        self.accounts = hub.accounts
        self.gate = gate
        self.buckets = Buckets(hub)
        self.jobs_dir = settings.data_dir / "jobs"
        self.box = SecretBox.from_settings(settings.secrets_key, self.jobs_dir / "secrets.key")
        gpu_ids = [g.strip() for g in settings.job_gpus.split(",") if g.strip()]
        self.flavors: dict[str, Flavor] = (machine_flavors(settings.job_cpus, gpu_ids)
                                           if settings.job_executor == "local" else cluster_flavors())

    # -- access ------------------------------------------------------------------------------------
    def check_read(self, actor: Actor | None, namespace: str) -> Actor:
        authorize(actor, "jobs.read", NamespaceTarget(namespace))
        return require_actor(actor, f"see jobs in {namespace}")

    def check_write(self, actor: Actor | None, namespace: str, action: Action = "jobs.manage") -> Actor:
        actor = require_actor(actor, f"run jobs in {namespace}")
        with self.db.read() as session:
            exists = session.execute(select(Account.id).where(Account.name == namespace)).scalar_one_or_none()
        if exists is None:
            raise Forbidden(f"403 Forbidden: namespace '{namespace}' does not exist; run jobs in '{actor.name}'.")
        authorize(actor, action, NamespaceTarget(namespace))
        return actor

    # -- API operations ------------------------------------------------------------------------------
    def submit(self, actor: Actor | None, namespace: str, body: object) -> dict:
        actor = self.check_write(actor, namespace, "jobs.create")
        spec, secret_values = parse_spec(body, self.flavors, self.settings.job_default_timeout_seconds)
        spec = self.preflight_spec(actor, spec, secret_values)
        job_id = self.create_job(actor.name, namespace, spec, secret_values, self.job_token_scopes(actor, spec),
                                 actor.token_id)
        return self.get(actor, namespace, job_id)

    @staticmethod
    def target_scopes(spec: JobSpec, owner: str) -> list[Scope]:
        """What a job's token may write: the repo its results go to (rescue branches included), if it has one
        (a repo named without a namespace is the owner's, as the Hub resolves it), and its read-write buckets."""
        repo = (spec.durability or {}).get("repo")
        buckets = [Scope("bucket", v["source"]) for v in spec.volumes if v["type"] == "bucket" and not v["readOnly"]]
        return ([Scope("model", _full_repo_id(repo, owner))] if repo else []) + buckets

    def job_token_scopes(self, actor: Actor, spec: JobSpec) -> list[Scope]:
        """What of `target_scopes` the submitting token may write; nothing (a read-only job token) otherwise."""
        return [scope for scope in self.target_scopes(spec, actor.name)
                if refusal_of(actor, "repo.write", RepoTarget(scope.kind, *scope.name.split("/"))) is None]

    def preflight_spec(self, actor: Actor, spec: JobSpec, secret_values: dict[str, str]) -> JobSpec:
        """Refuse a training job that would lose its results (422 with the checklist), unless overridden;
        otherwise decide what the sidecar guards and put preflight's warnings at the head of the log. Volumes the
        submitter may not use are refused first (403/404), a repo volume's revision pinned to its commit; a script
        the job finds in a volume (`uv run /data/train.py`) is read from the volume's bucket or repo."""
        spec = replace(spec, volumes=[self.buckets.check_volume(actor, v) for v in spec.volumes])
        plan = durability_plan(spec.labels)
        source = find_script(spec.command, self.settings.base_url,
                             lambda *where: self._read_hub_file(actor, *where),
                             lambda path: self._read_mounted_file(actor, spec.volumes, path))
        if source is None or self.gate is None:
            return replace(spec, durability=plan)
        verdict = self.gate.check(
            source.text, secret_names=spec.secret_names, timeout_seconds=spec.timeout_seconds,
            environment=spec.environment, labels=spec.labels,
            bucket_mounts={v["mountPath"]: v["source"] for v in spec.volumes
                           if v["type"] == "bucket" and not v["readOnly"]},
            can_write=lambda repo, target: self._job_token_can_write(
                actor, _job_hf_token(secret_values, spec.environment), repo, target),
            repo_files=lambda repo: self._repo_files(actor, repo),
        )
        if verdict is None:
            return replace(spec, durability=plan)
        overridden = spec.labels.get(OVERRIDE_LABEL) == OVERRIDE_VALUE
        if not verdict.ok and not overridden:
            failed = verdict.report.get("failed", 0)
            raise Unprocessable(
                f"preflight refused this job because it would lose its results ({failed} check(s) failed; "
                "the checklist follows)",
                detail=verdict.checklist + f"\nFix each ❌ line, or resubmit with the label "
                f"{OVERRIDE_LABEL}={OVERRIDE_VALUE} to run it anyway.",
                extra_body={"preflight": verdict.report},
            )
        if verdict.repo and verdict.output_dir:
            plan = {"repo": verdict.repo, "outputDir": verdict.output_dir,
                    "resume": spec.labels.get("keephub.resume") in ("1", "true"),
                    "scriptPushes": verdict.script_pushes}
        header = "===== keephub preflight" + (" (overridden) =====" if not verdict.ok else " =====")
        return replace(spec, durability=plan, preflight_notes=[header, *verdict.checklist.splitlines()])

    def _read_hub_file(self, actor: Actor, repo_type: str, repo_id: str, revision: str, path: str) -> bytes | None:
        namespace, _, name = repo_id.partition("/")
        try:
            target = self.hub.file_target(actor, repo_type, namespace, name, revision, path)
        except HubError:
            return None
        if target.inline is not None:
            return target.inline
        if target.size > MAX_SCRIPT_BYTES:
            return None
        return b"".join(self.hub.large_file(target.etag))

    def _read_mounted_file(self, actor: Actor, volumes: list[dict], path: str) -> bytes | None:
        """The file at `path` inside the job when a volume holds it: read from the bucket, or the repo at the
        volume's pinned commit, as the submitter; None if it is not in a volume, missing or large."""
        for volume in volumes:
            if not path.startswith(volume["mountPath"] + "/"):
                continue
            inner = "/".join(part for part in (volume.get("path"), path[len(volume["mountPath"]) + 1:]) if part)
            if volume["type"] != "bucket":
                return self._read_hub_file(actor, volume["type"], volume["source"], volume["commit"], inner)
            namespace, name = volume["source"].split("/")
            try:
                _, row = self.buckets.file(actor, namespace, name, inner)
            except HubError:
                return None
            return b"".join(self.buckets.content(row, 0, row.size)) if row.size <= MAX_SCRIPT_BYTES else None
        return None

    def _job_token_can_write(self, actor: Actor, hf_token: str | None, repo_id: str,
                             target: str | None) -> WriteAccess:
        """Whether the token the job will hold can write `repo_id`. A `$HF_TOKEN` job token writes only the job's
        target repo (`target`, the one keephub guards; none without one), and only where the submitter's token
        may; a literal token is judged as the token it is."""
        namespace = repo_id.split("/")[0]
        if self.accounts.find(namespace) is None:
            return WriteAccess(False, f"namespace '{namespace}' does not exist on this keephub",
                               f"push to your own namespace: hub_model_id=\"{actor.name}/{repo_id.split('/')[-1]}\"")
        if hf_token is not None and hf_token != HF_TOKEN_PLACEHOLDER:
            try:
                holder = self.accounts.authenticate(hf_token)
            except Unauthorized as exc:
                return WriteAccess(False, f"the HF_TOKEN secret is not a usable token on this keephub: "
                                   f"{client_ready(exc.message)}", _JOB_TOKEN_FIX)
            refusal = refusal_of(holder, "repo.write", _repo_target(repo_id))
            if refusal is None:
                return WriteAccess(True)
            read_only = holder.token_role != "write"
            return WriteAccess(False, f"the HF_TOKEN secret: {client_ready(refusal.message)}",
                               _JOB_TOKEN_FIX if read_only else None)
        refusal = refusal_of(actor, "repo.write", _repo_target(repo_id))
        if refusal is not None:
            return WriteAccess(False, client_ready(refusal.message))
        if hf_token is None:
            return WriteAccess(None, "the job gets no HF_TOKEN, so it has no token to push with (see HF_TOKEN)",
                               'add secrets={"HF_TOKEN": "$HF_TOKEN"} to the job')
        if target is None:
            return WriteAccess(False, "the job's token ($HF_TOKEN) will be read-only: keephub gives a job write "
                               "access only to the repo whose results it guards, and it guards none: the script's "
                               "output_dir is not a value keephub can read before the run",
                               'pass output_dir="<folder>" as a literal to the config, or label the job '
                               f"keephub.repo={repo_id} and keephub.output-dir=<the output_dir>")
        if _full_repo_id(target, actor.name) != repo_id:
            return WriteAccess(False, f"the job's token ($HF_TOKEN) writes only the job's target repo "
                               f"{_full_repo_id(target, actor.name)} (the keephub.repo label), not {repo_id}",
                               f'push to the target: hub_model_id="{_full_repo_id(target, actor.name)}", or name '
                               f"{repo_id} in the keephub.repo label")
        return WriteAccess(True)

    def _repo_files(self, actor: Actor, repo_id: str) -> list[str] | None:
        namespace, _, name = repo_id.partition("/")
        try:
            info = self.hub.repo_info(actor, "model", namespace, name, None, False)
        except HubError:
            return None
        return [s["rfilename"] for s in info.get("siblings", [])]

    def create_job(self, owner: str, namespace: str, spec: JobSpec, secret_values: dict[str, str],
                   token_scopes: list[Scope], parent_token_id: int | None) -> str:
        """Store a new SCHEDULING job. A `$HF_TOKEN` secret, and the volumes, get a token for this job alone,
        writing only `token_scopes` and living only while the job runs and its parent token lives; the job's
        environment has it only where `$HF_TOKEN` asked for it, its agent has it for the volumes."""
        job_id = random_secrets.token_hex(12)
        token_hash = None
        if spec.volumes or any(v == HF_TOKEN_PLACEHOLDER for v in secret_values.values()):
            expires = utcnow() + timedelta(seconds=spec.timeout_seconds * spec.attempts + 7 * 86400)
            job_token = self.accounts.create_job_token(owner, job_id, token_scopes, expires, parent_token_id)
            secret_values = {k: job_token if v == HF_TOKEN_PLACEHOLDER else v for k, v in secret_values.items()}
            if spec.volumes:
                secret_values[VOLUME_TOKEN_KEY] = job_token
            token_hash = self.accounts.token_hash(job_token)
        with self.db.write() as session:
            session.add(Job(
                id=job_id, namespace=namespace, owner=owner, spec_json=json.dumps(spec.to_wire()),
                secrets_sealed=self.box.seal(secret_values) if secret_values else None, flavor=spec.flavor,
                timeout_seconds=spec.timeout_seconds, max_attempts=spec.attempts, stage="SCHEDULING",
                message="waiting for a free " + spec.flavor + " slot", created_at=utcnow(),
                job_token_sha256=token_hash,
            ))
        return job_id

    def get(self, actor: Actor | None, namespace: str, job_id: str) -> dict:
        self.check_read(actor, namespace)
        return self.to_wire(self.load(namespace, job_id))

    def load(self, namespace: str | None, job_id: str) -> JobRecord:
        with self.db.read() as session:
            job = session.get(Job, job_id)
            if job is None or (namespace is not None and job.namespace != namespace):
                raise NotFound(f"job {job_id} not found in {namespace}; list jobs with `hf jobs ps`")
            attempts = list(session.execute(
                select(JobAttempt).where(JobAttempt.job_id == job_id).order_by(JobAttempt.number)).scalars())
            return JobRecord(job, attempts)

    def list(self, actor: Actor | None, namespace: str, stages: list[str], labels: list[str]) -> list[dict]:
        self.check_read(actor, namespace)
        wanted_labels = {}
        for label in labels:
            key, sep, value = label.partition("=")
            if not sep:
                raise BadRequest(f"label filter {label!r} must be key=value")
            wanted_labels[key] = value
        with self.db.read() as session:
            query = select(Job.id).where(Job.namespace == namespace).order_by(Job.created_at.desc()).limit(1000)
            if stages:
                query = query.where(Job.stage.in_([s.upper() for s in stages]))
            ids = list(session.execute(query).scalars())
        result = []
        for job_id in ids:
            info = self.to_wire(self.load(namespace, job_id))
            if all((info.get("labels") or {}).get(k) == v for k, v in wanted_labels.items()):
                result.append(info)
        return result

    def cancel(self, actor: Actor | None, namespace: str, job_id: str) -> None:
        actor = self.check_write(actor, namespace, "jobs.manage")
        with self.db.write() as session:
            # Locked until the commit, as the scheduler's claim locks it: a cancel and a claim never both act
            # on a job that seemed to have no attempt.
            job = session.get(Job, job_id, with_for_update=True)
            if job is None or job.namespace != namespace:
                raise NotFound(f"job {job_id} not found in {namespace}")
            if job.stage in TERMINAL:
                return
            job.cancel_requested_by = actor.name
            canceled_while_waiting = job.stage == "SCHEDULING" and not _has_active_attempt(session, job_id)
            if canceled_while_waiting:
                job.stage, job.message, job.finished_at = "CANCELED", f"canceled by {actor.name}", utcnow()
        if canceled_while_waiting:
            self._revoke(job)

    def hardware(self) -> list[dict]:
        return [f.to_wire() for f in self.flavors.values()]

    def latest_guarding(self, actor: Actor | None, repo_id: str) -> dict | None:
        """The newest of the repo namespace's last 1000 jobs whose results keephub guarded in `repo_id` (the job
        that produced it, with its durability record); None if there is none or the caller cannot see them."""
        namespace = repo_id.partition("/")[0]
        if refusal_of(actor, "jobs.read", NamespaceTarget(namespace)) is not None:
            return None
        with self.db.read() as session:
            rows = session.execute(select(Job.id, Job.owner, Job.spec_json).where(Job.namespace == namespace)
                                   .order_by(Job.created_at.desc()).limit(1000)).all()
        for job_id, owner, spec_json in rows:
            repo = (json.loads(spec_json).get("durability") or {}).get("repo")
            if repo and (repo if "/" in repo else f"{owner}/{repo}") == repo_id:
                return self.to_wire(self.load(namespace, job_id))
        return None

    # -- used by the scheduler -------------------------------------------------------------------
    def secrets_of(self, job: Job) -> tuple[dict[str, str], str | None]:
        """The secrets of the job's environment, and the token its agent mounts the volumes with."""
        secrets = self.box.open(job.secrets_sealed)
        return secrets, secrets.pop(VOLUME_TOKEN_KEY, None)

    def _revoke(self, job: Job) -> None:
        if job.job_token_sha256:
            self.accounts.revoke_by_hash(job.job_token_sha256)

    def revoke_job_token(self, job_id: str) -> None:
        """Once the job has ended: its token stops working."""
        with self.db.read() as session:
            job = session.get(Job, job_id)
        if job is not None:
            self._revoke(job)

    def finish(self, job_id: str, stage: str, message: str) -> None:
        """End a job (once: a job that already ended keeps its stage) and revoke its job token."""
        with self.db.write() as session:
            job = session.get(Job, job_id, with_for_update=True)
            assert job is not None
            if job.stage not in TERMINAL:
                job.stage, job.message, job.finished_at = stage, message, utcnow()
        self._revoke(job)

    def to_wire(self, record: JobRecord) -> dict:
        job = record.job
        spec = record.spec
        now = utcnow()
        created, started, finished = aware(job.created_at), aware(job.started_at), aware(job.finished_at)
        end = finished or now
        durations = {
            "schedulingSecs": int(((started or end) - created).total_seconds()) if created else None,
            "runningSecs": int((end - started).total_seconds()) if started else None,
            "totalSecs": int((end - created).total_seconds()) if created else None,
        }
        owner = {"id": job.owner, "name": job.namespace, "type": "user" if job.namespace == job.owner else "org"}
        return {
            "id": job.id,
            "createdAt": iso(created),
            "startedAt": iso(started),
            "finishedAt": iso(finished),
            "dockerImage": spec["dockerImage"],
            "spaceId": None,
            "command": spec["command"],
            "arguments": [],
            # The script a `keephub jobs uv run` command carries inline, by name: what listings show.
            "script": script.to_wire() if (script := inline_script(spec["command"])) else None,
            "environment": spec["environment"],
            "secrets": {name: "<hidden>" for name in spec["secrets"]},
            "flavor": job.flavor,
            "labels": spec["labels"] or None,
            "volumes": spec.get("volumes") or None,
            "timeoutSeconds": job.timeout_seconds,
            "retry": job.max_attempts - 1,
            "status": {"stage": job.stage, "message": job.message},
            "durations": durations,
            "owner": owner,
            "initiator": {"type": "user", "id": job.owner, "name": job.owner},
            "startedBy": job.owner,
            "token": self.accounts.job_token_info(job.id),
            "durability": durability_record.summary(self.db, job.id, (spec.get("durability") or {}).get("repo"),
                                                    self.settings.base_url, spec.get("volumes") or []),
            "attempts": [
                {"number": a.number, "outcome": a.outcome, "exitCode": a.exit_code, "message": a.message,
                 "startedAt": iso(a.started_at), "finishedAt": iso(a.finished_at),
                 "executor": {"name": a.executor, "id": executor_id(a.executor, a.executor_ref), "node": a.node}}
                for a in record.attempts
            ],
        }


def executor_id(executor: str | None, ref: str | None) -> str | None:
    """An attempt's id in its executor as people look it up: the Slurm job id, the local agent's pid."""
    if not ref:
        return None
    return str(json.loads(ref)["pid"]) if executor == "local" else ref


_JOB_TOKEN_FIX = ('pass secrets={"HF_TOKEN": "$HF_TOKEN"} (a token for this job that writes its target repo), '
                  "or a write token of yours")


def _job_hf_token(secret_values: dict[str, str], environment: dict[str, str]) -> str | None:
    """The token huggingface_hub inside the job will push with: secrets before the plain environment (the
    sandbox's environment lets secrets win), HF_TOKEN before its older name."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        for source in (secret_values, environment):
            if source.get(name):
                return source[name]
    return None


def _full_repo_id(repo: str, owner: str) -> str:
    """A repo named without a namespace is the owner's, as the Hub resolves it. An id no repo can have is
    refused: it would become a job token's scope, which nothing could read back."""
    full = repo if "/" in repo else f"{owner}/{repo}"
    try:
        split_repo_id(full)
    except BadRequest as exc:
        raise Unprocessable(f"the repo keephub would guard for this job is not a valid repo id ({exc.message}); "
                            "fix the keephub.repo label or the script's hub_model_id") from None
    return full


def _repo_target(repo_id: str) -> RepoTarget:
    namespace, _, name = repo_id.partition("/")
    return RepoTarget("model", namespace, name)


def durability_plan(labels: dict[str, str]) -> dict | None:
    """Where the sidecar pushes: the target repo and training output directory named by `keephub.*` labels."""
    repo, output_dir = labels.get("keephub.repo"), labels.get("keephub.output-dir")
    if not repo or not output_dir:
        return None
    return {"repo": repo, "outputDir": output_dir, "resume": labels.get("keephub.resume") in ("1", "true")}


def _has_active_attempt(session, job_id: str) -> bool:  # type: ignore[no-untyped-def]
    return session.execute(
        select(JobAttempt.number).where(JobAttempt.job_id == job_id, JobAttempt.outcome.in_(("PENDING", "RUNNING")))
    ).first() is not None
