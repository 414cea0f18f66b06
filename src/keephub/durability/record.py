"""The per-job durability record: what the sidecar pushed where, what the agent synced to each read-write bucket
volume, and the verdict a user reads first."""

from __future__ import annotations

import json
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from keephub.storage.db import Database
from keephub.storage.schema import Account, JobRecordEntry, Repo, RepoCommit
from keephub.wire import BadRequest, Conflict, HubError

# What the sidecar reports; "bucket-sync" (a volume's pull or push, from the agent) is the agent's alone.
SIDECAR_KINDS = ("push", "push-failed", "resume", "verdict")
KINDS = (*SIDECAR_KINDS, "bucket-sync")
MAX_RECORD_BYTES = 256 * 1024
# Records (and their bytes) an attempt may store besides its one verdict, which always fits: a job that
# reports without end must not fill the database or slow other users' commits.
MAX_RECORDS_PER_ATTEMPT = 1000
MAX_RECORD_BYTES_PER_ATTEMPT = 8 * 1024 * 1024
# A volume's final sync says whether its files were kept, so like the verdict it fits past those limits, up to
# what an attempt makes: a pull and three tries of the final push for each of at most 16 volumes.
MAX_FINAL_SYNCS_PER_ATTEMPT = 64


class TooManyRecords(HubError):
    status_code = 429


# The fields the summary reads, each with the JSON type it must have when present.
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "label": (str,), "revision": (str,), "commit": (str,), "reason": (str,), "status": (str,), "branch": (str,),
    "files": (list,), "holds": (list,), "bytes": (int,), "verified": (bool,), "already_there": (bool,),
    "time": (int, float), "training_ended": (int, float),
}
# A bucket-sync record's fields (keephub.agent.volume_sync.SyncReport.record and the volume's mountPath).
_SYNC_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "bucket": (str,), "prefix": (str,), "mountPath": (str,), "direction": (str,), "final": (bool,),
    "files": (int,), "bytes": (int,), "deleted": (int,), "deferred": (int,), "verified": (bool,),
    "seconds": (int, float), "error": (str,),
}
_SYNC_REQUIRED = ("bucket", "mountPath", "direction", "final", "files", "bytes", "verified")


def check(data: object) -> None:
    """Refuse (400) what is not a record the summary can show: a JSON object of a known kind whose fields have
    the types the summary reads, all text UTF-8. A record of the wrong shape, stored, would break every read of
    the job and of its namespace's job list."""
    if not isinstance(data, dict) or data.get("kind") not in KINDS:
        raise BadRequest(f"a durability record is a JSON object whose 'kind' is one of {', '.join(KINDS)}")
    sync = data["kind"] == "bucket-sync"
    missing = sync and any(data.get(name) is None for name in _SYNC_REQUIRED)
    if missing or (sync and data["direction"] not in ("pull", "push")):
        raise BadRequest(f"a bucket-sync record has {', '.join(_SYNC_REQUIRED)}, and 'direction' pull or push")
    for name, types in (_SYNC_FIELD_TYPES if sync else _FIELD_TYPES).items():
        value = data.get(name)
        if value is None:
            continue
        wrong = not isinstance(value, types) or (bool in types) != isinstance(value, bool)
        if wrong or (types == (list,) and not all(isinstance(item, str) for item in value)):
            wanted = "a list of strings" if types == (list,) else " or ".join(t.__name__ for t in types)
            raise BadRequest(f"the record's field '{name}' must be {wanted}")
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("the record holds text that is not valid UTF-8 (a lone surrogate); send UTF-8 text") from None


def add(session: Session, job_id: str, attempt: int, data: dict) -> int:
    """Store one checked record within the caller's transaction; returns how many more records fit."""
    stored = json.dumps(data)
    if data["kind"] == "verdict":
        reported = session.execute(select(JobRecordEntry.id).where(
            JobRecordEntry.job_id == job_id, JobRecordEntry.attempt == attempt, JobRecordEntry.kind == "verdict")
        ).first()
        if reported is not None:
            raise Conflict(f"attempt {attempt} of job {job_id} already reported its verdict; an attempt has one")
        session.add(JobRecordEntry(job_id=job_id, attempt=attempt, kind="verdict", data_json=stored))
        return 0
    if data["kind"] == "bucket-sync" and data["final"]:
        finals = session.execute(select(func.count()).where(  # records are stored as json.dumps writes them
            JobRecordEntry.job_id == job_id, JobRecordEntry.attempt == attempt,
            JobRecordEntry.kind == "bucket-sync", JobRecordEntry.data_json.contains('"final": true'))).scalar_one()
        if finals >= MAX_FINAL_SYNCS_PER_ATTEMPT:
            raise TooManyRecords(f"attempt {attempt} of job {job_id} has reported {finals} final volume syncs, the "
                                 "most an attempt makes")
        session.add(JobRecordEntry(job_id=job_id, attempt=attempt, kind="bucket-sync", data_json=stored))
        return 0
    count, size = session.execute(
        select(func.count(), func.coalesce(func.sum(func.length(JobRecordEntry.data_json)), 0))
        .where(JobRecordEntry.job_id == job_id, JobRecordEntry.attempt == attempt, JobRecordEntry.kind != "verdict")
    ).one()
    if count >= MAX_RECORDS_PER_ATTEMPT:
        raise TooManyRecords(f"attempt {attempt} of job {job_id} has reported {MAX_RECORDS_PER_ATTEMPT} records, "
                             "the most an attempt may; only its verdict is still taken")
    if size + len(stored) > MAX_RECORD_BYTES_PER_ATTEMPT:
        raise TooManyRecords(f"attempt {attempt} of job {job_id} has reported {size:,} bytes of records; this one "
                             f"would pass the {MAX_RECORD_BYTES_PER_ATTEMPT:,} bytes an attempt may store, so only "
                             "its verdict is still taken")
    session.add(JobRecordEntry(job_id=job_id, attempt=attempt, kind=data["kind"], data_json=stored))
    return MAX_RECORDS_PER_ATTEMPT - count - 1


def add_missing_verdict(db: Database, job_id: str, attempt: int) -> None:
    """When an attempt of a guarded job ends without the sidecar's verdict, keephub records why it has none,
    so the job's record never reads as if everything was reported."""
    with db.write() as session:
        reported = session.execute(select(JobRecordEntry.id).where(
            JobRecordEntry.job_id == job_id, JobRecordEntry.attempt == attempt, JobRecordEntry.kind == "verdict")
        ).first()
        if reported is None:
            reason = (f"the durability sidecar of attempt {attempt} reported no verdict: it was stopped before it "
                      "could, or could not reach keephub at HF_ENDPOINT; see the job's log")
            session.add(JobRecordEntry(job_id=job_id, attempt=attempt, kind="verdict", data_json=json.dumps(
                {"kind": "verdict", "status": "not-saved", "reason": reason, "source": "keephub"})))


def summary(db: Database, job_id: str, target_repo: str | None, base_url: str,
            volumes: Sequence[dict] = ()) -> dict | None:
    """The `durability` block of a job's record: the sidecar's pushes to the target repo and the agent's syncs of
    each read-write bucket volume among the spec's `volumes`, with the verdict; None when keephub kept neither."""
    kept = [v for v in volumes if v["type"] == "bucket" and not v["readOnly"]]
    if target_repo is None and not kept:
        return None
    with db.read() as session:
        rows = session.execute(select(JobRecordEntry).where(JobRecordEntry.job_id == job_id)
                               .order_by(JobRecordEntry.id)).scalars().all()
        entries = [(row.attempt, json.loads(row.data_json)) for row in rows]
        landed = _commits_of(session, target_repo) if target_repo else set()
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
    buckets = [_bucket_syncs(volume, entries) for volume in kept]
    lost = [_not_kept(bucket) for bucket in buckets if not bucket["saved"]]
    if target_repo is None:
        kept_all = "; ".join(_kept(bucket, base_url) for bucket in buckets)
        result = ({"status": "not-saved", "message": "NOT saved: " + "; ".join(lost)} if lost
                  else {"status": "saved", "message": f"saved: {kept_all}"})
    else:
        verdicts = [d for _, d in entries if d.get("kind") == "verdict"]
        last = verdicts[-1] if verdicts else None
        result = verdict(target_repo, pushes, failures, last, base_url) | _times(last)
        if lost:
            result["message"] += "".join(f"; but {reason}" for reason in lost)
    return {"targetRepo": target_repo, "pushes": pushes, "failures": failures, "buckets": buckets,
            "verdict": result}


def _bucket_syncs(volume: dict, entries: list[tuple[int, dict]]) -> dict:
    """What the last attempt that synced `volume` pushed to its bucket, and whether its final push was verified."""
    mine = [(attempt, d) for attempt, d in entries
            if d.get("kind") == "bucket-sync" and d.get("mountPath") == volume["mountPath"]]
    attempt = max((number for number, _ in mine), default=None)
    pushes = [d for number, d in mine if number == attempt and d.get("direction") == "push"]
    finals = [d for d in pushes if d.get("final")]
    failed = [d for d in pushes if d.get("error")]
    final = finals[-1] if finals else None
    return {"bucket": volume["source"], "prefix": volume.get("path") or "", "mountPath": volume["mountPath"],
            "attempt": attempt, "files": sum(d.get("files") or 0 for d in pushes),
            "bytes": sum(d.get("bytes") or 0 for d in pushes), "finalSync": final is not None,
            "saved": final is not None and final.get("verified") is True and not final.get("error"),
            "error": (final or {}).get("error") or (failed[-1]["error"] if failed else None)}


def _kept(bucket: dict, base_url: str) -> str:
    folder = f"{bucket['bucket']}/{bucket['prefix']}" if bucket["prefix"] else bucket["bucket"]
    return (f"what the job wrote under {bucket['mountPath']} is in bucket {folder} (attempt {bucket['attempt']}: "
            f"{bucket['files']} files, {bucket['bytes']:,} bytes pushed, the final push verified): "
            f"{base_url}/buckets/{bucket['bucket']}")


def _not_kept(bucket: dict) -> str:
    if bucket["finalSync"]:
        return (f"the final push of {bucket['mountPath']} to bucket {bucket['bucket']} failed ({bucket['error']}); "
                "its files are kept on the job's node (the job's log says where)")
    return (f"no final push of {bucket['mountPath']} to bucket {bucket['bucket']} was reported (the job has not "
            "ended, or its agent was stopped before it could push)")


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
        listed = last.get("holds")
        holds = [item for item in listed if isinstance(item, str)] if isinstance(listed, list) else []
        beyond_main = f": it holds {', '.join(holds)}, which main does not" if holds else ""
        return {"status": "rescued", "branch": branch,
                "message": f"rescued to branch {branch} of {repo} ({last.get('reason')}){beyond_main}; main was "
                           "left untouched"}
    if verified_main:
        commit = verified_main[-1]["commit"]
        reason = (last or {}).get("reason") or "the job did not finish"
        return {"status": "checkpoint", "commit": commit,
                "message": f"latest checkpoint saved at commit {commit[:12]} of {repo} ({reason})"}
    reason = (last or {}).get("reason") or (failures[-1]["reason"] if failures else "no push happened")
    return {"status": "not-saved", "message": f"NOT saved: {reason}"}
