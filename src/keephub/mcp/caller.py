"""Who sent an MCP call, authenticated once, in the worker thread of the call's first service call.

A thread hop costs the event loop a wake-up each way (more when threads contend), so an MCP call that is one
read (hf_jobs inspect, ps) authenticates in the same hop as its read, and in the same database session, as the
Hub API's small reads do (`call_as`). The endpoint still refuses an unknown token with a 401 before any answer leaves (see `Endpoint`).
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool

from keephub.accounts import Accounts, Actor
from keephub.wire import Unauthorized


class Caller:
    """The actor a call's token stands for, looked up at most once, when first needed. `actor()` runs in a worker
    thread (it queries the database); `settle()` from the event loop makes sure the lookup has happened."""

    def __init__(self, accounts: Accounts, token: str | None) -> None:
        self._accounts = accounts
        self._token = token
        self._actor: Actor | None = None
        self._refusal: Unauthorized | None = None
        self._mark_due = False
        self.settled = token is None

    def actor(self) -> Actor | None:
        """The caller (None: anonymous); an unknown, revoked or expired token raises its 401, every time asked."""
        if not self.settled:
            assert self._token is not None
            try:
                self._actor, self._mark_due = self._accounts.check_token(self._token)
            except Unauthorized as refusal:
                self._refusal = refusal
            self.settled = True
        if self._refusal is not None:
            raise self._refusal
        return self._actor

    def mark_used(self) -> None:
        """Record the token's use when it is due (`Accounts.mark_used`): a write, so after the reads of the hop
        that looked the token up."""
        if self._mark_due and self._actor is not None:
            self._mark_due = False
            self._accounts.mark_used(self._actor)

    async def settle(self) -> Actor | None:
        """`actor()` from the event loop: no thread hop once a service call has authenticated the caller."""
        if not self.settled:
            await run_in_threadpool(self._settle)
        return self.actor()

    def _settle(self) -> None:
        try:
            self.actor()
        finally:
            self.mark_used()
