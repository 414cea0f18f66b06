"""The local executor, keephub's embedded default: each attempt's agent runs on this machine, in a session of
its own, so it outlives a restart or crash of the keephub process that started it.

Cores and GPUs are handed out here: an attempt gets the flavor's count of this machine's free ones and its
sandbox is pinned to them. The ref of an attempt records its agent's process (pid and start time, so a
recycled pid is never mistaken for it) and what it holds, so a restarted keephub knows both again.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from keephub.agent import sandbox
from keephub.jobs.executors.base import Launch, LaunchRefused, Observed, agent_argv
from keephub.jobs.flavors import Flavor


@dataclass(frozen=True)
class _Ref:
    pid: int
    started: int
    cpus: list[int]
    gpus: list[str]
    workspace: str

    @classmethod
    def parse(cls, text: str) -> "_Ref":
        return cls(**json.loads(text))

    def dump(self) -> str:
        return json.dumps(self.__dict__, separators=(",", ":"))


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == b"Z" else int(fields[19])


class LocalExecutor:
    name = "local"

    def __init__(self, layout: sandbox.SandboxLayout, cpus: list[int], gpus: list[str], hub_socket: Path) -> None:
        self.layout = layout
        self._all_cpus, self._all_gpus = list(cpus), list(gpus)
        self._free_cpus, self._free_gpus = list(cpus), list(gpus)
        self._hub_socket = hub_socket
        self._children: dict[int, subprocess.Popen] = {}
        self._held: set[str] = set()  # refs of the attempts whose cores and GPUs are taken
        self._lock = threading.Lock()
        (layout.root / "agents").mkdir(mode=0o700, exist_ok=True)

    def has_room(self, flavor: Flavor) -> bool:
        self._reap()
        with self._lock:
            return len(self._free_cpus) >= flavor.cpus and len(self._free_gpus) >= flavor.gpus

    def _reap(self) -> None:
        """Collect agents of this process that have exited (their attempts ended), so none stays a zombie."""
        with self._lock:
            for pid, child in list(self._children.items()):
                if child.poll() is not None:
                    del self._children[pid]

    def launch(self, launch: Launch) -> str:
        with self._lock:
            if len(self._free_cpus) < launch.flavor.cpus or len(self._free_gpus) < launch.flavor.gpus:
                raise LaunchRefused(f"this machine has no free {launch.flavor.name} slot")
            cpus, self._free_cpus = self._free_cpus[:launch.flavor.cpus], self._free_cpus[launch.flavor.cpus:]
            gpus, self._free_gpus = self._free_gpus[:launch.flavor.gpus], self._free_gpus[launch.flavor.gpus:]
        name = f"{launch.job_id}-{launch.attempt}"
        argv = agent_argv(sys.executable, launch, str(self.layout.root), f"--hub-socket={self._hub_socket}",
                          f"--cpus={','.join(map(str, cpus))}", f"--gpus={','.join(gpus)}")
        try:
            with open(self.layout.root / "agents" / f"{name}.log", "ab") as agent_log:
                process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=agent_log, stderr=subprocess.STDOUT,
                                           start_new_session=True, close_fds=True, env=_agent_env())
            assert process.stdin is not None
            process.stdin.write(launch.credential.encode() + b"\n")
            process.stdin.close()
        except OSError as exc:
            self._give_back(cpus, gpus)
            raise LaunchRefused(f"the agent could not start: {exc}") from exc
        started = _start_time(process.pid)
        ref = _Ref(process.pid, started or 0, cpus, gpus, str(self.layout.workspaces / name)).dump()
        with self._lock:
            self._children[process.pid] = process
            self._held.add(ref)
        return ref

    def adopt(self, refs: list[str]) -> None:
        with self._lock:
            self._held = set(refs)
            held_cpus = {c for ref in refs for c in _Ref.parse(ref).cpus}
            held_gpus = {g for ref in refs for g in _Ref.parse(ref).gpus}
            self._free_cpus = [c for c in self._all_cpus if c not in held_cpus]
            self._free_gpus = [g for g in self._all_gpus if g not in held_gpus]

    def observe(self, ref: str) -> Observed:
        agent = _Ref.parse(ref)
        child = self._children.get(agent.pid)
        if child is not None and child.poll() is not None:
            with self._lock:
                self._children.pop(agent.pid, None)
            return Observed("gone", f"the agent process ended with status {child.returncode}")
        if _start_time(agent.pid) != agent.started:
            return Observed("gone", "the agent process is gone (killed, or this machine restarted)")
        return Observed("running", node=socket.gethostname())

    def stop(self, ref: str) -> None:
        self._signal(_Ref.parse(ref), signal.SIGTERM)

    def kill(self, ref: str) -> None:
        """SIGKILL the agent's process group; its sandbox (bwrap --die-with-parent) goes with it."""
        agent = _Ref.parse(ref)
        if _start_time(agent.pid) == agent.started:
            try:
                os.killpg(agent.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        sandbox.remove_tree(Path(agent.workspace))

    def release(self, ref: str) -> None:
        """Give back what the attempt held, once: a second release must not free cores another attempt has."""
        with self._lock:
            if ref not in self._held:
                return
            self._held.discard(ref)
        agent = _Ref.parse(ref)
        self._give_back(agent.cpus, agent.gpus)

    def _give_back(self, cpus: list[int], gpus: list[str]) -> None:
        with self._lock:
            self._free_cpus = sorted(set(self._free_cpus) | set(cpus))
            self._free_gpus = [g for g in self._all_gpus if g in set(self._free_gpus) | set(gpus)]

    @staticmethod
    def _signal(agent: _Ref, sig: int) -> None:
        if _start_time(agent.pid) == agent.started:
            try:
                os.kill(agent.pid, sig)
            except ProcessLookupError:
                pass


def _agent_env() -> dict[str, str]:
    """The agent's environment: enough to run Python and bubblewrap, nothing of keephub's own settings."""
    keep = ("PATH", "LANG", "LC_ALL", "TZ")
    return {name: os.environ[name] for name in keep if name in os.environ}
