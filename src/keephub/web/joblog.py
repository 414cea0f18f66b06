"""A job's log for its page: the newest lines up to a position, then, live, what follows that position.

The page renders the lines before the log's end as it is when the page is made, and the page's event stream
resumes from exactly there, so no line is shown twice or lost between the two.
"""

from __future__ import annotations

from keephub.jobs.logs import LogCursor, LogPosition


def log_end(cursor: LogCursor) -> LogPosition | None:
    """Where the log's complete lines end now (None: nothing logged yet)."""
    files = cursor.files()
    if not files:
        return None
    cursor.seek_tail(0)
    number, path = files[-1]
    return LogPosition(number, cursor.offsets[path])


def resume_after(cursor: LogCursor, position: LogPosition) -> None:
    """Make reading on return the lines after `position`: earlier attempts read to their ends, later from 0."""
    cursor.seek_tail(0)
    for number, path in cursor.files():
        if number == position.attempt:
            cursor.offsets[path] = min(position.offset, cursor.offsets[path])
        elif number > position.attempt:
            cursor.offsets[path] = 0


def cursor_position(cursor: LogCursor) -> LogPosition | None:
    """Where a cursor has read up to (the stream's event id: a reconnecting browser resumes from it)."""
    read = [(number, path) for number, path in cursor.files() if cursor.offsets.get(path)]
    if not read:
        return None
    number, path = read[-1]
    return LogPosition(number, cursor.offsets[path])
