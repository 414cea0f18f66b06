"""Gated repos: anyone may see the repo and its model card, but its files need an accepted access request.

Members of the repo's namespace are never gated. Requests are accepted at once (`gated: "auto"`) or by someone
with write access (`"manual"`), who may also grant access unasked, reject, or put a request back to pending.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from keephub.accounts import Actor, require_actor
from keephub.hub import naming, repos
from keephub.hub.repos import RepoRef
from keephub.hub.wireformat import iso
from keephub.storage.db import Database
from keephub.storage.schema import AccessRequest, Account, Repo
from keephub.wire import BadRequest, Conflict, HubError
from keephub.wire.errors import NotFound

MODES = ("auto", "manual")
STATUSES = ("pending", "accepted", "rejected")
# What a gated repo still shows to everyone, as on the Hub: its card and its attributes.
UNGATED_FILES = ("README.md", ".gitattributes")
MAX_FIELDS_BYTES = 10_000


class GatedRepo(HubError):
    """403 with the code huggingface_hub raises as GatedRepoError."""

    status_code = 403
    error_code = "GatedRepo"


def gate_of(body: dict) -> str | None | bool:
    """The `gated` setting of a settings body: "auto", "manual", False (open), or None when it does not say."""
    if "gated" not in body:
        return None
    value = body["gated"]
    if value in (False, "false"):
        return False
    if value not in MODES:
        raise BadRequest(f"invalid 'gated' {value!r}: use \"auto\" (requests accepted at once), \"manual\" (accepted "
                         "by the repo's writers) or false")
    return str(value)


def set_gate(session: Session, repo: RepoRef, mode: str | bool) -> None:
    session.get(Repo, repo.id).gated = mode or None  # type: ignore[union-attr]


def mode(session: Session, repo: RepoRef) -> str | None:
    row = session.get(Repo, repo.id)
    return row.gated if row is not None else None


def check_access(session: Session, actor: Actor | None, repo: RepoRef, path: str | None = None) -> None:
    """Refuse (GatedRepo) a download of `path` (None: any file) from a gated repo without an accepted request."""
    if mode(session, repo) is None or (path is not None and path in UNGATED_FILES):
        return
    if actor is not None and actor.namespace_role(repo.namespace) is not None:
        return
    if actor is not None:
        request = session.scalars(select(AccessRequest).where(AccessRequest.repo_id == repo.id,
                                                              AccessRequest.user_id == actor.user_id)).first()
        if request is not None and request.status == "accepted":
            return
    who = "you are not authenticated" if actor is None else f"{actor.name} has no accepted access request"
    raise GatedRepo(f"Access to {repo.type} {repo.repo_id} is restricted and {who}; ask for access with POST "
                    f"/api/{repo.type}s/{repo.repo_id}/ask-access and wait until it is accepted")


def ask(session: Session, actor: Actor | None, repo: RepoRef, body: dict) -> str:
    """A user's request for access; accepted at once on an "auto" repo. Asking again changes nothing."""
    actor = require_actor(actor, f"ask for access to {repo.repo_id}")
    gate = mode(session, repo)
    if gate is None:
        raise BadRequest(f"{repo.repo_id} is not gated: its files can be downloaded without asking")
    fields = body.get("fields")
    if fields is not None and (not isinstance(fields, dict) or len(json.dumps(fields)) > MAX_FIELDS_BYTES):
        raise BadRequest(f"'fields' must be an object of at most {MAX_FIELDS_BYTES} bytes of JSON")
    existing = _request_of(session, repo, actor.user_id)
    if existing is not None:
        return existing.status
    status = "accepted" if gate == "auto" else "pending"
    session.add(AccessRequest(repo_id=repo.id, user_id=actor.user_id, status=status, updated_at=_now(),
                              fields_json=json.dumps(fields) if fields else None))
    try:
        session.flush()
    except IntegrityError:  # asked twice at once
        raise Conflict(f"an access request of {actor.name} to {repo.repo_id} was being made meanwhile; retry") from None
    return status


def requests(session: Session, repo: RepoRef, status: str) -> list[dict]:
    if status not in STATUSES:
        raise NotFound(f"no such list of access requests: {status!r}; use pending, accepted or rejected")
    rows = session.execute(select(AccessRequest, Account).join(Account, Account.id == AccessRequest.user_id)
                           .where(AccessRequest.repo_id == repo.id, AccessRequest.status == status)
                           .order_by(AccessRequest.updated_at))
    return [{"requestId": str(request.id), "status": request.status, "timestamp": iso(request.updated_at),
             "user": {"user": user.name, "fullname": user.fullname or user.name, "email": user.email or None},
             "fields": json.loads(request.fields_json) if request.fields_json else None}
            for request, user in rows]


def handle(session: Session, repo: RepoRef, body: dict) -> None:
    """Accept, reject or put back to pending one request, named by `user` or `requestId`."""
    status = body.get("status")
    if status not in STATUSES:
        raise BadRequest("'status' must be accepted, rejected or pending")
    request = None
    if isinstance(body.get("user"), str):
        user = _user(session, body["user"])
        request = _request_of(session, repo, user.id)
    elif isinstance(body.get("requestId"), str) and body["requestId"].isdigit():
        request = session.scalars(select(AccessRequest).where(AccessRequest.repo_id == repo.id,
                                                              AccessRequest.id == int(body["requestId"]))).first()
    else:
        raise BadRequest("name the request by 'user' (a user name) or 'requestId'")
    if request is None:
        raise NotFound(f"no access request to {repo.repo_id} from that user; list them with "
                       "list_pending_access_requests")
    request.status, request.updated_at = status, _now()


def grant(session: Session, repo: RepoRef, body: dict) -> None:
    """Give a user access without a request of theirs; 409 when they have it already."""
    if mode(session, repo) is None:
        raise BadRequest(f"{repo.repo_id} is not gated; gate it first (update_repo_settings(gated=\"manual\"))")
    if not isinstance(body.get("user"), str):
        raise BadRequest("'user' must name the user to grant access to")
    user = _user(session, body["user"])
    request = _request_of(session, repo, user.id)
    if request is not None and request.status == "accepted":
        raise Conflict(f"{user.name} already has access to {repo.repo_id}")
    if request is None:
        session.add(AccessRequest(repo_id=repo.id, user_id=user.id, status="accepted", updated_at=_now()))
    else:
        request.status, request.updated_at = "accepted", _now()


def _user(session: Session, name: str) -> Account:
    naming.check_text(name, "user")
    user = session.scalars(select(Account).where(func.lower(Account.name) == name.lower(),
                                                 Account.kind == "user")).first()
    if user is None:
        raise NotFound(f"no user {name!r} on this server")
    return user


def _request_of(session: Session, repo: RepoRef, user_id: int) -> AccessRequest | None:
    return session.scalars(select(AccessRequest).where(AccessRequest.repo_id == repo.id,
                                                       AccessRequest.user_id == user_id)).first()


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Gates:
    """Access requests as whole operations, one transaction each (handlers in social_routes.py)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def ask(self, actor: Actor | None, repo_type: str, namespace: str, name: str, body: dict) -> dict:
        with self.db.write() as session:
            return {"status": ask(session, actor, repos.find_repo(session, repo_type, namespace, name, actor), body)}

    def list(self, actor: Actor | None, repo_type: str, namespace: str, name: str, status: str) -> list[dict]:
        with self.db.read() as session:
            return requests(session, repos.find_repo_for_write(session, repo_type, namespace, name, actor), status)

    def handle(self, actor: Actor | None, repo_type: str, namespace: str, name: str, body: dict) -> None:
        with self.db.write() as session:
            handle(session, repos.find_repo_for_write(session, repo_type, namespace, name, actor), body)

    def grant(self, actor: Actor | None, repo_type: str, namespace: str, name: str, body: dict) -> None:
        with self.db.write() as session:
            grant(session, repos.find_repo_for_write(session, repo_type, namespace, name, actor), body)
