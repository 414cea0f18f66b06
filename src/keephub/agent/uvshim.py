"""The `uv` a job sees: `uv run` that reuses the host's installed packages.

`uv run train.py` with PEP 723 dependencies (or `--with` ones) would normally resolve and install
everything (torch included, several GB) into a fresh environment for every job. Here, every
requirement the host's environment already satisfies is reused as is; only the missing ones are
installed, with `uv pip install --no-deps`, into a per-job overlay that shadows the host, using
the uv cache shared between jobs. Other uv subcommands go to the real uv.

This module runs inside the sandbox, so it imports only the standard library, `packaging` and
`httpx` (both in the host environment).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from urllib.parse import urlparse

_VALUE_OPTIONS = {"--with", "-w", "--python", "-p"}
_IGNORED_FLAGS = {"-q", "--quiet", "-v", "--verbose", "--no-project", "--script", "--isolated", "--no-cache",
                  "--frozen", "--locked", "--compile-bytecode", "--no-progress", "--exact", "--no-sync"}
_PEP723 = re.compile(r"(?m)^# /// (?P<type>[a-zA-Z0-9-]+)$\s(?P<content>(^#(| .*)$\s)+)^# ///$")
MAX_ROUNDS = 20


class ShimError(Exception):
    pass


def say(message: str) -> None:
    print(f"[keephub uv] {message}", file=sys.stderr, flush=True)


def parse_run(argv: list[str]) -> tuple[list[str], str | None, str | None, list[str]]:
    """(with-requirements, python, target, target args) from `uv run` arguments."""
    with_reqs: list[str] = []
    python = None
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg == "--":
            index += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        name, _, inline = arg.partition("=")
        if name in _VALUE_OPTIONS:
            if not inline:
                index += 1
                if index >= len(argv):
                    raise ShimError(f"uv run: {name} needs a value")
                inline = argv[index]
            if name in ("--with", "-w"):
                with_reqs += [r.strip() for r in inline.split(",") if r.strip()]
            else:
                python = inline
        elif name not in _IGNORED_FLAGS:
            raise ShimError(f"uv run option {name} is not supported by keephub jobs; supported: --with, --python")
        index += 1
    if index >= len(argv):
        raise ShimError("uv run: name a script, a URL, '-' (script on stdin) or a command")
    return with_reqs, python, argv[index], argv[index + 1 :]


def script_dependencies(text: str) -> tuple[list[str], str | None]:
    for match in _PEP723.finditer(text):
        if match.group("type") != "script":
            continue
        body = "".join(line[2:] if line.startswith("# ") else line[1:]
                       for line in match.group("content").splitlines(keepends=True))
        data = tomllib.loads(body)
        return list(data.get("dependencies", [])), data.get("requires-python")
    return [], None


def fetch_script(url: str, workdir: Path) -> Path:
    import httpx

    headers = {}
    endpoint = os.environ.get("HF_ENDPOINT", "")
    if endpoint and urlparse(url).netloc == urlparse(endpoint).netloc and os.environ.get("HF_TOKEN"):
        headers["Authorization"] = f"Bearer {os.environ['HF_TOKEN']}"
    response = httpx.get(url, headers=headers, follow_redirects=True, timeout=60)
    if response.status_code != 200:
        raise ShimError(f"could not fetch the script {url}: HTTP {response.status_code}")
    name = Path(urlparse(url).path).name or "script.py"
    path = workdir / (name if name.endswith(".py") else name + ".py")
    path.write_bytes(response.content)
    return path


def _installed(paths: list[str]) -> dict[str, metadata.Distribution]:
    found: dict[str, metadata.Distribution] = {}
    for dist in metadata.distributions(path=paths):
        name = dist.metadata["Name"]
        if name:
            found.setdefault(_canonical(name), dist)
    return found


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def ensure(requirements: list[str], overlay: Path) -> list[str]:
    """Make every requirement importable; returns the names installed into the overlay."""
    from packaging.requirements import Requirement

    environment = {"extra": ""}
    pending = [Requirement(r) for r in requirements]
    installed_here: list[str] = []
    reused: list[str] = []
    for _ in range(MAX_ROUNDS):
        paths = [str(overlay)] + sys.path
        have = _installed(paths)
        missing, follow = [], []
        for req in pending:
            if req.marker is not None and not req.marker.evaluate(environment):
                continue
            dist = have.get(_canonical(req.name))
            if dist is not None and req.specifier.contains(dist.version, prereleases=True):
                if str(overlay) not in str(getattr(dist, "_path", "")):
                    reused.append(f"{dist.metadata['Name']} {dist.version}")
                for extra in req.extras:
                    for sub in dist.requires or []:
                        sub_req = Requirement(sub)
                        if sub_req.marker is not None and sub_req.marker.evaluate({"extra": extra}):
                            sub_req.marker = None
                            follow.append(sub_req)
                continue
            missing.append(req)
        if not missing and not follow:
            break
        if missing:
            names = [str(r) for r in missing]
            say("installing " + ", ".join(names))
            result = subprocess.run(
                [_real_uv(), "pip", "install", "--quiet", "--no-deps", "--python", os.environ["KEEPHUB_JOB_PYTHON"],
                 "--target", str(overlay), *names],
                stdout=sys.stderr, stderr=sys.stderr,
            )
            if result.returncode != 0:
                raise ShimError(f"installing {', '.join(names)} failed (uv exit status {result.returncode})")
            installed_here += names
            fresh = _installed([str(overlay)])
            for req in missing:
                dist = fresh.get(_canonical(req.name))
                for sub in (dist.requires or []) if dist else []:
                    follow.append(Requirement(sub))
        pending = follow
    if reused:
        say("reusing host packages: " + ", ".join(sorted(set(reused))))
    return installed_here


def _real_uv() -> str:
    return str(Path(os.environ["KEEPHUB_JOB_PYTHON"]).parent / "uv")


def run(argv: list[str]) -> int:
    with_reqs, python, target, args = parse_run(argv)
    if python and not python.startswith(f"{sys.version_info.major}.{sys.version_info.minor}"):
        say(f"--python {python} requested; keephub runs jobs on the host's Python "
            f"{sys.version_info.major}.{sys.version_info.minor}")
    workdir = Path(os.environ.get("HOME", "/tmp")) / ".keephub"
    workdir.mkdir(parents=True, exist_ok=True)
    script: Path | None = None
    if target == "-":
        script = workdir / "stdin_script.py"
        script.write_bytes(sys.stdin.buffer.read())
    elif target.startswith(("http://", "https://")):
        script = fetch_script(target, workdir)
    elif target.endswith(".py") or Path(target).is_file():
        script = Path(target)
        if not script.is_file():
            raise ShimError(f"script {target} does not exist in the job's workspace")
    requirements = list(with_reqs)
    if script is not None:
        deps, requires_python = script_dependencies(script.read_text(encoding="utf-8", errors="replace"))
        requirements += deps
        if requires_python:
            from packaging.specifiers import SpecifierSet

            version = f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
            if not SpecifierSet(requires_python).contains(version):
                raise ShimError(f"the script requires Python {requires_python}; jobs here run Python {version}")
    overlay = workdir / "deps"
    overlay.mkdir(exist_ok=True)
    if requirements:
        ensure(requirements, overlay)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(overlay), env.get("PYTHONPATH", "")) if p)
    env["PATH"] = f"{overlay / 'bin'}{os.pathsep}{env['PATH']}"
    if script is not None:
        command = [os.environ["KEEPHUB_JOB_PYTHON"], str(script), *args]
    else:
        command = [target, *args]
    os.execvpe(command[0], command, env)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "run":
        os.execv(_real_uv(), [_real_uv(), *argv])
    try:
        return run(argv[1:])
    except ShimError as exc:
        say(f"error: {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
