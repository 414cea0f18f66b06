"""A job's bucket volume kept in step with its bucket over HTTP alone: what a job's agent runs beside the job.

At attempt start `pull()` fills the volume's directory from the bucket folder. While the job runs, `follow()`
pushes every few seconds the files that changed and then stood still for one round (a file still being
written waits); when the job ends (exit, timeout, cancel, crash) it pushes once more, everything. Each push
is verified: every path read back from keephub (paths-info) must carry the Xet hash and size that hf_xet
computed from the local bytes it uploaded, and deleted paths must be gone. Each push returns a `SyncReport`
for the job's durability record.

The directory belongs to the job, which may plant symlinks in it: files are opened one path component at
a time without following any link, and hf_xet reads them through `/proc/self/fd`, so a push never uploads
a file from outside the directory. Imports only the standard library and huggingface_hub, as code on a
job's node must (see docs/jobs.md, Volumes); `keephub.agent.volumes` runs it for each attempt.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import HfApi
from huggingface_hub._buckets import BucketFile, _BucketAddFile  # the batch fills in each file's Xet hash

FILES_PER_BATCH = 256  # files held open per upload
FINAL_ATTEMPTS = 3

State = tuple[int, int]  # (size, mtime_ns) of a local file


@dataclass(frozen=True)
class SyncReport:
    """One pull or push: what moved, and whether keephub was seen to hold exactly that."""

    bucket: str
    prefix: str
    direction: str  # "pull" | "push"
    final: bool
    files: int
    bytes: int
    deleted: int
    deferred: int  # changed files left for the next push (still being written)
    verified: bool
    seconds: float
    error: str | None = None

    def record(self) -> dict:
        """The durability record entry (kind "bucket-sync") the agent reports for this sync."""
        return {"kind": "bucket-sync", "bucket": self.bucket, "prefix": self.prefix, "direction": self.direction,
                "final": self.final, "files": self.files, "bytes": self.bytes, "deleted": self.deleted,
                "deferred": self.deferred, "verified": self.verified, "seconds": round(self.seconds, 3),
                "error": self.error}


@dataclass
class BucketVolume:
    """The files of bucket `bucket_id` under `prefix`, mirrored in `local_dir`."""

    api: HfApi
    bucket_id: str
    prefix: str
    local_dir: Path
    read_only: bool = False
    synced: dict[str, State] = field(default_factory=dict)  # what the bucket holds of each local file
    _last_scan: dict[str, State] = field(default_factory=dict)

    def remote_path(self, relative: str) -> str:
        return f"{self.prefix.strip('/')}/{relative}" if self.prefix.strip("/") else relative

    def pull(self) -> SyncReport:
        """Download the bucket folder into `local_dir` (before the job starts), keeping the bucket's mtimes."""
        started = time.monotonic()
        self.local_dir.mkdir(parents=True, exist_ok=True)
        folder = self.prefix.strip("/")
        wanted: list[tuple[BucketFile, Path]] = []
        for item in self.api.list_bucket_tree(self.bucket_id, folder or None, recursive=True):
            if not isinstance(item, BucketFile) or (folder and not item.path.startswith(folder + "/")):
                continue
            relative = item.path[len(folder) + 1:] if folder else item.path
            if any(part in ("", ".", "..") for part in relative.split("/")):
                raise ValueError(f"bucket path {item.path!r} would leave the volume directory")
            wanted.append((item, self.local_dir / relative))
        for item, target in wanted:
            target.parent.mkdir(parents=True, exist_ok=True)
        self.api.download_bucket_files(self.bucket_id, [(item, str(target)) for item, target in wanted],
                                       raise_on_missing_files=True)
        verified = True
        for item, target in wanted:
            if item.mtime is not None:
                seconds = item.mtime.timestamp()
                os.utime(target, (seconds, seconds))
            info = target.stat()
            verified &= info.st_size == item.size
            self.synced[target.relative_to(self.local_dir).as_posix()] = (info.st_size, info.st_mtime_ns)
        self._last_scan = dict(self.synced)
        return SyncReport(self.bucket_id, folder, "pull", True, len(wanted), sum(i.size for i, _ in wanted), 0, 0,
                          verified, time.monotonic() - started)

    def push(self, final: bool = False) -> SyncReport:
        """Upload what changed since the last push (all of it when `final`, else what stood still since the last
        scan), delete from the bucket what the job deleted, and verify both against keephub."""
        if self.read_only:
            raise ValueError(f"the volume of {self.bucket_id} is read-only; nothing is pushed from it")
        started = time.monotonic()
        current = dict(_scan(self.local_dir))
        changed = [rel for rel, state in current.items() if self.synced.get(rel) != state]
        ready = changed if final else [rel for rel in changed if self._last_scan.get(rel) == current[rel]]
        self._last_scan = current
        deleted = [rel for rel in self.synced if rel not in current]
        files = sent = 0
        verified = True
        for start in range(0, max(len(ready), 1), FILES_PER_BATCH):
            batch = ready[start:start + FILES_PER_BATCH]
            gone = deleted if start == 0 else []
            if not batch and not gone:
                break
            done, size, ok = self._push_batch(batch, gone)
            files, sent, verified = files + done, sent + size, verified and ok
        return SyncReport(self.bucket_id, self.prefix.strip("/"), "push", final, files, sent, len(deleted),
                          len(changed) - len(ready), verified, time.monotonic() - started)

    def follow(self, stop: threading.Event, report: Callable[[SyncReport], None],
               interval: float = 5.0) -> SyncReport:
        """Push every `interval` seconds until `stop` is set, then push everything and return that final report;
        a final push that fails or is not verified is tried again (FINAL_ATTEMPTS in all), so the report returned
        is verified unless every try failed. Every push, failed ones too, goes to `report`."""
        while not stop.wait(interval):
            try:
                report(self.push())
            except Exception as exc:  # noqa: BLE001 - the next round retries; the failure is on the record
                report(self._failed(False, exc))
        for attempt in range(FINAL_ATTEMPTS):
            try:
                final = self.push(final=True)
            except Exception as exc:  # noqa: BLE001 - any failure is tried again, then reported as not saved
                final = self._failed(True, exc)
            report(final)
            if final.verified:
                break
            if attempt < FINAL_ATTEMPTS - 1:
                time.sleep(2 ** attempt)
        return final

    def _push_batch(self, relatives: list[str], deleted: list[str]) -> tuple[int, int, bool]:
        opened: list[tuple[str, int, State]] = []
        try:
            for rel in relatives:
                fd = _open_beneath(self.local_dir, rel)
                if fd is None:
                    continue  # replaced by something that is not a regular file since the scan
                info = os.fstat(fd)
                opened.append((rel, fd, (info.st_size, info.st_mtime_ns)))
            uploads = [_BucketAddFile(source=f"/proc/self/fd/{fd}", destination=self.remote_path(rel))
                       for rel, fd, _ in opened]
            removals = [self.remote_path(rel) for rel in deleted]
            if uploads or removals:
                self.api.batch_bucket_files(self.bucket_id, add=uploads or None, delete=removals or None)
            held = {f.path: f for f in self.api.get_bucket_paths_info(
                self.bucket_id, [u.destination for u in uploads] + removals)}
            verified = all(u.destination in held and held[u.destination].xet_hash == u.xet_hash
                           and held[u.destination].size == u.size for u in uploads)
            verified &= not any(path in held for path in removals)
            for (rel, fd, state), upload in zip(opened, uploads):
                now = os.fstat(fd)
                if verified and (now.st_size, now.st_mtime_ns) == state:
                    self.synced[rel] = state  # else written to during the upload: pushed again next time
            for rel in deleted if verified else []:
                self.synced.pop(rel, None)
            return len(uploads), sum(u.size or 0 for u in uploads), verified
        finally:
            for _, fd, _ in opened:
                os.close(fd)

    def _failed(self, final: bool, exc: Exception) -> SyncReport:
        return SyncReport(self.bucket_id, self.prefix.strip("/"), "push", final, 0, 0, 0, 0, False, 0.0,
                          f"{type(exc).__name__}: {exc}")


def _scan(root: Path, relative: str = "") -> Iterator[tuple[str, State]]:
    """Regular files under `root`, by relative path; symlinks and special files are not followed or listed."""
    try:
        entries = list(os.scandir(root / relative if relative else root))
    except FileNotFoundError:
        return
    for entry in entries:
        rel = f"{relative}/{entry.name}" if relative else entry.name
        if entry.is_dir(follow_symlinks=False):
            yield from _scan(root, rel)
        elif entry.is_file(follow_symlinks=False):
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            yield rel, (info.st_size, info.st_mtime_ns)


def _open_beneath(root: Path, relative: str) -> int | None:
    """A read-only descriptor of the regular file `root/relative`, reached without following any symlink (a
    job swapping a folder for a link to a host path gets ELOOP, not the host file); None if it is gone or is
    not a regular file."""
    directory = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        *folders, name = relative.split("/")
        for folder in folders:
            inner = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=directory)
            os.close(directory)
            directory = inner
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=directory)
    except OSError:  # gone, or a symlink (ELOOP, ENOTDIR) where a folder or the file should be
        return None
    finally:
        os.close(directory)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd
