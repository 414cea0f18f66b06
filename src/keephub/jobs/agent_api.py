"""The agent contract, version 1: how keephub's code inside a job's sandbox reports to the server.

Today the durability sidecar is the only agent, and it sends one thing: durability records,

    POST /api/agent/v1/jobs/{job_id}/attempts/{attempt}/records
    Authorization: Bearer <the attempt's agent credential>
    {"kind": "push" | "push-failed" | "resume" | "verdict", ...}

The credential is made by the scheduler when the attempt starts, stored only as its sha256, handed to the
sidecar in a file the sidecar reads and deletes before the training script starts, and valid only for its
own attempt while that attempt runs. It can do nothing else: user tokens are not accepted here, and this
credential is accepted nowhere else. Whatever the job prints is only log text.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from keephub.durability import record as durability_record
from keephub.hub.routes import call
from keephub.storage.db import Database
from keephub.storage.schema import JobAttempt
from keephub.wire import BadRequest, Forbidden, TooLarge, Unauthorized
from keephub.wire.bodies import read_body

PREFIX = "/api/agent/v1"
CREDENTIAL_PREFIX = "khagent_"
# Where, inside the sandbox, the sidecar finds its credential (in the attempt's private workspace).
CREDENTIAL_FILE = ".keephub-agent-credential"
REFUSED = ("the credential is not this attempt's agent credential, or the attempt has ended; an agent "
           "credential is valid only for the attempt it was made for, while that attempt runs")


def _digest(credential: str) -> str:
    return hashlib.sha256(credential.encode()).hexdigest()


def issue_credential(db: Database, job_id: str, attempt: int) -> str:
    """A fresh credential for the attempt (whose row must exist); only its hash is stored."""
    credential = CREDENTIAL_PREFIX + secrets.token_urlsafe(32)
    with db.write() as session:
        row = session.get(JobAttempt, (job_id, attempt))
        assert row is not None
        row.agent_credential_hash = _digest(credential)
    return credential


def revoke_credential(db: Database, job_id: str, attempt: int) -> None:
    with db.write() as session:
        row = session.get(JobAttempt, (job_id, attempt))
        if row is not None:
            row.agent_credential_hash = None


def accept_record(db: Database, job_id: str, attempt: int, credential: str, data: dict) -> int:
    """Check the credential and store the record in one transaction; returns how many more records fit."""
    with db.write() as session:
        row = session.get(JobAttempt, (job_id, attempt))
        expected = row.agent_credential_hash if row is not None and row.outcome == "RUNNING" else None
        if expected is None or not hmac.compare_digest(expected, _digest(credential)):
            raise Forbidden(REFUSED)
        return durability_record.add(session, job_id, attempt, data)


def _credential(request: Request) -> str:
    scheme, _, credential = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not credential.strip().startswith(CREDENTIAL_PREFIX):
        raise Unauthorized("this endpoint takes the attempt's agent credential (Authorization: Bearer "
                           f"{CREDENTIAL_PREFIX}...), which keephub hands to the job's sidecar; user tokens are "
                           "not accepted here")
    return credential.strip()


async def post_record(request: Request) -> JSONResponse:
    job_id, attempt_text = request.path_params["job_id"], request.path_params["attempt"]
    credential = _credential(request)
    if not (attempt_text.isascii() and attempt_text.isdigit() and len(attempt_text) <= 6):
        raise BadRequest(f"the attempt in the URL must be its number (KEEPHUB_ATTEMPT), not {attempt_text[:20]!r}")
    try:
        body = await read_body(request, durability_record.MAX_RECORD_BYTES,
                               "; a durability record is at most that big, so send the file list of a huge push "
                               "shortened")
    except TooLarge as exc:  # the rest of the body is never read: the connection cannot carry another request
        raise TooLarge(exc.message, extra_headers={"Connection": "close"}) from None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"the record is not valid JSON: {exc}") from None
    durability_record.check(data)
    remaining = await call(accept_record, request.app.state.jobs.db, job_id, int(attempt_text), credential, data)
    return JSONResponse({"stored": data["kind"], "remaining": remaining}, status_code=201)


def routes() -> list[BaseRoute]:
    return [Route(f"{PREFIX}/jobs/{{job_id}}/attempts/{{attempt}}/records", post_record, methods=["POST"])]
