"""The agent contract, version 1: how keephub's code where a job runs reports to the server, over HTTP only.

    POST /api/agent/v1/jobs/{job_id}/attempts/{attempt}/start      {"node"}            -> the attempt's plan
    POST /api/agent/v1/jobs/{job_id}/attempts/{attempt}/heartbeat  {"node"}            -> {"stop"?: "cancel"}
    POST /api/agent/v1/jobs/{job_id}/attempts/{attempt}/log        {"first", "events"} -> {"next", "stored"}
    POST /api/agent/v1/jobs/{job_id}/attempts/{attempt}/exit       {"exitCode", "stopped", "reason"}
    POST /api/agent/v1/jobs/{job_id}/attempts/{attempt}/records    a durability record (sidecar; agent: bucket-sync)

Each takes `Authorization: Bearer <credential>`. The agent's credential is made when the attempt is claimed and
reaches the agent on its stdin and serves for `start` alone, whose plan carries the credential for every later
call (so a second agent of the same attempt is refused); the sidecar's (records only) is made when the agent starts and reaches the
sidecar in a file it reads and deletes before the training script starts. keephub stores only their
sha256; each is valid only for its own attempt while that attempt is active, and accepted nowhere else. Log
events carry consecutive numbers from 1: a resent line keephub has is ignored, a gap is refused (409 with
the line to send next), so the log has each line once, in order, whatever the agent had to resend.
"""

from __future__ import annotations

import hmac
import json

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from keephub.durability import record as durability_record
from keephub.hub.routes import call
from keephub.jobs.scheduler import CREDENTIAL_PREFIX, REFUSED, Scheduler, digest
from keephub.storage.db import Database
from keephub.storage.schema import JobAttempt
from keephub.wire import BadRequest, Forbidden, TooLarge, Unauthorized
from keephub.wire.bodies import read_body
from keephub.wire.text import text_problem

PREFIX = "/api/agent/v1"
# A batch of log events is at most this big (the agent sends 256 KiB batches, one line may be longer).
MAX_LOG_BATCH_BYTES = 16 * 1024 * 1024
MAX_SMALL_BODY_BYTES = 64 * 1024
STOP_KINDS = (None, "cancel", "timeout", "limit", "start-failed", "agent-failed", "lost", "signal")


def accept_record(db: Database, job_id: str, attempt: int, credential: str, data: dict) -> int:
    """Check the credential and store the record in one transaction; returns how many more fit. A bucket-sync
    comes from the agent (its credential), every other kind from the sidecar (its own): neither can report
    what the other saw."""
    with db.write() as session:
        # Locked until the commit: records of one attempt are counted against their limit one at a time, and
        # none lands after the attempt ended (PostgreSQL has no database-wide write lock to do this).
        row = session.get(JobAttempt, (job_id, attempt), with_for_update=True)
        expected = None
        if row is not None and row.outcome == "RUNNING":
            expected = row.agent_credential_hash if data["kind"] == "bucket-sync" else row.sidecar_credential_hash
        if expected is None or not hmac.compare_digest(expected, digest(credential)):
            raise Forbidden(REFUSED)
        return durability_record.add(session, job_id, attempt, data)


def _credential(request: Request) -> str:
    scheme, _, credential = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not credential.strip().startswith(CREDENTIAL_PREFIX):
        raise Unauthorized("this endpoint takes the attempt's agent credential (Authorization: Bearer "
                           f"{CREDENTIAL_PREFIX}...), which keephub hands to the job's agent; user tokens are "
                           "not accepted here")
    return credential.strip()


def _attempt(request: Request) -> tuple[str, int]:
    attempt_text = request.path_params["attempt"]
    if not (attempt_text.isascii() and attempt_text.isdigit() and len(attempt_text) <= 6):
        raise BadRequest(f"the attempt in the URL must be its number (KEEPHUB_ATTEMPT), not {attempt_text[:20]!r}")
    return request.path_params["job_id"], int(attempt_text)


async def _json(request: Request, limit: int, what: str) -> dict:
    try:
        body = await read_body(request, limit, f"; {what}")
    except TooLarge as exc:  # the rest of the body is never read: the connection cannot carry another request
        raise TooLarge(exc.message, extra_headers={"Connection": "close"}) from None
    try:
        data = json.loads(body) if body else {}
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    return data


def _text(data: dict, name: str, limit: int = 200) -> str:
    value = data.get(name) or ""
    if not isinstance(value, str) or len(value) > limit:
        raise BadRequest(f"{name} must be a string of at most {limit} characters")
    return value


def _scheduler(request: Request) -> Scheduler:
    return request.app.state.scheduler


async def start(request: Request) -> JSONResponse:
    job_id, attempt = _attempt(request)
    credential = _credential(request)
    data = await _json(request, MAX_SMALL_BODY_BYTES, "a start request is small")
    plan = await call(_scheduler(request).agent_start, job_id, attempt, credential, _text(data, "node"))
    return JSONResponse(plan)


async def heartbeat(request: Request) -> JSONResponse:
    job_id, attempt = _attempt(request)
    credential = _credential(request)
    data = await _json(request, MAX_SMALL_BODY_BYTES, "a heartbeat is small")
    return JSONResponse(await call(_scheduler(request).agent_heartbeat, job_id, attempt, credential,
                                   _text(data, "node")))


def _storable(text: str) -> str:
    """Job output as text the log can hold: a NUL byte or a lone surrogate a program printed is replaced, not
    refused (refusing would hold back every later line)."""
    text = text.replace("\x00", "\ufffd")
    return text if text_problem(text) is None else text.encode("utf-8", "replace").decode("utf-8")


def _events(data: dict) -> tuple[int, list[tuple[str, str]]]:
    first, events = data.get("first"), data.get("events")
    if not isinstance(first, int) or isinstance(first, bool) or first < 1:
        raise BadRequest("first must be the number of the batch's first line (from 1)")
    if not isinstance(events, list):
        raise BadRequest("events must be a list of [timestamp, line] pairs")
    checked = []
    for index, item in enumerate(events):
        if not (isinstance(item, list) and len(item) == 2 and all(isinstance(part, str) for part in item)):
            raise BadRequest(f"events[{index}] must be a [timestamp, line] pair of strings")
        checked.append((_storable(item[0][:40]), _storable(item[1])))
    return first, checked


async def log_lines(request: Request) -> JSONResponse:
    job_id, attempt = _attempt(request)
    credential = _credential(request)
    first, events = _events(await _json(request, MAX_LOG_BATCH_BYTES, "send log lines in smaller batches"))
    return JSONResponse(await call(_scheduler(request).agent_log, job_id, attempt, credential, first, events))


async def exit_status(request: Request) -> JSONResponse:
    job_id, attempt = _attempt(request)
    credential = _credential(request)
    data = await _json(request, MAX_SMALL_BODY_BYTES, "an exit report is small")
    code = data.get("exitCode")
    if code is not None and (not isinstance(code, int) or isinstance(code, bool) or not -255 <= code <= 1 << 16):
        raise BadRequest("exitCode must be the process's exit status (an integer; negative for a signal) or null")
    if data.get("stopped") not in STOP_KINDS:
        raise BadRequest(f"stopped must be one of {', '.join(str(k) for k in STOP_KINDS)}")
    report = {"exitCode": code, "stopped": data.get("stopped"), "reason": _text(data, "reason", 4096) or None}
    return JSONResponse(await call(_scheduler(request).agent_exit, job_id, attempt, credential, report))


async def post_record(request: Request) -> JSONResponse:
    job_id, attempt = _attempt(request)
    credential = _credential(request)
    data = await _json(request, durability_record.MAX_RECORD_BYTES,
                       "a durability record is at most that big, so send the file list of a huge push shortened")
    durability_record.check(data)
    remaining = await call(accept_record, request.app.state.jobs.db, job_id, attempt, credential, data)
    return JSONResponse({"stored": data["kind"], "remaining": remaining}, status_code=201)


def routes() -> list[BaseRoute]:
    base = f"{PREFIX}/jobs/{{job_id}}/attempts/{{attempt}}"
    return [Route(f"{base}/start", start, methods=["POST"]),
            Route(f"{base}/heartbeat", heartbeat, methods=["POST"]),
            Route(f"{base}/log", log_lines, methods=["POST"]),
            Route(f"{base}/exit", exit_status, methods=["POST"]),
            Route(f"{base}/records", post_record, methods=["POST"])]
