"""Client side of `keephub jobs ...`: submit a local uv script inline, follow logs, list, inspect, cancel.

It speaks the same Jobs API as huggingface_hub (and uses its HfApi), so job ids are the same everywhere.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from huggingface_hub import HfApi
from huggingface_hub.utils import build_hf_headers

from keephub.durability.script import MAX_INLINE_SCRIPT_BYTES, inline_command
from keephub.jobs.describe import display_command
from keephub.jobs.service import HF_TOKEN_PLACEHOLDER
from keephub.jobs.spec import SUPPORTED_IMAGES

# Following a job's log rides out keephub being away this long (a restart), retrying every pause.
RECONNECT_SECONDS = 60
RECONNECT_PAUSE_SECONDS = 2.0
RECENT_LINES = 20


class ClientError(Exception):
    """A mistake in the command line, explained."""


@dataclass
class UvRun:
    script: str
    script_args: list[str] = field(default_factory=list)
    flavor: str = "cpu-basic"
    timeout: str | None = None
    secrets: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    with_deps: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    attempts: int = 1
    namespace: str | None = None


def _pairs(items: list[str], what: str) -> dict[str, str]:
    result = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise ClientError(f"{what} {item!r} must be NAME=VALUE")
        result[name] = value
    return result


def resolve_secrets(items: list[str]) -> dict[str, str]:
    """`HF_TOKEN` alone asks the server for a job-scoped token; `NAME` alone reads the local environment."""
    result = {}
    for item in items:
        name, sep, value = item.partition("=")
        if sep:
            result[name] = value
        elif name == "HF_TOKEN":
            result[name] = HF_TOKEN_PLACEHOLDER
        elif name in os.environ:
            result[name] = os.environ[name]
        else:
            raise ClientError(f"secret {name} has no value: pass {name}=VALUE or set {name} in your environment")
    return result


def uv_command(run: UvRun) -> list[str]:
    """The job command: a URL is fetched in the job; a local file travels inline, base64-encoded."""
    with_args = [arg for dep in run.with_deps for arg in ("--with", dep)]
    if run.script.startswith(("http://", "https://")):
        return ["uv", "run", *with_args, run.script, *run.script_args]
    path = Path(run.script)
    if not path.is_file():
        raise ClientError(f"script {run.script} does not exist; pass a local .py file or an http(s) URL")
    data = path.read_bytes()
    if len(data) > MAX_INLINE_SCRIPT_BYTES:
        raise ClientError(f"{path} is over {MAX_INLINE_SCRIPT_BYTES} bytes; upload it to a repo and pass its URL")
    return inline_command(data, path.name, with_args, run.script_args)


def _labels_with_name(run: UvRun) -> dict[str, str]:
    """The labels, with `name` set to the script's file name unless given: `hf jobs ps` shows it, as it does
    for jobs that `hf jobs uv run` names."""
    labels = _pairs(run.labels, "--label")
    script_name = run.script.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return {"name": script_name, **labels} if script_name else labels


def submit_uv(api: HfApi, run: UvRun) -> object:
    return api.run_job(
        image=SUPPORTED_IMAGES[0],
        command=uv_command(run),
        env=_pairs(run.env, "--env"),
        secrets=resolve_secrets(run.secrets),
        flavor=run.flavor,
        timeout=run.timeout,
        labels=_labels_with_name(run),
        attempts=run.attempts,
        namespace=run.namespace,
    )


def follow_logs(api: HfApi, job_id: str, namespace: str, tail: int | None = None, follow: bool = True) -> None:
    """Print the job's log lines; when following, ride out keephub going away for up to RECONNECT_SECONDS: one
    line says so (with the command to follow again), and the log continues where it stopped."""
    # huggingface_hub warns about each of its own retries; the one line below says it all.
    logging.getLogger("huggingface_hub.hf_api").setLevel(logging.ERROR)
    shown = _ShownLines(tail)
    lost_at: float | None = None
    while True:
        try:
            for line in api.fetch_job_logs(job_id=job_id, namespace=namespace, follow=follow,
                                           tail=tail if shown.count == 0 else None):
                if shown.is_new(line):
                    print(line, flush=True)
            return
        except Exception as exc:  # noqa: BLE001 - only a lost connection is ridden out; the rest is re-raised
            if not follow or not is_unreachable(exc):
                raise
            now = time.monotonic()
            if lost_at is None:
                lost_at = now
                print(f"keephub: lost the connection to {api.endpoint} while following job {job_id}; reconnecting "
                      f"for up to {RECONNECT_SECONDS} s (to follow it later: {follow_command(job_id, namespace)})",
                      file=sys.stderr, flush=True)
            elif now - lost_at > RECONNECT_SECONDS:
                raise ClientError(f"keephub at {api.endpoint} did not come back within {RECONNECT_SECONDS} s; the "
                                  f"job keeps its log there. Follow it again with: {follow_command(job_id, namespace)}")
            time.sleep(RECONNECT_PAUSE_SECONDS)
            shown.replay()


class _ShownLines:
    """Which lines of a replayed log were shown already. A reconnect replays the whole log: without a tail, the
    first `count` lines are the ones shown; after a tail, the shown ones end where the last few shown recur."""

    def __init__(self, tail: int | None) -> None:
        self.count = 0
        self.tail = tail
        self.recent: list[str] = []
        self.to_skip = 0
        self.window: list[str] = []
        self.matching = False

    def replay(self) -> None:
        self.to_skip, self.window = self.count, []
        self.matching = self.tail is not None and self.count > 0

    def is_new(self, line: str) -> bool:
        if self.matching:
            self.window = [*self.window, line][-len(self.recent):]
            self.matching = self.window != self.recent
            return False
        if self.tail is None and self.to_skip > 0:
            self.to_skip -= 1
            return False
        self.count += 1
        self.recent = [*self.recent, line][-RECENT_LINES:]
        return True


def wait_for_job(api: HfApi, job_id: str, namespace: str) -> object:
    """The job's final record, once it has ended; a keephub that is briefly away is waited for, as in
    follow_logs."""
    lost_at: float | None = None
    while True:
        try:
            return api.wait_for_job(job_id=job_id, namespace=namespace, poll_interval=0.5)
        except Exception as exc:  # noqa: BLE001 - only a lost connection is ridden out; the rest is re-raised
            if not is_unreachable(exc):
                raise
            lost_at = lost_at or time.monotonic()
            if time.monotonic() - lost_at > RECONNECT_SECONDS:
                raise ClientError(f"keephub at {api.endpoint} did not come back within {RECONNECT_SECONDS} s. "
                                  f"Follow job {job_id} again with: {follow_command(job_id, namespace)}")
            time.sleep(RECONNECT_PAUSE_SECONDS)


def follow_command(job_id: str, namespace: str) -> str:
    return f"keephub jobs --namespace {shlex.quote(namespace)} logs --follow {job_id}"


def is_unreachable(exc: BaseException) -> bool:
    """keephub could not be reached or went away mid-answer (refused, reset, timed out, or a proxy's 5xx)."""
    import httpcore2
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(exc, HfHubHTTPError):
        return exc.response is not None and exc.response.status_code in (502, 503, 504)
    return isinstance(exc, (httpx2.TransportError, httpcore2.NetworkError, httpcore2.TimeoutException,
                            httpx.TransportError, ConnectionError))


def print_table(jobs: list) -> None:
    rows = [("JOB ID", "STAGE", "FLAVOR", "CREATED", "COMMAND")]
    for job in jobs:
        created = job.created_at.strftime("%Y-%m-%d %H:%M:%S") if job.created_at else ""
        command = display_command(job.command or [])
        rows.append((job.id, job.status.stage, str(job.flavor), created,
                     command if len(command) <= 60 else command[:59] + "…"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) if i < 4 else cell for i, cell in enumerate(row)))


def inspect_json(api: HfApi, job_id: str, namespace: str) -> str:
    """The server's full job record (attempts and keephub's extra fields included), as indented JSON."""
    reply = httpx.get(f"{api.endpoint}/api/jobs/{namespace}/{job_id}", headers=build_hf_headers(token=api.token),
                      timeout=30)
    if reply.status_code != 200:
        raise ClientError(f"inspect failed ({reply.status_code}): {reply.headers.get('X-Error-Message', reply.text)}")
    return json.dumps(reply.json(), indent=2, ensure_ascii=False)


def exit_code_for(stage: str) -> int:
    return 0 if stage == "COMPLETED" else 1

