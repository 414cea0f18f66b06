"""Job secrets: encrypted at rest (Fernet, key in the data directory, mode 600), redacted from logs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import quote

from cryptography.fernet import Fernet, InvalidToken

REDACTED = "***"
_MIN_REDACT_LENGTH = 4
_MIN_LINE_LENGTH = 8


class SecretBox:
    def __init__(self, key_file: Path) -> None:
        if not key_file.exists():
            key_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = key_file.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(Fernet.generate_key())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, key_file)
        self._fernet = Fernet(key_file.read_bytes().strip())

    def seal(self, secrets: dict[str, str]) -> bytes:
        return self._fernet.encrypt(json.dumps(secrets).encode())

    def open(self, sealed: bytes | None) -> dict[str, str]:
        if not sealed:
            return {}
        try:
            return json.loads(self._fernet.decrypt(sealed))
        except InvalidToken:
            raise RuntimeError("job secrets cannot be decrypted: the data directory's jobs/secrets.key was replaced")


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
