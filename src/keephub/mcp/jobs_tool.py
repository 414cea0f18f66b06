"""The hf_jobs tool: each operation checks its arguments, calls the Jobs services as the HTTP API does (same
access checks, same validation), and answers with text an agent can act on."""

from __future__ import annotations

import asyncio
import json
import shlex
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Protocol, TypeVar
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool

from keephub.accounts import Actor
from keephub.durability.script import MAX_INLINE_SCRIPT_BYTES, inline_command
from keephub.hub.naming import split_repo_id
from keephub.hub.service import Hub
from keephub.jobs.describe import describe, display_command
from keephub.jobs.logs import LogCursor
from keephub.jobs.scheduled import ScheduledJobs
from keephub.jobs.service import HF_TOKEN_PLACEHOLDER, TERMINAL, JobService, human_duration
from keephub.jobs.spec import SUPPORTED_IMAGES
from keephub.mcp.caller import Caller
from keephub.mcp.tools import OPERATIONS, USAGE, Args, ToolError, is_script_path, split_call
from keephub.wire import Unauthorized

# How long a submission without `detach` waits for the job's first log lines, as the Hub's tool does.
FOLLOW_SECONDS = 10.0
POLL_SECONDS = 0.2
# Log lines one answer holds: a tail an agent can read.
MAX_TAIL_LINES = 5000
SHOWN_LINES = 100
MAX_LOG_BYTES = 1024 * 1024
MAX_JOB_IDS = 20
STAGES = ("SCHEDULING", "RUNNING", "COMPLETED", "CANCELED", "ERROR")
DEFAULT_RUN_IMAGE = "python:3.12"
UNAUTHENTICATED = "you must be authenticated for this call: it acts as your user"
TOKEN_HINT = ("To pass a token: an MCP client over HTTP sends `Authorization: Bearer <token>` with its requests to "
              "/mcp; `keephub mcp` (stdio) reads HF_TOKEN or --token. Create one with "
              "`keephub token create USER --role write`.")
Result = TypeVar("Result")


class Wakeable(Protocol):
    """What the tool asks of the job scheduler, as the Jobs API's handlers do."""

    def poke(self) -> None: ...

    def request_cancel(self, job_id: str) -> None: ...


@dataclass(frozen=True)
class Services:
    """The server's services and the caller, for one tool call."""

    hub: Hub
    jobs: JobService
    scheduled: ScheduledJobs
    scheduler: Wakeable
    caller: Caller

    @property
    def base_url(self) -> str:
        return self.jobs.settings.base_url

    async def actor(self) -> Actor | None:
        return await self.caller.settle()

    async def read(self, fn: Callable[..., Result], *args: Any) -> Result:
        """`fn(actor, *args)`, a call that only reads, in one worker-thread hop (see `_hop`)."""
        return await run_in_threadpool(self._hop, True, lambda actor: fn(actor, *args))

    async def read_in(self, namespace: str | None, fn: Callable[..., Result], *args: Any) -> tuple[str, Result]:
        """(namespace, `fn(actor, namespace, *args)`), a call that only reads, in one worker-thread hop; namespace
        None is the caller's own."""
        return await run_in_threadpool(self._hop, True, lambda actor: _in(namespace, actor, fn, args))

    async def write_in(self, namespace: str | None, fn: Callable[..., Result], *args: Any) -> tuple[str, Result]:
        """`read_in` for a call that writes."""
        return await run_in_threadpool(self._hop, False, lambda actor: _in(namespace, actor, fn, args))

    def _hop(self, reads_only: bool, work: Callable[[Actor | None], Result]) -> Result:
        """In a worker thread: `work(actor)`, the caller authenticated first if no call before did it. A read
        shares one database session with the token check (`Database.one_read`), as the Hub API's small reads do;
        the token's last-use mark, a write, comes after it."""
        try:
            if not reads_only:
                return work(self.caller.actor())
            with self.hub.db.one_read():
                return work(self.caller.actor())
        finally:
            self.caller.mark_used()


def _in(namespace: str | None, actor: Actor | None, fn: Callable[..., Result], args: tuple[Any, ...]
        ) -> tuple[str, Result]:
    where = namespace if namespace is not None else own_namespace(actor)
    return where, fn(actor, where, *args)


def own_namespace(actor: Actor | None) -> str:
    """The namespace a call that names none works in: the caller's user."""
    if actor is None:
        raise Unauthorized(UNAUTHENTICATED)
    return actor.name


async def call(fn: Callable[..., Result], *args: Any) -> Result:
    """A service call that acts as nobody (a job's own log, its record by id), off the event loop: they use the
    database and the disk."""
    return await run_in_threadpool(fn, *args)


async def hf_jobs(services: Services, arguments: dict[str, Any]) -> str:
    operation, values = split_call(arguments)
    if operation is None:
        return USAGE
    if operation not in OPERATIONS:
        raise ToolError(f"unknown operation {operation!r}; hf_jobs operations: {', '.join(OPERATIONS)} "
                        "(call hf_jobs without an operation for usage and examples)")
    if values.get("help") is True:
        return OPERATIONS[operation].help
    args = Args(values, f'hf_jobs("{operation}")', OPERATIONS[operation].arguments)
    return await _HANDLERS[operation](services, args)


# -- specs ------------------------------------------------------------------------------------------------------
def job_spec(services: Services, args: Args, uv: bool) -> dict[str, Any]:
    """The Jobs API's job spec for a uv or run call; the service validates it as it does for the API."""
    labels = args.mapping("labels")
    if uv:
        command, name = _uv_command(services, args, labels.get("name"))
        image = SUPPORTED_IMAGES[0]
        labels = {"name": name, **labels}
    else:
        command, image = _run_command(args), args.text("image") or DEFAULT_RUN_IMAGE
    secrets = {key: HF_TOKEN_PLACEHOLDER if value == "${HF_TOKEN}" else value
               for key, value in args.mapping("secrets").items()}
    environment = args.mapping("env")
    for key, value in environment.items():
        if value in (HF_TOKEN_PLACEHOLDER, "${HF_TOKEN}"):
            raise ToolError(f"env {key}={value}: only secrets replace $HF_TOKEN with a token; move it to "
                            f'"secrets": {{"{key}": "$HF_TOKEN"}}')
    return {"command": command, "dockerImage": image, "flavor": args.text("flavor") or "cpu-basic",
            "environment": environment, "secrets": secrets, "timeout": args.scalar("timeout"), "labels": labels,
            "attempts": args.integer("attempts", 1, 1, 10), "volumes": _volumes(args)}


def _run_command(args: Args) -> list[str]:
    command = args.values.get("command")
    if isinstance(command, str):
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise ToolError(f'{args.where}: \'command\' cannot be split into words ({exc}); pass a list, e.g. '
                            '["python", "-c", "print(1)"]') from None
    else:
        argv = args.strings("command")
    if not argv:
        raise ToolError(f'{args.where}: \'command\' is required, e.g. ["python", "-c", "print(1)"]')
    return argv


def _uv_command(services: Services, args: Args, name: str | None) -> tuple[list[str], str]:
    """(command, script name): a URL or repo file is fetched by the job; code travels inline in the command."""
    script = args.required("script")
    options = [option for requirement in args.strings("with_deps") for option in ("--with", requirement)]
    if (python := args.text("python")) is not None:
        options += ["--python", python]
    script_args = args.strings("script_args")
    if script.startswith("hf://"):
        script = _repo_file_url(services.base_url, script)
    if script.startswith(("http://", "https://")):
        return ["uv", "run", *options, script, *script_args], script.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
    if is_script_path(script):
        raise ToolError(f"{args.where}: script {script!r} is a file path, which keephub's server cannot read (the "
                        "file is on your machine). Pass the script's code itself as 'script', its URL, or a repo "
                        "file (hf://NAMESPACE/NAME/PATH); or connect with `keephub mcp` (stdio), which reads local "
                        "files and sends them inline")
    code = script.encode("utf-8", "replace")
    if len(code) > MAX_INLINE_SCRIPT_BYTES:
        raise ToolError(f"{args.where}: the inline script is {len(code):,} bytes; at most "
                        f"{MAX_INLINE_SCRIPT_BYTES:,} travel inline. Upload it to a repo and pass hf://NAMESPACE/"
                        "NAME/PATH or its URL")
    name = name if name and is_script_path(name) and "/" not in name else "script.py"
    return inline_command(code, name, options, script_args), name


def _repo_file_url(base_url: str, reference: str) -> str:
    """hf://[datasets/|spaces/]NAMESPACE/NAME[@REVISION]/PATH as this keephub's resolve URL."""
    kind, repo_id, revision, path = _hf_location(reference, "a script")
    if kind == "bucket" or not path:
        raise ToolError(f"script {reference!r} is not a repo file: write hf://[datasets/|spaces/]NAMESPACE/NAME/PATH, "
                        "e.g. hf://alice/scripts/train.py (NAME@REVISION for another branch than main)")
    prefix = {"model": "", "dataset": "datasets/", "space": "spaces/"}[kind]
    return f"{base_url}/{prefix}{repo_id}/resolve/{quote(revision or 'main', safe='')}/{quote(path)}"


_URI_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space", "buckets": "bucket"}
_VOLUME_FORM = ("hf://[TYPE/]NAMESPACE/NAME[@REVISION][/PATH]:/MOUNT[:ro|:rw], TYPE models (default), datasets, "
                "spaces or buckets, e.g. hf://datasets/alice/chats:/data")


def _hf_location(reference: str, what: str) -> tuple[str, str, str | None, str]:
    """(type, repo id, revision, path) of hf://[TYPE/]NAMESPACE/NAME[@REVISION][/PATH], the Hub's URI form."""
    parts = reference.removeprefix("hf://").split("/")
    kind = _URI_TYPES.get(parts[0], "model")
    if parts[0] in _URI_TYPES:
        parts = parts[1:]
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise ToolError(f"{what} {reference!r} names no repo: write hf://[TYPE/]NAMESPACE/NAME[/PATH]")
    name, _, revision = parts[1].partition("@")
    namespace, name = split_repo_id(f"{parts[0]}/{name}")
    return kind, f"{namespace}/{name}", revision or None, "/".join(parts[2:])


def _volumes(args: Args) -> list[dict[str, Any]]:
    """Mount specs as the Hub's tool takes them, in the Jobs API's form (huggingface_hub's `Volume.to_dict()`)."""
    volumes = []
    for index, spec in enumerate(args.strings("volumes")):
        body, read_only = (spec[:-3], spec.endswith(":ro")) if spec.endswith((":ro", ":rw")) else (spec, None)
        location, separator, mount = body.rpartition(":/")
        if not spec.startswith("hf://") or not separator:
            raise ToolError(f"{args.where}: volumes[{index}] {spec!r} is not a mount; write {_VOLUME_FORM}")
        kind, source, revision, path = _hf_location(location, f"volumes[{index}]")
        volume: dict[str, Any] = {"type": kind, "source": source, "mountPath": "/" + mount}
        optional = {"revision": revision, "readOnly": read_only, "path": path or None}
        volumes.append(volume | {key: value for key, value in optional.items() if value is not None})
    return volumes


# -- submitting ---------------------------------------------------------------------------------------------------
async def _submit(services: Services, args: Args, uv: bool) -> str:
    detach = args.flag("detach")
    spec = job_spec(services, args, uv)
    namespace, info = await services.write_in(args.text("namespace"), services.jobs.submit, spec)
    services.scheduler.poke()
    url = f"{services.base_url}/jobs/{namespace}/{info['id']}"
    head = [f"Job {info['id']} submitted: {display_command(info['command'])} on {info['flavor']}, timeout "
            f"{human_duration(info['timeoutSeconds'])}.", f"URL: {url}"]
    follow = (f'Follow it with hf_jobs("logs", {{"job_id": "{info["id"]}"}}); hf_jobs("inspect", ...) shows what '
              "was saved where.")
    if detach:
        return "\n".join([*head, follow])
    lines, count, stage, message = await _first_lines(services, namespace, info["id"])
    if stage in TERMINAL:
        done = await services.read(services.jobs.get, namespace, info["id"])
        said = f": {message}" if message and message.lower() != stage.lower() else ""
        ending = [f"Job ended {stage}{said}."]
        if done.get("durability"):
            ending.append(f"Durability: {done['durability']['verdict']['message']}")
    else:
        ending = [f"The job is {stage} after {FOLLOW_SECONDS:.0f} s. {follow}"]
    shown = f", the last {len(lines)} here" if count > len(lines) else ""
    return "\n".join([*head, "", f"Log ({count} lines so far{shown}):", *lines, "", *ending])


async def _first_lines(services: Services, namespace: str, job_id: str) -> tuple[list[str], int, str, str]:
    """The last SHOWN_LINES of the log lines written in the job's first FOLLOW_SECONDS (less if it ends sooner),
    how many there were, and the job's stage and message."""
    cursor = LogCursor(services.jobs.jobs_dir, job_id)
    lines: deque[str] = deque(maxlen=SHOWN_LINES)
    count = 0
    deadline = time.monotonic() + FOLLOW_SECONDS
    while True:
        job = (await call(services.jobs.load, namespace, job_id)).job
        count += await call(_read_into, cursor, lines)
        if job.stage in TERMINAL or time.monotonic() >= deadline:
            return list(lines), count, job.stage, job.message or ""
        await asyncio.sleep(POLL_SECONDS)


def _read_into(cursor: LogCursor, lines: deque[str]) -> int:
    """Read the events the cursor has not returned yet into `lines` (which keeps the last ones); how many."""
    read = 0
    while page := cursor.read_page():
        lines.extend(json.loads(event)["data"] for event in page)
        read += len(page)
    return read


async def uv(services: Services, args: Args) -> str:
    return await _submit(services, args, uv=True)


async def run(services: Services, args: Args) -> str:
    return await _submit(services, args, uv=False)


# -- following ------------------------------------------------------------------------------------------------------
async def ps(services: Services, args: Args) -> str:
    given = args.text("namespace")
    status = args.text("status")
    if status is not None and status.upper() not in STAGES:
        raise ToolError(f"{args.where}: 'status' {status!r} is not a stage; use one of {', '.join(STAGES)}")
    show_all = args.flag("all")
    stages = [status.upper()] if status else ([] if show_all else ["SCHEDULING", "RUNNING"])
    namespace, jobs = await services.read_in(given, services.jobs.list, stages, [])
    which = f"{status.upper()} jobs" if status else ("jobs" if show_all else "running or scheduling jobs")
    if not jobs:
        hint = "" if show_all or status else ' (hf_jobs("ps", {"all": true}) lists finished ones too)'
        return f"No {which} in {namespace}{hint}."
    rows = [[job["id"], job["status"]["stage"], job["flavor"], (job["createdAt"] or "")[:19].replace("T", " "),
             display_command(job["command"])[:80]] for job in jobs]
    header = ["JOB ID", "STAGE", "FLAVOR", "CREATED", "COMMAND"]
    return f"{which[0].upper()}{which[1:]} in {namespace}: {len(jobs)}\n" + table(header, rows)


async def logs(services: Services, args: Args) -> str:
    given, job_id = args.text("namespace"), args.required("job_id")
    tail = args.integer("tail", 20, 1, MAX_TAIL_LINES)
    _, info = await services.read_in(given, services.jobs.get, job_id)
    cursor = LogCursor(services.jobs.jobs_dir, job_id)
    events, older = await call(cursor.page_before, None, tail, MAX_LOG_BYTES)
    lines = [event["data"] for event in events]
    status = info["status"]
    head = f"Job {job_id}: {status['stage']}" + (f" ({status['message']})" if status["message"] else "")
    text = [f"{head}; its last {len(lines)} log lines:" if lines else f"{head}; its log is empty so far.", *lines]
    if older is not None and len(lines) < tail:
        text.insert(1, f"(older lines past {MAX_LOG_BYTES:,} bytes of log are not shown)")
    if (advice := troubleshooting(lines, info)) is not None:
        text += ["", advice]
    if status["stage"] not in TERMINAL:
        text += ["", "The job is still running: call logs again for newer lines."]
    return "\n".join(text)


async def inspect(services: Services, args: Args) -> str:
    given = args.text("namespace")
    value = args.values.get("job_id")
    job_ids = [value] if isinstance(value, str) and value else args.strings("job_id")
    if not job_ids or len(job_ids) > MAX_JOB_IDS:
        raise ToolError(f"{args.where}: 'job_id' must be a job id or a list of 1 to {MAX_JOB_IDS} of them")

    def read(actor: Actor | None, namespace: str) -> list[dict]:
        return [services.jobs.get(actor, namespace, job_id) for job_id in job_ids]

    namespace, infos = await services.read_in(given, read)
    parts = []
    for job_id, info in zip(job_ids, infos):
        record = {**info, "command": display_command(info["command"])}
        parts.append(f"{describe(info)}\nURL: {services.base_url}/jobs/{namespace}/{job_id}\n\n"
                     f"```json\n{json.dumps(record, ensure_ascii=False)}\n```")
    return "\n\n".join(parts)


async def cancel(services: Services, args: Args) -> str:
    job_id = args.required("job_id")
    namespace, before = await services.read_in(args.text("namespace"), services.jobs.get, job_id)
    if before["status"]["stage"] in TERMINAL:
        await services.read(services.jobs.check_write, namespace)
        return f"Job {job_id} had already ended ({before['status']['stage']}); nothing to cancel."
    await services.write_in(namespace, services.jobs.cancel, job_id)
    services.scheduler.request_cancel(job_id)
    return (f"Cancel requested for job {job_id} (it was {before['status']['stage']}): it gets SIGTERM, then SIGKILL "
            'after the grace period; keephub still saves what it wrote. hf_jobs("inspect", '
            f'{{"job_id": "{job_id}"}}) shows the outcome.')


async def hardware(services: Services, args: Args) -> str:
    rows = [[f["name"], f["prettyName"], f["cpu"], f["ram"], (f["accelerator"] or {}).get("quantity", "0")]
            for f in services.jobs.hardware()]
    return "Flavors on this keephub:\n" + table(["FLAVOR", "NAME", "CPU", "RAM", "GPUS"], rows)


# -- scheduled jobs ---------------------------------------------------------------------------------------------
async def _scheduled_create(services: Services, args: Args, uv: bool) -> str:
    given = args.text("namespace")
    body = {"jobSpec": job_spec(services, args, uv), "schedule": args.required("schedule"),
            "suspend": args.flag("suspend")}
    _, info = await services.write_in(given, services.scheduled.create, body)
    return "Scheduled job created.\n" + describe_scheduled(info)


async def scheduled_uv(services: Services, args: Args) -> str:
    return await _scheduled_create(services, args, uv=True)


async def scheduled_run(services: Services, args: Args) -> str:
    return await _scheduled_create(services, args, uv=False)


async def scheduled_ps(services: Services, args: Args) -> str:
    namespace, found = await services.read_in(args.text("namespace"), services.scheduled.list)
    if not found:
        return f"No scheduled jobs in {namespace}."
    rows = [[item["id"], item["schedule"], "yes" if item["suspend"] else "no",
             (item["status"]["lastJob"] or {}).get("id") or "-", item["status"]["nextJobRunAt"] or "-",
             display_command(item["jobSpec"]["command"])[:60]] for item in found]
    return (f"Scheduled jobs in {namespace}: {len(found)}\n"
            + table(["ID", "SCHEDULE", "SUSPENDED", "LAST JOB", "NEXT RUN", "COMMAND"], rows))


async def scheduled_inspect(services: Services, args: Args) -> str:
    given, scheduled_id = args.text("namespace"), args.required("scheduled_job_id")
    _, info = await services.read_in(given, services.scheduled.get, scheduled_id)
    record = {**info, "jobSpec": {**info["jobSpec"], "command": display_command(info["jobSpec"]["command"])}}
    return f"{describe_scheduled(info)}\n\n```json\n{json.dumps(record, ensure_ascii=False)}\n```"


async def scheduled_delete(services: Services, args: Args) -> str:
    given, scheduled_id = args.text("namespace"), args.required("scheduled_job_id")
    await services.write_in(given, services.scheduled.delete, scheduled_id)
    return f"Scheduled job {scheduled_id} deleted; the jobs it started are kept."


async def _set_suspended(services: Services, args: Args, suspend: bool) -> str:
    given, scheduled_id = args.text("namespace"), args.required("scheduled_job_id")
    _, info = await services.write_in(given, services.scheduled.set_suspended, scheduled_id, suspend)
    return ("Suspended.\n" if suspend else "Resumed.\n") + describe_scheduled(info)


async def scheduled_suspend(services: Services, args: Args) -> str:
    return await _set_suspended(services, args, True)


async def scheduled_resume(services: Services, args: Args) -> str:
    return await _set_suspended(services, args, False)


def describe_scheduled(info: dict) -> str:
    spec, status = info["jobSpec"], info["status"]
    last = status["lastJob"]
    return "\n".join([
        f"scheduled job {info['id']} in {info['owner']['name']}: {info['schedule']}"
        + (" (suspended)" if info["suspend"] else f", next run {status['nextJobRunAt']}"),
        f"   command: {display_command(spec['command'])}",
        f"   flavor {spec['flavor']}, timeout {human_duration(spec['timeoutSeconds'])}",
        f"   last job: {last['id']} at {last['at']}" if last else "   no run yet",
    ])


# -- text ---------------------------------------------------------------------------------------------------------
def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table (cells' pipes escaped)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# What a failed push looks like in a log (huggingface_hub's errors, keephub's sidecar) and the reference's
# troubleshooting, said for keephub.
_TROUBLES = (
    (("401 Client Error", "401 Unauthorized", "Invalid credentials"),
     "401 Unauthorized: the job had no valid token to push with. Fix: submit it with "
     '"secrets": {"HF_TOKEN": "$HF_TOKEN"} (keephub gives the job a token of its own); check your own token with '
     "hf_whoami."),
    (("403 Client Error", "403 Forbidden"),
     "403 Forbidden: the job's token may not write that repo. A $HF_TOKEN job token writes only the job's target "
     "repo (the script's hub_model_id, or the keephub.repo label), and only where your token may write: push to "
     "your own namespace or an organization where you have the write role (hf_whoami lists them)."),
    (("404 Client Error", "RepositoryNotFoundError", "Repository Not Found", "404 Not Found"),
     "Repository not found: hub_model_id names a repo the job's token cannot see, or a namespace that does not "
     "exist on this keephub. Fix: hub_model_id=\"<your namespace>/<name>\" (hf_whoami), or create the repo first."),
)


def troubleshooting(lines: list[str], info: dict) -> str | None:
    """keephub's troubleshooting for the failed pushes in these lines and in the job's durability record."""
    record = info.get("durability") or {}
    failures = [f"- {failure['label']}: {failure['reason']}" for failure in record.get("failures", [])]
    verdict = record.get("verdict") or {}
    text = "\n".join([*lines, *failures, verdict.get("message", "")])
    advice = [f"- {fix}" for markers, fix in _TROUBLES if any(marker in text for marker in markers)]
    lost = info["status"]["stage"] in TERMINAL and verdict.get("status") == "not-saved"
    if not (failures or advice or lost):
        return None
    head = [f"Durability: {verdict['message']}"] if verdict else []
    return "\n".join(["Troubleshooting (keephub):", *head, *failures, *advice])


_HANDLERS: dict[str, Callable[[Services, Args], Awaitable[str]]] = {
    "uv": uv, "run": run, "ps": ps, "logs": logs, "inspect": inspect, "cancel": cancel, "hardware": hardware,
    "scheduled uv": scheduled_uv, "scheduled run": scheduled_run, "scheduled ps": scheduled_ps,
    "scheduled inspect": scheduled_inspect, "scheduled delete": scheduled_delete,
    "scheduled suspend": scheduled_suspend, "scheduled resume": scheduled_resume,
}
