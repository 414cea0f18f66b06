"""Webhook figures (issue 19, item 2), each against a baseline taken in the same run on the same machine.

1. A push never waits on a receiver: the time of `HfApi.create_commit` (one small file) while --webhooks enabled
   webhooks watch the repo's owner, all pointing at a receiver that takes --receiver-delay seconds to answer,
   against the same with the webhooks pointing at a receiver that answers at once. Target: <= 1.2x.
2. What recording the deliveries costs a commit (diagnostic): the same commit with the webhooks (instant
   receiver) against none enabled; the deliveries are written in the commit's own transaction.
3. Delivery latency (diagnostic): from create_commit's return to the slow receiver reading the request.
   The dispatcher looks for due deliveries every 0.5 s.

Rounds alternate the three set-ups --repeats times; medians.

Run:  .venv/bin/python benchmarks/webhooks_bench.py [--webhooks 20] [--repeats 15] [--receiver-delay 2]
Work dir under --tmp (default /tmp), removed unless --keep. Exit status 1 if a figure fails.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from report import Figure, add_work_dir_options, at_least, client_environment, print_table, work_dir

from keephub.devserver import LocalServer

PUSH_TARGET = 1.2


class SlowReceiver:
    """Records when each delivery arrives (by the commit it names), then answers after `delay` seconds."""

    def __init__(self, delay: float) -> None:
        self.arrivals: dict[str, float] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                refs = body.get("updatedRefs") or [{}]
                receiver.arrivals.setdefault(str(refs[0].get("newSha")), time.monotonic())
                time.sleep(delay)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_port}/hook"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--webhooks", type=at_least(1), default=20)
    parser.add_argument("--repeats", type=at_least(3), default=15)
    parser.add_argument("--receiver-delay", type=float, default=2.0)
    add_work_dir_options(parser)
    args = parser.parse_args()
    with work_dir(parser, args, "keephub-webhooks-bench-") as work:
        client_environment(work, xet=False)
        from huggingface_hub import CommitOperationAdd, HfApi

        # The receivers listen on loopback, which webhooks reach only where the operator allows it.
        server = LocalServer(data_dir=work / "data", env={"KEEPHUB_WEBHOOK_PRIVATE_TARGETS": "127.0.0.1/32"})
        server.start()
        try:
            user, token = server.user()
            api = HfApi(endpoint=server.url, token=token)
            repo = f"{user}/bench"
            api.create_repo(repo)
            slow, fast = SlowReceiver(args.receiver_delay), SlowReceiver(0)
            hooks = {receiver: [api.create_webhook(url=receiver.url, watched=[{"type": "user", "name": user}],
                                                   domains=["repo"]).id for _ in range(args.webhooks)]
                     for receiver in (slow, fast)}
            timings: dict[str, list[float]] = {"none": [], "fast": [], "slow": []}
            returned: dict[str, float] = {}
            for number in range(args.repeats):
                for setup, active in (("none", None), ("fast", fast), ("slow", slow)):
                    for receiver, ids in hooks.items():
                        for hook in ids:
                            (api.enable_webhook if receiver is active else api.disable_webhook)(hook)
                    started = time.perf_counter()
                    info = api.create_commit(repo, [CommitOperationAdd(f"step-{number}-{setup}.txt", b"x")],
                                             commit_message=f"step {number}")
                    timings[setup].append(time.perf_counter() - started)
                    if active is slow:
                        returned[info.oid] = time.monotonic()
            deadline = time.monotonic() + 30
            while any(oid not in slow.arrivals for oid in returned) and time.monotonic() < deadline:
                time.sleep(0.1)
            latencies = [slow.arrivals[oid] - at for oid, at in returned.items() if oid in slow.arrivals]
        finally:
            server.stop()
    none, fast_ms, slow_ms = (statistics.median(timings[k]) * 1000 for k in ("none", "fast", "slow"))
    delivered = statistics.median(latencies) * 1000 if latencies else float("nan")
    figures = [
        Figure("commit, receiver slow vs instant", slow_ms, fast_ms, "ms", slow_ms / fast_ms, f"<= {PUSH_TARGET}x",
               slow_ms / fast_ms <= PUSH_TARGET, 1),
        Figure("commit, webhooks vs none", fast_ms, none, "ms", fast_ms / none, "—", None, 1),
        Figure("delivery latency after the commit", delivered, delivered, "ms", 1.0, "—", None, 0),
    ]
    print_table(figures, {
        "commit": f"median of {args.repeats} create_commit calls each way; {args.webhooks} webhooks; the slow "
                  f"receiver answers after {args.receiver_delay} s",
        "delivery": f"{len(latencies)} of {len(returned)} deliveries arrived within 30 s of the last commit",
    })
    return 0 if all(f.passed is not False for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
