"""Job specs as the Jobs API sends them, validated into a `JobSpec` with errors that name the field and the fix."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from keephub.agent.sandbox import clean_mount_path
from keephub.buckets.service import check_path
from keephub.hub.naming import check_repo_name, check_text
from keephub.jobs.flavors import Flavor
from keephub.wire import BadRequest, TooLarge
from keephub.wire.errors import Unprocessable
from keephub.wire.text import first_invalid_string

# The images the clients send by default; keephub runs them on the host's Python with uv.
SUPPORTED_IMAGES = (
    "ghcr.io/astral-sh/uv:python3.12-bookworm",
    "ghcr.io/astral-sh/uv:python3.11-bookworm",
    "ghcr.io/astral-sh/uv:latest",
    "python:3.11",
    "python:3.12",
    "python:3.11-slim",
    "python:3.12-slim",
)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Variables the dynamic loader or libc act on: harmless inside the sandbox, refused anyway as defence in depth.
_LOADER_NAMES = re.compile(r"^(LD_|GCONV_PATH$|MALLOC_|GLIBC_TUNABLES$)")
_TIMEOUT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_TIMEOUT_SECONDS = 7 * 86400
MAX_ATTEMPTS = 10
MAX_COMMAND_BYTES = 512 * 1024
MAX_ENTRIES = 200
MAX_VOLUMES = 16
VOLUME_TYPES = ("bucket", "model", "dataset", "space")


@dataclass(frozen=True)
class JobSpec:
    command: list[str]
    image: str
    flavor: str
    timeout_seconds: int
    attempts: int = 1
    environment: dict[str, str] = field(default_factory=dict)
    secret_names: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    # Set by keephub at submission: where the sidecar pushes ({repo, outputDir, resume}) and preflight notes.
    durability: dict | None = None
    preflight_notes: list[str] = field(default_factory=list)
    # {type, source, mountPath, readOnly, revision?, path?}, as checked by `parse_volumes`; at submission a repo
    # volume gains `commit`, its revision pinned.
    volumes: list[dict] = field(default_factory=list)

    def to_wire(self) -> dict:
        return {
            "command": self.command,
            "arguments": [],
            "dockerImage": self.image,
            "environment": self.environment,
            "secrets": self.secret_names,
            "flavor": self.flavor,
            "timeoutSeconds": self.timeout_seconds,
            "attempts": self.attempts,
            "labels": self.labels,
            "durability": self.durability,
            "preflightNotes": self.preflight_notes,
            "volumes": self.volumes,
        }


def spec_from_wire(data: dict) -> JobSpec:
    """The stored form back into a JobSpec (it was validated when first submitted)."""
    return JobSpec(command=data["command"], image=data["dockerImage"], flavor=data["flavor"],
                   timeout_seconds=data["timeoutSeconds"], attempts=data["attempts"],
                   environment=data["environment"], secret_names=data["secrets"], labels=data["labels"],
                   durability=data.get("durability"), preflight_notes=data.get("preflightNotes", []),
                   volumes=data.get("volumes", []))


def parse_timeout(value: object, default: int) -> int:
    """Seconds from `300`, `"300"`, `"5m"`, `"2h"` or `"1d"`."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise BadRequest("timeout must be a number of seconds or a string like '30m', '2h', '1d'")
    if isinstance(value, (int, float)):
        if value != value or value in (float("inf"), float("-inf")):
            raise BadRequest("timeout must be a finite number of seconds")
        seconds = int(value)
    else:
        match = _TIMEOUT.match(str(value))
        if not match:
            raise BadRequest(f"timeout {value!r} is malformed; use seconds (300) or a duration like '5m', '2h', '1d'")
        amount = float(match.group(1)) * _UNITS[match.group(2)]
        if amount > MAX_TIMEOUT_SECONDS:  # checked before int(): a 400-digit number is inf as a float
            raise BadRequest(f"timeout {value!r} is longer than 7 days, the longest a job may run")
        seconds = int(amount)
    if seconds <= 0 or seconds > MAX_TIMEOUT_SECONDS:
        raise BadRequest(f"timeout must be between 1 second and 7 days, not {seconds} s")
    return seconds


def _string_map(body: dict, key: str, check_names: bool) -> dict[str, str]:
    value = body.get(key) or {}
    if not isinstance(value, dict):
        raise BadRequest(f"'{key}' must be an object of NAME: value strings")
    if len(value) > MAX_ENTRIES:
        raise TooLarge(f"'{key}' has {len(value)} entries; at most {MAX_ENTRIES} are allowed")
    result = {}
    for name, item in value.items():
        if check_names and not _ENV_NAME.fullmatch(str(name)):
            raise Unprocessable(
                f"'{key}' name {name!r} is not a valid environment variable name; use ASCII letters, digits and "
                "'_', not starting with a digit (no '=', spaces, NUL or other characters)"
            )
        if check_names and _LOADER_NAMES.match(str(name)):
            raise BadRequest(f"'{key}' name {name!r} controls the dynamic loader and is not allowed in jobs")
        if not isinstance(item, (str, int, float, bool)):
            raise BadRequest(f"'{key}.{name}' must be a string")
        result[str(name)] = str(item)
    return result


def parse_spec(body: object, flavors: dict[str, Flavor], default_timeout: int) -> tuple[JobSpec, dict[str, str]]:
    """Validate a job spec; returns it and the secret values (kept apart so they are never stored in clear)."""
    if not isinstance(body, dict):
        raise BadRequest("the job spec must be a JSON object")
    # Values reach the sandbox launcher's argument list and environment, where a NUL would cut or split them,
    # and the database, where a lone surrogate makes every later read of the job fail: refuse both first.
    invalid = first_invalid_string(body)
    if invalid is not None:
        field, problem = invalid
        raise Unprocessable(f"'{field}' {problem}; job specs must be UTF-8 text without NUL bytes")
    command = body.get("command")
    arguments = body.get("arguments") or []
    if not isinstance(command, list) or not command or not all(isinstance(c, str) for c in command):
        raise BadRequest("'command' must be a non-empty list of strings, e.g. [\"python\", \"train.py\"]")
    if not isinstance(arguments, list) or not all(isinstance(a, str) for a in arguments):
        raise BadRequest("'arguments' must be a list of strings")
    command = command + arguments
    if not command[0].strip():
        raise BadRequest("'command' starts with an empty program name")
    if sum(len(c) for c in command) > MAX_COMMAND_BYTES:
        raise TooLarge(f"'command' is longer than {MAX_COMMAND_BYTES} bytes; ship large scripts as a file in a repo")
    if body.get("spaceId"):
        raise Unprocessable("jobs from a Space image are not supported; use one of: " + ", ".join(SUPPORTED_IMAGES))
    image = body.get("dockerImage") or SUPPORTED_IMAGES[0]
    if not isinstance(image, str) or image not in SUPPORTED_IMAGES:
        raise Unprocessable(
            f"image {image!r} cannot be run here: keephub runs jobs on the host's Python with uv, "
            f"for these images: {', '.join(SUPPORTED_IMAGES)}"
        )
    flavor = body.get("flavor") or "cpu-basic"
    if not isinstance(flavor, str) or flavor not in flavors:
        raise BadRequest(f"unknown flavor {flavor!r}; this keephub offers: {', '.join(flavors)}")
    volumes = parse_volumes(body.get("volumes"))
    attempts = body.get("attempts", 1)
    if not isinstance(attempts, int) or isinstance(attempts, bool) or not 1 <= attempts <= MAX_ATTEMPTS:
        raise BadRequest(f"'attempts' must be an integer from 1 to {MAX_ATTEMPTS}")
    labels = _string_map(body, "labels", check_names=False)
    environment = _string_map(body, "environment", check_names=True)
    secrets = _string_map(body, "secrets", check_names=True)
    timeout = parse_timeout(body.get("timeoutSeconds", body.get("timeout")), default_timeout)
    spec = JobSpec(command=command, image=image, flavor=flavor, timeout_seconds=timeout, attempts=attempts,
                   environment=environment, secret_names=sorted(secrets), labels=labels, volumes=volumes)
    return spec, secrets


def parse_volumes(value: object) -> list[dict]:
    """The `volumes` of a job spec (huggingface_hub's `Volume.to_dict()`), each checked and in one form: buckets
    read-write unless `readOnly`, repos read-only at a revision (default main), mount paths clean, absolute,
    apart from each other and off the sandbox's own paths. 422 naming the volume and the fix otherwise."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise Unprocessable("'volumes' must be a list of {type, source, mountPath[, readOnly, revision, path]}")
    if len(value) > MAX_VOLUMES:
        raise Unprocessable(f"'volumes' has {len(value)} entries; a job may mount at most {MAX_VOLUMES}")
    volumes = [_volume(item, index) for index, item in enumerate(value)]
    mounts = sorted((v["mountPath"], index) for index, v in enumerate(volumes))
    for (outer, first), (inner, second) in zip(mounts, mounts[1:]):
        if inner == outer or inner.startswith(outer + "/"):
            raise Unprocessable(f"volumes[{second}] and volumes[{first}] both mount at {outer!r} (or one inside the "
                                "other); give each volume a mount path of its own")
    return volumes


def _volume(item: object, index: int) -> dict:
    where = f"volumes[{index}]"
    if not isinstance(item, dict):
        raise Unprocessable(f"{where} must be an object {{type, source, mountPath}}")
    kind = item.get("type", "model")
    if kind not in VOLUME_TYPES:
        raise Unprocessable(f"{where}: unknown volume type {kind!r}; use one of {', '.join(VOLUME_TYPES)}")
    source = item.get("source")
    try:
        if not isinstance(source, str) or source.count("/") != 1:
            raise BadRequest(f"'source' {source!r} must be namespace/name, e.g. alice/my-{kind}")
        for part, what in zip(source.split("/"), ("namespace", "name")):
            check_repo_name(part, what)
        path = item.get("path")
        if path is not None:
            path = check_path(path.strip("/") if isinstance(path, str) else path, "path")
        revision = item.get("revision")
        if revision is not None and (not isinstance(revision, str) or not revision):
            raise BadRequest(f"'revision' must be a branch, tag or commit id, not {revision!r}")
        if revision is not None:
            check_text(revision, "revision")
    except BadRequest as exc:
        raise Unprocessable(f"{where} ({source!r}): {exc.message}") from None
    read_only = item.get("readOnly")
    if read_only is not None and not isinstance(read_only, bool):
        raise Unprocessable(f"{where}: 'readOnly' must be true or false")
    if kind == "bucket":
        if revision is not None:
            raise Unprocessable(f"{where}: buckets have no revisions; drop 'revision' for the bucket {source}")
        read_only = bool(read_only)
    elif read_only is False:
        raise Unprocessable(f"{where}: {kind} volumes are mounted read-only; write results to a bucket volume "
                            "or push them to the repo")
    volume = {"type": kind, "source": source, "mountPath": _mount_path(item.get("mountPath"), where),
              "readOnly": kind != "bucket" or read_only}
    if kind != "bucket":
        volume["revision"] = revision or "main"
    if path:
        volume["path"] = path
    return volume


def _mount_path(value: object, where: str) -> str:
    try:
        return clean_mount_path(value)  # the agent checks it again, with its node's own paths
    except ValueError as exc:
        raise Unprocessable(f"{where}: {exc}") from None
