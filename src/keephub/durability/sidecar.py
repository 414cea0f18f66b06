"""The sidecar: runs inside a job's sandbox next to the user's command and makes sure results reach the hub.

    python -m keephub.durability.sidecar --repo alice/m --output-dir out --job-id ID --attempt N -- CMD...

- Resume: before CMD starts, the newest checkpoint on the hub (ours, the Trainer's `last-checkpoint/`, or a
  rescue branch of this job) is downloaded into the output directory, so `resume_from_checkpoint=True` works,
  and CMD gets the resume hook (resume_hook/sitecustomize.py), so a plain `trainer.train()` resumes too.
- Every checkpoint: each completed `checkpoint-N/` is hard-linked into a staging area at once (so the
  Trainer's `save_total_limit` rotation cannot delete it under us) and queued; one pusher uploads them in
  order, never skipping one, retrying with backoff while the hub is unreachable, and verifies each commit
  against the server's file hashes.
- Final files: when CMD succeeds, the top-level files of the output directory are pushed to main. With
  --sole-pusher (the script does not push to the hub itself), their content is uploaded as soon as a
  `save_model()` has finished writing them, while the training process winds down (interpreter teardown
  takes a second or more after torch); at its exit only the commit is left, to main on success or to the
  rescue branch otherwise.
- Rescue: when CMD fails or the sandbox is told to stop (timeout, cancel), whatever is not yet on the hub is
  pushed to `rescue/<job-id>`, never to main.
Every push, resume and the verdict is sent to keephub as a durability record over the agent contract
(keephub.jobs.agent_api): an HTTP POST to keephub's own URL for the job (KEEPHUB_AGENT_URL, which the job's
environment cannot change, and never through a proxy) with the attempt's own credential, which the scheduler
leaves in a file this process reads and deletes before the training starts. What the training prints is only
log text, so it cannot forge a record.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import queue
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from huggingface_hub import CommitOperationAdd

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
SCAN_SECONDS = 0.1
# Checkpoints queued behind a push in flight (or waiting out an outage) join one commit while together they
# stay under this size: each commit costs a dozen requests, which matter next to uploading small checkpoints;
# bigger ones commit one by one, so the earliest do not wait for the upload of the later ones.
COALESCE_BYTES = 100 * 1024 * 1024
FINAL_LABEL = "final model files"
RESCUE_OF = "rescue of "
# Put first on the training's PYTHONPATH after a restore: its sitecustomize.py makes Trainer.train() resume from
# the checkpoint named in RESUME_ENV when the script does not say where to resume from itself.
RESUME_HOOK = Path(__file__).resolve().with_name("resume_hook")
RESUME_ENV = "KEEPHUB_RESUME_CHECKPOINT"
# The Trainer's save_model() writes the weights, the config and the tokenizer, then this file, last.
LAST_SAVED = "training_args.bin"
# What a set of files looked like when listed: (name, size, mtime_ns, inode) each. Equal snapshots mean
# the same bytes, so a push of the earlier listing need not be repeated.
Snapshot = tuple[tuple[str, int, int, int], ...]


def _emit_line(line: str) -> None:
    """Write one whole line to the output the training process shares, in a single write() of at most
    PIPE_BUF bytes, which a pipe never splits nor lets another writer's bytes into. It starts with a newline:
    the training may be between writing a line and its end (a progress bar may never end its line), and this
    line must not be glued to it; the job log drops the empty lines this makes. print() would not do: under
    PYTHONUNBUFFERED, which jobs get, it writes the text and its end separately, and the training's next
    words landed between the two, glued to the end of this line."""
    data = ("\n" + line).encode("utf-8", "replace")
    if len(data) >= select.PIPE_BUF:
        data = data[: select.PIPE_BUF - 4].decode("utf-8", "ignore").encode() + "…".encode()
    sys.stdout.flush()
    data += b"\n"
    while data:
        data = data[os.write(sys.stdout.fileno(), data):]


def say(message: str) -> None:
    _emit_line(f"[keephub] {message}")


# A record that keephub could not be reached for is retried with backoff up to this many seconds apart.
RECORD_RETRY_MAX_SECONDS = 30.0
# Once the training has ended, records not yet sent get this long at most (less after a stop request: the
# grace period) before the sidecar exits without them; keephub's record then says the verdict never came.
RECORD_FLUSH_SECONDS = 120.0
RECORD_TIMEOUT_SECONDS = 20.0


class RecordChannel:
    """Sends durability records to keephub in order, from a thread of its own, so training never waits.

    While keephub is unreachable (or answers 5xx) a record is retried with backoff. A refusal is final and is
    said once in the log: 401/403 (the credential is not valid: no more records are sent), 429 (the attempt's
    quota is spent: only the verdict is still sent), 400/409/413 (that record is dropped).
    """

    def __init__(self) -> None:
        self.url: str | None = None
        self.credential: str | None = None
        self.unavailable: str | None = "the sidecar was started without an agent credential"
        self.told_unavailable = False
        self.capped = False
        self.queue: queue.Queue[dict | None] = queue.Queue()
        self.give_up = threading.Event()
        self.last_error = ""
        self.thread: threading.Thread | None = None

    def open(self, endpoint: str, job_id: str, attempt: int, credential_file: Path, job_cores: set[int]) -> None:
        """Read the attempt's credential and delete its file, before the training script can see it."""
        try:
            credential = credential_file.read_text().strip()
            credential_file.unlink()
        except OSError as exc:
            self.unavailable = f"its agent credential could not be read ({exc})"
            return
        if not endpoint:
            self.unavailable = "KEEPHUB_AGENT_URL is not set"
            return
        self.url = f"{endpoint.rstrip('/')}/api/agent/v1/jobs/{job_id}/attempts/{attempt}/records"
        self.credential = credential
        self.unavailable = None
        self.thread = threading.Thread(target=self._run, args=(job_cores,), daemon=True)
        self.thread.start()

    def send(self, record: dict) -> None:
        if self.unavailable is not None:
            if not self.told_unavailable:
                self.told_unavailable = True
                say(f"⚠️ durability records are not sent to keephub: {self.unavailable}")
            return
        self.queue.put(record)

    def drain(self, stop: threading.Event, grace: float, not_after: float | None) -> None:
        """Wait for the records queued so far: RECORD_FLUSH_SECONDS at most, and after a stop request no later
        than the pushes' own deadline `not_after` (or `grace` from now), so the sandbox is never killed first."""
        if self.thread is None:
            return
        self.queue.put(None)
        deadline = min(time.time() + RECORD_FLUSH_SECONDS, not_after or float("inf"))
        stopped = False
        while self.thread.is_alive() and time.time() < deadline:
            if stop.is_set() and not stopped:
                stopped, deadline = True, min(deadline, time.time() + grace)
            self.thread.join(0.2)
        if self.thread.is_alive():
            self.give_up.set()
            say(f"❌ durability records could not all be sent to keephub ({self.last_error}); the job's record "
                "will say that its verdict did not arrive")

    def _run(self, job_cores: set[int]) -> None:
        keep_off(job_cores)
        while (record := self.queue.get()) is not None:
            if self.unavailable is None and not (self.capped and record["kind"] != "verdict"):
                self._deliver(record)

    def _deliver(self, record: dict) -> None:
        assert self.url is not None
        body = json.dumps(record).encode()
        delay = 1.0
        while not self.give_up.is_set():
            request = urllib.request.Request(self.url, data=body, method="POST", headers={
                "authorization": f"Bearer {self.credential}", "content-type": "application/json"})
            try:
                with _DIRECT.open(request, timeout=RECORD_TIMEOUT_SECONDS):
                    return
            except urllib.error.HTTPError as exc:
                status, message = exc.code, _error_message(exc)
            except (OSError, ValueError) as exc:  # URLError, a refused or dropped connection, a timeout
                status, message = 0, f"keephub was unreachable at {self.url.split('/api/')[0]}: {exc}"
            if status in (401, 403):
                self.unavailable = f"keephub refused the attempt's credential ({message})"
                say(f"❌ durability records: {self.unavailable}; no more are sent")
                return
            if status == 429:
                self.capped = True
                say(f"⚠️ durability records: {message}; later pushes still happen but are not recorded")
                return
            if 400 <= status < 500:
                say(f"⚠️ keephub refused a {record['kind']} record: {message}")
                return
            self.last_error = message if status == 0 else f"HTTP {status}: {message}"
            self.give_up.wait(delay)
            delay = min(delay * 2, RECORD_RETRY_MAX_SECONDS)


# Records go straight to keephub: a proxy the job's environment names would see the credential.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _error_message(error: urllib.error.HTTPError) -> str:
    """keephub's message for a refusal (its JSON `error`), else the status line."""
    try:
        return str(json.loads(error.read(64 * 1024))["error"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"HTTP {error.code} {error.reason}"


RECORDS = RecordChannel()


def record(kind: str, **fields: object) -> None:
    """One durability record, sent to keephub in the background."""
    RECORDS.send({"kind": kind, "time": time.time(), **fields})


def stay_unreadable() -> None:
    """Make this process non-dumpable: the training script runs as the same uid, and could otherwise read
    the agent credential from this process's memory (/proc/PID/mem). Its own children are unaffected."""
    import ctypes

    pr_set_dumpable = 4
    try:
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_dumpable, 0, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: nothing to protect against here
        pass


@dataclass
class Push:
    """One commit to make: `files` (under `folder`) into `path_in_repo` on `revision`."""

    label: str
    folder: Path
    path_in_repo: str
    revision: str
    files: list[Path]
    snapshot: Snapshot = field(default=())
    upload_only: bool = False  # upload the content now; the commit comes later, once the branch is known

    @property
    def size(self) -> int:
        """Bytes of the files as they are now (0 for one removed since it was listed)."""
        total = 0
        for path in self.files:
            try:
                total += path.stat().st_size
            except FileNotFoundError:
                pass
        return total

    @classmethod
    def checkpoint(cls, folder: Path, revision: str, label: str | None = None) -> "Push":
        """Every file of a checkpoint folder except dotfiles: safetensors writes `.tmpXXXXXX` and renames
        it, so a scan during the write stages a second link to the weights, to be hashed and pushed again."""
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        return cls(label or folder.name, folder, folder.name, revision, files)

    @classmethod
    def top_level(cls, output_dir: Path, revision: str, label: str) -> "Push":
        """The files the Trainer itself would push: the output directory's top level, minus `_*` and dotfiles."""
        files = sorted(p for p in output_dir.iterdir() if p.is_file() and not p.name.startswith(("_", ".")))
        return cls(label, output_dir, "", revision, files, snapshot_of(files))


def snapshot_of(files: list[Path]) -> Snapshot:
    listed = []
    for path in files:
        try:
            info = path.stat()
        except FileNotFoundError:
            continue
        listed.append((path.name, info.st_size, info.st_mtime_ns, info.st_ino))
    return tuple(listed)


def keep_off(job_cores: set[int]) -> None:
    """Move the calling thread, and the threads it starts later (Linux threads inherit affinity, hf_xet's
    runtime too), off the training's cores when the machine has others, as the server keeps off them.

    The sandbox is pinned to the job's cores. Each push's hashing and HTTP work there slowed training down
    by about as much (4-10% on the durability benchmark: 2 cores, 1 for the job, a checkpoint every 10
    steps, against 3% with the pusher kept off). The watcher's scans (every 0.1 s) are platform work too,
    so after starting the training the sidecar's main thread leaves its cores as well. Nice would not do:
    a low-priority thread preempted while holding the GIL stalled the watcher, and a checkpoint was
    rotated away before it was staged.
    """
    elsewhere = set(range(os.cpu_count() or 1)) - job_cores
    if not elsewhere:
        return
    try:
        os.sched_setaffinity(threading.get_native_id(), elsewhere)
    except OSError:  # a CPU set that forbids other cores: stay on the job's
        pass


def _git_blob_sha(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


# An error without an HTTP response (hf_xet's) is a 401 only if its text says so in words; a bare "401" may be
# part of a request id that huggingface_hub puts first in its messages.
_NAMES_A_401 = re.compile(r"\b401\b[ :]*(Unauthorized|Client Error)", re.IGNORECASE)


def explain(exc: Exception, repo: str) -> str:
    """The reference's troubleshooting section, applied: the status, the real cause and its fix."""
    text = str(exc)
    status = _status_of(exc)
    server = str(getattr(exc, "server_message", None) or "").strip()
    namespace = repo.split("/")[0]
    if status == 401 or (status is None and _NAMES_A_401.search(text)):
        said = f" ({server})" if server else ""
        return (f"401 Unauthorized: the job has no valid token{said}. Fix: submit it with "
                "secrets={'HF_TOKEN': '$HF_TOKEN'} (keephub jobs uv run --secrets HF_TOKEN ...)")
    if status == 403:
        cause, fix = _forbidden(server, repo, namespace)
        said = f" (keephub said: {server})" if server else ""
        return f"403 Forbidden: the job's token may not push to {repo}: {cause}{said}. Fix: {fix}"
    if status == 404:
        return (f"404 Not Found: {repo} is not visible to the job's token: it does not exist and could not be "
                "created, or it is a private repo of someone else. Fix: check hub_model_id; push to your own "
                f"namespace, or ask the owner of '{namespace}' for access")
    if isinstance(exc, (ConnectionError, OSError)) or "connect" in type(exc).__name__.lower():
        return f"the hub was unreachable ({type(exc).__name__}: {text[:200]})"
    return f"{type(exc).__name__}: {text[:300]}"


def _forbidden(server: str, repo: str, namespace: str) -> tuple[str, str]:
    """(cause, fix) of a 403, told apart by keephub's reason (keephub.accounts.access words each one)."""
    if "job's token is read-only" in server:
        return ("the job's token is read-only: the job was submitted without a target repo it may write",
                "name the repo in the job's keephub.repo label (or the script's hub_model_id and output_dir), "
                "in a namespace your token can write")
    if "is read-only" in server:
        return ("the job's HF_TOKEN is a read-only token",
                "submit the job with secrets={'HF_TOKEN': '$HF_TOKEN'} (a token for the job that writes its target "
                "repo) or with a write token")
    if "job's token may write only to" in server:
        return (f"the job's token writes only the repo the job was submitted for, and {repo} is not it",
                f"push to the job's target repo (hub_model_id), or submit the job for {repo} "
                f"(label keephub.repo={repo})")
    if "may write only to" in server:
        return (f"the job's HF_TOKEN is a fine-grained token that does not cover {repo}",
                f"use a token that covers it (keephub token create USER --role write --repo model:{repo})")
    if "has only the" in server:
        return (f"the token's user has only read access in the organization '{namespace}'",
                f"ask an admin of '{namespace}' for the write role (keephub org add-member {namespace} USER "
                "--role write)")
    if "no write access to namespace" in server:
        return (f"the token's user is not a member of '{namespace}' with write access",
                f"use your own namespace in hub_model_id, or ask an admin of '{namespace}' to add you with the "
                "write role")
    return (f"the job's token cannot write to {repo}",
            f"check that '{namespace}' is your namespace or an organization where you have the write role, and "
            "that the job's token is a write token")


class Pusher:
    """Uploads queued folders in order, retrying transient failures with backoff, verifying every commit."""

    def __init__(self, repo: str, job_id: str, job_cores: set[int], sole_pusher: bool = False) -> None:
        """`job_cores`: the training's cores, which pushing keeps off. `sole_pusher`: the script does not push
        itself, so a first try need not look for its pushes."""
        from huggingface_hub import HfApi
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
        self.api = HfApi()
        self.repo = repo
        self.job_id = job_id
        self.sole_pusher = sole_pusher
        self.job_cores = job_cores
        self.queue: queue.Queue[Push | None] = queue.Queue()
        self.held: list[Push | None] = []  # taken from the queue to join a commit, but did not fit: next
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.stop_retrying_at: float | None = None
        self.failed: str | None = None
        # Why pushing cannot work (the token may not write the repo), known before any push: the verdict names it.
        self.problem: str | None = None
        self.pushed_checkpoints: set[str] = set()
        # Every push that landed, in order: (label, whether the branch already held it, identical).
        self.landed: list[tuple[str, bool]] = []
        # Top-level files whose content is on the hub but not committed: (their snapshot, the operations).
        self.uploaded: tuple[Snapshot, list[CommitOperationAdd]] | None = None
        self.thread.start()

    def submit(self, push: Push) -> None:
        self.queue.put(push)

    def drain(self, stop: threading.Event, grace: float) -> bool:
        """Wait for everything queued so far. Retries go on until the hub takes it all, unless the sandbox is
        told to stop: then they end `grace` seconds later. True if everything landed."""
        self.queue.put(None)
        while self.thread.is_alive():
            if stop.is_set() and self.stop_retrying_at is None:
                self.stop_retrying_at = time.time() + grace
            if self.stop_retrying_at is not None and time.time() > self.stop_retrying_at:
                break
            self.thread.join(0.2)
        return not self.thread.is_alive() and self.failed is None

    def _run(self) -> None:
        keep_off(self.job_cores)
        while True:
            push = self.held.pop(0) if self.held else self.queue.get()
            if push is None:
                return
            if push.upload_only:
                self._upload_ahead(push)
            else:
                self._push_with_retries([push])

    def _join_queued(self, batch: list[Push]) -> None:
        """Add to a batch of checkpoints those queued behind it for the same branch, in order, while the batch
        stays under COALESCE_BYTES: one commit then brings them all, and none is skipped. Anything else queued
        (the final files, the end of the queue) keeps its turn after the batch."""
        if self.held or not CHECKPOINT.match(batch[-1].label):
            return
        size = sum(push.size for push in batch)
        while True:
            try:
                queued = self.queue.get_nowait()
            except queue.Empty:
                return
            if (queued is None or queued.upload_only or not CHECKPOINT.match(queued.label)
                    or queued.revision != batch[-1].revision or size + queued.size > COALESCE_BYTES):
                self.held.append(queued)
                return
            batch.append(queued)
            size += queued.size

    def _upload_ahead(self, push: Push) -> None:
        """Upload the content of `push` without committing it; best effort, as the commit uploads whatever
        is missing anyway. Nothing here may end the pusher's thread: a file the script removes meanwhile is
        one more reason to leave the upload to the commit."""
        try:
            size = sum(p.stat().st_size for p in push.files)
            say(f"Uploading {push.label} ({len(push.files)} files, {size:,} bytes) while the training process exits")
            operations = self._operations(push)
            self.api.preupload_lfs_files(self.repo, additions=operations, revision=push.revision, free_memory=False)
        except Exception as exc:  # noqa: BLE001 - the final commit retries with the full upload
            say(f"⚠️ uploading {push.label} ahead of the commit failed ({explain(exc, self.repo)}); "
                "they will be uploaded with it")
            return
        self.uploaded = (push.snapshot, operations)

    def _operations(self, push: Push) -> list[CommitOperationAdd]:
        """One operation per file; those uploaded ahead are reused (with their sha256s) if the files are
        unchanged since, so the commit sends nothing again."""
        from huggingface_hub import CommitOperationAdd

        if self.uploaded is not None and push.path_in_repo == "" and push.snapshot == self.uploaded[0]:
            return self.uploaded[1]
        return [
            CommitOperationAdd(path_in_repo=f"{push.path_in_repo}/{p.relative_to(push.folder)}".lstrip("/"),
                               path_or_fileobj=str(p))
            for p in push.files
        ]

    def _push_with_retries(self, batch: list[Push]) -> None:
        """Push `batch` (one push, or checkpoints joined into one commit), retrying with backoff; checkpoints
        queued meanwhile join it before each try, so after an outage one commit brings them all."""
        delay = 1.0
        retry = False
        while True:
            self._join_queued(batch)
            labels = ", ".join(push.label for push in batch)
            try:
                self._push(batch, retry)
                return
            except Exception as exc:  # noqa: BLE001 - every failure is explained and retried or reported
                reason = explain(exc, self.repo)
                permanent = _status_of(exc) in PERMANENT_STATUSES
                out_of_time = self.stop_retrying_at is not None and time.time() + delay > self.stop_retrying_at
                if permanent or out_of_time:
                    self.failed = f"{labels}: {reason}"
                    say(f"❌ could not push {labels} to {self.repo}: {reason}")
                    for push in batch:
                        record("push-failed", label=push.label, revision=push.revision, reason=reason)
                    return
                say(f"⚠️ push of {labels} failed ({reason}); retrying in {delay:.0f}s")
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
                retry = True

    def _push(self, batch: list[Push], retry: bool = False) -> None:
        """Commit `batch` (one push, or checkpoints of one branch) and verify it. Unless this sidecar is the
        only pusher and this is the first try, the branch is first compared with the local files: the
        script's own push_to_hub, or this push's earlier try whose answer was lost, may have put them there
        already."""
        revision = batch[0].revision
        labels = ", ".join(push.label for push in batch)
        files = [path for push in batch for path in push.files]
        size = sum(push.size for push in batch)
        final = labels == FINAL_LABEL
        # The final push's lines read as the reference workflow's do ("Pushing model to ...", "Upload file
        # ...: 100%", "✅ Model pushed successfully"), which users already look for in their logs.
        if final:
            say(f"Pushing model to {self.repo}@{revision} ({labels}: {len(files)} files, {size:,} bytes)...")
        else:
            say(f"Pushing {labels} to {self.repo}@{revision} ({len(files)} files, {size:,} bytes)")
        if revision != "main":
            self.api.create_branch(self.repo, branch=revision, exist_ok=True)
        # The operations are built here, not inside upload_folder, so that verification can reuse the sha256
        # each computes for the upload instead of reading and hashing every file a second time.
        each = [self._operations(push) for push in batch]
        operations = [op for ops in each for op in ops]
        present = self._already_on_hub(operations, revision) if retry or not self.sole_pusher else None
        if present is not None:
            # The script's own push_to_hub (or an earlier attempt) put these exact files there: a second commit
            # of the same content would only clutter the history.
            commit, verified = present, True
            say(f"✅ {labels}: already on {self.repo}@{revision} at commit {commit[:12]}, identical to "
                "the local files (verified against the server); nothing to push")
        else:
            info = self.api.create_commit(repo_id=self.repo, operations=operations, revision=revision,
                                          commit_message=f"keephub: {labels} (job {self.job_id})")
            commit = info.oid
            verified = self._verify(operations, commit)
            if not CHECKPOINT.match(batch[0].label):
                for op in operations:
                    say(f"Upload file {op.path_in_repo}: 100% ({op.upload_info.size:,} bytes)")
            if final and verified:
                say(f"✅ Model pushed successfully: {self.api.endpoint}/{self.repo} (commit {commit[:12]} on "
                    f"{revision}, verified against the server)")
            else:
                say(f"{'✅' if verified else '❌'} {labels} pushed to {self.repo}@{revision} commit "
                    f"{commit[:12]}{' (verified against the server)' if verified else ' (VERIFICATION FAILED)'}")
        for push in batch:
            record("push", label=push.label, revision=revision, commit=commit,
                   files=[str(p.relative_to(push.folder)) for p in push.files], bytes=push.size, verified=verified,
                   already_there=present is not None)
            self.landed.append((push.label, present is not None))
        if not verified:
            raise RuntimeError(f"the hub's copy of {labels} does not match the local files")
        for push in batch:
            if CHECKPOINT.match(push.label):
                self.pushed_checkpoints.add(push.label)
        if CHECKPOINT.match(batch[-1].label):
            _release_older(batch[-1].folder)
        if self.uploaded is not None and any(ops is self.uploaded[1] for ops in each):
            self.uploaded = None  # committed: a later push of the same files builds new operations

    def _already_on_hub(self, operations: list[CommitOperationAdd], revision: str) -> str | None:
        """The head commit of `revision` if it already holds every file exactly as local, else None. The
        sha256s computed here are the ones the upload would compute anyway (and are reused by it)."""
        try:
            head = self.api.repo_info(self.repo, revision=revision).sha
        except Exception:  # noqa: BLE001 - no such branch yet, or the hub is unreachable: just push
            return None
        if head is None or not operations:
            return None
        return head if self._verify(operations, head) else None

    def _verify(self, operations: list[CommitOperationAdd], commit: str) -> bool:
        """Compare each file with the server's hash at the new commit: for LFS files the sha256 the upload
        computed from the local bytes (the server checks uploads against it), else the local git sha1."""
        remote = {}
        paths = [op.path_in_repo for op in operations]
        for start in range(0, len(paths), 200):
            for entry in self.api.get_paths_info(self.repo, paths[start : start + 200], revision=commit):
                remote[entry.path] = entry
        for op in operations:
            entry = remote.get(op.path_in_repo)
            if entry is None:
                return False
            if entry.lfs is not None:
                if entry.lfs.sha256 != op.upload_info.sha256.hex():
                    return False
            elif entry.blob_id != _git_blob_sha(Path(str(op.path_or_fileobj))):
                return False
        return True


def newest_remote_checkpoint(api, repo: str, branches: list[str]) -> tuple[str, str, int] | None:  # type: ignore[no-untyped-def]
    """(revision, folder, global_step) of the newest checkpoint on any of `branches`."""
    best: tuple[str, str, int] | None = None
    for branch in branches:
        try:
            files = api.list_repo_files(repo, revision=branch)
        except Exception:  # noqa: BLE001 - a missing branch or repo just has no checkpoint
            continue
        folders = {f.rsplit("/", 1)[0] for f in files if f.endswith("/trainer_state.json")}
        for folder in folders:
            match = CHECKPOINT.match(folder.rsplit("/", 1)[-1])
            if match:
                step = int(match.group(1))
            else:
                state = json.loads(Path(api.hf_hub_download(repo, f"{folder}/trainer_state.json",
                                                            revision=branch)).read_text())
                step = int(state.get("global_step", 0))
            if best is None or step > best[2]:
                best = (branch, folder, step)
    return best


def resume(repo: str, output_dir: Path, job_id: str, scratch: Path) -> Path | None:
    """Download the newest checkpoint on the hub into `output_dir`/checkpoint-N/; returns that folder.

    Its files are written as new, ordinary files of the job (mode from its umask), as if the Trainer had saved
    them: the Trainer overwrites or rotates the folder later. Copies with the cache's modes would not do:
    huggingface_hub keeps Xet downloads in a shared blob store as read-only files, and a script that trained
    from step 0 again died with Permission denied rewriting the restored checkpoint. The download goes to a
    cache under `scratch`, deleted afterwards, so the checkpoint takes its disk space once."""
    from huggingface_hub import HfApi, snapshot_download

    api = HfApi()
    found = newest_remote_checkpoint(api, repo, ["main", f"rescue/{job_id}"])
    if found is None:
        say(f"resume: no checkpoint of {repo} on the hub yet; starting from scratch")
        return None
    branch, folder, step = found
    target = output_dir / f"checkpoint-{step}"
    cache = scratch / "restore-cache"
    try:
        local = Path(snapshot_download(repo, revision=branch, allow_patterns=[f"{folder}/*"], cache_dir=cache))
        for source in sorted((local / folder).rglob("*")):
            if source.is_file():
                destination = target / source.relative_to(local / folder)
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, destination)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)  # half a checkpoint must not be resumed from
        raise
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    say(f"resume: downloaded {repo}@{branch}:{folder} (global_step {step}) into {target}")
    record("resume", revision=branch, folder=folder, step=step)
    return target


class Watcher:
    """Finds completed checkpoints and hard-links them into staging before rotation can delete them.

    Every scan links whatever files a `checkpoint-N/` folder holds so far (a link keeps the bytes even when
    `save_total_limit` deletes the original); the folder counts as complete once `trainer_state.json`,
    which the Trainer writes last, holds valid JSON.
    """

    def __init__(self, output_dir: Path, staging: Path) -> None:
        self.output_dir = output_dir
        self.staging = staging
        self.done: set[str] = set()
        # Checkpoints already there at the start (restored from the hub), by the stamp of their trainer_state.json.
        self.existing: dict[str, tuple[int, int, int] | None] = {}
        self.final_seen: Snapshot | None = None

    def saved_model(self) -> Push | None:
        """The top-level files to upload ahead, once a save_model() has finished writing them (once per version).

        Finished means the file it writes last is a complete zip (torch.save's format; a file being rewritten
        is truncated first) and no top-level file is newer than it: a second save_model() in progress has
        already rewritten the weights, so its half-written files are never taken for a finished set.
        """
        last = self.output_dir / LAST_SAVED
        if not zipfile.is_zipfile(last):
            return None
        try:
            push = Push.top_level(self.output_dir, "main", FINAL_LABEL)
        except FileNotFoundError:  # the script removed its output directory meanwhile
            return None
        modified = {name: mtime for name, _, mtime, _ in push.snapshot}
        if (LAST_SAVED not in modified or modified[LAST_SAVED] < max(modified.values())
                or push.snapshot == self.final_seen):
            return None
        self.final_seen = push.snapshot
        push.upload_only = True
        return push

    def missed(self) -> list[str]:
        """Checkpoints the Trainer saved (every `save_steps`, per the newest trainer_state.json) that were
        never seen: a stall of this process longer than the rotation window loses one, and that must show."""
        steps = sorted(int(name.split("-")[1]) for name in self.done)
        if not steps:
            return []
        try:
            state = json.loads((self.staging / f"checkpoint-{steps[-1]}" / "trainer_state.json").read_text())
            every = int(state.get("save_steps") or 0)
        except (OSError, ValueError, TypeError):
            return []
        if every <= 0:
            return []
        return [f"checkpoint-{step}" for step in range(steps[0], steps[-1], every) if step not in steps]

    def mark_existing(self) -> None:
        """Checkpoints already in the output directory (restored from the hub) are not pushed again, unless the
        training writes one of them anew (a script that starts from scratch): its trainer_state.json changes."""
        if self.output_dir.is_dir():
            self.existing = {p.name: _state_stamp(p) for p in self.output_dir.iterdir() if CHECKPOINT.match(p.name)}

    def completed(self) -> list[Path]:
        if not self.output_dir.is_dir():
            return []
        ready = []
        candidates = sorted((p for p in self.output_dir.iterdir() if CHECKPOINT.match(p.name)),
                            key=lambda p: int(p.name.split("-")[1]))
        for folder in candidates:
            if folder.name in self.done:
                continue
            if folder.name in self.existing and _state_stamp(folder) == self.existing[folder.name]:
                continue
            staged = self.staging / folder.name
            try:
                shutil.copytree(folder, staged, copy_function=_link_once, dirs_exist_ok=True)
            except (FileNotFoundError, shutil.Error):
                continue
            if _complete_state(staged / "trainer_state.json"):
                self.done.add(folder.name)
                ready.append(staged)
        return ready


def _link_once(source: str, target: str) -> None:
    """Hard-link (instant, survives the original's deletion); copy when staging is on another filesystem."""
    if os.path.exists(target):
        return
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _release_older(pushed: Path) -> None:
    """Once a checkpoint is verified on the hub, older staged ones are no longer needed for a rescue."""
    step = int(pushed.name.split("-")[1])
    for folder in pushed.parent.iterdir():
        match = CHECKPOINT.match(folder.name)
        if match and int(match.group(1)) < step:
            shutil.rmtree(folder, ignore_errors=True)


def _complete_state(path: Path) -> bool:
    try:
        json.loads(path.read_text())
        return True
    except (FileNotFoundError, ValueError):
        return False


PERMANENT_STATUSES = (400, 401, 403, 404, 413, 422)


def _status_of(exc: Exception) -> int | None:
    return getattr(getattr(exc, "response", None), "status_code", None)


def check_write_access(pusher: Pusher) -> None:
    """Ask the hub, before the training starts, whether the job's token may write the repo: creating a repo
    that exists succeeds even for a read-only token, and the first push may be hours away."""
    try:
        pusher.api.auth_check(pusher.repo, write=True)
    except Exception as exc:  # noqa: BLE001 - an unreachable hub is the pushes' business; a refusal is said now
        if _status_of(exc) in PERMANENT_STATUSES:
            pusher.problem = explain(exc, pusher.repo)
            say(f"❌ {pusher.problem}")


def _state_stamp(folder: Path) -> tuple[int, int, int] | None:
    """What changes when a checkpoint's trainer_state.json (written last) is written again."""
    try:
        info = (folder / "trainer_state.json").stat()
    except OSError:
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns


def training_env(restored: Path | None) -> dict[str, str] | None:
    """The training command's environment: the sidecar's own, plus, when a checkpoint was restored, the resume
    hook first on PYTHONPATH and the checkpoint it makes Trainer.train() resume from (see resume_hook/)."""
    if restored is None:
        return None
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(part for part in (str(RESUME_HOOK), env.get("PYTHONPATH", "")) if part)
    env[RESUME_ENV] = str(restored)
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="keephub-sidecar")
    parser.add_argument("--repo", required=True)
    parser.add_argument("--output-dir", required=True, type=Path)
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--attempt", type=int, default=1)
    parser.add_argument("--resume", action="store_true", help="download the newest hub checkpoint first")
    parser.add_argument("--grace", type=float, default=55.0, help="seconds for the rescue after a stop request")
    parser.add_argument("--sole-pusher", action="store_true",
                        help="the script does not push to the hub itself: upload the top-level files' content as "
                             "soon as save_model() has written them, and commit without first looking for the "
                             "script's own pushes")
    parser.add_argument("--agent-credential-file", type=Path,
                        help="where keephub left the attempt's agent credential; read, then deleted")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    stay_unreadable()
    job_cores = os.sched_getaffinity(0)
    if args.agent_credential_file is not None:
        RECORDS.open(os.environ.get("KEEPHUB_AGENT_URL", ""), args.job_id, args.attempt,
                     args.agent_credential_file, job_cores)
    output_dir = args.output_dir if args.output_dir.is_absolute() else Path.cwd() / args.output_dir
    staging = Path(os.environ.get("HOME", "/tmp")) / ".keephub" / "staging"
    staging.mkdir(parents=True, exist_ok=True)
    say(f"durability: every checkpoint in {args.output_dir}/ goes to {args.repo}; rescue branch rescue/{args.job_id}")

    restored: Path | None = None
    if args.resume or args.attempt > 1:
        try:
            restored = resume(args.repo, output_dir, args.job_id, staging.parent)
        except Exception as exc:  # noqa: BLE001 - resuming is best effort; training can still start
            say(f"⚠️ resume failed ({explain(exc, args.repo)}); starting from scratch")

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # A retried attempt may find its predecessor's pushes on the hub: those are looked for on every try.
    pusher = Pusher(args.repo, args.job_id, job_cores, sole_pusher=args.sole_pusher and args.attempt == 1)
    try:
        pusher.api.create_repo(args.repo, exist_ok=True)
    except Exception as exc:  # noqa: BLE001 - the first push reports the same problem with its fix
        if _status_of(exc) in PERMANENT_STATUSES:
            pusher.problem = explain(exc, args.repo)
        say(f"⚠️ could not create {args.repo}: {explain(exc, args.repo)}")
    else:
        check_write_access(pusher)
    watcher = Watcher(output_dir, staging)
    watcher.mark_existing()
    child = subprocess.Popen(command, env=training_env(restored))
    keep_off(job_cores)  # the training keeps the cores it inherited; the watching happens elsewhere
    # Waiting on the child's pidfd rather than sleeping ends the wait the moment training exits, so the
    # final push starts at once instead of up to SCAN_SECONDS later; a stop request is still seen within
    # SCAN_SECONDS.
    exited = os.pidfd_open(child.pid)
    while child.poll() is None and not stop.is_set():
        for folder in watcher.completed():
            pusher.submit(Push.checkpoint(folder, "main"))
        if args.sole_pusher and (final := watcher.saved_model()):
            pusher.submit(final)
        select.select([exited], [], [], SCAN_SECONDS)
    os.close(exited)
    training_ended = time.time()
    stop_requested = stop.is_set()
    if stop_requested:
        pusher.stop_retrying_at = time.time() + args.grace
        say("stop requested (timeout or cancel): waiting for the training process, then rescuing results")
        try:
            child.wait(max(1.0, args.grace * 0.5))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    code = child.returncode
    for folder in watcher.completed():
        pusher.submit(Push.checkpoint(folder, "main"))
    succeeded = code == 0 and not stop_requested
    if succeeded and output_dir.is_dir():
        pusher.submit(Push.top_level(output_dir, "main", FINAL_LABEL))
    all_landed = pusher.drain(stop, args.grace)
    for lost in watcher.missed():
        reason = (f"{lost} was deleted by the Trainer's save_total_limit rotation before keephub could stage it; "
                  "raise save_total_limit or save less often")
        say(f"❌ {reason}")
        record("push-failed", label=lost, revision="main", reason=reason)
    if not succeeded:
        rescue(pusher, output_dir, staging, watcher.done, args.job_id, stop, args.grace, code, stop_requested,
               training_ended)
    elif all_landed:
        record("verdict", status="saved", training_ended=training_ended)
    else:
        record("verdict", status="not-saved", reason=pusher.failed or "the grace period ran out while pushing",
               training_ended=training_ended)
    RECORDS.drain(stop, args.grace, pusher.stop_retrying_at)
    if code is None:
        return 1
    return 128 - code if code < 0 else code


def rescue(pusher: Pusher, output_dir: Path, staging: Path, complete: set[str], job_id: str,
           stop: threading.Event, grace: float, code: int | None, stop_requested: bool,
           training_ended: float) -> None:
    """Push what the hub lacks to rescue/<job-id>: the final files if any, and the newest checkpoint."""
    if stop_requested:
        why = "the job was stopped (timeout or cancel)"
    elif code is not None and code < 0:
        why = f"the training process was killed by {signal.Signals(-code).name}"
    else:
        why = f"the training process exited with status {code}"
    cause = f"{why}; {pusher.problem}" if pusher.problem else why
    branch = f"rescue/{job_id}"
    # Not the sole pusher: each rescue push is first compared with the branch (made from main), so files main
    # already holds, identical, are not presented as rescued.
    rescuer = Pusher(pusher.repo, job_id, pusher.job_cores, sole_pusher=False)
    rescuer.stop_retrying_at = pusher.stop_retrying_at
    rescuer.uploaded = pusher.uploaded
    checkpoints = sorted((p for p in staging.iterdir() if p.name in complete),
                         key=lambda p: int(p.name.split("-")[1]))
    queued = False
    if checkpoints and checkpoints[-1].name not in pusher.pushed_checkpoints:
        rescuer.submit(Push.checkpoint(checkpoints[-1], branch, f"{RESCUE_OF}{checkpoints[-1].name}"))
        queued = True
    if output_dir.is_dir():
        files = Push.top_level(output_dir, branch, f"{RESCUE_OF}the output directory's files")
        if files.files:
            rescuer.submit(files)
            queued = True
    if not queued:
        if pusher.pushed_checkpoints:
            newest = max(pusher.pushed_checkpoints, key=lambda name: int(name.split("-")[1]))
            say(f"rescue ({why}): nothing new to rescue; the newest checkpoint, {newest}, is already on main")
        else:
            say(f"rescue ({why}): nothing to rescue; the training wrote no checkpoint and no output files")
        record("verdict", status="checkpoint", reason=cause, training_ended=training_ended)
        return
    say(f"rescue ({why}): pushing unsaved results to {pusher.repo}@{branch}")
    if not rescuer.drain(stop, grace):
        record("verdict", status="not-saved", reason=rescuer.failed or "the grace period ran out during the rescue",
               training_ended=training_ended)
        return
    holds = [label.removeprefix(RESCUE_OF) for label, already_there in rescuer.landed if not already_there]
    if not holds:
        say(f"rescue ({why}): {branch} holds nothing new; main already has the same files")
        record("verdict", status="checkpoint", reason=f"{cause}; nothing new to rescue: main already holds the "
               "same files", training_ended=training_ended)
        return
    say(f"✅ results rescued to {pusher.repo}@{branch}: {', '.join(holds)}, which main does not have")
    record("verdict", status="rescued", branch=branch, reason=cause, holds=holds, training_ended=training_ended)


if __name__ == "__main__":
    sys.exit(main())
