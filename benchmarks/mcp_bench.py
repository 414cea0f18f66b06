"""MCP round trips against the same calls through huggingface_hub, measured in the same run on the same server.

1. `hf_jobs("ps", {"all": true})` over streamable HTTP (the `mcp` SDK's own client, one open connection, as an
   agent holds it) against `HfApi.list_jobs(namespace=...)`: both list the same --jobs finished jobs.
   Target: the median MCP round trip <= 1.5x the median HfApi one.
2. `hf_jobs("inspect", {"job_id": ...})` against `HfApi.inspect_job(...)` of the same job. Target <= 1.5x.
The kinds of call take turns in blocks of BLOCK (--repeats of each, after --warmup untimed ones), so the
machine's noise hits all alike while each call mostly follows one of its own kind (see `interleaved`).

Diagnostic rows split keephub's share from the clients': the exact request the SDK's client sent (captured
from one untimed call) POSTed again by a plain async httpx2 client and its JSON read, against a GET of the Jobs
API route HfApi calls, by the same plain client: what the server adds, without either client library. (Async:
its sockets set TCP_NODELAY, as the SDK's do; the synchronous client writes a POST's headers and body in two
sends that Nagle's algorithm holds apart, a cost of the client, not of the server.) The ceiling row adds what
the SDK client alone costs (its call minus the plain POST of the same request) to the plain GET: the MCP round
trip if keephub answered /mcp exactly as fast as the Jobs API route. Above the target, no server could meet it
with this client on this machine.

Run:  .venv/bin/python benchmarks/mcp_bench.py [--jobs 20] [--repeats 300] [--warmup 30] [--keep]
The data dir and server log live in a temporary directory under --tmp (default /tmp), removed at the end
unless --keep. Exit status 1 if a figure fails.
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import sys
import time
from typing import Any, Awaitable, Callable

import anyio
import httpx2
from report import Figure, add_work_dir_options, at_least, client_environment, print_table, work_dir

from keephub.devserver import LocalServer

TARGET_RATIO = 1.5
BLOCK = 10
UV_IMAGE = "ghcr.io/astral-sh/uv:python3.12-bookworm"


async def interleaved(calls: dict[str, Callable[[], Any]], repeats: int, warmup: int) -> dict[str, float]:
    """The median seconds of each call (async or not), the kinds taking turns in blocks of BLOCK calls.

    Blocks, not strict alternation: what a call leaves behind once its answer is out (the server unwinding and
    collecting the SDK's garbage; on a loaded machine, the CPU time the scheduler has charged the server) lands
    on the next call. Taking turns one by one, the next call was always the other kind, so MCP's leftovers were
    timed as HfApi's: with other work on this 2-core machine (load average ~8), an HfApi call right after an MCP
    one took 1.3-1.7x one right after another HfApi call, which flattered the MCP ratio. In blocks each call
    mostly follows its own kind, as it does for a client of one interface, and the blocks are short enough that
    the machine's drift still hits every kind.
    """

    async def run(call: Callable[[], Any]) -> float:
        start = time.perf_counter()
        if inspect.isawaitable(outcome := call()):
            await outcome
        return time.perf_counter() - start

    for _ in range(warmup):
        for call in calls.values():
            await run(call)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for done in range(0, repeats, BLOCK):
        for name, call in calls.items():
            times[name] += [await run(call) for _ in range(min(BLOCK, repeats - done))]
    return {name: statistics.median(spent) for name, spent in times.items()}


async def captured(http: httpx2.AsyncClient, call: Callable[[], Awaitable[None]]) -> httpx2.Request:
    """The tools/call request `call` sends through `http`, seen by a request hook set for this one untimed call
    only: a hook left on would run in every timed MCP call, a cost of the benchmark charged to MCP."""
    sent: list[httpx2.Request] = []

    async def capture(request: httpx2.Request) -> None:
        sent.append(request)

    http.event_hooks = {"request": [capture]}
    try:
        await call()
    finally:
        http.event_hooks = {}
    return next(request for request in sent if request.headers.get("mcp-method") == "tools/call")


async def measure(args: argparse.Namespace, server: LocalServer, namespace: str, token: str) -> list[Figure]:
    from huggingface_hub import HfApi
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    api = HfApi(endpoint=server.url, token=token)
    job_ids = [api.run_job(image=UV_IMAGE, command=["python", "-c", f"print({n})"], namespace=namespace).id
               for n in range(args.jobs)]
    api.wait_for_job(job_id=job_ids, namespace=namespace, timeout=300, poll_interval=0.2)
    operations = {"ps": ({"all": True}, lambda: list(api.list_jobs(namespace=namespace)), f"/api/jobs/{namespace}"),
                  "inspect": ({"job_id": job_ids[0]}, lambda: api.inspect_job(job_id=job_ids[0], namespace=namespace),
                              f"/api/jobs/{namespace}/{job_ids[0]}")}
    figures, diagnostics = [], []
    auth = {"Authorization": f"Bearer {token}"}
    async with (httpx2.AsyncClient(headers=auth, timeout=60) as http,
                Client(streamable_http_client(f"{server.url}/mcp", http_client=http)) as agent,
                httpx2.AsyncClient(timeout=60) as plain):  # anyio sockets: TCP_NODELAY, as the SDK's
        for name, (arguments, api_call, route) in operations.items():

            async def tool() -> None:
                result = await agent.call_tool("hf_jobs", {"operation": name, "args": arguments})
                if result.is_error:
                    raise RuntimeError(str(result.content))

            request = await captured(http, tool)

            async def post() -> None:
                reply = await plain.post(str(request.url), content=request.content, headers=dict(request.headers))
                if reply.status_code != 200 or reply.json()["result"]["isError"]:
                    raise RuntimeError(reply.text)

            async def get() -> None:
                json.loads((await plain.get(server.url + route, headers=auth)).raise_for_status().content)

            median = await interleaved({"mcp": tool, "hfapi": api_call, "post": post, "get": get}, args.repeats,
                                       args.warmup)
            mcp_s, api_s = median["mcp"], median["hfapi"]
            figures.append(Figure(f'hf_jobs("{name}"), mcp SDK client ({args.jobs} jobs)', mcp_s * 1000,
                                  api_s * 1000, "ms", mcp_s / api_s, f"<= {TARGET_RATIO:g}x",
                                  mcp_s / api_s <= TARGET_RATIO))
            diagnostics.append(Figure(f'  server side: POST /mcp "{name}" vs GET {route.split(namespace)[0]}...',
                                      median["post"] * 1000, median["get"] * 1000, "ms",
                                      median["post"] / median["get"], "—", None))
            ceiling_s = median["get"] + mcp_s - median["post"]
            diagnostics.append(Figure(f'  ceiling: "{name}" with /mcp as fast as the Jobs API', ceiling_s * 1000,
                                      api_s * 1000, "ms", ceiling_s / api_s, "—", None))
    return figures + diagnostics


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=at_least(1), default=20, help="finished jobs in the namespace (default 20)")
    parser.add_argument("--repeats", type=at_least(1), default=300, help="timed calls of each kind (default 300)")
    parser.add_argument("--warmup", type=at_least(0), default=30, help="untimed calls of each kind first (default 30)")
    add_work_dir_options(parser)
    args = parser.parse_args()
    with work_dir(parser, args, "keephub-mcp-bench-") as work:
        client_environment(work, xet=True)
        server = LocalServer(data_dir=work / "data")
        server.start()
        try:
            _, token = server.user("alice")
            figures = anyio.run(measure, args, server, "alice", token)
        finally:
            server.stop()
    print_table(figures, {
        "baseline": "the same call through huggingface_hub's HfApi (list_jobs, inspect_job) on its own HTTP "
                    f"session, taking turns with the others in blocks of {BLOCK} calls; medians",
        "MCP client": "the mcp SDK's Client over streamable HTTP at /mcp, one connection for all calls, in the "
                      "protocol version it negotiates",
        "server side": "one plain async httpx2 client for both: the SDK client's captured tools/call POSTed again "
                       "vs a GET of the Jobs API route HfApi calls, each answer's JSON read",
        "ceiling": "the plain GET plus what the SDK client alone costs (its call minus the plain POST of its own "
                   "request), vs HfApi: the MCP figure if keephub answered /mcp as fast as the Jobs API route",
    })
    return 0 if all(f.passed is not False for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
