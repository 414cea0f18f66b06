"""Files at rest are private to the account running keephub.

The data directory holds the database (token hashes, sealed job secrets), the signing and secrets keys,
every uploaded file and every job's log, so nothing in it may be readable by other local users. New files
are created private by a umask of 077 set when `keephub serve` or an admin command starts; what already
exists is checked at start-up, and anything group- or world-accessible is reported with the `chmod` that
fixes it (keephub does not change modes behind an operator's back). Job sandboxes, which run as uids of
their own, need no way in: keephub mounts what they use for them (see keephub.agent.sandbox).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("keephub")

PRIVATE_UMASK = 0o077
PRIVATE_DIR_MODE = 0o700
_OPEN_BITS = stat.S_IRWXG | stat.S_IRWXO


def restrict_new_files() -> None:
    """Every file and directory this process creates from now on is accessible to its owner only."""
    os.umask(PRIVATE_UMASK)


def make_private_dir(path: Path) -> None:
    """Create `path` (and missing parents) as 0700; an existing directory is left as it is, and checked."""
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)


def is_open(mode: int) -> bool:
    """Whether a file or directory of this `st_mode` lets other users in at all."""
    return bool(mode & _OPEN_BITS)


def open_entries(data_dir: Path) -> list[tuple[Path, int]]:
    """(path, mode) of the data directory and those of its direct entries (database and its -wal/-shm, keys,
    blobs, xorbs, jobs) that `is_open`. Deeper entries are created under these with the same umask; walking
    millions of blobs at every start would cost more than it tells."""
    candidates = [data_dir, *sorted(data_dir.iterdir())] if data_dir.is_dir() else []
    found = []
    for path in candidates:
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:  # e.g. a -shm file SQLite removed meanwhile
            continue
        if is_open(mode):
            found.append((path, stat.S_IMODE(mode)))
    return found


def warn_about_open_entries(data_dir: Path) -> None:
    """Log one warning per entry `open_entries` finds, naming it and the command that makes it private."""
    for path, mode in open_entries(data_dir):
        log.warning("%s is accessible to other users (mode %o); the data directory holds secrets and private "
                    "files: run `chmod -R go-rwx %s`", path, mode, path)
