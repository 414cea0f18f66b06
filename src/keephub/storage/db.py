"""The metadata database: engine set-up, migrations, and read/write transactions.

SQLite is tuned for durability (WAL, synchronous=FULL) and write transactions take the write
lock up front (BEGIN IMMEDIATE) so two writers never deadlock upgrading a read lock.

`Database.lock(name)` is a named lock that holds across every process sharing the database (several
keephub servers, `keephub gc`): a file lock beside a SQLite file, an advisory lock on PostgreSQL.
"""

from __future__ import annotations

import fcntl
import hashlib
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_WRITE = "keephub_write"


class IncompatibleDatabase(RuntimeError):
    """The database was written by a newer keephub; refusing to start protects it."""


def create_db_engine(url: str) -> Engine:
    is_sqlite = url.startswith("sqlite")
    engine = create_engine(
        url,
        connect_args={"timeout": 60, "check_same_thread": False} if is_sqlite else {},
        pool_pre_ping=not is_sqlite,
    )
    if is_sqlite:
        _tune_sqlite(engine)
    return engine


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn) -> None:  # type: ignore[no-untyped-def]
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")


def _alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision, refusing a database from a newer keephub."""
    cfg = _alembic_config()
    known = {rev.revision for rev in ScriptDirectory.from_config(cfg).walk_revisions()}
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    if current is not None and current not in known:
        raise IncompatibleDatabase(
            f"the database is at schema revision {current!r}, which this keephub does not know; "
            "it was written by a newer keephub: upgrade keephub, or point it at another data directory"
        )
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


class Database:
    """Hands out sessions: `read()` for queries, `write()` for one atomic, durable transaction."""

    def __init__(self, url: str) -> None:
        self.engine = create_db_engine(url)
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(self.engine.execution_options(**{_WRITE: True}), expire_on_commit=False)
        self._process_locks: dict[str, threading.Lock] = {}
        self._process_locks_guard = threading.Lock()

    def migrate(self) -> None:
        migrate(self.engine)

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._read() as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        with self._write() as session, session.begin():
            yield session

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Hold the lock called `name` against every process using this database, blocking until it is free.

        For work that spans more than one transaction and must not interleave with the same work elsewhere
        (placing a xorb and indexing it, against garbage collection deleting it). A lock held by a process
        that dies is released with its connection or file.
        """
        with self._process_locks_guard:
            local = self._process_locks.setdefault(name, threading.Lock())
        with local:
            if self.engine.dialect.name == "postgresql":
                key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
                with self.engine.connect() as conn:
                    conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
                    conn.commit()
                    try:
                        yield
                    finally:
                        conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                        conn.commit()
                return
            database = make_url(str(self.engine.url)).database
            if not database or database == ":memory:":
                yield  # an in-memory database lives in this process only
                return
            with open(f"{database}.{name}.lock", "a+b") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file is closed
                yield

    def close(self) -> None:
        self.engine.dispose()
