"""Moving an instance onto other storage engines: its metadata to another database, its bytes to another
blob store (`keephub migrate`).

Both copies are idempotent, so an interrupted move is resumed by running it again: rows are upserted by
primary key (a re-run also brings over rows the source changed since), and objects the target already
holds are skipped — a target store only ever holds verified objects, because its writers refuse bytes
that do not hash to their key. Bytes move first: a target database never names an object its blob store
lacks. The source should not take writes while it is copied (stop its server), or the copy may miss them.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator

from sqlalchemy import Engine, Table, func, select, text, tuple_

from keephub.storage.blobs import BlobStore, iter_range
from keephub.storage.db import dialect_insert
from keephub.storage.schema import Account, Base

ROWS_PER_BATCH = 1000
# Objects copied at once: an object store answers each request slowly but many in parallel.
COPY_THREADS = 8
# Checks content a store keys by something other than its sha256 (a xorb, by its Merkle hash): raises if
# the bytes (a readable stream of `size` bytes) are not the content `key` names.
ContentCheck = Callable[[BinaryIO, int, str], None]


@dataclass
class StoreCopy:
    store: str
    copied: int
    already_there: int
    bytes_copied: int


def copy_store(name: str, source: BlobStore, target: BlobStore, check: ContentCheck | None = None,
               progress: Callable[[str], None] = lambda _: None) -> StoreCopy:
    """Copy every object `target` lacks, each verified before it becomes visible there: by sha256 (its key),
    or by `check` for content keyed otherwise. Objects `target` holds are skipped: it holds only verified ones.
    """
    keys = list(source.keys())
    present = set(target.keys())
    missing = [key for key in keys if key not in present]
    progress(f"{name}: {len(keys)} object(s), {len(missing)} to copy")

    def copy(key: str) -> int:
        size = source.size(key)
        writer = target.begin(key, hashed=check is None, spool=check is not None)
        try:
            for piece in iter_range(source, key):
                writer.write(piece)
            if check is None:
                writer.commit(expected_size=size)
            else:
                with writer.read_back() as fh:
                    check(fh, writer.size, key)
                writer.commit_verified()
        finally:
            writer.abort()
        return size

    copied = 0
    with ThreadPoolExecutor(COPY_THREADS, thread_name_prefix=f"copy-{name}") as pool:
        for done, size in enumerate(pool.map(copy, missing), start=1):
            copied += size
            if done % 100 == 0 or done == len(missing):
                progress(f"{name}: {done}/{len(missing)} copied ({copied / 1e6:.1f} MB)")
    return StoreCopy(name, len(missing), len(keys) - len(missing), copied)


@dataclass
class TableCopy:
    table: str
    source_rows: int
    target_rows: int

    @property
    def complete(self) -> bool:
        return self.target_rows >= self.source_rows


class ForeignTarget(ValueError):
    """The target database holds another instance's data; copying into it would merge the two."""


def copy_metadata(source: Engine, target: Engine, progress: Callable[[str], None] = lambda _: None) -> list[TableCopy]:
    """Upsert every row of every keephub table from `source` into `target` (both at the newest schema).

    Tables go in foreign-key order and rows in primary-key order (a token's parent has a smaller id than
    the token), so every reference a row makes is in the target before it. Integer id sequences of a
    PostgreSQL target are moved past the copied ids, so the next account or repo gets a fresh one.
    """
    _check_target(source, target)
    copies = []
    for table in Base.metadata.sorted_tables:
        copied = 0
        for batch in _batches(source, table):
            with target.begin() as conn:
                conn.execute(_upsert(target, table), batch)
            copied += len(batch)
        if target.dialect.name == "postgresql":
            _advance_sequences(target, table)
        copies.append(TableCopy(table.name, _count(source, table), _count(target, table)))
        progress(f"{table.name}: {copied} row(s) copied")
    return copies


def _check_target(source: Engine, target: Engine) -> None:
    """Refuse a target whose accounts are not the source's: an empty database, or one an earlier (interrupted)
    copy of this same source filled, is fine; any other instance's would be silently merged into."""
    accounts = Base.metadata.tables[Account.__tablename__]
    query = select(accounts.c.id, accounts.c.name)
    with source.connect() as conn:
        ours = {row.id: row.name for row in conn.execute(query)}
    with target.connect() as conn:
        theirs = {row.id: row.name for row in conn.execute(query)}
    clashes = [name for account_id, name in theirs.items() if ours.get(account_id) != name]
    if clashes:
        raise ForeignTarget(f"the target database already holds account(s) this instance does not have "
                            f"({', '.join(sorted(clashes)[:5])}); copy into an empty database")


def _batches(engine: Engine, table: Table) -> Iterator[list[dict]]:
    """All rows of `table`, ROWS_PER_BATCH at a time, paged by primary key (no OFFSET scans)."""
    key = list(table.primary_key.columns)
    last: tuple | None = None
    while True:
        query = select(table).order_by(*key).limit(ROWS_PER_BATCH)
        if last is not None:
            query = query.where(tuple_(*key) > tuple_(*last)) if len(key) > 1 else query.where(key[0] > last[0])
        with engine.connect() as conn:
            rows = [dict(row._mapping) for row in conn.execute(query)]
        if not rows:
            return
        yield rows
        last = tuple(rows[-1][column.name] for column in key)


def _upsert(engine: Engine, table: Table):  # type: ignore[no-untyped-def]
    statement = dialect_insert(engine.dialect.name, table)
    key = [column.name for column in table.primary_key.columns]
    changed = {column.name: statement.excluded[column.name] for column in table.columns if column.name not in key}
    if not changed:
        return statement.on_conflict_do_nothing(index_elements=key)
    return statement.on_conflict_do_update(index_elements=key, set_=changed)


def _advance_sequences(engine: Engine, table: Table) -> None:
    key = list(table.primary_key.columns)
    if len(key) != 1 or not key[0].autoincrement or key[0].type.python_type is not int:
        return
    with engine.begin() as conn:
        sequence = conn.execute(text("SELECT pg_get_serial_sequence(:table, :column)"),
                                {"table": table.name, "column": key[0].name}).scalar()
        if sequence:
            conn.execute(text(f"SELECT setval('{sequence}', COALESCE((SELECT MAX({key[0].name}) FROM {table.name}), 0) + 1, false)"))


def _count(engine: Engine, table: Table) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())
