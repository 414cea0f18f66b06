"""Client side of `keephub jobs ...`: submit a local uv script inline, follow logs, list, inspect, cancel.

It speaks the same Jobs API as huggingface_hub (and uses its HfApi), so job ids are the same everywhere.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from huggingface_hub import HfApi
from huggingface_hub.utils import build_hf_headers

from keephub.jobs.service import HF_TOKEN_PLACEHOLDER
from keephub.jobs.spec import SUPPORTED_IMAGES

MAX_INLINE_SCRIPT_BYTES = 256 * 1024


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
    encoded = base64.b64encode(data).decode()
    name = shlex.quote(path.name)
    uv = " ".join(["uv", "run", *map(shlex.quote, with_args), name])
    return ["sh", "-c", f"echo {encoded} | base64 -d > {name} && exec {uv} \"$@\"", "sh", *run.script_args]


def submit_uv(api: HfApi, run: UvRun) -> object:
    return api.run_job(
        image=SUPPORTED_IMAGES[0],
        command=uv_command(run),
        env=_pairs(run.env, "--env"),
        secrets=resolve_secrets(run.secrets),
        flavor=run.flavor,
        timeout=run.timeout,
        labels=_pairs(run.labels, "--label") or None,
        attempts=run.attempts,
        namespace=run.namespace,
    )


def follow_logs(api: HfApi, job_id: str, namespace: str | None, tail: int | None = None,
                follow: bool = True) -> None:
    for line in api.fetch_job_logs(job_id=job_id, namespace=namespace, follow=follow, tail=tail):
        print(line, flush=True)


def print_table(jobs: list) -> None:
    rows = [("JOB ID", "STAGE", "FLAVOR", "CREATED", "COMMAND")]
    for job in jobs:
        created = job.created_at.strftime("%Y-%m-%d %H:%M:%S") if job.created_at else ""
        command = " ".join(job.command or [])
        rows.append((job.id, job.status.stage, str(job.flavor), created, command[:60]))
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


def durability_summary(info: dict) -> str:
    """The durability record as a person reads it: the verdict first, then every push."""
    record = info.get("durability")
    if not record:
        return "durability: keephub did not guard this job's results (no training config or keephub.repo label)"
    lines = [f"durability record of job {info['id']} → {record['targetRepo']}",
             f"   verdict: {record['verdict']['message']}"]
    for push in record["pushes"]:
        mark = "✅" if push["verified"] else "❌"
        lines.append(f"   {mark} attempt {push['attempt']}: {push['label']} → {push['revision']} "
                     f"commit {push['commit'][:12]}, {len(push['files'])} files, {push['bytes']:,} bytes"
                     f"{', verified' if push['verified'] else ', NOT verified'}"
                     f"{' (already there, identical: nothing pushed)' if push.get('alreadyThere') else ''}")
    lines += [f"   ❌ {failure['label']}: {failure['reason']}" for failure in record["failures"]]
    return "\n".join(lines)


def exit_code_for(stage: str) -> int:
    return 0 if stage == "COMPLETED" else 1

