"""RouteIndex picks, for every request, the route Starlette's full scan of keephub's routes would pick.

The paths are each route's own path with its parameters filled in from words that are also literal segments of
other routes (the cases where a skipped route could have mattered), with a trailing slash and an extra segment,
plus random paths of those words, under every method."""

from __future__ import annotations

import itertools
import random
import re
from pathlib import Path

from starlette.routing import BaseRoute, Match

from keephub.app import build_app
from keephub.config import Settings
from keephub.wire.route_index import RouteIndex

WORDS = ["x", "models", "datasets", "spaces", "1", "main", "a/b.txt", "refs%2Fpr%2F1", "api", "jobs", "resolve",
         "tree", "whoami-v2", "", "static", "cas", "v1", "mcp", "buckets", "settings", "lfs", "objects", "batch"]
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE")


def full_scan(routes: list[BaseRoute], scope: dict) -> tuple[Match, BaseRoute | None]:
    partial: tuple[Match, BaseRoute | None] | None = None
    for route in routes:
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return match, route
        if match == Match.PARTIAL and partial is None:
            partial = (match, route)
    return partial or (Match.NONE, None)


def sample_paths(routes: list[BaseRoute]) -> set[str]:
    paths = set()
    for route in routes:
        template = getattr(route, "path", "")
        params = re.findall(r"\{[^}]+\}", template)
        for words in itertools.islice(itertools.product(WORDS, repeat=len(params)), 15):
            path = template
            for param, word in zip(params, words):
                path = path.replace(param, word, 1)
            paths |= {path or "/", path + "/", path.rstrip("/") + "/extra"}
    chooser = random.Random(22)
    paths |= {"/" + "/".join(chooser.choice(WORDS) for _ in range(chooser.randint(0, 7))) for _ in range(1000)}
    return paths


def test_the_index_routes_every_request_as_the_full_scan_does(tmp_path: Path) -> None:
    index = build_app(Settings.load(overrides={"data_dir": tmp_path})).router.routes[0]
    assert isinstance(index, RouteIndex) and len(index.routes) > 100
    for path in sample_paths(index.routes):
        for method in METHODS:
            scope = {"type": "http", "method": method, "path": path, "root_path": "", "headers": []}
            match, child_scope = index.matches(scope)
            assert (match, child_scope.get("keephub.route")) == full_scan(index.routes, scope), (method, path)
