"""`RouteIndex`: the app's routes tried in their order, but only those whose literal path segments fit the request.

Starlette's router tries every route's regex until one matches. keephub has about 160 routes and the Hub API's sit
near the end, so each small call paid 25-70 µs just to be routed. Here each route is reduced to the literal text of
its path segments (a parameter matches any segment) and to how many segments it takes; a request's path then rules
out, with a few integer operations, every route that cannot match it. The remaining routes are tried in the same
order as before, with the same `matches`, so the answer (a full match, else the first partial one, else none) is the
one a full scan would give.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from starlette.routing import BaseRoute, Match, Mount, NoMatchFound
from starlette.types import Receive, Scope, Send

_CHOSEN = "keephub.route"


class _Shape:
    """What a route's path says about the paths it can match: the literal segments (None: a parameter) and whether
    it also matches longer paths (a `:path` parameter or a Mount); `known` False: nothing, try it always."""

    def __init__(self, route: BaseRoute) -> None:
        path = getattr(route, "path", None)
        self.known = isinstance(path, str) and path.startswith("/")
        self.literals: list[str | None] = []
        self.open_ended = isinstance(route, Mount)
        if not self.known:
            return
        for segment in path.split("/")[1:]:
            if ":path}" in segment:
                self.open_ended = True
                break
            self.literals.append(None if "{" in segment else segment)

    def takes(self, count: int) -> bool:
        """Whether a path of `count` segments may match."""
        return not self.known or count == len(self.literals) or (self.open_ended and count >= len(self.literals))

    def fits(self, position: int, segment: str | None) -> bool:
        """Whether the segment at `position` may match (`segment` None: any segment that is no route's literal)."""
        if not self.known or position >= len(self.literals) or self.literals[position] is None:
            return True
        return self.literals[position] == segment


class RouteIndex(BaseRoute):
    """All `routes` as one route, tried in their order: only those whose literal segments fit the request's path."""

    def __init__(self, routes: Sequence[BaseRoute]) -> None:
        self.routes = list(routes)
        shapes = [_Shape(route) for route in self.routes]
        self._longest = max((len(shape.literals) for shape in shapes), default=0)

        def mask(keep: Any) -> int:
            return sum(1 << index for index, shape in enumerate(shapes) if keep(shape))

        # Per position: the routes each literal segment fits, and those any other segment fits.
        self._by_literal: list[dict[str, int]] = []
        self._by_other: list[int] = []
        for position in range(self._longest):
            literals = {shape.literals[position] for shape in shapes if position < len(shape.literals)} - {None}
            self._by_literal.append({text: mask(lambda s, p=position, t=text: s.fits(p, t)) for text in literals})
            self._by_other.append(mask(lambda s, p=position: s.fits(p, None)))
        self._by_count = [mask(lambda s, n=count: s.takes(n)) for count in range(self._longest + 2)]
        self._open_ended = mask(lambda s: not s.known or s.open_ended)

    def _candidates(self, scope: Scope) -> Iterator[BaseRoute]:
        path: str = scope.get("path", "")
        if scope.get("root_path") or not path.startswith("/"):  # paths routed after a prefix: try every route
            yield from self.routes
            return
        segments = path.split("/")[1:]
        count = len(segments)
        fitting = self._by_count[count] if count < len(self._by_count) else self._open_ended
        for position, segment in enumerate(segments[: self._longest]):
            fitting &= self._by_literal[position].get(segment, self._by_other[position])
        while fitting:
            lowest = fitting & -fitting
            yield self.routes[lowest.bit_length() - 1]
            fitting ^= lowest

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        partial: tuple[Match, Scope] | None = None
        for route in self._candidates(scope):
            match, child_scope = route.matches(scope)
            if match == Match.FULL:
                return match, {**child_scope, _CHOSEN: route}
            if match == Match.PARTIAL and partial is None:
                partial = (match, {**child_scope, _CHOSEN: route})
        return partial or (Match.NONE, {})

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await scope[_CHOSEN].handle(scope, receive, send)

    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        for route in self.routes:
            try:
                return route.url_path_for(name, **path_params)
            except NoMatchFound:
                pass
        raise NoMatchFound(name, path_params)
