"""Job logs: one append-only file per attempt, one JSON event per line, as the SSE stream replays them.

Every read costs what it returns, whatever the size of the log: a tail is found by reading the files
backwards in blocks, and everything else is read forwards one page at a time. The job's agent caps each
attempt's output (`job_log_max_bytes`, keephub.agent.output) before it ships the lines here.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from keephub.agent.output import event

# Bytes a forward read takes from the files at once (at least one whole line).
PAGE_BYTES = 256 * 1024
# Bytes a backward scan reads at once.
BLOCK_BYTES = 64 * 1024
_ATTEMPT_FILE = re.compile(r"^attempt-(\d+)\.jsonl$")


def append_events(path: Path, committed: int, events: list[tuple[str, str]]) -> int:
    """Append (timestamp, line) events to an attempt's log after its first `committed` bytes and return its new
    committed length. Bytes past `committed` are a torn append from a crash (never acknowledged, so the
    agent sends those lines again) and are cut off first: a line is stored once, whatever was resent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if os.fstat(fd).st_size != committed:
            os.ftruncate(fd, committed)
        os.lseek(fd, committed, os.SEEK_SET)
        data = b"".join(event(line, at) for at, line in events)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    return committed + len(data)


def attempt_log(jobs_dir: Path, job_id: str, attempt: int) -> Path:
    return jobs_dir / "logs" / job_id / f"attempt-{attempt:02d}.jsonl"


@dataclass(frozen=True)
class LogPosition:
    """A place in a job's log: a byte offset in one attempt's file, always at the start of a line."""

    attempt: int
    offset: int

    def __str__(self) -> str:
        return f"{self.attempt}.{self.offset}"

    @classmethod
    def parse(cls, text: str) -> "LogPosition":
        """From its string form; ValueError (saying what is expected) for anything else."""
        attempt, dot, offset = text.partition(".")
        if not (dot and attempt.isascii() and attempt.isdigit() and offset.isascii() and offset.isdigit()):
            raise ValueError(f"log position {text[:40]!r} must look like ATTEMPT.OFFSET, e.g. 1.4096")
        return cls(int(attempt), int(offset))


def _valid_events(raw: bytes) -> list[bytes]:
    """The complete lines of `raw` that are log events; a line torn by a crash mid-write is skipped."""
    events = []
    for line in raw.splitlines():
        try:
            parsed = json.loads(line)
        except ValueError:
            continue
        if isinstance(parsed, dict) and isinstance(parsed.get("data"), str):
            events.append(line)
    return events


def _complete_end(fh: BinaryIO, size: int) -> int:
    """The offset just past the last newline before `size`: a line being written is not read yet."""
    position = size
    while position > 0:
        start = max(0, position - BLOCK_BYTES)
        fh.seek(start)
        newline = fh.read(position - start).rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        position = start
    return 0


def _last_lines_start(fh: BinaryIO, end: int, wanted: int, budget: int | None) -> tuple[int, int]:
    """(offset, count): where the last `count` lines before `end` (a line start) begin, reading backwards.

    Stops at `wanted` lines, or before the line that would take the span past `budget` bytes (the first line
    is always taken, however long)."""
    start, count = end, 0
    search_end = end - 1  # the newline at end-1 ends the last line; the ones before it end earlier lines
    while count < wanted and search_end > 0:
        block_start = max(0, search_end - BLOCK_BYTES)
        fh.seek(block_start)
        block = fh.read(search_end - block_start)
        upper = len(block)
        while count < wanted:
            newline = block.rfind(b"\n", 0, upper)
            if newline < 0 and block_start > 0:
                break
            candidate = block_start + newline + 1 if newline >= 0 else 0
            if count and budget is not None and end - candidate > budget:
                return start, count
            start, count = candidate, count + 1
            if newline < 0:
                return start, count
            upper = newline
        search_end = block_start
    if count < wanted and search_end == 0 and start > 0:  # the file's first line, reached at a block edge
        if not (count and budget is not None and end > budget):
            start, count = 0, count + 1
    return start, count


class LogCursor:
    """Reads a job's events across its attempt files, a bounded page at a time, returning only complete lines.

    Events come back as their stored JSON lines (bytes), which the SSE stream sends unchanged.
    """

    def __init__(self, jobs_dir: Path, job_id: str) -> None:
        self.directory = jobs_dir / "logs" / job_id
        self.offsets: dict[Path, int] = {}

    def files(self) -> list[tuple[int, Path]]:
        """(attempt number, file) in attempt order."""
        if not self.directory.is_dir():
            return []
        found = []
        for path in self.directory.iterdir():
            match = _ATTEMPT_FILE.match(path.name)
            if match:
                found.append((int(match.group(1)), path))
        return sorted(found)

    def read_page(self, max_bytes: int = PAGE_BYTES) -> list[bytes]:
        """The next complete events, about `max_bytes` of them (at least one whole line); [] when none is new."""
        events: list[bytes] = []
        budget = max_bytes
        for _, path in self.files():
            offset = self.offsets.get(path, 0)
            with open(path, "rb") as fh:
                fh.seek(offset)
                chunk = fh.read(budget)
                end = chunk.rfind(b"\n") + 1
                if end == 0 and len(chunk) == budget:  # one line longer than the page: take it whole
                    chunk += fh.readline()
                    end = len(chunk) if chunk.endswith(b"\n") else 0
            events += _valid_events(chunk[:end])
            self.offsets[path] = offset + end
            budget -= end
            if budget <= 0:
                break
        return events

    def seek_tail(self, lines: int) -> None:
        """Position the cursor so that reading on returns the last `lines` complete lines, then what follows.

        Reads the files backwards from their ends, so the cost is that of the lines, not of the log."""
        remaining = lines
        for _, path in reversed(self.files()):
            with open(path, "rb") as fh:
                end = _complete_end(fh, os.fstat(fh.fileno()).st_size)
                start, count = _last_lines_start(fh, end, remaining, None) if remaining else (end, 0)
            self.offsets[path] = start
            remaining -= count

    def page_before(self, before: LogPosition | None, lines: int,
                    max_bytes: int) -> tuple[list[dict], LogPosition | None]:
        """Up to `lines` events (at most about `max_bytes` of them) ending just before `before` (None: the
        end of the log), and the position of the first one when older lines remain (else None)."""
        files = self.files()
        if before is not None:
            files = [(number, path) for number, path in files if number <= before.attempt]
        chosen: list[tuple[int, Path, int, int]] = []  # (attempt, file, start, end), newest first
        remaining, budget = lines, max_bytes
        older_left = False
        for number, path in reversed(files):
            with open(path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                limit = min(size, before.offset) if before is not None and number == before.attempt else size
                end = _complete_end(fh, limit)
                if remaining <= 0 or budget <= 0:
                    older_left = older_left or end > 0
                    break
                start, count = _last_lines_start(fh, end, remaining, budget)
            if count:
                chosen.append((number, path, start, end))
                remaining -= count
                budget -= end - start
            if start > 0:
                older_left = True
                break
        events = []
        for _, path, start, end in reversed(chosen):
            with open(path, "rb") as fh:
                fh.seek(start)
                events += [json.loads(line) for line in _valid_events(fh.read(end - start))]
        first = LogPosition(chosen[-1][0], chosen[-1][2]) if chosen and older_left else None
        return events, first
