"""The per-job durability record: what the sidecar pushed where, and the verdict a user reads first."""

from __future__ import annotations

import json

from sqlalchemy import select

from keephub.durability.sidecar import RECORD_PREFIX
from keephub.storage.db import Database
from keephub.storage.schema import Account, JobRecordEntry, Repo, RepoCommit

KINDS = ("push", "push-failed", "resume", "verdict")
MAX_RECORD_BYTES = 256 * 1024


def split_record(line: str) -> tuple[str, str | None]:
    """(log text, record payload or None): a record may follow text the training process left on the line."""
    index = line.find(RECORD_PREFIX)
    if index < 0:
        return line, None
    return line[:index], line[index + len(RECORD_PREFIX):]


def parse(payload: str) -> dict:
    """A record as the sidecar writes it, or a `malformed` one: job output must never break the record."""
    try:
        data = json.loads(payload[:MAX_RECORD_BYTES])
    except (ValueError, RecursionError):
        data = None
    if not isinstance(data, dict) or data.get("kind") not in KINDS:
        return {"kind": "malformed", "raw": payload[:2000]}
    return data


def store(db: Database, job_id: str, attempt: int, payload: str) -> None:
    data = parse(payload)
    kind = data["kind"]
    with db.write() as session:
        session.add(JobRecordEntry(job_id=job_id, attempt=attempt, kind=kind, data_json=json.dumps(data)))


def summary(db: Database, job_id: str, target_repo: str | None, base_url: str) -> dict | None:
    """The `durability` block of a job's record, or None when keephub was not guarding this job's results."""
    if target_repo is None:
        return None
    with db.read() as session:
        rows = session.execute(select(JobRecordEntry).where(JobRecordEntry.job_id == job_id)
                               .order_by(JobRecordEntry.id)).scalars().all()
        entries = [(row.attempt, json.loads(row.data_json)) for row in rows]
        landed = _commits_of(session, target_repo)
    pushes = [
        {"attempt": attempt, "label": str(d.get("label")), "revision": str(d.get("revision")),
         "commit": str(d.get("commit") or ""), "files": [str(f) for f in d.get("files") or []],
         "bytes": d.get("bytes") if isinstance(d.get("bytes"), int) else 0,
         "verified": d.get("verified") is True and d.get("commit") in landed, "time": d.get("time"),
         "alreadyThere": d.get("already_there") is True}
        for attempt, d in entries if d.get("kind") == "push"
    ]
    failures = [{"label": str(d.get("label")), "reason": str(d.get("reason"))}
                for _, d in entries if d.get("kind") == "push-failed"]
    verdicts = [d for _, d in entries if d.get("kind") == "verdict"]
    last = verdicts[-1] if verdicts else None
    return {
        "targetRepo": target_repo,
        "pushes": pushes,
        "failures": failures,
        "verdict": verdict(target_repo, pushes, failures, last, base_url) | _times(last),
    }


def _times(last: dict | None) -> dict:
    """When the verdict was reached and when the training process had ended (epoch seconds), if reported."""
    times = {"time": (last or {}).get("time"), "trainingEnded": (last or {}).get("training_ended")}
    return {key: value for key, value in times.items() if isinstance(value, (int, float))}


def _commits_of(session, repo_id: str) -> set[str]:  # type: ignore[no-untyped-def]
    """The commits the server itself recorded for the model repo: a push the sidecar reports counts as
    verified only if its commit is really there (the job's own output could print anything)."""
    namespace, _, name = repo_id.partition("/")
    repo = session.execute(select(Repo.id).join(Account, Account.id == Repo.owner_id)
                           .where(Repo.type == "model", Account.name == namespace, Repo.name == name)
                           ).scalar_one_or_none()
    if repo is None:
        return set()
    return set(session.execute(select(RepoCommit.sha).where(RepoCommit.repo_id == repo)).scalars())


def verdict(repo: str, pushes: list[dict], failures: list[dict], last: dict | None, base_url: str) -> dict:
    verified_main = [p for p in pushes if p["revision"] == "main" and p["verified"]]
    if last is not None and last.get("status") == "saved" and verified_main:
        commit = verified_main[-1]["commit"]
        lost = "".join(f"; but {f['reason']}" for f in failures)
        return {"status": "saved", "commit": commit,
                "message": f"saved at commit {commit[:12]} of {repo}: {base_url}/{repo}{lost}"}
    if last is not None and last.get("status") == "rescued" and last.get("branch"):
        branch = str(last["branch"])
        return {"status": "rescued", "branch": branch,
                "message": f"rescued to branch {branch} of {repo} ({last.get('reason')}); main was left untouched"}
    if verified_main:
        commit = verified_main[-1]["commit"]
        reason = (last or {}).get("reason") or "the job did not finish"
        return {"status": "checkpoint", "commit": commit,
                "message": f"latest checkpoint saved at commit {commit[:12]} of {repo} ({reason})"}
    reason = (last or {}).get("reason") or (failures[-1]["reason"] if failures else "no push happened")
    return {"status": "not-saved", "message": f"NOT saved: {reason}"}
