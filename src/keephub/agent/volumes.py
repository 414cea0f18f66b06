"""A job attempt's volumes on its node: made ready before the sandbox starts, saved after its last process ends.

Repo volumes (model, dataset, space) come from a cache every attempt on this node shares, in the agent's work
directory (`volume-cache/TYPE/NS/NAME/COMMIT`): fetched once with huggingface_hub under a file lock, then
mounted read-only as they are, since a pinned commit never changes. Bucket volumes get a folder of the
attempt's own, owned by the job's uid and filled from the bucket (`BucketVolume.pull`); a read-write one is
pushed every few seconds while the job runs (`follow`, a thread per volume) and once more when it has ended,
however it ended. A folder whose final push was verified is removed; one whose push failed is kept on the node,
and the log says where. Each pull and push goes into the job's durability record (kind "bucket-sync").

All of it is HTTP to keephub with the job's own token (the plan's `volumeToken`): never a user's token, and
the job's environment has it only if `$HF_TOKEN` asked for it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from keephub.agent import sandbox

if TYPE_CHECKING:
    from huggingface_hub import HfApi

    from keephub.agent.volume_sync import BucketVolume, SyncReport

SYNC_SECONDS = 5.0
REPO_TYPES = ("model", "dataset", "space")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_COMMIT = re.compile(r"[0-9a-f]{40}")


class VolumeError(Exception):
    """A volume that cannot be mounted; the attempt ends in ERROR with this message, which names the volume."""


@dataclass
class _Kept:
    """A read-write bucket volume: its folder, its follower thread, and its final push once made."""

    volume: BucketVolume
    mount: str
    thread: threading.Thread | None = None
    final: SyncReport | None = None


class Volumes:
    """The volumes of one attempt (`specs`, as stored in the job's spec and checked at submission)."""

    def __init__(self, specs: list[dict], server: str, token: str | None, layout: sandbox.SandboxLayout,
                 user: sandbox.JobUser | None, name: str, record: Callable[[dict], None],
                 note: Callable[[str], None]) -> None:
        self.specs, self.server, self.token = specs, server, token
        self.layout, self.user, self.name = layout, user, name
        self._record, self._note = record, note
        self._stop = threading.Event()
        self._kept: list[_Kept] = []
        self._folders: list[Path] = []  # bucket folders of this attempt, removed at the end once saved
        self._api: HfApi | None = None
        self._last_error: dict[str, str | None] = {}

    # -- before the sandbox ------------------------------------------------------------------------------------
    def prepare(self) -> tuple[sandbox.Bind, ...]:
        """Fetch or pull every volume; the binds the sandbox mounts them with. VolumeError names a volume that
        cannot be mounted (a mount path over this node's own read-only paths, a failed download)."""
        binds = []
        for index, spec in enumerate(self.specs):
            where = f"volume {spec.get('mountPath')} ({spec.get('type')} {spec.get('source')})"
            try:
                mount = sandbox.clean_mount_path(spec.get("mountPath"), self.layout.readonly)
                if spec.get("type") == "bucket":
                    host = self._bucket(index, spec, mount)
                elif spec.get("type") in REPO_TYPES:
                    host = self._repo(spec, mount)
                else:
                    raise ValueError(f"unknown volume type {spec.get('type')!r}")
            except Exception as exc:  # whatever failed, the attempt's message names the volume
                raise VolumeError(f"{where} could not be mounted: {exc}") from exc
            binds.append(sandbox.Bind(host, mount, spec.get("type") != "bucket" or bool(spec.get("readOnly"))))
        return tuple(binds)

    def _hub(self) -> HfApi:
        """huggingface_hub, imported on first use (only attempts with volumes pay for it), with its own caches in
        the agent's work directory: it reads those settings from the environment once, when imported."""
        if self._api is None:
            os.environ.update({"HF_HOME": str(self.layout.root / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1",
                               "HF_HUB_DISABLE_PROGRESS_BARS": "1"})
            os.environ.pop("HF_HUB_OFFLINE", None)
            from huggingface_hub import HfApi

            self._api = HfApi(endpoint=self.server.rstrip("/"), token=self.token or False)
        return self._api

    def _repo(self, spec: dict, mount: str) -> Path:
        """The repo's files at the pinned commit (only `path` when set), from this node's cache."""
        kind, source, commit, path = spec["type"], spec["source"], spec.get("commit"), spec.get("path") or ""
        namespace, _, name = source.partition("/")
        if not (all(_NAME.fullmatch(part) and ".." not in part for part in (namespace, name))
                and isinstance(commit, str) and _COMMIT.fullmatch(commit)):
            raise ValueError(f"the plan names {kind} {source!r} at {commit!r}, not a repo at a commit")
        folder = self.layout.root / "volume-cache" / kind / namespace / name
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = commit if not path else f"{commit}-{hashlib.sha256(path.encode()).hexdigest()[:16]}"
        target = folder / key
        with open(folder / f"{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one download per node; the others wait and mount it
            if target.exists():
                self._note(f"keephub: volume {mount}: {kind} {source} at {commit[:12]}, from this node's cache")
            else:
                for stale in folder.glob(f"{key}.partial-*"):  # left by an agent that died downloading
                    shutil.rmtree(stale, ignore_errors=True)
                partial = Path(tempfile.mkdtemp(prefix=f"{key}.partial-", dir=folder))
                try:
                    self._hub().snapshot_download(source, repo_type=kind, revision=commit, local_dir=partial,
                                                  allow_patterns=[path, f"{path}/*"] if path else None)
                    shutil.rmtree(partial / ".cache" / "huggingface", ignore_errors=True)  # huggingface_hub's notes
                    with contextlib.suppress(OSError):
                        (partial / ".cache").rmdir()
                    _readable(partial)
                    partial.rename(target)
                except BaseException:
                    shutil.rmtree(partial, ignore_errors=True)
                    raise
                self._note(f"keephub: volume {mount}: {kind} {source} at {commit[:12]}, fetched into this node's "
                           "cache (read-only)")
        mounted = target / path if path else target
        if not mounted.exists():
            raise ValueError(f"{source} holds nothing at '{path}' in commit {commit[:12]}")
        return mounted

    def _bucket(self, index: int, spec: dict, mount: str) -> Path:
        """A folder of this attempt's own, owned by the job's uid, holding the bucket folder's files."""
        from keephub.agent.volume_sync import BucketVolume

        read_only = bool(spec.get("readOnly"))
        (self.layout.root / "volumes").mkdir(mode=0o700, exist_ok=True)
        folder = self.layout.job_dir(self.layout.root / "volumes" / f"{self.name}-{index}", self.user)
        self._folders.append(folder)
        volume = BucketVolume(self._hub(), spec["source"], spec.get("path") or "", folder, read_only=read_only)
        pulled = volume.pull()
        self.record(mount, pulled)
        if not pulled.verified:
            raise ValueError(f"the files pulled from bucket {spec['source']} differ from what keephub lists")
        if not read_only:
            _give(folder, self.user)
            self._kept.append(_Kept(volume, mount))
        where = spec["source"] + (f"/{pulled.prefix}" if pulled.prefix else "")
        self._note(f"keephub: volume {mount}: bucket {where}, {pulled.files} files ({pulled.bytes:,} bytes), "
                   + ("read-only" if read_only else "read-write: what the job writes here is pushed to the bucket"))
        return folder

    # -- while the job runs --------------------------------------------------------------------------------------
    def follow(self) -> None:
        """Start pushing each read-write bucket volume every SYNC_SECONDS, each from a thread of its own."""
        for kept in self._kept:
            kept.thread = threading.Thread(target=self._follow, args=(kept,), daemon=True,
                                           name=f"keephub-volume {kept.mount}")
            kept.thread.start()

    def _follow(self, kept: _Kept) -> None:
        kept.final = kept.volume.follow(self._stop, lambda report: self.record(kept.mount, report), SYNC_SECONDS)

    def record(self, mount: str, report: SyncReport) -> None:
        """A sync for the durability record: every pull and final push, and the pushes that moved or failed
        (an idle round is not news); a failure is said in the log once, not every round it repeats."""
        if report.error != self._last_error.get(mount) and report.error and not report.final:
            self._note(f"keephub: volume {mount}: a push to bucket {report.bucket} failed ({report.error}); "
                       f"retrying every {SYNC_SECONDS:g} s")
        self._last_error[mount] = report.error
        if report.final or report.direction == "pull" or report.files or report.deleted or report.error:
            self._record({**report.record(), "mountPath": mount})

    # -- after the sandbox -----------------------------------------------------------------------------------------
    def finish(self) -> None:
        """Once the sandbox's processes are gone: the final push of each read-write bucket volume (which its
        thread makes when told to stop), then its folder is removed if that push was verified, else kept."""
        self._stop.set()
        for kept in self._kept:
            if kept.thread is None:  # the job never started (canceled, a later volume failed): push what is there
                self._follow(kept)
            else:
                kept.thread.join()
        unsaved = set()
        for kept in self._kept:
            final, folder, bucket = kept.final, kept.volume.local_dir, kept.volume.bucket_id
            if final is not None and final.verified:
                self._note(f"keephub: volume {kept.mount}: saved to bucket {bucket} (final push: {final.files} "
                           f"files, {final.bytes:,} bytes, {final.deleted} deleted; verified)")
                continue
            unsaved.add(folder)
            sandbox.clear_setid_bits(folder, self.user)
            why = (final.error or "keephub did not hold what was pushed") if final else "its push thread failed"
            self._note(f"keephub: volume {kept.mount}: NOT saved to bucket {bucket}: {why}; its files are kept on "
                       f"node {socket.gethostname()} in {folder}")
        for folder in self._folders:
            if folder not in unsaved:
                sandbox.remove_tree(folder)


def _give(folder: Path, user: sandbox.JobUser | None) -> None:
    """Hand what the pull wrote (as the agent) to the job's uid, so the job may change and delete it."""
    if user is None:
        return
    for root, directories, files in os.walk(folder):
        for entry in [*directories, *files]:
            os.lchown(os.path.join(root, entry), user.uid, user.gid)


def _readable(folder: Path) -> None:
    """Let every job uid read a cached repo (the cache is shared; the sandbox mounts it read-only)."""
    for root, directories, files in os.walk(folder):
        os.chmod(root, 0o755)
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, 0o755 if os.stat(path).st_mode & 0o111 else 0o644)
