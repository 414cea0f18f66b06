"""A job's output as its log stores it: one JSON event per line, capped per attempt.

The agent runs this where the job runs; keephub stores the events it ships (keephub.jobs.logs). Each
attempt's output is capped (`job_log_max_bytes`): output past the cap is dropped and counted, so a job
printing without end costs disk and memory only up to the cap.
"""

from __future__ import annotations

import json
from collections import deque
from datetime import datetime, timezone
from typing import Callable

# Dropped lines kept and written at the end of an attempt past its cap: the error a job ends with is the
# line its user looks for first. Each is shortened to KEPT_LINE_CHARS.
KEPT_LINES = 50
KEPT_LINE_CHARS = 8192


def timestamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def event(line: str, at: str | None = None) -> bytes:
    """One log line as stored and streamed: ASCII JSON (non-ASCII is escaped), so its length is its size."""
    return (json.dumps({"timestamp": at or timestamp(), "data": line}) + "\n").encode("ascii")


class CappedOutput:
    """The job's output on its way to the log, as (timestamp, line) events handed to `emit`.

    `write` takes the job's output and stops passing it on once `max_bytes` of events have passed (None: no
    cap); `note` takes keephub's own lines (status, limits), which always pass."""

    def __init__(self, emit: Callable[[str, str], None], max_bytes: int | None = None) -> None:
        self._emit = emit
        self._size = 0
        self._max_bytes = max_bytes
        self._dropped_lines = 0
        self._dropped_bytes = 0
        self._last_dropped: deque[tuple[str, str]] = deque(maxlen=KEPT_LINES)

    def write(self, line: str) -> None:
        at = timestamp()
        size = len(event(line, at))
        if self._max_bytes is None or (not self._dropped_lines and self._size + size <= self._max_bytes):
            self._pass(at, line, size)
            return
        if not self._dropped_lines:
            self.note(f"keephub: this attempt's log reached its limit of {self._max_bytes:,} bytes "
                      "(setting job_log_max_bytes); further output is dropped until the attempt ends, "
                      "then its last lines are shown. The job goes on.")
        self._dropped_lines += 1
        self._dropped_bytes += len(line.encode("utf-8", "replace")) + 1
        self._last_dropped.append((at, line[:KEPT_LINE_CHARS]))

    def note(self, line: str) -> None:
        at = timestamp()
        self._pass(at, line, len(event(line, at)))

    def end_output(self) -> None:
        """After the job's output has ended: say how much was dropped, then show its last lines."""
        if not self._dropped_lines:
            return
        kept = len(self._last_dropped)
        self.note(f"keephub: dropped {self._dropped_bytes:,} bytes in {self._dropped_lines:,} lines of output "
                  f"past this attempt's log limit; its last {kept} lines follow")
        for at, line in self._last_dropped:
            self._pass(at, line, len(event(line, at)))
        self._dropped_lines = self._dropped_bytes = 0
        self._last_dropped.clear()

    def _pass(self, at: str, line: str, size: int) -> None:
        self._size += size
        self._emit(at, line)
