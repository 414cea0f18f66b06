"""Throwaway sandboxes for job attempts, built with bubblewrap.

Each attempt sees a read-only host system (/usr, the parts of /etc programs need, the Python installation
with the training stack), a private writable /workspace, RAM-backed /tmp and /dev/shm, its own PID, IPC
and network namespaces, and nothing else: not keephub's data directory, not other jobs, not the host's
network. Its only ways out are two Unix sockets bound into it, to keephub's API and to the egress proxy
(see `keephub.agent.sandbox_init`, the sandbox's first process, and `egress.py`).

Nothing a user sends reaches bubblewrap's command line: bwrap parses options out of its arguments, so
the command and the environment travel to the sandbox's first process as JSON on its stdin instead.

Started as root (as slurmd and container runtimes are), keephub runs each job as a host uid of its own
(`job_uid_base` + the owner's account id): files a job leaves on the host belong to that uid, never to
keephub's, so a setuid file it makes grants nothing, and such bits are stripped all the same. Started as
an ordinary user, keephub runs jobs as that user. It never runs a job as root.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import pwd
import resource
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keephub
import keephub.agent

WORKSPACE = "/workspace"
TOOLS_DIR = "/opt/keephub/bin"
UV_CACHE = "/opt/keephub/uv-cache"
SOCKETS_DIR = "/run/keephub"
SANDBOX_INIT = Path(keephub.agent.__file__).resolve().with_name("sandbox_init.py")
# Open files per process in a job: room for data loaders and many shards, and a bound on what the limit
# watch has to look through (it reads every descriptor of the sandbox to find memfds).
OPEN_FILES = 16384
# At most this many descriptors are looked at per sample; a sandbox with more is stopped (see `usage`).
MAX_OPEN_FILES_SEEN = 200_000
# The uid the job sees inside its user namespace; on the host it is the job's own uid (see JobUser).
INSIDE_UID = 65534
# How many host uids from job_uid_base keephub reserves for jobs, one per account.
JOB_UIDS = 1 << 24
# Where, in a mount namespace private to one sandbox, the host paths it is built from are bind-mounted for
# bwrap, which runs as the job's uid and could not reach them through keephub's own 0700 directories.
STAGE = "/run"
# The parts of /etc programs need (TLS roots, name resolution, users, the loader cache, locale, alternatives),
# not all of it: a keephub config file in /etc may hold the signing key or a database password. /etc/hosts
# is written for each sandbox (keephub's host name points at the sandbox's own loopback).
ETC_ENTRIES = ("alternatives", "ca-certificates", "ca-certificates.conf", "ssl", "resolv.conf",
               "host.conf", "gai.conf", "nsswitch.conf", "passwd", "group", "ld.so.cache", "ld.so.conf",
               "ld.so.conf.d", "localtime", "timezone", "mime.types", "protocols", "services", "os-release",
               "debian_version", "magic", "magic.mime", "pki")
_NVIDIA_SHARED = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")
# Where a volume may not go: over or around the sandbox's system and keephub's own paths (a mount there would
# hide what the job runs on), and over the root, /tmp or /workspace themselves (a folder inside them is fine).
SYSTEM_PATHS = ("/usr", "/etc", "/proc", "/dev", "/sys", "/bin", "/sbin", "/lib", "/lib64", "/run", "/opt/keephub")
WHOLE_PATHS = ("/", "/tmp", "/workspace")
MAX_MOUNT_PATH = 1024


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot create namespaces here; jobs are refused rather than run unsandboxed."""


@dataclass(frozen=True)
class JobUser:
    """The host uid and gid a job runs as; None when keephub cannot switch uids (jobs run as keephub's)."""

    uid: int
    gid: int


@dataclass(frozen=True)
class Limits:
    """What one attempt may hold at once. Memory counts processes, files in its RAM-backed mounts, memfds and
    shared memory; processes counts threads too; disk counts /workspace, deleted files still open and what the
    attempt adds to its uv cache."""

    memory_bytes: int
    processes: int
    disk_bytes: int


@dataclass(frozen=True)
class Route:
    """A loopback port inside the sandbox that leads to a Unix socket outside it."""

    host: str
    port: int
    host_socket: Path

    @property
    def inside_socket(self) -> str:
        return f"{SOCKETS_DIR}/{self.host_socket.name}"


def sandboxes_root(data_dir: Path) -> Path:
    return data_dir / "sandboxes"


def hub_socket_path(data_dir: Path) -> Path:
    """Where keephub serves its API for jobs; bound into each sandbox."""
    return sandboxes_root(data_dir) / "run" / "hub.sock"


def jobs_socket(data_dir: Path) -> socket.socket:
    """The Unix socket keephub serves its API on for jobs, bound and open to every uid: only sandboxes are
    given a path to it."""
    path = hub_socket_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    path.chmod(0o666)
    return listener


@dataclass(frozen=True)
class SandboxLayout:
    """Host paths the sandbox exposes read-only, and where job-writable directories live on the host
    (`root`: workspaces, uv caches, the sockets; inside the data directory, reachable by keephub alone)."""

    readonly: tuple[Path, ...]
    python: Path
    root: Path
    uid_base: int | None

    @classmethod
    def for_this_host(cls, data_dir: Path, uid_base: int) -> "SandboxLayout":
        return cls.at(sandboxes_root(data_dir), uid_base)

    @classmethod
    def at(cls, root: Path, uid_base: int | None) -> "SandboxLayout":
        """Sandboxes under `root` (a keephub data directory's, or an agent's work directory on a node), built
        from this interpreter's installation, which therefore holds keephub and the training stack."""
        venv = Path(sys.prefix)
        paths = {Path(sys.base_prefix).resolve(), venv.resolve(), Path(keephub.__file__).resolve().parents[1]}
        layout = cls(readonly=tuple(sorted(paths)), python=venv / "bin" / "python",
                     root=root.resolve(), uid_base=uid_base if os.geteuid() == 0 else None)
        for directory in (layout.root, layout.workspaces, layout.uv_caches):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        return layout

    @property
    def workspaces(self) -> Path:
        return self.root / "workspaces"

    @property
    def uv_caches(self) -> Path:
        return self.root / "uv-cache"

    def check_uid_range(self, etc: Path = Path("/etc")) -> None:
        """Refuse a job uid range another user of the host holds: a subordinate range (newuidmap) or an
        account would let that user act as keephub's jobs (read their environment, signal them)."""
        if self.uid_base is None:
            return
        end = self.uid_base + JOB_UIDS
        for name in ("subuid", "subgid"):
            try:
                lines = (etc / name).read_text().splitlines()
            except OSError:
                continue
            for line in lines:
                owner, _, rest = line.partition(":")
                start_text, _, count_text = rest.partition(":")
                if start_text.isdigit() and count_text.isdigit():
                    start = int(start_text)
                    if start < end and self.uid_base < start + int(count_text):
                        raise SandboxUnavailable(
                            f"job uids {self.uid_base}-{end - 1} overlap /etc/{name} of {owner!r} "
                            f"({start}-{start + int(count_text) - 1}); set job_uid_base to a free range")
        for account in pwd.getpwall():
            if self.uid_base <= account.pw_uid < end:
                raise SandboxUnavailable(f"job uids {self.uid_base}-{end - 1} include host user {account.pw_name!r} "
                                         f"(uid {account.pw_uid}); set job_uid_base to a free range")

    def user_for(self, account_id: int) -> JobUser | None:
        if self.uid_base is None:
            return None
        if account_id >= JOB_UIDS:
            raise SandboxUnavailable(f"account id {account_id} is past the {JOB_UIDS} job uids keephub reserves")
        uid = self.uid_base + account_id
        return JobUser(uid, uid)

    def job_dir(self, path: Path, user: JobUser | None) -> Path:
        """A directory only the job's uid may enter (mode 0700, owned by it)."""
        path.mkdir(mode=0o700, exist_ok=True)
        if user is not None:
            os.chown(path, user.uid, user.gid)
        return path

    def uv_cache_for(self, owner: str, user: JobUser | None) -> Path:
        """One uv cache per job owner: a shared writable cache would let one user plant code in another's jobs."""
        return self.job_dir(self.uv_caches / owner, user)

    def check_isolated_from(self, data_dir: Path) -> None:
        data = data_dir.resolve()
        for path in self.readonly:
            if data == path or path in data.parents:
                raise SandboxUnavailable(
                    f"the data directory {data} lies inside {path}, which job sandboxes can read; "
                    "move the data directory elsewhere"
                )


def clean_mount_path(value: object, host_paths: tuple[Path, ...] = ()) -> str:
    """A volume's mount path in its one clean form, or ValueError saying why it cannot be one.

    The mount path is the one value a user sends that reaches bwrap's command line (the destination of a
    --bind), so it is held to what a plain absolute path is: a leading '/', no empty, '.' or '..' component,
    none starting with '-', no backslash or control character (NUL, newline); and it may not cover the
    sandbox's own paths (`SYSTEM_PATHS`, the read-only `host_paths` of this node) or replace a whole one."""
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError(f"'mountPath' {value!r} must be an absolute path inside the job, e.g. /data")
    if "\\" in value or any(ord(c) < 32 or ord(c) == 127 for c in value) or len(value) > MAX_MOUNT_PATH:
        raise ValueError(f"'mountPath' {value!r} holds a backslash or a control character, or is longer than "
                         f"{MAX_MOUNT_PATH} characters")
    parts = value.rstrip("/").split("/")[1:]
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"'mountPath' {value!r} has an empty, '.' or '..' component; write it plainly, e.g. "
                         "/data/inputs")
    if any(part.startswith("-") for part in parts):
        raise ValueError(f"'mountPath' {value!r} has a component starting with '-'; name the folder plainly, "
                         "e.g. /data")
    mount = "/" + "/".join(parts)
    if mount in WHOLE_PATHS:
        raise ValueError(f"a volume cannot replace {mount}; mount it at a folder of its own, e.g. "
                         f"{mount.rstrip('/')}/data")
    for system in (*SYSTEM_PATHS, *map(str, host_paths)):
        if mount == system or mount.startswith(system + "/") or system.startswith(mount + "/"):
            raise ValueError(f"'mountPath' {mount} would cover {system}, which the job runs on; mount volumes "
                             "elsewhere, e.g. /data or /workspace/data")
    return mount


@dataclass(frozen=True)
class Bind:
    """A host file or folder mounted at `inside` (a path `clean_mount_path` accepted): one volume."""

    host: Path
    inside: str
    read_only: bool


@dataclass(frozen=True)
class SandboxSpec:
    """Everything one attempt's sandbox is built from."""

    workspace: Path
    uv_cache: Path
    command: list[str]
    env: dict[str, str]
    gpus: list[str]
    cpus: list[int]
    limits: Limits
    user: JobUser | None
    routes: tuple[Route, ...]
    hosts: tuple[str, ...]
    volumes: tuple[Bind, ...] = ()


def bwrap_argv(layout: SandboxLayout, spec: SandboxSpec, data_fds: dict[str, int],
               source: Callable[[Path], Path]) -> list[str]:
    """The bwrap command line: keephub's own paths and numbers, and no value a user sent but the volumes' mount
    paths, each checked again here and placed only as the destination of a --bind/--ro-bind, which bwrap
    reads as a path whatever it holds.

    / is read-only; RAM-backed /tmp and /dev/shm are capped at the memory limit (the scheduler counts what
    they hold against it); `data_fds` are pipes holding /etc/hosts and the uv shim; `source` says where
    bwrap finds each host path (see `staged_sources`). Volumes come last, over the workspace and /tmp."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailable("bubblewrap (bwrap) is not installed: apt-get install bubblewrap")
    memory = spec.limits.memory_bytes
    argv = [
        bwrap, "--clearenv",
        "--unshare-user", "--uid", str(INSIDE_UID), "--gid", str(INSIDE_UID), "--disable-userns",
        "--cap-drop", "ALL", "--die-with-parent", "--new-session",
        "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
        *([] if not spec.routes else ["--unshare-net"]),
        "--hostname", "keephub-job",
        "--ro-bind", "/usr", "/usr", "--dir", "/etc",
        "--symlink", "usr/bin", "/bin", "--symlink", "usr/sbin", "/sbin",
        "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
        "--proc", "/proc", "--dev", "/dev",
        "--size", str(memory), "--tmpfs", "/tmp", "--size", str(max(memory // 2, 1)), "--tmpfs", "/dev/shm",
        "--perms", "0644", "--ro-bind-data", str(data_fds["hosts"]), "/etc/hosts",
    ]
    for entry in ETC_ENTRIES:
        argv += ["--ro-bind-try", f"/etc/{entry}", f"/etc/{entry}"]
    for device in [f"/dev/nvidia{gpu}" for gpu in spec.gpus] + list(_NVIDIA_SHARED if spec.gpus else ()):
        argv += ["--dev-bind-try", device, device]
    for path in layout.readonly:
        argv += ["--ro-bind", str(source(path)), str(path)]
    argv += ["--perms", "0755", "--ro-bind-data", str(data_fds["uv"]), f"{TOOLS_DIR}/uv",
             "--bind", str(source(spec.uv_cache)), UV_CACHE,
             "--bind", str(source(spec.workspace)), WORKSPACE]
    for route in spec.routes:
        argv += ["--bind", str(source(route.host_socket)), route.inside_socket]
    for volume in spec.volumes:
        argv += ["--ro-bind" if volume.read_only else "--bind", str(source(volume.host)),
                 clean_mount_path(volume.inside, layout.readonly)]
    argv += ["--remount-ro", "/dev", "--remount-ro", "/", "--chdir", WORKSPACE,
             "--", str(layout.python), "-I", "-S", str(SANDBOX_INIT)]
    return argv


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


def uv_shim(layout: SandboxLayout) -> bytes:
    # The shim runs as a file with the standard library only (no keephub import: fast on every uv job); -P
    # keeps this directory off its sys.path, so no module here can shadow a standard one.
    uvshim = Path(__file__).resolve().with_name("uvshim.py")
    return f"#!/bin/sh\nexec {layout.python} -P {uvshim} \"$@\"\n".encode()


def hosts_file(names: tuple[str, ...]) -> bytes:
    return f"127.0.0.1\tlocalhost keephub-job {' '.join(names)}\n::1\tlocalhost ip6-localhost\n".encode()


_CLONE_NEWNS, _CLONE_NEWIPC, _MS_BIND, _MS_REC, _MS_PRIVATE = 0x00020000, 0x08000000, 4096, 16384, 1 << 18
# Resolved once, in the parent: a child between fork and exec must not load libraries.
_LIBC = ctypes.CDLL(None, use_errno=True)


def staged_sources(layout: SandboxLayout, spec: SandboxSpec) -> dict[Path, Path]:
    """Each host path the sandbox is built from, and the path under STAGE where bwrap finds it."""
    paths = [*layout.readonly, spec.uv_cache, spec.workspace, *(route.host_socket for route in spec.routes),
             *(volume.host for volume in spec.volumes)]
    return {path: Path(STAGE) / str(index) for index, path in enumerate(paths)}


def _stage_plan(sources: dict[Path, Path]) -> list[tuple[bytes, bytes, bool]]:
    """(source, mount point, is a directory) for `_mount_stage`, worked out before the fork."""
    return [(bytes(path), bytes(point), path.is_dir()) for path, point in sources.items()]


def _mount_stage(plan: list[tuple[bytes, bytes, bool]]) -> None:
    """In the child about to become bwrap, still root: a private mount namespace with a fresh tmpfs on STAGE,
    where each source is bind-mounted (through an fd opened before, since the tmpfs may cover it). The
    host's mounts are not touched. Only system calls here: this runs between fork and exec."""
    def check(result: int, what: bytes) -> None:
        if result != 0:
            raise OSError(ctypes.get_errno(), b"cannot %s for the sandbox" % what)

    check(_LIBC.unshare(_CLONE_NEWNS), b"make a private mount namespace")
    check(_LIBC.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), b"make mounts private")
    fds = [os.open(source, os.O_PATH) for source, _, _ in plan]
    check(_LIBC.mount(b"tmpfs", STAGE.encode(), b"tmpfs", 0, b"mode=0755,size=1m"), b"mount a tmpfs on the stage")
    for fd, (source, point, is_dir) in zip(fds, plan):
        if is_dir:
            os.mkdir(point)
        else:
            os.close(os.open(point, os.O_CREAT | os.O_WRONLY, 0o644))
        check(_LIBC.mount(b"/proc/self/fd/%d" % fd, point, None, _MS_BIND | _MS_REC, None), b"bind " + source)
        os.close(fd)


def _within_hard_limit(kind: int, value: int) -> int:
    """A limit may be lowered, never raised past the hard limit keephub itself runs under (non-root)."""
    hard = resource.getrlimit(kind)[1]
    return value if hard == resource.RLIM_INFINITY else min(value, hard)


def _data_pipe(content: bytes) -> int:
    """A pipe's read end already holding `content` (small: it fits the pipe buffer)."""
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, content)
    finally:
        os.close(write_end)
    return read_end


async def start(layout: SandboxLayout, spec: SandboxSpec) -> asyncio.subprocess.Process:
    """Start the sandbox in its own session, as the job's uid, pinned to its cores, with stdout and stderr
    merged; the command, environment and routes go to the sandbox's first process over stdin.

    bwrap runs with an empty environment (a job's LD_PRELOAD must never reach a host process)."""
    fds = {"hosts": _data_pipe(hosts_file(spec.hosts)), "uv": _data_pipe(uv_shim(layout))}
    payload = json.dumps({
        "command": spec.command, "env": spec.env, "cwd": WORKSPACE,
        "routes": [{"host": r.host, "port": r.port, "socket": r.inside_socket} for r in spec.routes],
    }).encode()
    sources = staged_sources(layout, spec) if spec.user is not None else {}
    plan = _stage_plan(sources)
    rlimits = [(resource.RLIMIT_NPROC, spec.limits.processes), (resource.RLIMIT_FSIZE, spec.limits.disk_bytes),
               (resource.RLIMIT_NOFILE, OPEN_FILES), (resource.RLIMIT_CORE, 0)]
    rlimits = [(kind, _within_hard_limit(kind, value)) for kind, value in rlimits]

    def confine() -> None:
        if spec.cpus:
            os.sched_setaffinity(0, spec.cpus)
        for kind, value in rlimits:
            resource.setrlimit(kind, (value, value))
        if spec.user is not None:
            _mount_stage(plan)
            os.setgroups([])
            os.setgid(spec.user.gid)
            os.setuid(spec.user.uid)
    try:
        process = await asyncio.create_subprocess_exec(
            *bwrap_argv(layout, spec, fds, lambda path: sources.get(path, path)), env={}, pass_fds=tuple(fds.values()),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True, preexec_fn=confine,
        )
    finally:
        for fd in fds.values():
            os.close(fd)
    assert process.stdin is not None
    try:
        process.stdin.write(payload)
        await process.stdin.drain()
        process.stdin.close()
    except (BrokenPipeError, ConnectionResetError, RuntimeError):
        pass  # the sandbox ended before reading its spec; its output says why
    return process


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat_line = fh.read()
        except OSError:
            continue
        parent = int(stat_line[stat_line.rindex(b")") + 2 :].split()[1])
        children.setdefault(parent, []).append(int(entry))
    found, frontier = [], [pid]
    while frontier:
        kids = children.get(frontier.pop(), [])
        found += kids
        frontier += kids
    return found


@dataclass(frozen=True)
class Usage:
    memory_bytes: int
    tasks: int
    open_files: int
    deleted_bytes: int


def _status_fields(pid: int) -> dict[str, int]:
    wanted = {"VmRSS:", "Threads:"}
    values = {}
    with open(f"/proc/{pid}/status", "rb") as fh:
        for line in fh:
            parts = line.split()
            if parts and parts[0].decode() in wanted:
                values[parts[0].decode()] = int(parts[1])
    return values


def _open_file_bytes(pid: int, seen: set[tuple[int, int]], budget: int) -> tuple[int, int, int]:
    """(memfd bytes, bytes of deleted files still open, descriptors looked at) for files the process holds
    that no mount shows: memfds are in no mount, a deleted file is in none any more. Counted once each."""
    memfd = deleted = looked = 0
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir)[:budget]:
        looked += 1
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
            is_memfd = target.startswith("/memfd:")
            if not is_memfd and not (target.endswith(" (deleted)") and target.startswith("/")):
                continue
            info = os.stat(f"{fd_dir}/{fd}")
        except OSError:
            continue
        if not stat.S_ISREG(info.st_mode) or (info.st_dev, info.st_ino) in seen:
            continue
        seen.add((info.st_dev, info.st_ino))
        if is_memfd:
            memfd += info.st_blocks * 512
        elif not target.startswith(("/tmp/", "/dev/shm/")):  # those are in the RAM-backed mounts' count
            deleted += info.st_blocks * 512
    return memfd, deleted, looked


def _ram_mounts_bytes(pid: int) -> int:
    """Bytes stored in the sandbox's RAM-backed mounts, seen through its first process (bwrap's pid 1)."""
    total = 0
    for mount in ("tmp", "dev/shm", "dev"):
        try:
            info = os.statvfs(f"/proc/{pid}/root/{mount}")
        except OSError:
            continue
        total += (info.f_blocks - info.f_bfree) * info.f_frsize
    return total


def _sysv_shm_bytes(pid: int) -> int:
    """System V shared memory of the sandbox's IPC namespace, held whether attached or not. /proc/sysvipc
    shows the reader's namespace, so a short-lived thread joins the sandbox's to read it (root only)."""
    found: list[int] = []

    def read() -> None:
        target = os.open(f"/proc/{pid}/ns/ipc", os.O_RDONLY)
        try:
            if _LIBC.setns(target, _CLONE_NEWIPC) != 0:
                return
            with open("/proc/sysvipc/shm") as fh:
                next(fh)
                found.extend(int(line.split()[3]) for line in fh)
        finally:
            os.close(target)

    if os.geteuid() != 0:
        return 0
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join()
    return sum(found)


def usage(process: asyncio.subprocess.Process) -> Usage:
    """What the sandbox holds, bwrap included (it counts towards RLIMIT_NPROC): resident memory of its
    processes (shared pages counted in each process that maps them: conservative), files in its /tmp and
    /dev/shm, memfds and System V shared memory; threads count as tasks; deleted files still open count as
    disk."""
    pids = [process.pid, *_descendants(process.pid)]
    memory = tasks = looked = deleted = 0
    seen: set[tuple[int, int]] = set()
    for pid in pids:
        try:
            fields = _status_fields(pid)
            memory += fields.get("VmRSS:", 0) * 1024
            tasks += fields.get("Threads:", 1)
            memfd, gone, count = _open_file_bytes(pid, seen, MAX_OPEN_FILES_SEEN - looked)
        except (OSError, ValueError):
            continue
        memory, deleted, looked = memory + memfd, deleted + gone, looked + count
    if len(pids) > 1:
        memory += _ram_mounts_bytes(pids[1]) + _sysv_shm_bytes(pids[1])
    return Usage(memory, tasks, looked, deleted)


def _entries(root: Path):  # type: ignore[no-untyped-def]
    """Every entry under `root`, symlinks not followed; a stack of its own, so no depth exhausts it."""
    pending = [str(root)]
    while pending:
        try:
            entries = list(os.scandir(pending.pop()))
        except OSError:
            continue
        for entry in entries:
            yield entry
            try:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
            except OSError:
                continue


def disk_bytes(paths: list[Path]) -> int:
    """Space the files and directories under `paths` take on disk (hard links counted once)."""
    total, seen = 0, set()
    for root in paths:
        for entry in _entries(root):
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_blocks * 512
    return total


def remove_tree(path: Path) -> None:
    """Delete what a job left, however deep (rm walks without recursion) and without following symlinks."""
    subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], capture_output=True, timeout=3600)


def clear_setid_bits(root: Path, user: JobUser | None) -> int:
    """Clear setuid/setgid bits a job left on files under `root`; returns how many it found.

    find runs as the job's own uid, so a job that swaps a symlink in during the walk can make it change
    nothing but the job's own files (find itself never follows symlinks and checks each directory it
    enters is the one it listed)."""
    def as_job_user() -> None:
        os.chdir(root)  # while still keephub: the job's uid cannot reach `root` through the data directory
        if user is not None:
            os.setgroups([])
            os.setgid(user.gid)
            os.setuid(user.uid)

    command = ["find", ".", "-xdev", "-type", "f", "(", "-perm", "-4000", "-o", "-perm", "-2000", ")",
               "-print", "-exec", "chmod", "ug-s", "{}", "+"]
    try:
        result = subprocess.run(command, env={"PATH": "/usr/bin:/bin"}, capture_output=True, timeout=600,
                                preexec_fn=as_job_user)
    except (OSError, subprocess.SubprocessError):
        return 0
    return result.stdout.count(b"\n")


def terminate_sandbox(process: asyncio.subprocess.Process, skip: set[int] = frozenset()) -> set[int]:  # type: ignore[assignment]
    """SIGTERM to every process inside the sandbox not in `skip`, but not to bwrap itself: killing bwrap would
    take the whole sandbox down at once and leave the job no grace period to save its work. Returns the
    processes signalled, so a caller repeating this reaches processes started since, and only those."""
    signalled = set()
    for pid in _descendants(process.pid):
        if pid in skip:
            continue
        try:
            os.kill(pid, signal.SIGTERM)
            signalled.add(pid)
        except ProcessLookupError:
            pass
    return signalled


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
