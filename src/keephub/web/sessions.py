"""Signing in to the web pages: passwords (argon2id), browser sessions, CSRF tokens and the attempt limit.

The API never reads the session cookie: only the pages do, and every page that changes something is a form
carrying the session's CSRF token, so another site can make a signed-in browser send requests but not act.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select

from keephub.accounts import AccountError, Accounts, Actor
from keephub.jobs.secrets import SecretBox
from keephub.storage.db import Database, insert_for
from keephub.storage.schema import Account, Password, Token, WebSession
from keephub.wire import HubError, Unauthorized

SESSION_COOKIE = "keephub_session"
# The sign-in form's CSRF token before there is a session (a double-submit cookie).
SIGN_IN_COOKIE = "keephub_signin"
SESSION_LIFETIME = timedelta(days=14)
# One message for an unknown user, a wrong password and a bad token, so the answer tells an attacker nothing.
WRONG_CREDENTIALS = ("Wrong username or password, or an access token that does not work. Check them and try "
                     "again; an administrator sets passwords with `keephub user passwd NAME`.")
MIN_PASSWORD_LENGTH = 10
# A token just created on the settings page reaches the page after the form's redirect in this cookie: sealed
# with the secrets key (so any server sharing it can read it), bound to the session, and readable for a minute.
NEW_TOKEN_COOKIE = "keephub_new_token"
NEW_TOKEN_SECONDS = 60
_hasher = PasswordHasher()
# Verified when the user is unknown or has no password, so that case takes as long as a wrong password.
_DECOY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class TooManyAttempts(HubError):
    status_code = 429


def set_password(db: Database, user: str, password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"the password is {len(password)} characters long; use at least {MIN_PASSWORD_LENGTH}")
    argon2_hash = _hasher.hash(password)
    with db.write() as session:
        account = session.execute(select(Account).where(Account.name == user)).scalar_one_or_none()
        if account is None or account.kind != "user":
            raise AccountError(f"no user named {user!r}; create it first (keephub user create {user})")
        now = datetime.now(UTC)
        session.execute(insert_for(session, Password)
                        .values(user_id=account.id, argon2_hash=argon2_hash, updated_at=now)
                        .on_conflict_do_update(index_elements=["user_id"],
                                               set_={"argon2_hash": argon2_hash, "updated_at": now}))
        # A new password signs out every browser signed in with the old one.
        session.execute(delete(WebSession).where(WebSession.user_id == account.id, WebSession.token_id.is_(None)))


class AttemptLimiter:
    """Failed sign-ins per username and per client address within a sliding window; past the limit, further
    attempts are refused without being checked. Kept in memory: each server process counts its own."""

    def __init__(self, per_name: int = 5, per_address: int = 50, window_seconds: float = 900) -> None:
        self.limits = {"name": per_name, "address": per_address}
        self.window = window_seconds
        self.failures: dict[tuple[str, str], deque[float]] = {}
        self.lock = threading.Lock()

    def check(self, name: str, address: str) -> None:
        now = time.monotonic()
        with self.lock:
            for key in (("name", name.lower()), ("address", address)):
                recent = self._recent(key, now)
                if key[1] and len(recent) >= self.limits[key[0]]:
                    wait = int(recent[0] + self.window - now) + 1
                    raise TooManyAttempts(f"too many failed sign-ins for this {'user' if key[0] == 'name' else 'address'}"
                                          f"; wait {wait} seconds and try again")

    def failed(self, name: str, address: str) -> None:
        now = time.monotonic()
        with self.lock:
            for key in (("name", name.lower()), ("address", address)):
                if key[1]:
                    self._recent(key, now).append(now)

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        recent = self.failures.setdefault(key, deque())
        while recent and recent[0] <= now - self.window:
            recent.popleft()
        return recent


@dataclass(frozen=True)
class BrowserSession:
    """Who a page request comes from, and the CSRF token its forms must carry ("" for a token in a header,
    which a browser never sends on its own, so no form is accepted on it)."""

    actor: Actor
    csrf_token: str


class Sessions:
    """Create, look up and end browser sessions."""

    def __init__(self, db: Database, accounts: Accounts) -> None:
        self.db = db
        self.accounts = accounts
        self.limiter = AttemptLimiter()

    def sign_in(self, username: str, password: str, token: str, address: str) -> str:
        """A new session's cookie secret, for a username and password or for an access token; the same refusal,
        after about the same time, whatever was wrong."""
        self.limiter.check(username, address)
        try:
            user_id, token_id = (self._check_token(token.strip()) if token.strip()
                                 else (self._check_password(username.strip(), password), None))
        except Unauthorized:
            self.limiter.failed(username, address)
            raise Unauthorized(WRONG_CREDENTIALS) from None
        secret = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        with self.db.write() as session:
            session.execute(delete(WebSession).where(WebSession.expires_at < now))  # the table keeps live ones
            session.add(WebSession(secret_sha256=_sha256(secret), user_id=user_id, token_id=token_id,
                                   csrf_token=secrets.token_urlsafe(32),
                                   expires_at=now + SESSION_LIFETIME))
        return secret

    def _check_password(self, username: str, password: str) -> int:
        with self.db.read() as session:
            row = session.execute(select(Account.id, Password.argon2_hash)
                                  .join(Password, Password.user_id == Account.id)
                                  .where(Account.name == username, Account.kind == "user")).first()
        try:
            _hasher.verify(row[1] if row else _DECOY_HASH, password)
        except (VerificationError, InvalidHashError):
            raise Unauthorized(WRONG_CREDENTIALS) from None
        if row is None:
            raise Unauthorized(WRONG_CREDENTIALS)
        return row[0]

    def _check_token(self, token: str) -> tuple[int, int]:
        actor = self.accounts.authenticate(token)
        if actor.is_job_token or actor.token_id is None:
            raise Unauthorized(WRONG_CREDENTIALS)
        return actor.user_id, actor.token_id

    def find(self, secret: str) -> BrowserSession | None:
        """The session a cookie names, if it is still valid (not expired, its token still authenticating)."""
        with self.db.read() as session:
            found = session.execute(select(WebSession).where(WebSession.secret_sha256 == _sha256(secret))
                                    ).scalar_one_or_none()
        if found is None or _aware(found.expires_at) <= datetime.now(UTC):
            return None
        try:
            actor = (self.accounts.actor_of_token(found.token_id) if found.token_id is not None
                     else self.accounts.user_actor(found.user_id, "web session"))
        except Unauthorized:
            return None
        return BrowserSession(actor, found.csrf_token)

    def sign_out(self, secret: str) -> None:
        with self.db.write() as session:
            session.execute(delete(WebSession).where(WebSession.secret_sha256 == _sha256(secret)))

    def tokens_of(self, user_id: int) -> list[Token]:
        """The user's own access tokens (not the ones keephub made for their jobs), newest first."""
        with self.db.read() as session:
            return list(session.execute(select(Token).where(Token.user_id == user_id,
                                                            Token.is_job_token.is_(False))
                                        .order_by(Token.created_at.desc(), Token.id.desc())).scalars())

    def revoke_token(self, user_id: int, token_id: int) -> None:
        with self.db.write() as session:
            token = session.get(Token, token_id)
            if token is None or token.user_id != user_id or token.is_job_token:
                raise AccountError("no such token of yours; reload the settings page")
            token.revoked = True


def seal_new_token(box: SecretBox, session_secret: str, token: str) -> str:
    return box.seal({"session": _sha256(session_secret), "token": token}).decode()


def open_new_token(box: SecretBox, session_secret: str, sealed: str) -> str | None:
    """The token sealed for this session within NEW_TOKEN_SECONDS; None for anything else, including a cookie
    copied from another session."""
    opened = box.open_fresh(sealed.encode(), NEW_TOKEN_SECONDS)
    if opened is None or not hmac.compare_digest(str(opened.get("session")), _sha256(session_secret)):
        return None
    return str(opened.get("token"))


def csrf_matches(expected: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(expected.encode(), (given or "").encode())


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
