"""Accounts and access: who is calling (`Actor`), and what they may do in a namespace.

Tokens are random secrets shown once; only their sha256 is stored, so a stolen database does not
yield working tokens.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from keephub.storage.db import Database
from keephub.storage.schema import Account, Membership, Token

Role = Literal["read", "write", "admin"]
ROLES: tuple[str, ...] = ("read", "write", "admin")
TOKEN_ROLES: tuple[str, ...] = ("read", "write")
TOKEN_PREFIX = "kh_"
_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38}[A-Za-z0-9])?$")
_RESERVED = {"api", "datasets", "spaces", "models", "new", "settings", "static", "login", "logout", "jobs", "docs"}


class AccountError(ValueError):
    """A request about accounts that cannot be carried out; the message says why and what to do."""


@dataclass(frozen=True)
class Actor:
    """The authenticated caller: a user acting through one token."""

    user_id: int
    name: str
    fullname: str
    token_name: str
    token_role: str
    token_created_at: datetime
    is_admin: bool = False
    org_roles: dict[str, str] = field(default_factory=dict)
    token_id: int | None = None

    def namespace_role(self, namespace: str) -> str | None:
        """The caller's role in a namespace, before the token's own limit is applied."""
        if namespace == self.name:
            return "admin"
        if self.is_admin:
            return "admin"
        return self.org_roles.get(namespace)

    def can_read_namespace(self, namespace: str) -> bool:
        return self.namespace_role(namespace) is not None

    def can_write_namespace(self, namespace: str) -> bool:
        return self.token_role == "write" and self.namespace_role(namespace) in ("write", "admin")

    def can_admin_namespace(self, namespace: str) -> bool:
        return self.token_role == "write" and self.namespace_role(namespace) == "admin"

    def write_denial(self, namespace: str) -> str:
        """Why this caller may not write to `namespace`, phrased with the fix."""
        if self.token_role != "write":
            return (
                f"the token '{self.token_name}' is read-only; create a write token "
                f"(keephub token create {self.name} --role write) and use it"
            )
        role = self.namespace_role(namespace)
        if role is None:
            return (
                f"user '{self.name}' has no write access to namespace '{namespace}': push to your own namespace "
                f"'{self.name}/...' or ask an admin of '{namespace}' to add you with the write role"
            )
        return (
            f"user '{self.name}' has only the '{role}' role in organization '{namespace}'; "
            f"an admin of '{namespace}' can grant write (keephub org add-member {namespace} {self.name} --role write)"
        )


def validate_account_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise AccountError(
            f"invalid name {name!r}: use 1-40 letters, digits or '-', starting and ending with a letter or digit"
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
            membership = session.get(Membership, (org_account.id, user_account.id))
            if membership is None:
                session.add(Membership(org_id=org_account.id, user_id=user_account.id, role=role))
            else:
                membership.role = role

    def create_token(self, user: str, name: str = "default", role: str = "write",
                     expires_at: datetime | None = None) -> str:
        """Create a token and return its secret: the only time the secret exists outside the caller."""
        if role not in TOKEN_ROLES:
            raise AccountError(f"unknown token role {role!r}; choose read or write")
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self.db.write() as session:
            account = self._get(session, user, "user")
            session.add(Token(user_id=account.id, name=name, role=role, secret_sha256=hash_secret(secret),
                              expires_at=expires_at, revoked=False))
        return secret

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

    def authenticate(self, secret: str) -> Actor | None:
        """The actor a token secret stands for, or None when it is unknown, revoked or expired."""
        with self.db.read() as session:
            row = session.execute(
                select(Token, Account).join(Account, Account.id == Token.user_id)
                .where(Token.secret_sha256 == hash_secret(secret))
            ).one_or_none()
            if row is None:
                return None
            token, user = row
            if token.revoked:
                return None
            if token.expires_at is not None and _aware(token.expires_at) <= datetime.now(timezone.utc):
                return None
            orgs = session.execute(
                select(Account.name, Membership.role).join(Membership, Membership.org_id == Account.id)
                .where(Membership.user_id == user.id)
            ).all()
            return Actor(
                user_id=user.id, name=user.name, fullname=user.fullname, token_name=token.name,
                token_role=token.role, token_created_at=token.created_at, is_admin=user.is_admin,
                org_roles={name: role for name, role in orgs}, token_id=token.id,
            )

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

    def token_is_live(self, token_id: int) -> bool:
        """Whether a token still authenticates: credentials derived from it (CAS tokens) end with it."""
        with self.db.read() as session:
            token = session.get(Token, token_id)
            if token is None or token.revoked:
                return False
            return token.expires_at is None or _aware(token.expires_at) > datetime.now(timezone.utc)

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


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
