"""Short-lived CAS credentials: access tokens scoped to one repo, and self-authenticating xorb range URLs.

CAS paths carry no repo name, so a CAS token names the repo it was issued for, the access it grants
(read or write, never more than the Hub token it was exchanged for) and when it expires, all under an
HMAC with the server's signing key. Nothing is stored: a token is valid exactly while its signature
matches and it has not expired. Xorb fetch URLs likewise sign one byte range of one xorb, because the
client sends no Authorization header with them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from urllib.parse import urlencode

from keephub.config import Settings
from keephub.wire import Forbidden, Unauthorized
from keephub.wire.text import same_signature

_PREFIX = "kxet1"
READ, WRITE = "read", "write"
REPO, BUCKET = "repo", "bucket"  # what a grant's id names: repos link content by sha256, buckets by Xet hash
FETCH_URL_TTL_SECONDS = 3600


@dataclass(frozen=True)
class CasGrant:
    """What a CAS token allows: `access` to the Xet content of repo `repo_id` (a bucket's id when `kind` is
    BUCKET), for `user` until `expires`, and only while the Hub token it was exchanged for (`hub_token_id`;
    None for anonymous reads) lives."""

    repo_id: int
    access: str
    user: str
    expires: int
    hub_token_id: int | None = None
    # The repo's creation time in microseconds: repo ids can be reused after a deletion, this cannot.
    repo_stamp: int = 0
    kind: str = REPO
    # Issued to a caller who may not write the repo, for uploads to their own pull requests: re-checked against
    # the right to open them rather than the right to write.
    contribution: bool = False

    def allows(self, needed: str) -> bool:
        return self.access == WRITE or needed == READ


def _mac(settings: Settings, purpose: str, payload: bytes) -> str:
    key = hashlib.sha256(f"{purpose}|{settings.signing_key}".encode()).digest()
    return hmac.new(key, payload, hashlib.sha256).hexdigest()


def issue(settings: Settings, repo_id: int, repo_stamp: int, access: str, user: str,
          hub_token_id: int | None, kind: str = REPO, contribution: bool = False) -> CasGrant:
    return CasGrant(repo_id, access, user, int(time.time()) + settings.xet_token_ttl_seconds, hub_token_id,
                    repo_stamp, kind, contribution)



def encode(settings: Settings, grant: CasGrant) -> str:
    payload = json.dumps({"r": grant.repo_id, "a": grant.access, "u": grant.user, "e": grant.expires,
                          "t": grant.hub_token_id, "s": grant.repo_stamp, "k": grant.kind,
                          "c": int(grant.contribution)},
                         separators=(",", ":")).encode()
    body = base64.urlsafe_b64encode(payload).decode().rstrip("=")
    return f"{_PREFIX}.{body}.{_mac(settings, 'xet-cas-token', payload)}"


def decode(settings: Settings, authorization: str | None) -> CasGrant:
    """The grant a request's `Authorization: Bearer <CAS token>` carries; 401 naming the fix otherwise."""
    refresh = "ask the Hub for a fresh one (GET /api/<type>s/<repo>/xet-read-token/<rev> or xet-write-token)"
    if not authorization:
        raise Unauthorized(f"this CAS endpoint needs 'Authorization: Bearer <CAS token>'; {refresh}")
    scheme, _, token = authorization.partition(" ")
    parts = token.strip().split(".")
    if scheme.lower() != "bearer" or len(parts) != 3 or parts[0] != _PREFIX:
        raise Unauthorized(f"the Authorization header does not hold a keephub CAS token; {refresh}")
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        fields = json.loads(payload)
        hub_token = fields["t"]
        grant = CasGrant(int(fields["r"]), str(fields["a"]), str(fields["u"]), int(fields["e"]),
                         None if hub_token is None else int(hub_token), int(fields["s"]),
                         str(fields.get("k", REPO)), bool(fields.get("c", 0)))
    except (ValueError, KeyError, TypeError):
        raise Unauthorized(f"the CAS token is malformed; {refresh}")
    if not same_signature(_mac(settings, "xet-cas-token", payload), parts[2]):
        raise Unauthorized(f"the CAS token's signature is invalid; {refresh}")
    if grant.expires < time.time():
        raise Unauthorized(f"the CAS token expired at {grant.expires}; {refresh}")
    return grant


def require(grant: CasGrant, needed: str) -> None:
    if not grant.allows(needed):
        raise Forbidden(f"this CAS token grants {grant.access} access only; uploading needs a token from "
                        "xet-write-token, which requires write access to the repo")


def fetch_url(settings: Settings, xorb: str, first: int, last: int) -> str:
    """A URL serving bytes [first, last] (inclusive) of a xorb, valid for an hour, needing no other credential."""
    expires = int(time.time()) + FETCH_URL_TTL_SECONDS
    signature = _mac(settings, "xet-fetch", f"{xorb}|{first}|{last}|{expires}".encode())
    query = urlencode({"r": f"{first}-{last}", "e": expires, "s": signature})
    return f"{settings.base_url}/cas/fetch/{xorb}?{query}"


def check_fetch(settings: Settings, xorb: str, params: dict[str, str]) -> tuple[int, int]:
    """The signed (first, last) byte range of a fetch URL; 403 when the URL is forged, altered or expired."""
    try:
        first_text, last_text = params["r"].split("-", 1)
        first, last, expires = int(first_text), int(last_text), int(params["e"])
        signature = params["s"]
    except (KeyError, ValueError):
        raise Forbidden("this xorb URL is incomplete; ask the CAS for a fresh reconstruction")
    if not same_signature(_mac(settings, "xet-fetch", f"{xorb}|{first}|{last}|{expires}".encode()), signature):
        raise Forbidden("this xorb URL's signature is invalid; ask the CAS for a fresh reconstruction")
    if expires < time.time():
        raise Forbidden("this xorb URL has expired; ask the CAS for a fresh reconstruction")
    return first, last
