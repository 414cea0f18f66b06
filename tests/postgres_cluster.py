"""A throwaway PostgreSQL cluster for tests: `initdb` into a temp dir, a free port, its socket in that dir, so
it never touches a system cluster or another cluster started in the same session.

Needs the Debian package scripts/setup.sh installs (postgresql: binaries under /usr/lib/postgresql/15/bin).
initdb refuses to run as root, so as root the cluster belongs to the `postgres` user and every server-side
command runs as that user; the tests connect over TCP on 127.0.0.1 as the superuser `postgres` (trust
authentication, local connections only: the cluster is a throwaway one).
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from keephub.devserver import free_port

SUPERUSER = "postgres"


def postgres_bin_dir() -> Path | None:
    """The directory of initdb/pg_ctl: PATH first, then Debian's versioned directories (newest first)."""
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent  # Debian links only some tools onto PATH
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda path: int(Path(path).parent.parent.name), reverse=True)
    return Path(candidates[0]).parent if candidates else None


class PostgresCluster:
    """One postgres server process on 127.0.0.1:`port`, its data and socket in a temp dir of its own (not under
    a test's private temp dir: as root the server runs as `postgres`, which must reach it)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="keephub-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.port = free_port()
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL test cluster: initdb not found; run scripts/setup.sh as root (it "
                               "installs the postgresql package)")
        self.bin = bin_dir
        self._running = False

    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy URL of `database` in this cluster, as keephub's database_url takes it."""
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """initdb (the first time) and start the server, waiting until it accepts connections."""
        if not self.data.exists():
            self.data.mkdir(mode=0o700)
            if os.geteuid() == 0:
                owner = pwd.getpwnam(SUPERUSER)
                for path in (self.dir, self.data):
                    os.chown(path, owner.pw_uid, owner.pw_gid)
            self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "--encoding=UTF8",
                      "--locale=C.UTF-8")
        # fsync=off: the cluster lives for one test session and is thrown away after it, so losing it in a power
        # cut costs nothing, and without fsync each commit does not wait on the disk (the suite commits
        # thousands of times on a shared 2-core machine). Durability of a real deployment is PostgreSQL's own.
        options = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c max_connections=300")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")
        self._running = True

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: `fast` at the end of a session, `immediate` to cut it off as a crash would."""
        if not self._running:
            return
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")
        self._running = False

    def close(self) -> None:
        """Stop the server and delete the cluster (at the end of a session)."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def create_database(self, prefix: str = "keephub") -> str:
        """A new empty database; returns its URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self.sql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run one statement with psql through the cluster's socket; returns its unaligned output."""
        return self._run("psql", "-h", str(self.dir), "-p", str(self.port), "-U", SUPERUSER, "-d", database,
                         "-v", "ON_ERROR_STOP=1", "-At", "-c", statement)

    def dump(self, database: str) -> bytes:
        """pg_dump of `database` (schema and rows, as SQL), followed by the bytes of every bytea value (the dump
        spells those in hex), so that a search of it finds what binary columns hold too."""
        text = self._run("pg_dump", "-h", str(self.dir), "-p", str(self.port), "-U", SUPERUSER, database)
        binary = b"".join(bytes.fromhex(match) for match in re.findall(r"\\\\x((?:[0-9a-f]{2})+)", text))
        return text.encode() + binary

    def _run(self, tool: str, *args: str) -> str:
        argv = [str(self.bin / tool), *args]
        if os.geteuid() == 0:
            # As the cluster's owner; runuser keeps our environment minus what `-u` changes.
            argv = ["runuser", "-u", SUPERUSER, "--", *argv]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False,
                                stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"PostgreSQL test cluster: {tool} {' '.join(args)} failed ({result.returncode}): "
                               f"{result.stderr.strip()}\n{log}")
        return result.stdout
