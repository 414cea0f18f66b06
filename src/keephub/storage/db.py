"""The metadata database: engine set-up, migrations, and read/write transactions.

SQLite is tuned for durability (WAL, synchronous=FULL) and write transactions take the write
lock up front (BEGIN IMMEDIATE) so two writers never deadlock upgrading a read lock.

PostgreSQL (`postgresql+psycopg://...`) runs write transactions at READ COMMITTED with no database-wide lock:
each write site is correct on its own (conflicting inserts meet a unique constraint or ON CONFLICT, ref
updates compare and swap). Whatever still collides (a unique constraint, a deadlock) is answered 409, and a
database that cannot be reached 503 naming it; the pool checks each connection before use (pool_pre_ping), so
keephub recovers on the next request once PostgreSQL is back.

`Database.lock(name)` is a named lock that holds across every process sharing the database (several
keephub servers, `keephub gc`): a file lock beside a SQLite file, an advisory lock on PostgreSQL.
"""

from __future__ import annotations

import fcntl
import hashlib
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import URL, Engine, create_engine, event, literal_column, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    ArgumentError,
    DataError,
    DBAPIError,
    IntegrityError,
    NoSuchModuleError,
    OperationalError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from keephub.config import ConfigError, Settings
from keephub.storage.permissions import make_private_dir, warn_about_open_entries
from keephub.wire.errors import BadRequest, Conflict, ServiceUnavailable

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_WRITE = "keephub_write"


class WriteConflict(Conflict):
    """A write lost a race its site does not resolve itself (a unique key taken meanwhile, a deadlock PostgreSQL
    broke): answered 409, and catchable by callers for which losing is an answer (a claim another server won)."""


class IncompatibleDatabase(RuntimeError):
    """The database was written by a newer keephub; refusing to start protects it."""


# SQLSTATEs of PostgreSQL meaning the server went away or refuses connections for now: class 08 (connection
# exception), admin/crash shutdown, and "cannot connect now" (starting up or recovering).
_GONE_STATES = ("57P01", "57P02", "57P03")
# Seconds to wait for a PostgreSQL connection before answering 503.
PG_CONNECT_TIMEOUT_SECONDS = 10
# Connections each process keeps to PostgreSQL, and how many more it opens under load: as many in all as the
# worker threads requests run in (anyio's 40), so a burst of requests waits on PostgreSQL, not on the pool.
PG_POOL_SIZE = 10
PG_POOL_OVERFLOW = 30
PG_POOL_TIMEOUT_SECONDS = 30


def create_db_engine(url: str) -> Engine:
    is_sqlite = url.startswith("sqlite")
    connect_args: dict[str, object] = {"timeout": 60, "check_same_thread": False} if is_sqlite else {}
    pool: dict[str, int] = {}
    if make_url(url).get_backend_name() == "postgresql":
        connect_args["connect_timeout"] = PG_CONNECT_TIMEOUT_SECONDS
        pool = {"pool_size": PG_POOL_SIZE, "max_overflow": PG_POOL_OVERFLOW, "pool_timeout": PG_POOL_TIMEOUT_SECONDS}
    engine = create_engine(url, connect_args=connect_args, pool_pre_ping=not is_sqlite, **pool)
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


def describe(url: URL) -> str:
    """The database as a person looks for it: "PostgreSQL at host:port/db" or "SQLite at PATH" (no password)."""
    if url.get_backend_name() == "postgresql":
        return f"PostgreSQL at {url.host or 'localhost'}:{url.port or 5432}/{url.database}"
    if url.get_backend_name() == "sqlite":
        return f"SQLite at {url.database}"
    return url.render_as_string(hide_password=True)


def is_unreachable(exc: BaseException) -> bool:
    """Whether `exc` says the database cannot be reached (down, restarting, network), not that a statement
    failed: the driver invalidated the connection, or PostgreSQL's error has no SQLSTATE (the connection
    itself failed) or a connection-class one."""
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    if not isinstance(exc, OperationalError) or exc.orig is None or type(exc.orig).__module__.startswith("sqlite3"):
        return False
    state = getattr(exc.orig, "sqlstate", None)
    return state is None or state.startswith("08") or state in _GONE_STATES


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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


def insert_for(session: Session, model: type[DeclarativeBase]) -> postgresql.Insert | sqlite.Insert:
    """An INSERT into `model`'s table in the session's dialect, for `on_conflict_do_nothing` / `on_conflict_do_update`:
    inserting a row that may exist already in one statement, race-free without a database-wide write lock."""
    return dialect_insert(session.get_bind().dialect.name, model)


def dialect_insert(dialect: str, table: Any) -> postgresql.Insert | sqlite.Insert:
    """`insert_for` by dialect name, for a model or a Table (PostgreSQL or SQLite: the two keephub runs on)."""
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise ValueError(f"keephub runs on PostgreSQL or SQLite, not {dialect}")


def inserted(session: Session, statement: postgresql.Insert | sqlite.Insert) -> bool:
    """Run a one-row INSERT ... ON CONFLICT DO NOTHING; whether it inserted the row (False: the row existed).
    Asked through RETURNING: psycopg reports no rowcount for these statements."""
    return session.execute(statement.returning(literal_column("1"))).first() is not None


def check_database_url(url: str) -> None:
    """Open and migrate the database at `url` once, so that a wrong database_url stops `keephub serve` with a
    message naming the setting before it listens, instead of failing every request."""
    db = Database(url)
    try:
        db.migrate()
    finally:
        db.close()


class Database:
    """Hands out sessions: `read()` for queries, `write()` for one atomic, durable transaction."""

    def __init__(self, url: str) -> None:
        try:
            self.engine = create_db_engine(url)
        except (ArgumentError, NoSuchModuleError, ImportError, ValueError) as exc:
            try:
                shown = repr(make_url(url).render_as_string(hide_password=True))
            except ArgumentError:
                shown = "(not a URL)"
            raise ConfigError(f"the setting database_url {shown} is not a database keephub can use ({exc}); use "
                              "postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE, or leave it empty for SQLite "
                              "in data_dir") from exc
        self.where = describe(self.engine.url)
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(self.engine.execution_options(**{_WRITE: True}), expire_on_commit=False)
        self._process_locks: dict[str, threading.Lock] = {}
        self._process_locks_guard = threading.Lock()
        self._shared_reads = threading.local()

    @property
    def is_postgresql(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def migrate(self) -> None:
        """Bring the schema up to date, one process at a time (servers sharing a database may start together); a
        database that cannot be reached stops start-up naming the setting."""
        try:
            with self.lock("schema-migrations"):
                migrate(self.engine)
        except (OperationalError, ServiceUnavailable) as exc:
            if not self.is_postgresql:
                raise
            cause = exc.__cause__ if isinstance(exc, ServiceUnavailable) and exc.__cause__ else exc
            raise ConfigError(f"cannot open the metadata database ({self.where}) named by the setting database_url "
                              f"(KEEPHUB_DATABASE_URL): {_first_line(cause)}; check the URL, that PostgreSQL runs and "
                              "that the database and user exist") from exc

    @contextmanager
    def read(self) -> Iterator[Session]:
        shared = getattr(self._shared_reads, "session", None)
        if shared is not None:  # inside `one_read` on this thread
            yield shared
            return
        with self._answerable(), self._read() as session:
            yield session

    @contextmanager
    def one_read(self) -> Iterator[None]:
        """Every `read()` on this thread until the block ends shares one session (one connection, one
        transaction): a small request whose steps each read (the caller's token, then the repo) opens one, not
        one per step. For reads only: a write made meanwhile may not be visible to them."""
        if getattr(self._shared_reads, "session", None) is not None:
            yield
            return
        with self.read() as session:
            self._shared_reads.session = session
            try:
                yield
            finally:
                self._shared_reads.session = None

    @contextmanager
    def write(self) -> Iterator[Session]:
        with self._answerable(), self._write() as session, session.begin():
            yield session

    @contextmanager
    def _answerable(self) -> Iterator[None]:
        """Turn what concurrency, outages and PostgreSQL's stricter types raise into answers a client can act on:
        an unreachable database into a 503 naming it (nothing was committed: the transaction rolled back or never
        began), a value PostgreSQL refuses (too long, a NUL character) into a 400 naming it, and a write that lost
        a race the site itself did not resolve (a unique key taken meanwhile, a deadlock) into a 409."""
        try:
            yield
        except PoolTimeout as exc:
            raise ServiceUnavailable(f"every connection to the metadata database ({self.where}) stayed busy for "
                                     f"{PG_POOL_TIMEOUT_SECONDS} s: keephub is overloaded; retry",
                                     extra_headers={"Retry-After": "5"}) from exc
        except DBAPIError as exc:
            if is_unreachable(exc):
                raise ServiceUnavailable(f"the metadata database ({self.where}) is unreachable: {_first_line(exc)}; "
                                         "keephub retries on the next request", extra_headers={"Retry-After": "5"}
                                         ) from exc
            if isinstance(exc, DataError):  # PostgreSQL checks what SQLite stores as is: lengths, NUL characters
                raise BadRequest(f"a value in the request cannot be stored: {_first_line(exc)}; shorten it or drop "
                                 "the control characters") from exc
            state = getattr(exc.orig, "sqlstate", None) or ""
            if isinstance(exc, IntegrityError) or state.startswith("40"):
                constraint = getattr(getattr(exc.orig, "diag", None), "constraint_name", None)
                what = f" ({constraint})" if constraint else ""
                raise WriteConflict(f"a concurrent request changed the same records first{what}; look at the "
                                    "current state and retry") from exc
            raise

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Hold the lock called `name` against every process using this database, blocking until it is free.

        For work that spans more than one transaction and must not interleave with the same work elsewhere
        (placing a xorb and indexing it, against garbage collection deleting it). A lock held by a process
        that dies is released with its connection or file.
        """
        with self._process_locks_guard:
            local = self._process_locks.setdefault(name, threading.Lock())
        with local, self._answerable():
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


def open_database(settings: Settings) -> Database:
    """The metadata database `settings` name, migrated, under a data directory private to keephub's account.

    The server opens it this way, and so do the admin commands that need nothing else (users, tokens,
    organizations): they skip the rest of the server, whose imports cost them 1.5-3 s a call.
    """
    make_private_dir(settings.data_dir)
    db = Database(settings.sqlalchemy_url)
    db.migrate()
    warn_about_open_entries(settings.data_dir)
    return db
