"""Job secrets: encrypted at rest (Fernet; key from the secrets_key setting or the data directory, mode 600).
The job's agent redacts them from its log (keephub.agent.redact)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from keephub.config import ConfigError



class SecretBox:
    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)

    @classmethod
    def from_settings(cls, secrets_key: str, key_file: Path) -> "SecretBox":
        """The box keyed by the `secrets_key` setting, else by `key_file` (created on first use)."""
        if secrets_key:
            try:
                return cls(secrets_key.encode())
            except ValueError:
                raise ConfigError("setting secrets_key must be a Fernet key (32 url-safe base64-encoded bytes), "
                                  "e.g. the contents of an existing data_dir/jobs/secrets.key") from None
        if not key_file.exists():
            key_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = key_file.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(Fernet.generate_key())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, key_file)
        return cls(key_file.read_bytes().strip())

    def seal(self, secrets: dict[str, str]) -> bytes:
        return self._fernet.encrypt(json.dumps(secrets).encode())

    def open_fresh(self, sealed: bytes, max_age_seconds: int) -> dict[str, str] | None:
        """What `seal` sealed at most `max_age_seconds` ago; None when older, altered or sealed with another key
        (for values a browser hands back, which may be any of those)."""
        try:
            return json.loads(self._fernet.decrypt(sealed, ttl=max_age_seconds))
        except InvalidToken:
            return None

    def open(self, sealed: bytes | None) -> dict[str, str]:
        if not sealed:
            return {}
        try:
            return json.loads(self._fernet.decrypt(sealed))
        except InvalidToken:
            raise RuntimeError("job secrets cannot be decrypted: the data directory's jobs/secrets.key (or the secrets_key setting) was replaced")
