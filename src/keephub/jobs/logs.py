"""Job logs: one append-only file per attempt, one JSON event per line, as the SSE stream replays them."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import IO


def timestamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class LogWriter:
    """Appends events; flushed on every line and fsynced at least once a second, so logs survive restarts."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[str] = open(path, "a", encoding="utf-8")
        self._last_sync = 0.0

    def write(self, line: str) -> None:
        self._fh.write(json.dumps({"timestamp": timestamp(), "data": line}) + "\n")
        self._fh.flush()
        now = datetime.now().timestamp()
        if now - self._last_sync > 1:
            os.fsync(self._fh.fileno())
            self._last_sync = now

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()


def attempt_log(jobs_dir: Path, job_id: str, attempt: int) -> Path:
    return jobs_dir / "logs" / job_id / f"attempt-{attempt:02d}.jsonl"


class LogCursor:
    """Reads a job's events incrementally across attempt files, returning only complete new lines."""

    def __init__(self, jobs_dir: Path, job_id: str) -> None:
        self.directory = jobs_dir / "logs" / job_id
        self.offsets: dict[Path, int] = {}

    def read_new(self) -> list[dict]:
        if not self.directory.is_dir():
            return []
        events = []
        for path in sorted(self.directory.glob("attempt-*.jsonl")):
            offset = self.offsets.get(path, 0)
            with open(path, "rb") as fh:
                fh.seek(offset)
                chunk = fh.read()
            end = chunk.rfind(b"\n") + 1
            for raw in chunk[:end].splitlines():
                events.append(json.loads(raw))
            self.offsets[path] = offset + end
        return events
