"""Secret values out of job logs: the agent redacts each line before it leaves the node."""

from __future__ import annotations

import json
from urllib.parse import quote

REDACTED = "***"
_MIN_REDACT_LENGTH = 4
_MIN_LINE_LENGTH = 8


class Redactor:
    """Replaces every secret value in a log line, in the forms a program is likely to print it: as is, line by
    line for multi-line secrets (keys, JSON credentials), JSON-escaped, repr-escaped and URL-encoded.
    Longest first, so overlapping secrets leave nothing behind."""

    def __init__(self, values: list[str]) -> None:
        forms: set[str] = set()
        for value in values:
            forms |= {value, json.dumps(value)[1:-1], repr(value)[1:-1], quote(value, safe="")}
            forms |= {line.strip() for line in value.splitlines() if len(line.strip()) >= _MIN_LINE_LENGTH}
        self.values = sorted((f for f in forms if len(f) >= _MIN_REDACT_LENGTH), key=len, reverse=True)

    def __call__(self, line: str) -> str:
        for value in self.values:
            if value in line:
                line = line.replace(value, REDACTED)
        return line
