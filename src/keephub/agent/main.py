"""keephub's agent: runs one job attempt where the job runs, and reports to keephub over HTTP only.

Started by an executor (a process of its own session on keephub's machine, a Slurm batch job on a node) as

    python -I -m keephub.agent.main --server=URL --job=ID --attempt=N --work-dir=DIR  < credential

it asks keephub for the attempt's plan (command, environment, limits, deadline, volumes), builds the sandbox on
this machine (with its volumes, see `volumes`), runs the script under the durability sidecar, and sends keephub
its log lines (numbered from 1, kept in a spool on local disk until keephub has stored them), heartbeats (which
carry a cancel back), the volumes' syncs and finally the exit status. Its credential is valid for this attempt
alone, while it runs.

keephub may restart, crash or be unreachable meanwhile: the agent goes on, resends what keephub has not
acknowledged, and reports the end once keephub answers again. So a job outlives its server, and its log has
no gap and no line twice. Nothing here imports the server's packages: the node needs this installation's
Python and bubblewrap, and HTTP to keephub, nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

from keephub.agent import egress, sandbox
from keephub.agent.output import CappedOutput
from keephub.agent.redact import Redactor
from keephub.agent.sandbox_init import keep_off_the_jobs_cores, pump

log = logging.getLogger("keephub.agent")
API = "/api/agent/v1"
HEARTBEAT_SECONDS = 1.0
# Log lines go to keephub in batches of at most this many bytes.
BATCH_BYTES = 256 * 1024
# How long the agent keeps trying to reach keephub, to start and to report the end, before giving up.
PATIENCE_SECONDS = 24 * 3600
RETRY_PAUSE_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)
# Connections a job may hold open to keephub at once: each costs the agent a thread or two, outside the
# job's own limits.
MAX_CONNECTIONS = 256
USAGE_SAMPLE_SECONDS = 0.25
DISK_SAMPLE_SECONDS = 2.0
# Where the sidecar finds its own credential (records only) in the attempt's private workspace.
SIDECAR_CREDENTIAL_FILE = ".keephub-agent-credential"
# Tries to hand keephub a durability record of the agent's own (a volume's sync) while it is unreachable.
RECORD_TRIES = 10


def _pause(tries: int) -> float:
    """How long to wait before try number `tries` + 1 of a call keephub did not answer."""
    return RETRY_PAUSE_SECONDS[min(tries, len(RETRY_PAUSE_SECONDS) - 1)]


class Refused(Exception):
    """keephub answered 4xx: this attempt is over for keephub (ended, canceled, or not ours to run)."""

    def __init__(self, status: int, body: dict) -> None:
        super().__init__(body.get("error") or f"HTTP {status}")
        self.status, self.body = status, body


class Link:
    """The agent's one link to keephub: JSON POSTs to its attempt's endpoints, with its credential."""

    def __init__(self, server: str, job: str, attempt: int, credential: str) -> None:
        url = urlsplit(server)
        self._https = url.scheme == "https"
        self._host, self._port = url.hostname or "127.0.0.1", url.port or (443 if self._https else 80)
        self._base = f"{url.path.rstrip('/')}{API}/jobs/{job}/attempts/{attempt}"
        self.credential = credential

    def post(self, what: str, body: dict, timeout: float = 30) -> dict:
        """One call; OSError when keephub cannot be reached or answers 5xx, Refused on 4xx."""
        kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        connection = kind(self._host, self._port, timeout=timeout)
        try:
            connection.request("POST", f"{self._base}/{what}", body=json.dumps(body).encode(),
                               headers={"Authorization": f"Bearer {self.credential}",
                                        "Content-Type": "application/json"})
            response = connection.getresponse()
            raw = response.read()
        except (http.client.HTTPException, TimeoutError) as exc:
            raise OSError(f"keephub did not answer: {exc}") from exc
        finally:
            connection.close()
        try:
            answer = json.loads(raw) if raw else {}
        except ValueError:
            answer = {"error": raw[:200].decode("utf-8", "replace")}
        if response.status >= 500:
            raise OSError(f"keephub answered {response.status}: {answer.get('error', '')}")
        if response.status >= 400:
            raise Refused(response.status, answer)
        return answer

    def post_until_answered(self, what: str, body: dict, stopping: threading.Event | None = None) -> dict:
        """Retry while keephub is unreachable (restarting, crashed, network down), up to PATIENCE_SECONDS."""
        give_up = time.monotonic() + PATIENCE_SECONDS
        for tries in range(1 << 30):
            try:
                return self.post(what, body)
            except OSError as exc:
                if time.monotonic() > give_up or (stopping is not None and stopping.is_set()):
                    raise
                if tries % 20 == 0:
                    log.warning("keephub unreachable (%s); retrying %s", exc, what)
                time.sleep(_pause(tries))
        raise AssertionError("unreachable")


class Spool:
    """The attempt's log lines, numbered from 1, on local disk until keephub has stored them: lines are
    resent from the first one keephub does not have, so none is lost or stored twice."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "w+b")
        self._lock = threading.Condition()
        self.last = 0
        self.acked = 0
        self._acked_offset = 0
        self.closed = False
        self.abandoned = False

    def add(self, at: str, line: str) -> None:
        with self._lock:
            self.last += 1
            self._file.seek(0, os.SEEK_END)
            self._file.write(json.dumps([self.last, at, line]).encode() + b"\n")
            self._file.flush()
            self._lock.notify_all()

    def close(self) -> None:
        with self._lock:
            self.closed = True
            self._lock.notify_all()

    def next_batch(self, timeout: float) -> tuple[int, list[list[str]], int]:
        """(first sequence number, [timestamp, line] events, offset past them) of lines not yet acknowledged."""
        with self._lock:
            if self.acked == self.last and not self.closed:
                self._lock.wait(timeout)
            self._file.seek(self._acked_offset)
            events, size = [], 0
            while size < BATCH_BYTES:
                raw = self._file.readline()
                if not raw.endswith(b"\n"):
                    break
                seq, at, line = json.loads(raw)
                if seq <= self.acked:
                    continue
                events.append([at, line])
                size += len(raw)
            return self.acked + 1, events, self._file.tell() if events else self._acked_offset

    def acknowledge(self, next_seq: int, first: int, count: int, offset: int) -> None:
        """keephub has every line before `next_seq`."""
        with self._lock:
            if next_seq == first + count:
                self.acked, self._acked_offset = next_seq - 1, offset
            elif next_seq - 1 != self.acked:  # keephub's view differs from ours: scan again from the start
                self.acked, self._acked_offset = next_seq - 1, 0
            self._lock.notify_all()

    def abandon(self) -> None:
        """keephub will take no more lines (the attempt has ended for it): stop waiting for acknowledgements."""
        with self._lock:
            self.abandoned = True
            self._lock.notify_all()

    def wait_all_acknowledged(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._lock:
            while self.acked < self.last and not self.abandoned:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
            return True


def ship_logs(link: Link, spool: Spool, finished: threading.Event) -> None:
    """Send the spool's lines in order until the attempt has ended and keephub has all of them."""
    tries = 0
    while not (finished.is_set() and spool.acked >= spool.last):
        first, events, offset = spool.next_batch(timeout=0.5)
        if not events:
            continue
        try:
            answer = link.post("log", {"first": first, "events": events})
        except OSError:
            time.sleep(_pause(tries))
            tries += 1
            continue
        except Refused as exc:
            if exc.status == 409 and isinstance(exc.body.get("next"), int):  # keephub lacks earlier lines
                spool.acknowledge(exc.body["next"], first, len(events), offset)
                continue
            log.error("keephub refused this attempt's log lines: %s", exc)
            spool.abandon()
            return
        tries = 0
        spool.acknowledge(int(answer.get("next", first)), first, len(events), offset)


class Forwarder:
    """A Unix socket in the attempt's run directory, bound into the sandbox, whose every connection goes on to
    keephub: its own Unix socket on keephub's machine, or TCP to its URL from a node. Owned by the agent, so
    a restarted keephub is reached again by the next connection."""

    def __init__(self, path: Path, unix_target: str | None, tcp_target: tuple[str, int]) -> None:
        path.unlink(missing_ok=True)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        path.chmod(0o666)
        self.listener.listen(256)
        self._unix, self._tcp = unix_target, tcp_target
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        threading.Thread(target=self._accept, daemon=True).start()

    def _connect(self) -> socket.socket:
        if self._unix and os.path.exists(self._unix):
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(self._unix)
                return upstream
            except OSError:  # a path that exists but leads nowhere (another machine's socket): use TCP
                upstream.close()
        upstream = socket.create_connection(self._tcp, timeout=30)
        upstream.settimeout(None)
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return upstream

    def _accept(self) -> None:
        keep_off_the_jobs_cores()
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self._slots.acquire(blocking=False):  # the job holds MAX_CONNECTIONS already
                client.close()
                continue
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        try:
            self._pipe(client)
        finally:
            self._slots.release()

    def _pipe(self, client: socket.socket) -> None:
        with client:
            try:
                upstream = self._connect()
            except OSError:
                return
            with upstream:
                back = threading.Thread(target=pump, args=(upstream, client), daemon=True)
                back.start()
                pump(client, upstream)
                back.join()

    def close(self) -> None:
        self.listener.close()


class Attempt:
    """One attempt, from plan to report."""

    def __init__(self, args: argparse.Namespace, link: Link, plan: dict) -> None:
        self.args, self.link, self.plan = args, link, plan
        self.name = f"{args.job}-{args.attempt}"
        self.layout = sandbox.SandboxLayout.at(Path(args.work_dir), None)
        uid = plan.get("uid")
        self.user = sandbox.JobUser(uid, uid) if uid is not None and os.geteuid() == 0 else None
        self.agent_dir = self.layout.root / "agents" / self.name
        self.agent_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.spool = Spool(self.agent_dir / "log.jsonl")
        self.output = CappedOutput(self.spool.add, plan.get("logMaxBytes"))
        self.redact = Redactor(plan.get("redact", []))
        self.finished = threading.Event()
        self.reported = threading.Event()
        self.stop_reason: tuple[str, str] | None = None  # (kind, message)
        self.stop_requested: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.records_refused = False

    # -- stop requests, from keephub (heartbeats) or from the executor (SIGTERM) -----------------------------
    def request_stop(self, kind: str, message: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = (kind, message)
        if self.loop is not None and self.stop_requested is not None:
            try:
                self.loop.call_soon_threadsafe(self.stop_requested.set)
            except RuntimeError:  # the run is over (its loop closed): nothing is left to stop
                pass

    def post_record(self, record: dict) -> None:
        """A durability record of the agent's own (a volume's sync): retried while keephub is unreachable for a
        while; a refusal (the attempt's 1,000 records are used up) is said once in the log."""
        for tries in range(RECORD_TRIES):
            try:
                self.link.post("records", record)
                return
            except Refused as exc:
                if not self.records_refused:
                    self.records_refused = True
                    self.output.note(f"keephub: the job's durability record took no more volume syncs ({exc}); "
                                     "the volumes are still pushed")
                return
            except OSError:
                time.sleep(_pause(tries))
        log.warning("keephub did not take a %s record", record.get("kind"))

    def heartbeats(self) -> None:
        """Every second until keephub has the exit report: while the last lines are delivered keephub must
        still hear from the agent, or it would take the attempt for lost."""
        while not self.reported.wait(HEARTBEAT_SECONDS):
            try:
                answer = self.link.post("heartbeat", {"node": node_name()}, timeout=10)
            except OSError:
                continue
            except Refused as exc:
                self.request_stop("lost", f"keephub no longer counts this attempt as running ({exc}); stopped")
                self.spool.abandon()
                return
            if answer.get("stop"):
                self.request_stop(str(answer["stop"]), str(answer.get("message") or "stop requested"))

    # -- the run ---------------------------------------------------------------------------------------------
    async def run(self) -> dict:
        self.loop = asyncio.get_running_loop()
        self.stop_requested = asyncio.Event()
        if self.stop_reason is not None:
            self.stop_requested.set()
        for note in self.plan.get("notes", []):
            self.output.note(note)
        cpus = self.args.cpus or sorted(os.sched_getaffinity(0))
        gpus = self.args.gpus if self.args.gpus is not None else _visible_gpus()
        workspace = self.layout.job_dir(self.layout.workspaces / self.name, self.user)
        uv_cache = self.layout.uv_cache_for(self.plan["owner"], self.user)
        # The attempt's sockets, in a short path of their own: a Unix socket's path has at most 107 bytes.
        run_dir = Path(tempfile.mkdtemp(prefix="keephub-agent-"))
        forwarders: list[Forwarder] = []
        proxy = None
        volumes = None
        try:
            binds: tuple[sandbox.Bind, ...] = ()
            if self.plan.get("volumes"):
                # Imports huggingface_hub: only attempts with volumes pay for it.
                from keephub.agent.volumes import VolumeError, Volumes

                volumes = Volumes(self.plan["volumes"], self.args.server, self.plan.get("volumeToken"), self.layout,
                                  self.user, self.name, self.post_record, self.output.note)
                try:
                    binds = await asyncio.to_thread(volumes.prepare)
                except VolumeError as exc:
                    self.output.note(f"keephub: {exc}")
                    return {"exitCode": None, "stopped": "start-failed", "reason": str(exc)}
            routes = []
            network = self.plan.get("network")
            if network is not None:
                server = urlsplit(self.args.server)
                hub = Forwarder(run_dir / "hub.sock", self.args.hub_socket,
                                (server.hostname or "127.0.0.1", server.port or (443 if server.scheme == "https" else 80)))
                forwarders.append(hub)
                proxy = egress.EgressProxy(run_dir / "egress.sock", egress.parse_allow_list(network["egressAllow"]))
                await proxy.start()
                sockets = {"hub": run_dir / "hub.sock", "egress": run_dir / "egress.sock"}
                routes = [sandbox.Route(r["host"], int(r["port"]), sockets[r["to"]]) for r in network["routes"]]
            if self.plan.get("sidecar"):
                _leave_credential(workspace, self.plan["sidecarCredential"])
            env = sandbox.sandbox_env(
                self.layout, {**self.plan["env"]["defaults"], "OMP_NUM_THREADS": str(_threads(cpus))},
                self.plan["env"]["user"], {**self.plan["env"]["enforced"], "CUDA_VISIBLE_DEVICES": ",".join(gpus)})
            limits = sandbox.Limits(**self.plan["limits"])
            box = sandbox.SandboxSpec(
                workspace=workspace, uv_cache=uv_cache, command=self._command(), env=env, gpus=gpus,
                cpus=cpus if self.args.cpus else [], limits=limits, user=self.user, routes=tuple(routes),
                hosts=tuple(network["hostNames"]) if network else (), volumes=binds)
            if volumes is not None:
                volumes.follow()
            return await self._run_sandbox(box)
        finally:
            for forwarder in forwarders:
                forwarder.close()
            if proxy is not None:
                await proxy.close()
            if volumes is not None:  # the sandbox has ended: its last writes are in the final pushes
                await asyncio.to_thread(volumes.finish)
            await asyncio.to_thread(self._clean_up, workspace, uv_cache, run_dir)

    def _command(self) -> list[str]:
        """The user's command, wrapped in the durability sidecar when keephub guards this job's results. Values
        from the user (repo, output directory) go as `--option=value`, so none can be read as an option."""
        plan = self.plan.get("sidecar")
        if not plan:
            return self.plan["command"]
        wrapper = [str(self.layout.python), "-I", "-m", "keephub.durability.sidecar", f"--repo={plan['repo']}",
                   f"--output-dir={plan['outputDir']}", "--job-id", self.args.job, "--attempt", str(self.args.attempt),
                   "--grace", str(max(1, self.plan["grace"] - 5)),
                   "--agent-credential-file", f"{sandbox.WORKSPACE}/{SIDECAR_CREDENTIAL_FILE}"]
        if plan.get("resume"):
            wrapper.append("--resume")
        if plan.get("solePusher"):
            wrapper.append("--sole-pusher")
        return [*wrapper, "--", *self.plan["command"]]

    async def _run_sandbox(self, box: sandbox.SandboxSpec) -> dict:
        assert self.stop_requested is not None
        if self.stop_requested.is_set():
            return self._report(None)
        try:
            process = await sandbox.start(self.layout, box)
        except (sandbox.SandboxUnavailable, OSError) as exc:
            message = f"the sandbox could not start: {exc}"
            self.output.note(f"keephub: {message}")
            return {"exitCode": None, "stopped": "start-failed", "reason": message}
        pump_task = asyncio.create_task(sandbox.pump_output(process, lambda line: self.output.write(self.redact(line))))
        try:
            code = await self._supervise(process, box)
        finally:  # whatever broke, nothing of the job outlives this: the volumes' final pushes come next
            if process.returncode is None:
                sandbox.kill_sandbox(process)
                await process.wait()
        try:
            await asyncio.wait_for(pump_task, 10)
        except TimeoutError:
            pump_task.cancel()
        self.output.end_output()
        return self._report(code)

    def _report(self, code: int | None) -> dict:
        kind, message = self.stop_reason or (None, None)
        return {"exitCode": code, "stopped": kind, "reason": message}

    async def _supervise(self, process: asyncio.subprocess.Process, box: sandbox.SandboxSpec) -> int:
        assert self.stop_requested is not None
        waiter = asyncio.create_task(process.wait())
        stopper = asyncio.create_task(self.stop_requested.wait())
        pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="keephub-limits")
        limits = asyncio.create_task(_watch_limits(process, box, self.plan["flavor"], pool))
        remaining = max(0.0, float(self.plan["deadline"]) - time.time())
        try:
            done, _ = await asyncio.wait({waiter, stopper, limits}, timeout=remaining,
                                         return_when=asyncio.FIRST_COMPLETED)
            if waiter in done:
                return waiter.result()
            if limits in done:
                reason = (limits.result() if limits.exception() is None
                          else f"stopped: keephub could not check the job's limits ({limits.exception()!r})")
                self.stop_reason = self.stop_reason or ("limit", reason)
                sandbox.kill_sandbox(process)
                return await waiter
            if not done:
                self.stop_reason = self.stop_reason or ("timeout", "the job's timeout passed")
            await self._stop(process, waiter)
            return waiter.result()
        finally:
            stopper.cancel()
            limits.cancel()
            pool.shutdown(wait=False)

    async def _stop(self, process: asyncio.subprocess.Process, waiter: asyncio.Task) -> None:
        """SIGTERM to every process of the sandbox, again to each one that appears later (a cancel may come while
        the sandbox is still starting), then SIGKILL after the grace period."""
        signalled: set[int] = set()
        deadline = time.monotonic() + float(self.plan["grace"])
        while not waiter.done() and time.monotonic() < deadline:
            signalled |= sandbox.terminate_sandbox(process, skip=signalled)
            await asyncio.wait({waiter}, timeout=0.2)
        if not waiter.done():
            sandbox.kill_sandbox(process)
        await waiter

    def _clean_up(self, workspace: Path, uv_cache: Path, run_dir: Path) -> None:
        sandbox.remove_tree(workspace)
        stripped = sandbox.clear_setid_bits(uv_cache, self.user)
        if stripped:
            self.output.note(f"keephub: the job left {stripped} setuid/setgid files in its uv cache; their bits "
                             "were cleared")
        shutil.rmtree(run_dir, ignore_errors=True)


async def _watch_limits(process: asyncio.subprocess.Process, box: sandbox.SandboxSpec, flavor: str,
                        pool: ThreadPoolExecutor) -> str:
    """Return the reason once the sandbox holds more than a limit of its flavor (the caller kills it).

    Enforced from user space by sampling, since the machines jobs run on may offer no writable cgroup:
    memory and tasks every quarter second (RLIMIT_NPROC on the job's own uid stops a fork or thread bomb
    outright), disk every two seconds (RLIMIT_FSIZE caps any single file). Samples run on threads of their
    own, so a sandbox that is slow to look through delays nothing else."""
    loop = asyncio.get_running_loop()
    limits = box.limits
    cache_before = await loop.run_in_executor(pool, sandbox.disk_bytes, [box.uv_cache])
    next_disk_sample = 0.0
    while True:
        await asyncio.sleep(USAGE_SAMPLE_SECONDS)
        if process.returncode is not None:
            continue
        used = await loop.run_in_executor(pool, sandbox.usage, process)
        if used.memory_bytes > limits.memory_bytes:
            return (f"exceeded the memory limit of {limits.memory_bytes // 1024**3} GB of flavor {flavor} "
                    "(processes, files in /tmp and /dev/shm, memfds, shared memory); choose a bigger "
                    "flavor or use less memory")
        if used.tasks >= limits.processes:
            return (f"reached the limit of {limits.processes} processes and threads of flavor {flavor}; "
                    "start fewer workers or threads")
        if used.open_files >= sandbox.MAX_OPEN_FILES_SEEN:
            return (f"holds {sandbox.MAX_OPEN_FILES_SEEN} or more open files across its processes; "
                    "close files it no longer needs")
        if time.monotonic() >= next_disk_sample:
            next_disk_sample = time.monotonic() + DISK_SAMPLE_SECONDS
            written = [box.workspace, *(volume.host for volume in box.volumes if not volume.read_only)]
            workspace, cache = await asyncio.gather(
                loop.run_in_executor(pool, sandbox.disk_bytes, written),
                loop.run_in_executor(pool, sandbox.disk_bytes, [box.uv_cache]))
            if workspace + max(0, cache - cache_before) + used.deleted_bytes > limits.disk_bytes:
                return (f"exceeded the disk limit of {limits.disk_bytes // 1024**3} GB of flavor {flavor} "
                        "(/workspace, read-write volumes, deleted files still open and what the job added to its "
                        "uv cache); write less or push checkpoints and delete old ones")


def _leave_credential(workspace: Path, credential: str) -> None:
    """The sidecar's credential, in the private workspace (mode 600, the job's uid), never on a command line or
    in the environment: the sidecar reads and deletes the file before the training script starts."""
    owner = workspace.stat()
    fd = os.open(workspace / SIDECAR_CREDENTIAL_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        if owner.st_uid != os.geteuid():
            os.fchown(fh.fileno(), owner.st_uid, owner.st_gid)
        fh.write(credential)


def node_name() -> str:
    """The node as its cluster names it (Slurm's node name may differ from the host name)."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def _threads(cpus: list[int]) -> int:
    """Threads a job's math libraries should use: its cores (Slurm says how many it allotted)."""
    allotted = os.environ.get("SLURM_CPUS_PER_TASK", "")
    return int(allotted) if allotted.isdigit() and int(allotted) > 0 else max(1, len(cpus))


def _visible_gpus() -> list[str]:
    """The GPUs the cluster gave this attempt (Slurm sets CUDA_VISIBLE_DEVICES for --gres=gpu:N)."""
    return [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]


def _id_list(text: str) -> list[str]:
    return [part for part in text.split(",") if part]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="keephub-agent", description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", required=True, help="keephub's URL, as this machine reaches it")
    parser.add_argument("--job", required=True)
    parser.add_argument("--attempt", type=int, required=True)
    parser.add_argument("--work-dir", required=True, help="where workspaces, uv caches and the spool live")
    parser.add_argument("--hub-socket", help="keephub's own Unix socket, when it runs on this machine")
    parser.add_argument("--cpus", type=lambda t: [int(c) for c in _id_list(t)], default=[],
                        help="cores to pin the sandbox to (default: this process's affinity)")
    parser.add_argument("--gpus", type=_id_list, default=None, help="GPU ids (default: CUDA_VISIBLE_DEVICES)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s keephub-agent %(levelname)s %(message)s")
    args = parse_args(argv)
    credential = sys.stdin.readline().strip()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    link = Link(args.server, args.job, args.attempt, credential)
    try:
        plan = link.post_until_answered("start", {"node": node_name()})
    except Refused as exc:
        log.info("keephub will not run this attempt: %s", exc)
        return 0
    link.credential = plan.pop("agentCredential")
    attempt = Attempt(args, link, plan)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda number, _: attempt.request_stop(
            "signal", f"the executor sent {signal.Signals(number).name} to the job's agent"))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    shipper = threading.Thread(target=ship_logs, args=(link, attempt.spool, attempt.finished), daemon=True)
    shipper.start()
    threading.Thread(target=attempt.heartbeats, daemon=True).start()
    try:
        report = asyncio.run(attempt.run())
    except Exception as exc:  # noqa: BLE001 - whatever broke, keephub must hear how the attempt ended
        log.exception("the agent failed")
        attempt.output.note(f"keephub agent: failed to run the attempt: {exc!r}")
        report = {"exitCode": None, "stopped": "agent-failed", "reason": f"the agent failed: {exc!r}"}
    attempt.finished.set()
    attempt.spool.close()
    if not attempt.spool.wait_all_acknowledged(PATIENCE_SECONDS):
        log.error("keephub did not take the last log lines in time")
    try:
        link.post_until_answered("exit", {**report, "logLines": attempt.spool.last})
    except Refused as exc:
        log.info("keephub had already ended this attempt: %s", exc)
    except OSError as exc:
        log.error("could not report the end of the attempt to keephub: %s", exc)
        return 1
    finally:
        attempt.reported.set()
    shutil.rmtree(attempt.agent_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
