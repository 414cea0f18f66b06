"""Accounts and tokens: who is calling (`Actor`), their roles, and the tokens they act through.

Tokens are random secrets shown once; only their sha256 is stored, so a stolen database does not
yield working tokens. What an actor may do is decided in one place, `access.authorize`.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Literal

from sqlalchemy import bindparam, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import aliased

from keephub.accounts.scopes import Scope, ScopeError, dump_scopes, load_scopes, parse_scope
from keephub.storage.db import Database, insert_for
from keephub.storage.schema import Account, Membership, Token
from keephub.wire import HubError, Unauthorized

Role = Literal["read", "write", "admin"]
ROLES: tuple[str, ...] = ("read", "write", "admin")
TOKEN_ROLES: tuple[str, ...] = ("read", "write")
TOKEN_PREFIX = "kh_"
_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_-]{0,38}[A-Za-z0-9])?$")
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"
# How fresh a token's "last used" is kept: marking every request would make every read a write.
LAST_USED_RESOLUTION = timedelta(hours=1)
_RESERVED = {"api", "datasets", "spaces", "models", "new", "settings", "static", "login", "logout", "jobs", "docs",
             "mcp"}


class AccountError(ValueError):
    """A request about accounts that cannot be carried out; the message says why and what to do."""


@dataclass(frozen=True)
class Actor:
    """The authenticated caller: a user acting through one token, and what the token narrows.

    `scopes` None: the token may write whatever its user may; a tuple: only what it lists (fine-grained and
    job tokens). `job_id` marks a job's own token."""

    user_id: int
    name: str
    fullname: str
    token_name: str
    token_role: str
    token_created_at: datetime
    is_admin: bool = False
    org_roles: dict[str, str] = field(default_factory=dict)
    token_id: int | None = None
    scopes: tuple[Scope, ...] | None = None
    job_id: str | None = None

    @property
    def is_job_token(self) -> bool:
        return self.job_id is not None

    def namespace_role(self, namespace: str) -> str | None:
        """The user's role in a namespace, before the token's own limit is applied."""
        if namespace == self.name:
            return "admin"
        if self.is_admin:
            return "admin"
        return self.org_roles.get(namespace)


def validate_account_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise AccountError(
            f"invalid name {name!r}: use 1-40 letters, digits, '-' or '_', starting and ending with a letter or digit"
        )
    if name.lower() in _RESERVED:
        raise AccountError(f"the name {name!r} is reserved; choose another")


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Accounts:
    """Create and look up users, organizations, memberships and tokens."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create_user(self, name: str, fullname: str = "", email: str = "", is_admin: bool = False) -> Account:
        validate_account_name(name)
        return self._create_account(name, "user", fullname, email, is_admin)

    def create_org(self, name: str, owner: str, fullname: str = "") -> Account:
        validate_account_name(name)
        with self.db.write() as session:
            owner_account = self._get(session, owner, "user")
            org = Account(name=name, kind="org", fullname=fullname or name, email="", is_admin=False)
            session.add(org)
            try:
                session.flush()
            except IntegrityError:
                raise AccountError(f"the name {name!r} is already taken by a user or organization")
            session.add(Membership(org_id=org.id, user_id=owner_account.id, role="admin"))
            return org

    def _create_account(self, name: str, kind: str, fullname: str, email: str, is_admin: bool) -> Account:
        with self.db.write() as session:
            account = Account(name=name, kind=kind, fullname=fullname or name, email=email, is_admin=is_admin)
            session.add(account)
            try:
                session.flush()
            except IntegrityError:
                raise AccountError(f"the name {name!r} is already taken by a user or organization")
            return account

    def add_member(self, org: str, user: str, role: str) -> None:
        if role not in ROLES:
            raise AccountError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
        with self.db.write() as session:
            org_account = self._get(session, org, "org")
            user_account = self._get(session, user, "user")
            # One statement whether or not the user is a member already: two grants at once never collide.
            session.execute(insert_for(session, Membership)
                            .values(org_id=org_account.id, user_id=user_account.id, role=role)
                            .on_conflict_do_update(index_elements=["org_id", "user_id"], set_={"role": role}))

    def create_token(self, user: str, name: str = "default", role: str = "write",
                     expires_at: datetime | None = None, scopes: list[str] | None = None) -> str:
        """Create a token and return its secret: the only time the secret exists outside the caller.

        `scopes` makes a fine-grained token: it writes only the listed repos and namespaces."""
        if role not in TOKEN_ROLES:
            raise AccountError(f"unknown token role {role!r}; choose read or write")
        if scopes is not None and role != "write":
            raise AccountError("--repo and --namespace list what a write token may write; a read token writes "
                               "nothing: use --role write, or drop them")
        if expires_at is not None and _aware(expires_at) <= datetime.now(timezone.utc):
            raise AccountError("the expiry must be in the future, e.g. --expires 30d")
        try:
            parsed = None if scopes is None else [parse_scope(entry) for entry in scopes]
        except ScopeError as exc:
            raise AccountError(str(exc))
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self.db.write() as session:
            account = self._get(session, user, "user")
            for scope in parsed or []:
                if session.execute(select(Account.id).where(Account.name == scope.namespace)).first() is None:
                    raise AccountError(f"scope {scope}: no user or organization named {scope.namespace!r}")
            session.add(Token(user_id=account.id, name=name, role=role, secret_sha256=hash_secret(secret),
                              expires_at=expires_at, revoked=False, scopes_json=dump_scopes(parsed)))
        return secret

    def create_job_token(self, user: str, job_id: str, writable: list[Scope], expires_at: datetime,
                         parent_token_id: int | None) -> str:
        """A job's own token: writes only `writable` (read-only when empty), never manages repos or jobs, and
        authenticates only while its parent token does and until the job ends."""
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self.db.write() as session:
            account = self._get(session, user, "user")
            session.add(Token(user_id=account.id, name=f"job-{job_id}", role="write" if writable else "read",
                              secret_sha256=hash_secret(secret), expires_at=expires_at, revoked=False,
                              scopes_json=dump_scopes(writable), is_job_token=True, job_id=job_id,
                              parent_token_id=parent_token_id))
        return secret

    def job_token_info(self, job_id: str) -> dict | None:
        """A job's token as its record shows it: name, what it may write, whether it still works; no secret."""
        with self.db.read() as session:
            token = session.execute(select(Token).where(Token.job_id == job_id, Token.is_job_token.is_(True))
                                    ).scalars().first()
            if token is None:
                return None
            if token.revoked or _refusal(session, token) is None:
                state = "revoked" if token.revoked else "live"
            else:
                state = "expired" if _expired(token) else "revoked"
        return {"name": token.name, "role": token.role, "scopes": [str(s) for s in load_scopes(token.scopes_json) or ()],
                "state": state, "expiresAt": _aware(token.expires_at).isoformat() if token.expires_at else None}

    @staticmethod
    def token_hash(secret: str) -> str:
        return hash_secret(secret)

    def revoke_token(self, secret: str) -> bool:
        return self.revoke_by_hash(hash_secret(secret))

    def revoke_by_hash(self, secret_sha256: str) -> bool:
        """Revoke a token known only by its hash (job tokens: the job keeps no clear copy outside its secrets)."""
        with self.db.write() as session:
            token = session.execute(select(Token).where(Token.secret_sha256 == secret_sha256)).scalar_one_or_none()
            if token is None:
                return False
            token.revoked = True
            return True

    def authenticate(self, secret: str) -> Actor:
        """The actor a token secret stands for; 401 naming why when it is unknown, revoked or expired.

        Every request asks, so a live token costs one indexed query and nothing is cached: a revocation, an
        expiry or a changed membership counts from the very next request, in every server process."""
        actor, mark_due = self.check_token(secret)
        if mark_due:
            self.mark_used(actor)
        return actor

    def check_token(self, secret: str) -> tuple[Actor, bool]:
        """`authenticate` without its write: the actor, and whether the token's last use is due to be marked
        (`mark_used`), for a caller that reads more in the same transaction and writes after it ends."""
        with self.db.read() as session:
            # On the session's connection: a plain statement skips the ORM's handling of each execution.
            rows = session.connection().execute(_LIVE_TOKEN, {"secret_sha256": hash_secret(secret)}).all()
            if not rows:
                raise Unauthorized(INVALID_CREDENTIALS)
            actor = _actor_from_rows(rows)
            if actor is None:  # refused, or made from a token itself made from another: say why, the long way
                actor = _live_actor(session, session.get(Token, rows[0].token_id))
            last_used = rows[0].last_used_at
        return actor, last_used is None or _aware(last_used) < datetime.now(timezone.utc) - LAST_USED_RESOLUTION

    def mark_used(self, actor: Actor) -> None:
        """Record that the actor's token was used now (to the hour: see LAST_USED_RESOLUTION)."""
        try:
            with self.db.write() as session:
                session.execute(update(Token).where(Token.id == actor.token_id)
                                .values(last_used_at=datetime.now(timezone.utc)))
        except HubError:  # advisory only: a busy or read-only database must not refuse a valid token
            pass

    def user_actor(self, user_id: int, label: str) -> Actor:
        """The actor for a user signed in without a token (a browser session made with their password): all the
        user may do, as a write token without scopes would."""
        with self.db.read() as session:
            user = session.get(Account, user_id)
            if user is None or user.kind != "user":
                raise Unauthorized("this user no longer exists; sign in again")
            return Actor(user_id=user.id, name=user.name, fullname=user.fullname, token_name=label,
                         token_role="write", token_created_at=user.created_at, is_admin=user.is_admin,
                         org_roles=_org_roles(session, user.id))

    def actor_of_token(self, token_id: int) -> Actor:
        """The actor behind a credential derived from a token (upload URL, CAS token), as of now; 401 when the
        token no longer authenticates."""
        with self.db.read() as session:
            token = session.get(Token, token_id)
            if token is None:
                raise Unauthorized("the access token this credential was issued for no longer exists")
            return _live_actor(session, token)

    def namespace_role_of(self, user: str, namespace: str) -> str | None:
        """A user's role in a namespace now (for work started on their behalf later, like scheduled runs)."""
        with self.db.read() as session:
            account = session.execute(select(Account).where(Account.name == user, Account.kind == "user")
                                      ).scalar_one_or_none()
            if account is None:
                return None
            if account.name == namespace or account.is_admin:
                return "admin"
            return session.execute(
                select(Membership.role).join(Account, Account.id == Membership.org_id)
                .where(Membership.user_id == account.id, Account.name == namespace)
            ).scalar_one_or_none()

    def members(self, org: str) -> list[tuple[str, str]]:
        """(user name, role) of each member of an organization, by name."""
        with self.db.read() as session:
            org_account = self._get(session, org, "org")
            rows = session.execute(select(Account.name, Membership.role)
                                   .join(Membership, Membership.user_id == Account.id)
                                   .where(Membership.org_id == org_account.id).order_by(Account.name)).all()
            return [(name, role) for name, role in rows]

    def find(self, name: str) -> Account | None:
        with self.db.read() as session:
            return session.execute(select(Account).where(Account.name == name)).scalar_one_or_none()

    def org_fullnames(self, names: list[str]) -> dict[str, str]:
        with self.db.read() as session:
            rows = session.execute(select(Account.name, Account.fullname).where(Account.name.in_(names))).all()
            return {name: fullname for name, fullname in rows}

    @staticmethod
    def _get(session, name: str, kind: str) -> Account:  # type: ignore[no-untyped-def]
        account = session.execute(select(Account).where(Account.name == name)).scalar_one_or_none()
        if account is None or account.kind != kind:
            label = "user" if kind == "user" else "organization"
            raise AccountError(f"no {label} named {name!r}; create it first (keephub {kind} create {name})")
        return account


def _refusal(session, token: Token) -> str | None:  # type: ignore[no-untyped-def]
    """Why a token no longer authenticates (revoked, expired, or made from a token that no longer does)."""
    if token.revoked:
        if token.is_job_token:
            return f"this job's token was revoked when job {token.job_id} ended; a job's token works only while it runs"
        return f"the token '{token.name}' has been revoked; use another, or create one with keephub token create"
    if _expired(token):
        assert token.expires_at is not None
        return (f"the token '{token.name}' expired at {_aware(token.expires_at).isoformat(timespec='seconds')}; "
                "create a new one (keephub token create USER --expires 30d)")
    if token.parent_token_id is not None:
        parent = session.get(Token, token.parent_token_id)
        inherited = "it no longer exists" if parent is None else _refusal(session, parent)
        if inherited is not None:
            return f"the token '{token.name}' ended with the token it was made from: {inherited}"
    return None


def _expired(token: Token) -> bool:
    return token.expires_at is not None and _aware(token.expires_at) <= datetime.now(timezone.utc)


def _live_actor(session, token: Token) -> Actor:  # type: ignore[no-untyped-def]
    refusal = _refusal(session, token)
    if refusal is not None:
        raise Unauthorized(refusal)
    user = session.get(Account, token.user_id)
    return Actor(
        user_id=user.id, name=user.name, fullname=user.fullname, token_name=token.name,
        token_role=token.role, token_created_at=token.created_at, is_admin=user.is_admin,
        org_roles=_org_roles(session, user.id), token_id=token.id,
        scopes=load_scopes(token.scopes_json), job_id=token.job_id if token.is_job_token else None,
    )


_parent = aliased(Token)
_org = aliased(Account)
# A token with its user, the token it was made from, and one row per organization of the user.
_LIVE_TOKEN = (
    select(Token.id.label("token_id"), Token.name.label("token_name"), Token.role, Token.created_at,
           Token.expires_at, Token.revoked, Token.scopes_json, Token.is_job_token, Token.job_id, Token.last_used_at,
           Token.parent_token_id, _parent.revoked.label("parent_revoked"),
           _parent.expires_at.label("parent_expires_at"), _parent.parent_token_id.label("grandparent_token_id"),
           Account.id.label("user_id"), Account.name.label("user_name"), Account.fullname, Account.is_admin,
           _org.name.label("org_name"), Membership.role.label("org_role"))
    .join(Account, Account.id == Token.user_id)
    .outerjoin(_parent, _parent.id == Token.parent_token_id)
    .outerjoin(Membership, Membership.user_id == Account.id)
    .outerjoin(_org, _org.id == Membership.org_id)
    .where(Token.secret_sha256 == bindparam("secret_sha256"))
)


def _actor_from_rows(rows) -> Actor | None:  # type: ignore[no-untyped-def]
    """The actor of a live token from its `_LIVE_TOKEN` rows; None when `_refusal` must look closer."""
    first = rows[0]
    now = datetime.now(timezone.utc)
    if first.revoked or (first.expires_at is not None and _aware(first.expires_at) <= now):
        return None
    if first.parent_token_id is not None and (
            first.parent_revoked is None or first.parent_revoked or first.grandparent_token_id is not None
            or (first.parent_expires_at is not None and _aware(first.parent_expires_at) <= now)):
        return None
    return Actor(
        user_id=first.user_id, name=first.user_name, fullname=first.fullname, token_name=first.token_name,
        token_role=first.role, token_created_at=first.created_at, is_admin=first.is_admin,
        org_roles={row.org_name: row.org_role for row in rows if row.org_name is not None},
        token_id=first.token_id, scopes=load_scopes(first.scopes_json),
        job_id=first.job_id if first.is_job_token else None,
    )


def _org_roles(session, user_id: int) -> dict[str, str]:  # type: ignore[no-untyped-def]
    orgs = session.execute(
        select(Account.name, Membership.role).join(Membership, Membership.org_id == Account.id)
        .where(Membership.user_id == user_id)
    ).all()
    return {name: role for name, role in orgs}


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
