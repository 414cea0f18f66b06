"""The sha256 of a file uploaded through Xet, computed while its xorbs arrive instead of by rebuilding the file.

A commit names a Xet file by the sha256 of its bytes, which the server must compute itself before the file can
be committed. Rebuilding the file once its shard arrives reads, unpacks and hashes every byte a second time.
Instead, each upload session (the uploads of one Hub token to one repo) keeps a running sha256 over the unpacked
chunks of its xorbs, in the order their uploads began, fed by the same pass that verifies each chunk's hash; the
digest after each verified xorb is kept, and starts afresh once a shard registered the session's files. A file's
sha256 starts from the digest after the longest run of its first terms that are exactly the xorbs sent since the
session's last shard, whole and in that order, and only the rest of the file is rebuilt from the stored xorbs.
A large file uploaded on its own, or each of a training run's checkpoints pushed one after another (the common
cases), is then hashed once, on arrival; when hf_xet's concurrent uploads reach the server out of file order (its
small last xorb often overtakes the one before) only the xorbs from the first one out of order are read back;
any other shape (chunks deduplicated against xorbs stored before, several files sharing xorbs) is rebuilt whole.
The verdict is the same either way, only its cost differs.

Each xorb upload takes a ticket and feeds the digest only on its turn (waiting, without a thread, for the
uploads that began before it to finish); one that waits too long gives its turn up and is verified unchained.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from keephub.xet import hashing
from keephub.xet.formats import Term

# At most ~300 bytes a kept digest state: these bound the states kept to about 20 MB in all.
MAX_SESSIONS = 32
# 2,048 xorbs of 64 MiB: a 128 GiB file (the most a shard's file may reference); a longer session stops
# extending its digest, and its files are rebuilt.
MAX_XORBS_PER_SESSION = 2_048
TURN_WAIT_SECONDS = 10.0
_TURN_POLL_SECONDS = 0.002


@dataclass
class _Chain:
    digest: Any = field(default_factory=hashlib.sha256)  # the sha256 of every chunk fed so far, in order
    # (xorb, its number of chunks, the sha256 state after it): one entry per verified xorb, in turn order.
    states: list[tuple[str, int, Any]] = field(default_factory=list)
    next_ticket: int = 0
    turn: int = 0
    skipped: set[int] = field(default_factory=set)


class Ticket:
    """One xorb upload's place in its session's order."""

    def __init__(self, chains: Chains, chain: _Chain, number: int) -> None:
        self._chains = chains
        self._chain = chain
        self._number = number
        self._digest: Any = None  # a copy of the chain's digest, extended by this xorb's chunks
        self._done = False

    async def take_turn(self) -> bool:
        """Wait until the uploads that began before this one are done; False (turn given up) after a while."""
        deadline = time.monotonic() + TURN_WAIT_SECONDS
        while True:
            digest = self._chains._digest_on_turn(self._chain, self._number)
            if digest is not None:
                self._digest = digest
                return True
            if time.monotonic() > deadline:
                self.close()
                return False
            await asyncio.sleep(_TURN_POLL_SECONDS)

    def feed(self, data: bytes | memoryview) -> None:
        """An unpacked chunk of this xorb, in order (ignored when the turn was not taken)."""
        if self._digest is not None:
            self._digest.update(data)

    def complete(self, xorb: str, chunk_count: int) -> None:
        """The xorb was verified: its chunks extend the session's digest."""
        if self._digest is not None and not self._done:
            self._chains._extend(self._chain, xorb, chunk_count, self._digest)
        self.close()

    def close(self) -> None:
        """Give the turn to the next upload (or mark this one's as passed); idempotent."""
        if not self._done:
            self._done = True
            self._chains._pass_turn(self._chain, self._number)


class Chains:
    """Running sha256 digests of the upload sessions seen last (a bounded number)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._chains: OrderedDict[Hashable, _Chain] = OrderedDict()

    def ticket(self, session: Hashable) -> Ticket:
        with self._lock:
            chain = self._chains.get(session)
            if chain is None:
                chain = self._chains[session] = _Chain()
                while len(self._chains) > MAX_SESSIONS:
                    self._chains.popitem(last=False)
            self._chains.move_to_end(session)
            number = chain.next_ticket
            chain.next_ticket += 1
        return Ticket(self, chain, number)

    def restart(self, session: Hashable) -> None:
        """Start the session's digest afresh once a shard registered its files: the xorbs uploaded next begin the
        next file (a training run pushing checkpoint after checkpoint with one token), which can then be covered
        from its start. Uploads begun before keep the digest they began on; no file is ever matched to it again."""
        with self._lock:
            self._chains.pop(session, None)

    def resume(self, session: Hashable, terms: list[Term]) -> tuple[Any, int]:
        """A sha256 over the file's first `n` terms, and `n`: the most leading terms that are the xorbs sent since
        the session's last shard, whole and in order (a fresh sha256 and 0 when the first is not). The caller hashes
        the rest."""
        with self._lock:
            chain = self._chains.get(session)
            states = list(chain.states) if chain is not None else []
        digest, consumed = hashlib.sha256(), 0
        for (xorb, start, end, term_count), (kept, count, state) in zip(_merged(terms), states):
            if xorb != kept or start != 0 or end != count:
                break
            digest, consumed = state, consumed + term_count
        return digest.copy(), consumed

    def _digest_on_turn(self, chain: _Chain, number: int) -> Any:
        with self._lock:
            return chain.digest.copy() if chain.turn == number else None

    def _extend(self, chain: _Chain, xorb: str, chunk_count: int, digest: Any) -> None:
        with self._lock:
            if len(chain.states) < MAX_XORBS_PER_SESSION:
                chain.digest = digest
                chain.states.append((xorb, chunk_count, digest))

    def _pass_turn(self, chain: _Chain, number: int) -> None:
        with self._lock:
            chain.skipped.add(number)
            while chain.turn in chain.skipped:
                chain.skipped.remove(chain.turn)
                chain.turn += 1


def _merged(terms: list[Term]) -> list[tuple[str, int, int, int]]:
    """(xorb, first chunk, end chunk, number of terms) of each run of terms, adjacent ranges of one xorb joined."""
    merged: list[list[Any]] = []
    for term in terms:
        xorb = hashing.to_hex(term.xorb)
        if merged and merged[-1][0] == xorb and merged[-1][2] == term.start:
            merged[-1][2] = term.end
            merged[-1][3] += 1
        else:
            merged.append([xorb, term.start, term.end, 1])
    return [(x, s, e, n) for x, s, e, n in merged]
