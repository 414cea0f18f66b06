"""What a scoped token may write: a list of entries such as `model:alice/foo` or `namespace:acme`.

Each entry is one kind of thing and its name, so a new kind of writable thing (buckets) is one more kind.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass

REPO_KINDS = ("model", "dataset", "space")
SCOPE_KINDS = (*REPO_KINDS, "bucket", "namespace")
_PART = re.compile(r"^[A-Za-z0-9._-]{1,96}$")

log = logging.getLogger("keephub.accounts")


class ScopeError(ValueError):
    """A scope entry that does not parse; the message shows the accepted forms."""


@dataclass(frozen=True)
class Scope:
    kind: str  # a repo type, "bucket" or "namespace"
    name: str  # "alice/foo" for a repo or a bucket, "acme" for a namespace

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"

    def covers(self, needed: Scope) -> bool:
        """A namespace entry covers the namespace and every repo in it; a repo entry covers that repo."""
        if self.kind == "namespace":
            owner = needed.name if needed.kind == "namespace" else needed.name.partition("/")[0]
            return owner == self.name
        return self == needed

    @property
    def namespace(self) -> str:
        return self.name.partition("/")[0]


def parse_scope(text: str) -> Scope:
    """`model:alice/foo`, `dataset:alice/d`, `space:alice/s`, `bucket:alice/b`, `namespace:acme`; a bare
    `alice/foo` is a model."""
    kind, sep, name = text.partition(":")
    if not sep:
        kind, name = ("model", text) if "/" in text else ("namespace", text)
    parts = name.split("/")
    shape_ok = len(parts) == (1 if kind == "namespace" else 2) and all(_PART.match(p) for p in parts)
    if kind not in SCOPE_KINDS or not shape_ok:
        raise ScopeError(f"invalid scope {text!r}: use model:NAMESPACE/NAME, dataset:NAMESPACE/NAME, "
                         "space:NAMESPACE/NAME, bucket:NAMESPACE/NAME or namespace:NAME")
    return Scope(kind, name)


def dump_scopes(scopes: list[Scope] | tuple[Scope, ...] | None) -> str | None:
    return None if scopes is None else json.dumps([str(s) for s in scopes])


def load_scopes(stored: str | None) -> tuple[Scope, ...] | None:
    """The stored scopes; an entry that no longer parses grants nothing (it never widens a token)."""
    if stored is None:
        return None
    scopes = []
    for entry in json.loads(stored):
        try:
            scopes.append(parse_scope(entry))
        except ScopeError:
            log.warning("a token scope %r no longer parses; it grants nothing", entry)
    return tuple(scopes)
