"""The tools as agents see them, shared by both transports: names, input schemas, usage and help texts, and
the argument checks whose messages name the field and what it accepts.

`hf_jobs` has the name, input and operations of the Hugging Face MCP server's tool, so the reference's calls
(`hf_jobs("uv", {"script": ..., "secrets": {"HF_TOKEN": "$HF_TOKEN"}})`) work unchanged against keephub.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import mcp_types as types

HF_JOBS = "hf_jobs"
INSTRUCTIONS = ("keephub is a self-hosted Hugging Face Hub with Jobs. hf_jobs runs training as the Hugging Face "
                "tool of that name does; keephub checks a training script before it runs and keeps every result. "
                "hf_whoami, model_search, dataset_search, hub_repo_details and hub_repo_file read the hub.")
ANY_OBJECT: dict[str, Any] = {"type": "object", "additionalProperties": True}
# A `script` that is a single word ending in .py names a file; anything else is code.
_SCRIPT_PATH = re.compile(r"\S+\.py")


class ToolError(Exception):
    """A call that cannot be carried out; the message (what is wrong and the fix) is the tool's answer."""


@dataclass(frozen=True)
class Operation:
    arguments: frozenset[str]
    help: str


_SUBMIT = ("flavor", "env", "secrets", "timeout", "volumes", "labels", "attempts", "namespace")
_SUBMIT_HELP = """
  flavor      hardware, default "cpu-basic"; hf_jobs("hardware") lists what this keephub offers
  timeout     "30m" (default), "2h", "1d" or seconds; covers every attempt
  env         {"NAME": "value"} plain environment variables
  secrets     {"NAME": "value"}, encrypted at rest and masked in logs; {"HF_TOKEN": "$HF_TOKEN"} (or
              "${HF_TOKEN}") gives the job a token of its own that writes only the job's target repo
  labels      {"key": "value"}; keephub.repo / keephub.output-dir choose what keephub guards,
              keephub.preflight: "override" runs a job preflight refused
  attempts    1-10 (default 1): a failed attempt is retried in a fresh sandbox, resuming from the hub
  volumes     ["hf://[TYPE/]NAMESPACE/NAME[@REVISION][/PATH]:/MOUNT[:ro|:rw]"], TYPE models (default),
              datasets, spaces or buckets; repos mount read-only, buckets read-write unless :ro
  namespace   default: your user"""

_UV_HELP = f"""hf_jobs("uv", {{...}}): run a Python script with uv (PEP 723 dependencies; packages already on the host
are reused). Training scripts are checked before anything runs: a job that would lose its results is refused
with the checklist (✅/⚠️/❌ and each fix).

  script       inline code, an http(s) URL, a file of a repo on this keephub (hf://NAMESPACE/NAME/PATH,
               hf://datasets/..., @REVISION after the name), or a local file path when the agent runs
               `keephub mcp` (stdio), which reads it and sends it inline
  script_args  ["--epochs", "3"]       with_deps  ["peft>=0.7"]       python  "3.12"
  detach       false (default): wait up to 10 s and return the first log lines; true: return at once{_SUBMIT_HELP}

Example (the reference's):
  hf_jobs("uv", {{"script": "train.py", "flavor": "cpu-upgrade", "timeout": "2h",
                 "secrets": {{"HF_TOKEN": "$HF_TOKEN"}}}})"""

_RUN_HELP = f"""hf_jobs("run", {{...}}): run a command in a Python image (jobs run on the host's Python with uv).

  image        "python:3.12" (default), "python:3.11", "ghcr.io/astral-sh/uv:python3.12-bookworm", ...
  command      ["python", "-c", "print(1)"] (argv as is) or a string split like a shell would, without one
  detach       false (default): wait up to 10 s and return the first log lines; true: return at once{_SUBMIT_HELP}

Example:
  hf_jobs("run", {{"command": ["python", "-c", "print('hello')"], "detach": true}})"""

_SCHEDULED_HELP = """
  schedule     "@hourly", "@daily", ... or five cron fields, e.g. "*/30 * * * *" (required)
  suspend      true: create it suspended"""

OPERATIONS: dict[str, Operation] = {
    "uv": Operation(frozenset({"script", "script_args", "with_deps", "python", "detach", *_SUBMIT}), _UV_HELP),
    "run": Operation(frozenset({"image", "command", "detach", *_SUBMIT}), _RUN_HELP),
    "ps": Operation(frozenset({"all", "status", "namespace"}), """hf_jobs("ps", {...}): list jobs, newest first.

  all        false (default): running and scheduling jobs only; true: every job
  status     one stage: SCHEDULING, RUNNING, COMPLETED, CANCELED or ERROR
  namespace  default: your user"""),
    "logs": Operation(frozenset({"job_id", "tail", "namespace"}), """hf_jobs("logs", {...}): a job's last log lines,
with keephub's troubleshooting when a push failed (401, 403, repository not found).

  job_id     the job (required)
  tail       how many lines, 1-5000 (default 20)
  namespace  default: your user"""),
    "inspect": Operation(frozenset({"job_id", "namespace"}), """hf_jobs("inspect", {...}): a job's stage,
attempts, its token, and its durability record: the verdict (saved, latest checkpoint, rescued, NOT saved)
and every push, verified against the hub's own commits.

  job_id     one job id or a list of them (required)
  namespace  default: your user"""),
    "cancel": Operation(frozenset({"job_id", "namespace"}), """hf_jobs("cancel", {...}): cancel a job (SIGTERM,
a grace period, then SIGKILL; keephub still saves what the training wrote).

  job_id     the job (required)
  namespace  default: your user"""),
    "hardware": Operation(frozenset(), """hf_jobs("hardware"): the flavors this keephub offers (CPUs, memory,
GPUs), capped at what its machine has."""),
    "scheduled uv": Operation(frozenset({"script", "script_args", "with_deps", "python", "schedule", "suspend",
                                         *_SUBMIT}),
                              "hf_jobs(\"scheduled uv\", {...}): run a uv script on a schedule; each run is an "
                              "ordinary job, with a fresh job token for $HF_TOKEN.\n" + _SCHEDULED_HELP
                              + "\n\nand the arguments of uv (hf_jobs(\"uv\", {\"help\": true})) but detach."),
    "scheduled run": Operation(frozenset({"image", "command", "schedule", "suspend", *_SUBMIT}),
                               "hf_jobs(\"scheduled run\", {...}): run a command on a schedule.\n" + _SCHEDULED_HELP
                               + "\n\nand the arguments of run (hf_jobs(\"run\", {\"help\": true})) but detach."),
    "scheduled ps": Operation(frozenset({"namespace"}), """hf_jobs("scheduled ps", {...}): list scheduled jobs.

  namespace  default: your user"""),
    **{f"scheduled {action}": Operation(frozenset({"scheduled_job_id", "namespace"}),
                                        f'hf_jobs("scheduled {action}", {{...}}): {what}.\n\n'
                                        "  scheduled_job_id  the scheduled job (required)\n"
                                        "  namespace         default: your user")
       for action, what in (("inspect", "a scheduled job: its spec, schedule, last and next run"),
                            ("delete", "delete a scheduled job (jobs it started are kept)"),
                            ("suspend", "stop starting runs until resumed"),
                            ("resume", "start runs again, from the next time the schedule names"))},
}

USAGE = """hf_jobs runs and manages jobs on this keephub, as the Hugging Face hf_jobs tool does on the Hub:
hf_jobs(operation, args). Results are never lost: keephub checks a training script before it runs, pushes
its checkpoints while it runs, and records what was saved where.

Operations: uv, run, ps, logs, inspect, cancel, hardware,
            scheduled uv, scheduled run, scheduled ps, scheduled inspect, scheduled delete,
            scheduled suspend, scheduled resume

Examples:
  hf_jobs("uv", {"script": "train.py", "flavor": "cpu-upgrade", "timeout": "2h",
                 "secrets": {"HF_TOKEN": "$HF_TOKEN"}})
  hf_jobs("logs", {"job_id": "JOB_ID"})
  hf_jobs("inspect", {"job_id": "JOB_ID"})        # the durability verdict and every push
  hf_jobs("ps", {"all": true})
  hf_jobs("scheduled uv", {"script": "https://...", "schedule": "@daily"})
  hf_jobs("uv", {"help": true})                   # one operation's arguments"""

TOOLS: list[types.Tool] = [
    types.Tool(
        name=HF_JOBS,
        description="Run training and other jobs on keephub (a self-hosted Hugging Face Hub) and follow them: "
                    "operations uv, run, ps, logs, inspect, cancel, hardware and scheduled uv/run/ps/inspect/"
                    "delete/suspend/resume. Call it without an operation for usage and examples, or with "
                    "args {\"help\": true} for one operation's arguments.",
        input_schema={"type": "object", "properties": {
            "operation": {"type": "string", "description": "uv, run, ps, logs, inspect, cancel, hardware, or "
                                                           "scheduled uv|run|ps|inspect|delete|suspend|resume"},
            "args": {**ANY_OBJECT, "description": "the operation's arguments; {\"help\": true} for its help"},
        }, "additionalProperties": True},
    ),
    types.Tool(name="hf_whoami", description="Who the token belongs to on this keephub: user, organizations and "
                                             "roles, what the token may write.",
               input_schema={"type": "object", "properties": {}},
               annotations=types.ToolAnnotations(read_only_hint=True)),
    *[types.Tool(name=f"{kind}_search",
                 description=f"Search this keephub's {kind}s you can read, newest first.",
                 input_schema={"type": "object", "properties": {
                     "query": {"type": "string", "description": "part of the repo id, e.g. 'sft'"},
                     "author": {"type": "string", "description": "a user or organization"},
                     "limit": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                 }},
                 annotations=types.ToolAnnotations(read_only_hint=True)) for kind in ("model", "dataset")],
    types.Tool(name="hub_repo_details",
               description="Details of repos on this keephub: files and sizes, last commit, branches (rescue/* "
                           "branches hold what a failed job saved) and tags, and for a model the durability "
                           "verdict of the job that produced it.",
               input_schema={"type": "object", "required": ["repo_ids"], "properties": {
                   "repo_ids": {"type": ["string", "array"], "items": {"type": "string"},
                                "description": "one repo id (namespace/name) or a list of up to 10"},
                   "repo_type": {"type": "string", "enum": ["model", "dataset", "space"], "default": "model"},
               }},
               annotations=types.ToolAnnotations(read_only_hint=True)),
    types.Tool(name="hub_repo_file",
               description="Read a small text file of a repo on this keephub (README.md, config.json, "
                           "last-checkpoint/trainer_state.json), up to 256 KiB.",
               input_schema={"type": "object", "required": ["repo_id", "path"], "properties": {
                   "repo_id": {"type": "string"},
                   "path": {"type": "string"},
                   "repo_type": {"type": "string", "enum": ["model", "dataset", "space"], "default": "model"},
                   "revision": {"type": "string", "default": "main", "description": "a branch, tag or commit"},
               }},
               annotations=types.ToolAnnotations(read_only_hint=True)),
]
TOOL_NAMES = [tool.name for tool in TOOLS]


def split_call(arguments: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """(operation, args) of an hf_jobs call; keys beside `operation` and `args` count as args (the legacy form).
    The operation is lower-cased with its words single-spaced ("Scheduled  UV" is "scheduled uv")."""
    operation = arguments.get("operation")
    if operation is not None and not isinstance(operation, str):
        raise ToolError(f"'operation' must be a string, one of: {', '.join(OPERATIONS)}")
    values = arguments.get("args") or {}
    if not isinstance(values, dict):
        raise ToolError("'args' must be an object, e.g. {\"job_id\": \"...\"}")
    legacy = {key: value for key, value in arguments.items() if key not in ("operation", "args")}
    words = " ".join((operation or "").lower().split())
    return words or None, {**legacy, **values}


def is_script_path(script: str) -> bool:
    """Whether `script` names a file (`train.py`, `scripts/train.py`) rather than being code or a URL."""
    return "\n" not in script and "://" not in script and bool(_SCRIPT_PATH.fullmatch(script.strip()))


class Args:
    """One call's arguments, read through checks whose messages name the field and what it accepts; a name
    the operation does not take is refused with the ones it does."""

    def __init__(self, values: dict[str, Any], where: str, accepted: frozenset[str]) -> None:
        unknown = sorted(set(values) - accepted - {"help"})
        if unknown:
            valid = ", ".join(sorted(accepted)) or "none"
            raise ToolError(f"{where} takes no argument {', '.join(repr(name) for name in unknown)}; "
                            f"its arguments: {valid}")
        self.values = values
        self.where = where

    def _problem(self, name: str, expected: str) -> ToolError:
        return ToolError(f"{self.where}: '{name}' must be {expected}, not {_shown(self.values[name])}")

    def text(self, name: str, *, required: bool = False) -> str | None:
        value = self.values.get(name)
        if value is None or value == "":
            if required:
                raise ToolError(f"{self.where}: '{name}' is required")
            return None
        if not isinstance(value, str):
            raise self._problem(name, "a string")
        return value

    def required(self, name: str) -> str:
        value = self.text(name, required=True)
        assert value is not None
        return value

    def flag(self, name: str) -> bool:
        value = self.values.get(name, False)
        if not isinstance(value, bool):
            raise self._problem(name, "true or false")
        return value

    def integer(self, name: str, default: int, minimum: int, maximum: int) -> int:
        value = self.values.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
            raise self._problem(name, f"an integer from {minimum} to {maximum}")
        return value

    def strings(self, name: str) -> list[str]:
        """A list of strings; one string alone counts as a list of one."""
        value = self.values.get(name) or []
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise self._problem(name, "a list of strings")
        return value

    def mapping(self, name: str) -> dict[str, str]:
        value = self.values.get(name) or {}
        if not isinstance(value, dict) or not all(isinstance(item, (str, int, float, bool)) for item in
                                                   value.values()):
            raise self._problem(name, 'an object of "NAME": "value" strings')
        return {str(key): str(item) for key, item in value.items()}

    def scalar(self, name: str) -> str | int | float | None:
        """A string or a number (a timeout: "2h" or 7200)."""
        value = self.values.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int, float))):
            raise self._problem(name, 'a duration like "30m", "2h", "1d" or a number of seconds')
        return value


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
