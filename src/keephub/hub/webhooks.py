"""Webhooks as on the Hub (`/api/settings/webhooks`): a user's webhook watches users, orgs and repos, and each
repo or discussion event of theirs is POSTed to its URL as the Hub's JSON payload, with the webhook's secret in
`X-Webhook-Secret`.

A delivery is a row written in the transaction of the event itself (an outbox): an acknowledged push always
has its deliveries, and recording them costs the push one query and an insert per webhook, never a network
call. `Dispatcher`, a task of each server, sends due deliveries, retries failures with exponential backoff, and
after a restart resumes whatever was still pending; each send is claimed in the database first, so servers
sharing one database do not send it twice. The rows are the webhook's delivery log.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import secrets
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.orm import Session

from keephub.accounts import Actor, require_actor
from keephub.config import ConfigError
from keephub.hub import naming
from keephub.hub.repos import RepoRef
from keephub.storage.db import Database
from keephub.storage.schema import Account, Membership, Webhook, WebhookDelivery
from keephub.wire import BadRequest, Forbidden
from keephub.wire.errors import NotFound

if TYPE_CHECKING:
    from keephub.jobs.secrets import SecretBox

log = logging.getLogger("keephub")

PAYLOAD_VERSION = 3
DOMAINS = ("repo", "discussion")
WATCHED_TYPES = ("user", "org", "model", "dataset", "space")
MAX_WATCHED = 100
MAX_URL_CHARS = 2048
MAX_SECRET_CHARS = 256
# Sending: attempts per delivery, the backoff between them (2 s, 4 s, ... capped at an hour: about three
# hours of retries in all), how long one send may take, and how long a claim holds against other servers.
MAX_ATTEMPTS = 12
MAX_BACKOFF_SECONDS = 3600
SEND_TIMEOUT_SECONDS = 10.0
CLAIM_SECONDS = 60
POLL_SECONDS = 0.5
BATCH = 20
MAX_IN_FLIGHT = 100
RECORD_COALESCE_SECONDS = 0.05
DELIVERY_LOG_LENGTH = 100
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class Receivers:
    """Which receivers webhooks may reach: public addresses, and the private ranges the operator lists.

    Any user chooses a webhook's URL, and keephub POSTs to it from inside the operator's network; unchecked, a
    user could make keephub call what only keephub reaches (its own machine's ports, a cloud metadata address,
    the database). So loopback, private, link-local, shared and other non-public addresses are refused unless
    the setting webhook_private_targets lists them (CIDRs, e.g. "10.1.0.0/16"). A URL naming such an address
    is refused when the webhook is saved; a host name is resolved and checked before every send.
    """

    def __init__(self, private_targets: str) -> None:
        try:
            self.allowed = [ipaddress.ip_network(item.strip(), strict=False)
                            for item in private_targets.split(",") if item.strip()]
        except ValueError as exc:
            raise ConfigError(f"setting webhook_private_targets={private_targets!r}: {exc}; list networks "
                              "webhooks may reach, comma-separated, e.g. \"10.1.0.0/16,127.0.0.1/32\"") from exc

    def refusal(self, host: str, address: _Address) -> str | None:
        """Why webhooks may not reach `address` (which `host` names), or None if they may."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if address.is_global and not address.is_multicast:
            return None
        if any(address in network for network in self.allowed):
            return None
        return (f"{host} is {address}, an address of keephub's own machine or of a private network, which "
                "webhooks may not reach; use a public receiver, or ask an administrator to allow that network "
                "with the setting webhook_private_targets")

    def check_url(self, url: str) -> None:
        """Refuse, when a webhook is saved, a URL whose host is a non-public address or localhost."""
        host = urlsplit(url).hostname or ""
        literal = "127.0.0.1" if host == "localhost" or host.endswith(".localhost") else host
        try:
            address = ipaddress.ip_address(literal)
        except ValueError:
            return  # a name: resolved and checked at each send, since what it names may change
        if (why := self.refusal(host, address)) is not None:
            raise BadRequest(f"'url': {why}")

    async def refusal_of(self, url: str) -> str | None:
        """Why a delivery to `url` may not be sent now (its host resolves to a refused address), or None."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        try:
            found = await asyncio.get_running_loop().getaddrinfo(
                host, parts.port or (443 if parts.scheme == "https" else 80), type=socket.SOCK_STREAM)
        except OSError:
            return None  # unresolvable: the send itself fails and says so
        for *_, sockaddr in found:
            why = self.refusal(host, ipaddress.ip_address(sockaddr[0]))
            if why is not None:
                return why
        return None


def utcnow() -> datetime:
    return datetime.now(UTC)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# -- managing webhooks -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WebhookSpec:
    url: str
    watched: list[dict[str, str]]
    domains: list[str]


def parse_spec(body: dict, current: WebhookSpec | None = None) -> WebhookSpec:
    """The url, watched items and domains of a create (all but domains required) or update (each optional)
    body, each checked with a message naming the field."""
    if body.get("jobSourceId") is not None or body.get("job") is not None or body.get("secrets") is not None:
        raise BadRequest("webhooks that start a job (jobSourceId, secrets) are not supported by keephub; give the "
                         "webhook a 'url' and start the job from the receiver (HfApi().run_job)")
    url = body.get("url", current.url if current else None)
    if not isinstance(url, str) or not url:
        raise BadRequest("'url' is missing: the http(s) URL to POST events to")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > MAX_URL_CHARS:
        raise BadRequest(f"'url' {url[:200]!r} is not an http(s) URL of at most {MAX_URL_CHARS} characters; "
                         "use e.g. https://ci.example.com/hooks/keephub")
    naming.check_text(url, "webhook url")
    watched = body.get("watched")
    if current is not None and not watched:  # the client sends [] when an update does not change them
        watched = current.watched
    if not isinstance(watched, list) or not watched or len(watched) > MAX_WATCHED:
        raise BadRequest(f"'watched' must list 1 to {MAX_WATCHED} items like {{\"type\": \"model\", "
                         "\"name\": \"alice/my-model\"}} (type user, org, model, dataset or space)")
    items = []
    for index, item in enumerate(watched):
        if not isinstance(item, dict) or item.get("type") not in WATCHED_TYPES or not isinstance(item.get("name"), str):
            raise BadRequest(f"'watched'[{index}] must be {{\"type\": one of {', '.join(WATCHED_TYPES)}, "
                             "\"name\": \"...\"}")
        name = item["name"]
        if item["type"] in ("user", "org"):
            naming.check_repo_name(name, "watched namespace")
        else:
            naming.split_repo_id(name)
        items.append({"type": item["type"], "name": name})
    domains = body.get("domains", current.domains if current else list(DOMAINS))
    if not isinstance(domains, list) or not domains or any(d not in DOMAINS for d in domains):
        raise BadRequest(f"'domains' must be a non-empty list of {' and '.join(DOMAINS)}")
    return WebhookSpec(url=url, watched=items, domains=sorted(set(domains)))


def _secret_of(body: dict) -> str | None:
    secret = body.get("secret")
    if secret is None:
        return None
    if not isinstance(secret, str) or len(secret) > MAX_SECRET_CHARS:
        raise BadRequest(f"'secret' must be a string of at most {MAX_SECRET_CHARS} characters")
    return naming.check_text(secret, "webhook secret")


def webhook_wire(hook: Webhook) -> dict:
    """A webhook as `WebhookInfo` reads it. The secret is never sent back, only whether there is one."""
    return {"id": hook.id, "url": hook.url, "job": None, "watched": json.loads(hook.watched_json),
            "domains": json.loads(hook.domains_json), "secret": None, "hasSecret": hook.secret_sealed is not None,
            "disabled": hook.disabled}


def delivery_wire(row: WebhookDelivery) -> dict:
    return {"id": row.id, "scope": row.scope, "status": row.status, "attempts": row.attempts,
            "lastStatusCode": row.last_status_code, "lastError": row.last_error,
            "createdAt": _aware(row.created_at).isoformat(),
            "finishedAt": _aware(row.finished_at).isoformat() if row.finished_at else None,
            "nextAttemptAt": _aware(row.next_attempt_at).isoformat() if row.status == "pending" else None,
            "payload": json.loads(row.payload_json)}


class Webhooks:
    """The `/api/settings/webhooks` operations of one user, each a whole transaction."""

    def __init__(self, db: Database, box: SecretBox, receivers: Receivers) -> None:
        self.db = db
        self.box = box
        self.receivers = receivers

    def create(self, actor: Actor | None, body: dict) -> dict:
        owner = _manager(actor, "create webhooks")
        spec = parse_spec(body)
        self.receivers.check_url(spec.url)
        secret = _secret_of(body)
        with self.db.write() as session:
            hook = Webhook(id=secrets.token_hex(12), owner_id=owner.user_id, url=spec.url,
                           watched_json=json.dumps(spec.watched), domains_json=json.dumps(spec.domains),
                           secret_sealed=self._seal(secret), disabled=False, created_at=utcnow())
            session.add(hook)
            session.flush()
            return webhook_wire(hook)

    def list(self, actor: Actor | None) -> list[dict]:
        owner = require_actor(actor, "list your webhooks")
        with self.db.read() as session:
            hooks = session.execute(select(Webhook).where(Webhook.owner_id == owner.user_id)
                                    .order_by(Webhook.created_at)).scalars()
            return [webhook_wire(hook) for hook in hooks]

    def get(self, actor: Actor | None, webhook_id: str) -> dict:
        owner = require_actor(actor, "see a webhook")
        with self.db.read() as session:
            return webhook_wire(_own(session, owner, webhook_id))

    def update(self, actor: Actor | None, webhook_id: str, body: dict) -> dict:
        owner = _manager(actor, "change webhooks")
        secret = _secret_of(body)
        with self.db.write() as session:
            hook = _own(session, owner, webhook_id, lock=True)
            current = WebhookSpec(hook.url, json.loads(hook.watched_json), json.loads(hook.domains_json))
            spec = parse_spec(body, current)
            self.receivers.check_url(spec.url)
            hook.url, hook.watched_json, hook.domains_json = spec.url, json.dumps(spec.watched), json.dumps(spec.domains)
            if secret is not None:
                hook.secret_sealed = self._seal(secret)
            return webhook_wire(hook)

    def set_disabled(self, actor: Actor | None, webhook_id: str, disabled: bool) -> dict:
        owner = _manager(actor, "enable or disable webhooks")
        with self.db.write() as session:
            hook = _own(session, owner, webhook_id, lock=True)
            hook.disabled = disabled
            return webhook_wire(hook)

    def delete(self, actor: Actor | None, webhook_id: str) -> None:
        owner = _manager(actor, "delete webhooks")
        with self.db.write() as session:
            session.delete(_own(session, owner, webhook_id, lock=True))

    def deliveries(self, actor: Actor | None, webhook_id: str) -> list[dict]:
        """The webhook's delivery log, newest first."""
        owner = require_actor(actor, "see a webhook's deliveries")
        with self.db.read() as session:
            hook = _own(session, owner, webhook_id)
            rows = session.execute(select(WebhookDelivery).where(WebhookDelivery.webhook_id == hook.id)
                                   .order_by(WebhookDelivery.id.desc()).limit(DELIVERY_LOG_LENGTH)).scalars()
            return [delivery_wire(row) for row in rows]

    def _seal(self, secret: str | None) -> bytes | None:
        return None if not secret else self.box.seal({"secret": secret})


def _manager(actor: Actor | None, doing: str) -> Actor:
    owner = require_actor(actor, doing)
    if owner.is_job_token:
        raise Forbidden("403 Forbidden: job tokens cannot manage webhooks; use your own token, outside the job.")
    if owner.token_role != "write":
        raise Forbidden(f"403 Forbidden: the token '{owner.token_name}' is read-only; webhooks are changed with a "
                        f"write token (keephub token create {owner.name} --role write).")
    return owner


def _own(session: Session, owner: Actor, webhook_id: str, lock: bool = False) -> Webhook:
    hook = session.get(Webhook, webhook_id, with_for_update=lock) if len(webhook_id) <= 24 else None
    if hook is None or hook.owner_id != owner.user_id:
        raise NotFound(f"webhook {webhook_id!r} does not exist among {owner.name}'s webhooks; list them with "
                       "HfApi().list_webhooks()")
    return hook


# -- recording events --------------------------------------------------------------------------------------
def repo_payload(base_url: str, repo: RepoRef, head_sha: str | None) -> dict:
    return {"type": repo.type, "name": repo.repo_id, "id": f"{repo.type}-{repo.id}", "private": repo.private,
            "owner": {"id": repo.namespace}, "headSha": head_sha,
            "url": {"web": f"{base_url}/{repo.url_path}", "api": f"{base_url}/api/{repo.type}s/{repo.repo_id}"}}


def record_event(session: Session, base_url: str, repo: RepoRef, scope: str, action: str,
                 head_sha: str | None = None, **extra: Any) -> int:
    """Queue the event for every enabled webhook that watches `repo` in the event's domain and whose owner may
    read it; returns how many. Runs inside the event's own transaction."""
    domain = scope.split(".", 1)[0]
    watchers = or_(*(Webhook.watched_json.contains(json.dumps(item), autoescape=True) for item in (
        {"type": repo.type, "name": repo.repo_id},
        {"type": "user", "name": repo.namespace},
        {"type": "org", "name": repo.namespace},
    )))
    hooks = session.execute(select(Webhook).where(Webhook.disabled.is_(False), watchers)).scalars().all()
    payload = {"event": {"action": action, "scope": scope}, "repo": repo_payload(base_url, repo, head_sha),
               **{key: value for key, value in extra.items() if value is not None}}
    now = utcnow()
    rows = [{"webhook_id": hook.id, "scope": scope, "status": "pending", "attempts": 0, "next_attempt_at": now,
             "created_at": now,
             "payload_json": json.dumps(payload | {"webhook": {"id": hook.id, "version": PAYLOAD_VERSION}})}
            for hook in hooks
            if domain in json.loads(hook.domains_json) and _may_read(session, hook.owner_id, repo)]
    if rows:  # one multi-row INSERT: this runs in every commit's transaction
        session.execute(insert(WebhookDelivery), rows)
    return len(rows)


def _may_read(session: Session, user_id: int, repo: RepoRef) -> bool:
    """Whether the webhook's owner may read `repo` now: payloads of a private repo go only to its members."""
    if not repo.private:
        return True
    user = session.get(Account, user_id)
    if user is None:
        return False
    if user.name == repo.namespace or user.is_admin:
        return True
    return session.execute(
        select(Membership.role).join(Account, Account.id == Membership.org_id)
        .where(Membership.user_id == user_id, Account.name == repo.namespace)
    ).first() is not None


# -- sending -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Due:
    delivery_id: int
    webhook_id: str
    url: str
    secret: str | None
    payload: str
    attempts: int


def backoff_seconds(attempts: int) -> int:
    """Wait before the next try after `attempts` failed ones: 2 s, 4 s, 8 s, ... at most an hour."""
    return min(2 ** attempts, MAX_BACKOFF_SECONDS)


@dataclass(frozen=True)
class Outcome:
    item: Due
    status_code: int | None
    error: str | None


class Dispatcher:
    """Sends due deliveries from the database, forever; one per server process.

    Outcomes are written back in batches: on SQLite every write transaction takes the database's one write lock
    and an fsync, and a burst of deliveries recorded one by one would hold up the pushes that caused them.
    """

    def __init__(self, db: Database, box: SecretBox, receivers: Receivers) -> None:
        self.db = db
        self.box = box
        self.receivers = receivers
        self.outcomes: list[Outcome] = []
        self.finished = asyncio.Event()

    async def run(self) -> None:
        """Claim due deliveries and send each in a task of its own, up to MAX_IN_FLIGHT at once, so that a slow
        receiver delays only its own deliveries."""
        in_flight: set[asyncio.Task] = set()
        async with httpx.AsyncClient(timeout=SEND_TIMEOUT_SECONDS, follow_redirects=False) as client:
            try:
                while True:
                    await self._record_outcomes()
                    room = min(MAX_IN_FLIGHT - len(in_flight), BATCH)
                    try:
                        due = await asyncio.to_thread(self.claim_due, room) if room > 0 else []
                    except Exception:  # a database outage must not end deliveries for good: log, wait, go on
                        log.exception("webhook dispatcher: claiming deliveries failed; retrying")
                        due = []
                    for item in due:
                        task = asyncio.create_task(self._send(client, item))
                        in_flight.add(task)
                        task.add_done_callback(in_flight.discard)
                    if len(due) < BATCH:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self.finished.wait(), POLL_SECONDS)
                        await asyncio.sleep(RECORD_COALESCE_SECONDS)  # let sends finishing together share a write
            finally:
                for task in in_flight:  # their claims lapse, and another server (or the next start) sends them
                    task.cancel()

    def claim_due(self, limit: int = BATCH) -> list[Due]:
        """Due deliveries of enabled webhooks, each claimed for CLAIM_SECONDS; found with a read first, so an idle
        server takes no write lock (SQLite has one for the whole database) to learn there is nothing to send."""
        now = utcnow()
        due = (select(WebhookDelivery, Webhook).join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
               .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now,
                      Webhook.disabled.is_(False),
                      or_(WebhookDelivery.claimed_until.is_(None), WebhookDelivery.claimed_until < now))
               .order_by(WebhookDelivery.next_attempt_at).limit(limit))
        with self.db.read() as session:
            if session.execute(due).first() is None:
                return []
        with self.db.write() as session:
            claimed = []
            for delivery, hook in session.execute(due).all():
                won = session.execute(
                    update(WebhookDelivery)
                    .where(WebhookDelivery.id == delivery.id,
                           or_(WebhookDelivery.claimed_until.is_(None), WebhookDelivery.claimed_until < now))
                    .values(claimed_until=now + timedelta(seconds=CLAIM_SECONDS))
                ).rowcount
                if won:
                    secret = self.box.open(hook.secret_sealed).get("secret") if hook.secret_sealed else None
                    claimed.append(Due(delivery.id, hook.id, hook.url, secret, delivery.payload_json,
                                       delivery.attempts))
            return claimed

    async def _send(self, client: httpx.AsyncClient, item: Due) -> None:
        headers = {"Content-Type": "application/json", "User-Agent": "keephub-webhooks"}
        if item.secret is not None:
            headers["X-Webhook-Secret"] = item.secret
        code: int | None = None
        error = await self.receivers.refusal_of(item.url)
        if error is None:
            try:
                response = await client.post(item.url, content=item.payload.encode(), headers=headers)
                code = response.status_code
                if not response.is_success:
                    error = f"the receiver answered HTTP {code}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"[:500] or type(exc).__name__
        self.outcomes.append(Outcome(item, code, error))
        self.finished.set()

    async def _record_outcomes(self) -> None:
        self.finished.clear()
        batch, self.outcomes = self.outcomes, []
        if not batch:
            return
        try:
            await asyncio.to_thread(self.record, batch)
        except Exception:  # kept for the next round; a claim that lapses meanwhile means a second send at worst
            log.exception("webhook dispatcher: recording %d delivery outcome(s) failed; retrying", len(batch))
            self.outcomes = batch + self.outcomes

    def record(self, outcomes: list[Outcome]) -> None:
        """Write back what each send got, in one transaction: delivered, failed for good, or due again later."""
        now = utcnow()
        with self.db.write() as session:
            finished_hooks = set()
            for outcome in outcomes:
                attempts = outcome.item.attempts + 1
                if outcome.error is None:
                    values: dict[str, Any] = {"status": "delivered", "finished_at": now}
                elif attempts >= MAX_ATTEMPTS:
                    values = {"status": "failed", "finished_at": now}
                else:
                    values = {"next_attempt_at": now + timedelta(seconds=backoff_seconds(attempts))}
                session.execute(update(WebhookDelivery).where(WebhookDelivery.id == outcome.item.delivery_id).values(
                    attempts=attempts, last_status_code=outcome.status_code, last_error=outcome.error,
                    claimed_until=None, **values))
                if "finished_at" in values:
                    finished_hooks.add(outcome.item.webhook_id)
            for webhook_id in finished_hooks:
                _prune_log(session, webhook_id)


def _prune_log(session: Session, webhook_id: str) -> None:
    """Keep the newest finished deliveries of a webhook only (pending ones always stay)."""
    keep = select(WebhookDelivery.id).where(WebhookDelivery.webhook_id == webhook_id) \
        .order_by(WebhookDelivery.id.desc()).limit(DELIVERY_LOG_LENGTH).scalar_subquery()
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id,
                                                  WebhookDelivery.status != "pending",
                                                  WebhookDelivery.id.not_in(keep)))
