"""Finding the training script inside a job's command, so preflight can read it before anything runs.

Recognised forms: `keephub jobs uv run` and the hf_jobs MCP tool (a base64 script piped through
`base64 -d`), `python -c CODE`, `uv run URL` where the URL is a file on this keephub, and `uv run /data/NAME.py`
where a volume of the job holds the file (huggingface_hub's `run_uv_job` with a local script).
"""

from __future__ import annotations

import base64
import binascii
import re
import shlex
from dataclasses import dataclass
from typing import Callable
from urllib.parse import unquote, urlparse

_BASE64_PIPE = re.compile(r"echo\s+['\"]?([A-Za-z0-9+/=]{8,})['\"]?\s*\|\s*base64\s+(?:-d|--decode)")


_INLINE_TARGET = re.compile(r"base64\s+(?:-d|--decode)\s*>\s*('[^']+'|\"[^\"]+\"|[^\s&;|]+)")
_SHELLS = ("sh", "bash")
# The largest script sent inside a job's command (base64 makes it 4/3 larger; the spec's command holds 512 KiB).
MAX_INLINE_SCRIPT_BYTES = 256 * 1024


@dataclass(frozen=True)
class ScriptSource:
    text: str
    origin: str


@dataclass(frozen=True)
class InlineScript:
    """A script that travels inside the job's command (base64): what people call the job by."""

    name: str
    arguments: list[str]
    size: int

    def to_wire(self) -> dict:
        return {"name": self.name, "arguments": self.arguments, "inlineBytes": self.size}


def inline_command(code: bytes, name: str, uv_options: list[str], arguments: list[str]) -> list[str]:
    """The job command that carries a script inline, as `inline_script` and `find_script` read it back: the
    script needs no upload, and preflight can read it before anything runs."""
    encoded = base64.b64encode(code).decode()
    quoted = shlex.quote(name)
    uv = " ".join(["uv", "run", *map(shlex.quote, uv_options), quoted])
    return ["sh", "-c", f"echo {encoded} | base64 -d > {quoted} && exec {uv} \"$@\"", "sh", *arguments]


def inline_script(command: list[str]) -> InlineScript | None:
    """The script's file name, its arguments and its size when the command carries it inline, as
    `keephub jobs uv run` sends it: `sh -c "echo B64 | base64 -d > NAME && exec uv run NAME \"$@\"" sh ARGS...`."""
    if len(command) < 3 or command[0].rsplit("/", 1)[-1] not in _SHELLS or command[1] != "-c":
        return None
    payload, target = _BASE64_PIPE.search(command[2]), _INLINE_TARGET.search(command[2])
    if payload is None or target is None:
        return None
    name = target.group(1).strip("'\"")
    return InlineScript(name, list(command[4:]), len(payload.group(1)) * 3 // 4)


def find_script(command: list[str], base_url: str, read_hub_file: Callable[[str, str, str, str], bytes | None],
                read_mounted: Callable[[str], bytes | None] = lambda path: None) -> ScriptSource | None:
    """The script a job will run, or None when keephub cannot see it (e.g. a file only the job has).
    `read_mounted(path)` reads a file the job will find in one of its volumes."""
    joined = " ".join(command)
    match = _BASE64_PIPE.search(joined)
    if match:
        try:
            return ScriptSource(base64.b64decode(match.group(1)).decode("utf-8", "replace"), "inline script")
        except (binascii.Error, ValueError):
            return None
    if len(command) >= 3 and command[0].rsplit("/", 1)[-1].startswith("python") and command[1] == "-c":
        return ScriptSource(command[2], "python -c")
    for arg in command:
        if arg.startswith(base_url + "/"):
            found = _hub_file(arg[len(base_url) + 1 :], read_hub_file)
            if found is not None:
                return ScriptSource(found.decode("utf-8", "replace"), arg)
        elif arg.startswith("/") and arg.endswith(".py"):
            found = read_mounted(arg)
            if found is not None:
                return ScriptSource(found.decode("utf-8", "replace"), arg)
    return None


def _hub_file(path: str, read_hub_file: Callable[[str, str, str, str], bytes | None]) -> bytes | None:
    parts = unquote(urlparse("/" + path).path).strip("/").split("/")
    repo_type = "model"
    if parts and parts[0] in ("datasets", "spaces"):
        repo_type, parts = parts[0][:-1], parts[1:]
    if len(parts) < 5 or parts[2] != "resolve":
        return None
    return read_hub_file(repo_type, f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
