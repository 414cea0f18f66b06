"""Throwaway sandboxes for job attempts, built with bubblewrap.

Each attempt sees a read-only host system (/usr, /etc, the Python installation with the training
stack), a private writable /workspace and /tmp, its own PID namespace (when the attempt's main
process ends, everything it started ends with it), and nothing else: not keephub's data
directory, not other jobs' workspaces. Secrets reach the job through the environment of the
bwrap process, never its command line (which other local users could read in /proc).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keephub

WORKSPACE = "/workspace"
TOOLS_DIR = "/opt/keephub/bin"
UV_CACHE = "/opt/keephub/uv-cache"


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot create namespaces here; jobs are refused rather than run unsandboxed."""


@dataclass(frozen=True)
class SandboxLayout:
    """Host paths the sandbox exposes read-only, and the shared writable uv cache."""

    readonly: tuple[Path, ...]
    tools_dir: Path
    uv_cache: Path
    python: Path

    @classmethod
    def for_this_host(cls, jobs_dir: Path) -> "SandboxLayout":
        venv = Path(sys.prefix)
        paths = {Path(sys.base_prefix).resolve(), venv.resolve(), Path(keephub.__file__).resolve().parents[1]}
        tools_dir = jobs_dir / "bin"
        tools_dir.mkdir(parents=True, exist_ok=True)
        shim = tools_dir / "uv"
        # The shim runs as a file, not `-m keephub.jobs.uvshim`: that would import the keephub.jobs package,
        # and with it the whole server stack (~0.8 s on every uv job). -P keeps this directory, whose
        # secrets.py and logs.py would shadow the standard library's, off the shim's sys.path.
        uvshim = Path(__file__).resolve().with_name("uvshim.py")
        shim.write_text(f"#!/bin/sh\nexec {venv / 'bin' / 'python'} -P {uvshim} \"$@\"\n")
        shim.chmod(0o755)
        uv_cache = jobs_dir / "uv-cache"
        uv_cache.mkdir(parents=True, exist_ok=True)
        return cls(readonly=tuple(sorted(paths)), tools_dir=tools_dir, uv_cache=uv_cache, python=venv / "bin" / "python")

    def uv_cache_for(self, owner: str) -> Path:
        """One uv cache per job owner: a shared writable cache would let one user plant code in another's jobs."""
        path = self.uv_cache / owner
        path.mkdir(exist_ok=True)
        return path

    def check_isolated_from(self, data_dir: Path) -> None:
        data = data_dir.resolve()
        for path in self.readonly:
            if data == path or path in data.parents:
                raise SandboxUnavailable(
                    f"the data directory {data} lies inside {path}, which job sandboxes can read; "
                    "move the data directory elsewhere"
                )


JOB_UID = 65534
# The parts of /etc programs need (TLS roots, name resolution, users, the loader cache, locale, alternatives),
# not all of it: a keephub config file in /etc may hold the signing key or a database password.
ETC_ENTRIES = ("alternatives", "ca-certificates", "ca-certificates.conf", "ssl", "resolv.conf", "hosts",
               "host.conf", "gai.conf", "nsswitch.conf", "passwd", "group", "ld.so.cache", "ld.so.conf",
               "ld.so.conf.d", "localtime", "timezone", "mime.types", "protocols", "services", "os-release",
               "debian_version", "magic", "magic.mime", "pki")
_NVIDIA_SHARED = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")


def bwrap_argv(layout: SandboxLayout, workspace: Path, command: list[str], owner: str,
               gpus: list[str], memory_bytes: int) -> list[str]:
    """The bwrap command line. It carries no job data: the job's environment arrives through `--args FD`.

    /tmp and /run are RAM-backed, so each is capped at the job's memory limit (files there do not count
    towards the resident memory the scheduler watches)."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailable("bubblewrap (bwrap) is not installed: apt-get install bubblewrap")
    argv = [
        bwrap, "--clearenv", "--args", "{args_fd}",
        "--unshare-user", "--uid", str(JOB_UID), "--gid", str(JOB_UID), "--cap-drop", "ALL",
        "--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
        "--hostname", "keephub-job",
        "--ro-bind", "/usr", "/usr", "--dir", "/etc",
        "--symlink", "usr/bin", "/bin", "--symlink", "usr/sbin", "/sbin",
        "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
        "--proc", "/proc", "--dev", "/dev",
        "--size", str(memory_bytes), "--tmpfs", "/tmp", "--size", str(memory_bytes), "--tmpfs", "/run",
    ]
    for entry in ETC_ENTRIES:
        argv += ["--ro-bind-try", f"/etc/{entry}", f"/etc/{entry}"]
    for device in [f"/dev/nvidia{gpu}" for gpu in gpus] + list(_NVIDIA_SHARED if gpus else ()):
        argv += ["--dev-bind-try", device, device]
    for path in layout.readonly:
        argv += ["--ro-bind", str(path), str(path)]
    argv += [
        "--ro-bind", str(layout.tools_dir), TOOLS_DIR,
        "--bind", str(layout.uv_cache_for(owner)), UV_CACHE,
        "--bind", str(workspace), WORKSPACE,
        "--chdir", WORKSPACE,
        "--",
    ]
    return argv + command


def sandbox_env(layout: SandboxLayout, defaults: dict[str, str], user_values: dict[str, str],
                enforced: dict[str, str]) -> dict[str, str]:
    """The job's environment: keephub's defaults, which the user may override (HF_ENDPOINT, PATH, ...), then
    the user's variables, then the values the user must not change (job id, attempt, allocated GPUs)."""
    venv_bin = layout.python.parent
    base = {
        "PATH": f"{TOOLS_DIR}:{venv_bin}:/usr/local/bin:/usr/bin:/bin",
        "HOME": WORKSPACE,
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "UV_PYTHON": str(layout.python),
        **defaults,
    }
    return {**base, **user_values, "UV_CACHE_DIR": UV_CACHE, "KEEPHUB_JOB_PYTHON": str(layout.python), **enforced}


async def start(argv: list[str], env: dict[str, str], cpus: list[int]) -> asyncio.subprocess.Process:
    """Start the sandbox in its own session, pinned to `cpus`, with stdout and stderr merged.

    bwrap itself runs with an empty environment (a job's LD_PRELOAD must never reach a host process);
    the job's variables, secrets included, go to bwrap as `--setenv` arguments over a pipe, so they appear
    neither in bwrap's environment nor on any command line.
    """
    read_end, write_end = os.pipe()
    payload = b"".join(b"--setenv\0" + k.encode() + b"\0" + v.encode() + b"\0" for k, v in env.items())

    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    try:
        process = await asyncio.create_subprocess_exec(
            *[str(read_end) if a == "{args_fd}" else a for a in argv], env={}, pass_fds=(read_end,),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True, preexec_fn=pin,
        )
    finally:
        os.close(read_end)
    await asyncio.to_thread(_write_all, write_end, payload)
    return process


def _write_all(fd: int, payload: bytes) -> None:
    try:
        with os.fdopen(fd, "wb") as pipe:
            pipe.write(payload)
    except BrokenPipeError:
        pass


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        parent = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(parent, []).append(int(entry))
    found, frontier = [], [pid]
    while frontier:
        kids = children.get(frontier.pop(), [])
        found += kids
        frontier += kids
    return found


def resident_bytes(process: asyncio.subprocess.Process) -> int:
    """Resident memory of every process in the sandbox (shared pages counted once per process: conservative)."""
    total = 0
    for pid in _descendants(process.pid):
        try:
            with open(f"/proc/{pid}/statm", "rb") as fh:
                total += int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    return total


def terminate_sandbox(process: asyncio.subprocess.Process) -> None:
    """SIGTERM to every process inside the sandbox, but not to bwrap itself: killing bwrap would take the
    whole sandbox down at once and leave the job no grace period to save its work."""
    for pid in _descendants(process.pid):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def kill_sandbox(process: asyncio.subprocess.Process) -> None:
    """SIGKILL bwrap; its PID namespace, and so every process in the sandbox, dies with it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


async def pump_output(process: asyncio.subprocess.Process, emit: Callable[[str], None]) -> None:
    """Forward the sandbox's output line by line (long lines are split rather than buffered without bound)."""
    assert process.stdout is not None
    while True:
        try:
            raw = await process.stdout.readuntil(b"\n")
        except asyncio.IncompleteReadError as partial:
            if partial.partial:
                emit(partial.partial.decode("utf-8", "replace"))
            return
        except asyncio.LimitOverrunError as overrun:
            raw = await process.stdout.readexactly(overrun.consumed)
        for piece in raw.decode("utf-8", "replace").rstrip("\n").split("\r"):
            if piece:
                emit(piece)
