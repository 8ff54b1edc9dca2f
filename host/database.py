"""plughost's embedded database: line-protocol writes, WAL, flushes, persistence, SQL, admin.

`LocalDatabase` implements `host.interface.Database`. A write travels like this:

1. `write_lp` parses the body (`host.lp_columnar`: Arrow kernels for the common lines,
   `host.lineprotocol` for the rest) and validates every line against a catalog snapshot, grouping
   rows by table and column names (`RowGroup`). New databases, tables and columns are added
   to the catalog, durably, before anything reaches the WAL, so the WAL never holds a row
   for a column the catalog does not know.
2. The groups are queued to the WAL committer: one thread that appends everything queued
   so far as one WAL record (group commit) and, once it is durable, moves the groups into
   `PendingRows` and releases the waiting writers. Pending rows are therefore always in WAL
   sequence order, and a flush covers a contiguous range of WAL records, which is what makes
   "persisted through sequence S" exact.
3. Every `flush_interval` the flush thread turns pending rows into one Arrow record batch per
   table, appends them to the queryable buffer (now visible to queries) and then calls the
   subscribers with a `WalFlush`.
4. When the buffer passes `buffer_limit_bytes`, the persister writes Parquet files and
   truncates the WAL (`host.persist`).

On `start()` the catalog and Parquet files are loaded and WAL records after the persisted
sequence are replayed into the buffer without calling subscribers (InfluxDB 3 does not run
plugins on replay).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from operator import attrgetter, itemgetter
from pathlib import Path

import pyarrow as pa

from host.buffer import (
    PendingRows,
    QueryableBuffer,
    RowGroup,
    build_batch,
    decode_wal_record,
    encode_wal_record,
)
from host.catalog import (
    INTERNAL_DATABASE,
    TAG,
    TIME,
    TIME_COLUMN,
    Catalog,
    ColumnDef,
    DatabaseSchema,
    check_database_name,
    check_table_name,
    field_type,
)
from host.errors import InvalidName, NotFound, WriteError
from host.interface import FlushedTable, FlushListener, LineError, WalFlush, WriteResult
from host.lineprotocol import normalize_precision, to_nanoseconds
from host.lp_columnar import FastGroup, parse_body, scale_timestamps
from host.persist import Persister, database_directory, remove_directory, remove_orphans, table_directory
from host.sql import QueryEngine, SystemTableProvider, TableFunctionProvider
from host.wal import Wal

log = logging.getLogger("plughost.database")

_FIELD_TYPES = {"f": "float64", "i": "int64", "u": "uint64", "b": "bool", "s": "utf8"}
# How InfluxDB 3 names column types in its write errors.
_TYPE_NAMES = {
    "float64": "iox::column_type::field::float",
    "int64": "iox::column_type::field::integer",
    "uint64": "iox::column_type::field::uinteger",
    "bool": "iox::column_type::field::boolean",
    "utf8": "iox::column_type::field::string",
    TAG: "iox::column_type::tag",
    TIME: "iox::column_type::timestamp",
}
_NANOSECONDS = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
# Below this magnitude an "auto" timestamp is not nanoseconds (InfluxDB 3's guess).
_AUTO_NANOSECONDS_FROM = 5_000_000 * 1_000_000_000
_REPLAY_FLUSH_BYTES = 64 * 1024 * 1024

_key = itemgetter(0)
_value = itemgetter(1)
_line_number = attrgetter("line_number")


class LocalDatabase:
    """Storage and SQL for one data directory. Thread-safe.

    Construct, then `start()`; `close()` when done. Writes block for their WAL fsync, queries
    for their execution, admin calls for the catalog's fsync (and file removal).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        flush_interval: float = 1.0,
        buffer_limit_bytes: int = 256 * 1024 * 1024,
    ):
        self._data_dir = Path(data_dir)
        self._data_dir.mkdir(parents=True, exist_ok=True)
        self._flush_interval = flush_interval
        self._catalog = Catalog(self._data_dir)
        self._buffer = QueryableBuffer(
            {t.id: self._catalog.parquet_files(t.id) for db in self._catalog.databases() for t in db.tables.values()}
        )
        self._pending = PendingRows()
        self._queries = QueryEngine(self._data_dir, self._catalog, self._buffer)
        self._queries.register_system_table("parquet_files", self._parquet_files_table)
        self._schema_lock = threading.Lock()
        self._persist_lock = threading.Lock()
        self._flush_lock = threading.RLock()  # a subscriber may call flush_now
        self._listeners: list[FlushListener] = []
        self._listeners_lock = threading.Lock()
        self._stopped = threading.Event()
        self._buffer_limit_bytes = buffer_limit_bytes
        self._wal: Wal | None = None
        self._committer: _WalCommitter | None = None
        self._persister: Persister | None = None
        self._flusher = threading.Thread(target=self._flush_loop, name="plughost-flush", daemon=True)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Remove crash leftovers, replay the WAL into the buffer, start the threads.

        Blocks for the replay. Subscribers are not called for replayed rows.
        """
        for path in remove_orphans(self._data_dir, self._catalog):
            log.warning("removed %s: not in the catalog (left by a crash)", path)
        self._wal = Wal(self._data_dir / "wal")
        self._persister = Persister(
            self._data_dir, self._catalog, self._buffer, self._wal, self._buffer_limit_bytes, self._persist_lock
        )
        replayed_bytes = 0
        for sequence, payload in self._wal.replay(after=self._catalog.persisted_sequence):
            self._pending.add(sequence, decode_wal_record(payload).groups)
            replayed_bytes += len(payload)
            if replayed_bytes >= _REPLAY_FLUSH_BYTES:
                self._flush(notify=False)
                replayed_bytes = 0
        self._flush(notify=False)
        self._committer = _WalCommitter(self._wal, self._pending.add)
        self._persister.start()
        self._persister.check()
        self._flusher.start()

    def close(self) -> None:
        """Finish queued writes, flush once more (calling subscribers), stop the threads.

        Blocks until the threads have stopped. Buffered rows stay in the WAL for the next start.
        """
        if self._stopped.is_set() or self._committer is None:
            self._stopped.set()
            return
        self._stopped.set()
        self._flusher.join()
        self._committer.close()
        try:
            self._flush()
        finally:
            self._persister.stop()
            self._wal.close()

    def __enter__(self) -> LocalDatabase:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    @property
    def buffered_bytes(self) -> int:
        """Bytes of flushed Arrow data held in memory (what the persist limit measures)."""
        return self._buffer.nbytes

    # -- the Database interface -------------------------------------------------------------

    def write_lp(
        self,
        database: str,
        lines: str,
        *,
        precision: str = "auto",
        accept_partial: bool = True,
        no_sync: bool = False,
    ) -> WriteResult:
        """Store line protocol; create the database, tables and columns as needed.

        Blocks until the accepted lines are fsync'd to the WAL, or only until they are queued
        when `no_sync` is true; they become queryable at the next flush. With
        `accept_partial`, good lines are stored and bad ones listed in the result; without
        it, one bad line refuses the whole body. Raises WriteError when nothing is stored
        for a reason other than bad lines (bad database name or precision, WAL failure), or
        for any bad line when `accept_partial` is false.
        """
        if self._committer is None:
            raise WriteError("the database is not started")
        if database == INTERNAL_DATABASE:
            raise WriteError(f"cannot write to the internal database {INTERNAL_DATABASE!r}")
        try:
            check_database_name(database)
            precision = normalize_precision(precision)
        except ValueError as e:
            raise WriteError(str(e)) from None
        parsed, parse_errors = parse_body(lines)
        errors = [LineError(e.original_line, e.line_number, e.message) for e in parse_errors]
        if errors and not accept_partial:
            raise _refusal(database, errors)
        db = self._catalog.database(database)
        write = _validate(db, parsed, precision, time.time_ns())
        if write.additions:
            with self._schema_lock:
                current = self._catalog.database(database)
                if current is not db:
                    db = current
                    write = _validate(db, parsed, precision, write.now)
                if write.additions and (accept_partial or not write.errors):
                    db = self._catalog.add_columns(database, write.additions)
        errors.extend(write.errors)
        if errors:
            errors.sort(key=lambda e: e.line_number)
            if not accept_partial:
                raise _refusal(database, errors)
        if not write.groups:
            return WriteResult(lines_written=0, errors=errors)
        groups = [
            RowGroup(db.tables[table].id, tags, fields, rows)
            for (table, tags, fields, _), rows in write.groups.items()
        ]
        done = self._committer.submit(groups, sync=not no_sync)
        if not no_sync:
            try:
                done.result()
            except Exception as e:
                raise WriteError(f"the write could not be made durable: {e}") from e
        return WriteResult(lines_written=write.accepted, errors=errors)

    def query(self, database: str, sql: str, params: dict[str, str] | None = None) -> pa.Table:
        """Run SQL against a database; `$name` placeholders take `params`.

        Blocks for the query. Raises DatabaseNotFound, or QueryError with DataFusion's text.
        """
        return self._queries.query(database, sql, params)

    def subscribe(self, listener: FlushListener) -> Callable[[], None]:
        """Call `listener(WalFlush)` on the flush thread after each flush's rows are queryable.

        The listener must not block; its exceptions are logged. Returns the unsubscribe call.
        """
        with self._listeners_lock:
            self._listeners = [*self._listeners, listener]

        def unsubscribe() -> None:
            with self._listeners_lock:
                self._listeners = [l for l in self._listeners if l is not listener]

        return unsubscribe

    def flush_now(self) -> WalFlush | None:
        """Flush everything written so far (no_sync writes included) and call subscribers.

        Blocks until the subscribers have returned. Returns the flush, or None if nothing
        was pending.
        """
        if self._committer is not None:
            self._committer.drain()
        return self._flush()

    def persist_now(self) -> int:
        """Persist the whole buffer to Parquet now; blocks for the writes.

        Returns the WAL sequence persisted through (0 if the buffer was empty).
        """
        return self._persister.persist()

    # -- SQL extensions -----------------------------------------------------------------------

    def register_system_table(self, name: str, provider: SystemTableProvider) -> None:
        """Make `system.<name>` exist in every database, built by `provider(database)` per query."""
        self._queries.register_system_table(name, provider)

    def register_table_function(self, name: str, provider: TableFunctionProvider) -> None:
        """Make `FROM name('arg', ...)` work; `provider(database, [args])` builds the table per query."""
        self._queries.register_table_function(name, provider)

    # -- admin --------------------------------------------------------------------------------

    def create_database(self, name: str) -> None:
        """Create an empty database. Raises InvalidName, AlreadyExists. Blocks for the catalog fsync."""
        with self._schema_lock:
            self._catalog.create_database(name)

    def list_databases(self) -> list[str]:
        """Every database name, sorted, `_internal` included (as InfluxDB 3 lists it)."""
        return sorted({INTERNAL_DATABASE, *self._catalog.database_names()})

    def delete_database(self, name: str) -> None:
        """Delete a database, its buffered rows and its files. Raises NotFound, InvalidName.

        Blocks for a running persistence cycle, the catalog fsync and the file removal.
        """
        if name == INTERNAL_DATABASE:
            raise InvalidName(f"the internal database {INTERNAL_DATABASE!r} cannot be deleted")
        with self._exclusive():
            db = self._catalog.delete_database(name)
            for table_id in db.tables_by_id:
                self._buffer.drop_table(table_id)
            remove_directory(self._data_dir, database_directory(name))

    def create_table(
        self, database: str, table: str, tags: Sequence[str], fields: Sequence[tuple[str, str]]
    ) -> None:
        """Create a table with tag columns and typed field columns.

        Field types: float64, int64, uint64, bool, utf8 (or string). Raises NotFound (database),
        AlreadyExists, InvalidName, InvalidSchema. Blocks for the catalog fsync.
        """
        if database == INTERNAL_DATABASE:
            raise InvalidName(f"cannot create tables in the internal database {INTERNAL_DATABASE!r}")
        columns = [ColumnDef(t, TAG) for t in tags]
        columns += [ColumnDef(name, field_type(kind)) for name, kind in fields]
        with self._schema_lock:
            self._catalog.create_table(database, table, columns)

    def delete_table(self, database: str, table: str) -> None:
        """Delete a table, its buffered rows and its files. Raises NotFound.

        Blocks for a running persistence cycle, the catalog fsync and the file removal.
        """
        with self._exclusive():
            schema = self._catalog.delete_table(database, table)
            self._buffer.drop_table(schema.id)
            remove_directory(self._data_dir, table_directory(database, table))

    def table_schema(self, database: str, table: str) -> pa.Schema:
        """The table's Arrow schema (tags, fields, time). Raises NotFound."""
        schema = self._catalog.table(database, table)
        if schema is None:
            raise NotFound(f"table not found: {database}.{table}")
        return schema.arrow_schema

    def list_tables(self, database: str) -> list[str]:
        """The database's table names, sorted. Raises NotFound."""
        if database == INTERNAL_DATABASE:
            return []
        db = self._catalog.database(database)
        if db is None:
            raise NotFound(f"database not found: {database}")
        return sorted(db.tables)

    # -- internals ------------------------------------------------------------------------------

    def _exclusive(self) -> _Both:
        """Hold off persistence and schema changes (for deletes)."""
        return _Both(self._persist_lock, self._schema_lock)

    def _flush_loop(self) -> None:
        while not self._stopped.wait(self._flush_interval):
            try:
                self._flush()
            except Exception:
                log.exception("flush failed")

    def _flush(self, notify: bool = True) -> WalFlush | None:
        with self._flush_lock:
            pending = self._pending.take()
            if pending is None:
                return None
            batches = {}
            tables = []
            for table_id, groups in pending.tables.items():
                found = self._catalog.table_by_id(table_id)
                if found is None:
                    continue  # the table was deleted after the write
                db, schema = found
                batch = build_batch(schema, groups)
                batches[table_id] = batch
                tables.append(FlushedTable(db.name, schema.name, batch))
            self._buffer.append(pending.first_sequence, pending.last_sequence, batches)
            flush = WalFlush(sequence=pending.last_sequence, tables=tables)
            if notify and tables:
                for listener in self._listeners:
                    try:
                        listener(flush)
                    except Exception:
                        log.exception("flush subscriber %r failed", listener)
            if self._persister is not None:
                self._persister.check()
            return flush

    def _parquet_files_table(self, database: str) -> pa.Table:
        rows = [
            {
                "table_name": table,
                "path": f.path,
                "size_bytes": f.size_bytes,
                "row_count": f.row_count,
                "min_time": f.min_time,
                "max_time": f.max_time,
            }
            for db, table, f in self._catalog.iter_parquet_files()
            if db == database
        ]
        return pa.Table.from_pylist(rows, schema=_PARQUET_FILES_SCHEMA)


_PARQUET_FILES_SCHEMA = pa.schema(
    [
        ("table_name", pa.string()),
        ("path", pa.string()),
        ("size_bytes", pa.int64()),
        ("row_count", pa.int64()),
        ("min_time", pa.int64()),
        ("max_time", pa.int64()),
    ]
)


class _Both:
    """Two locks as one context manager, taken in order."""

    def __init__(self, first: threading.Lock, second: threading.Lock):
        self._first = first
        self._second = second

    def __enter__(self) -> None:
        self._first.acquire()
        self._second.acquire()

    def __exit__(self, *exc) -> None:
        self._second.release()
        self._first.release()


def _refusal(database: str, errors: list[LineError]) -> WriteError:
    first = errors[0]
    return WriteError(
        f"write to database {database!r} refused ({len(errors)} bad lines, nothing stored): "
        f"line {first.line_number}: {first.error_message}",
        errors,
    )


class _ValidatedWrite:
    """The outcome of checking a body's lines against one catalog snapshot."""

    __slots__ = ("groups", "errors", "additions", "accepted", "now")

    def __init__(self, now: int):
        # (table, tag names, field names, field type codes) -> rows
        self.groups: dict[tuple, list[tuple]] = {}
        self.errors: list[LineError] = []
        self.additions: dict[str, list[ColumnDef]] = {}
        self.accepted = 0
        self.now = now


def _validate(db: DatabaseSchema | None, lines, precision: str, now: int) -> _ValidatedWrite:
    """Check lines against `db` (None: a new database), group the good ones into rows.

    `lines` are Lines and FastGroups ordered by (first) line number. Pure: reads the snapshot
    only. Columns the lines introduce are collected in `additions` and count as existing for
    later lines of the same body, as in InfluxDB 3.
    """
    result = _ValidatedWrite(now)
    groups = result.groups
    groups_get = groups.get
    verdicts: dict[tuple, str | None] = {}
    tag_columns: dict[tuple, tuple] = {}
    tag_columns_get = tag_columns.get
    multiplier = _NANOSECONDS.get(precision, 1)
    auto = precision == "auto"
    # A group's key is decided at its first line, so a FastGroup is checked where it starts;
    # rows of a key fed by both kinds of item are put back in line order at the end.
    line_numbers: dict[tuple, list[int]] = {}
    fast_keys: set[tuple] = set()
    mixed: set[tuple] = set()
    for line in lines:
        if type(line) is FastGroup:
            _validate_group(db, result, line, precision, verdicts, line_numbers, fast_keys, mixed)
            continue
        measurement, tags, fields, timestamp, line_number, original = line
        split = tag_columns_get(tags)
        if split is None:
            split = tag_columns[tags] = (tuple(map(_key, tags)), tuple(map(_value, tags)))
        names, codes, values = zip(*fields)
        key = (measurement, split[0], names, codes)
        rows = groups_get(key)
        if rows is None:
            if key not in verdicts:
                verdicts[key] = _check_columns(db, result.additions, key)
            problem = verdicts[key]
            if problem is not None:
                result.errors.append(LineError(original, line_number, problem.format(line=line_number - 1)))
                continue
            rows = groups[key] = []
        if timestamp is None:
            timestamp = now
        elif auto:
            if -_AUTO_NANOSECONDS_FROM < timestamp < _AUTO_NANOSECONDS_FROM:
                timestamp = to_nanoseconds(timestamp, precision)
        elif multiplier != 1:
            timestamp *= multiplier
            if not _INT64_MIN <= timestamp <= _INT64_MAX:
                message = f"timestamp out of range for precision {precision}"
                result.errors.append(LineError(original, line_number, message))
                continue
        rows.append((*split[1], *values, timestamp))
        line_numbers.setdefault(key, []).append(line_number)
        if key in fast_keys:
            mixed.add(key)
    for key in mixed:
        order = sorted(range(len(line_numbers[key])), key=line_numbers[key].__getitem__)
        rows = groups[key]
        groups[key] = [rows[i] for i in order]
    for key in [k for k, rows in groups.items() if not rows]:
        del groups[key]
    result.errors.sort(key=_line_number)  # a FastGroup reports all its lines at its first
    result.accepted = sum(map(len, groups.values()))
    return result


def _validate_group(db, result, group: FastGroup, precision, verdicts, line_numbers, fast_keys, mixed) -> None:
    """`_validate` for the lines of one FastGroup, as if they came one by one."""
    key = group.key
    rows = result.groups.get(key)
    if rows is None:
        if key not in verdicts:
            verdicts[key] = _check_columns(db, result.additions, key)
        problem = verdicts[key]
        if problem is not None:
            for original, line_number in zip(group.originals.to_pylist(), group.line_numbers):
                result.errors.append(LineError(original, line_number, problem.format(line=line_number - 1)))
            return
        rows = result.groups[key] = []
    elif rows:
        mixed.add(key)
    timestamps, out_of_range = scale_timestamps(group.timestamps, precision, result.now)
    new_rows = list(zip(*group.columns, timestamps))
    numbers = group.line_numbers
    if out_of_range:
        message = f"timestamp out of range for precision {precision}"
        originals = group.originals
        for position in out_of_range:
            result.errors.append(LineError(originals[position].as_py(), numbers[position], message))
        refused = set(out_of_range)
        new_rows = [row for i, row in enumerate(new_rows) if i not in refused]
        numbers = [n for i, n in enumerate(numbers) if i not in refused]
    rows.extend(new_rows)
    line_numbers.setdefault(key, []).extend(numbers)
    fast_keys.add(key)


def _check_columns(db: DatabaseSchema | None, additions: dict[str, list[ColumnDef]], key: tuple) -> str | None:
    """None if a line of this shape fits the table (recording new columns), else a message.

    The message has a `{line}` placeholder: InfluxDB 3 writes the 0-based line index there.
    """
    table_name, tag_names, field_names, codes = key
    table = db.tables.get(table_name) if db else None
    if table is None:
        try:
            check_table_name(table_name)
        except InvalidName as e:
            return _brace(str(e))
    known = dict(table.types) if table else {TIME_COLUMN: TIME}
    staged = additions.get(table_name, [])
    known.update((c.name, c.type) for c in staged)
    wanted = [(name, TAG) for name in tag_names]
    wanted += [(name, _FIELD_TYPES[code]) for name, code in zip(field_names, codes)]
    new = []
    for name, kind in wanted:
        existing = known.get(name)
        if existing is None:
            new.append(ColumnDef(name, kind))
        elif existing != kind:
            what = "tag" if kind == TAG else "field"
            return (
                f"invalid {what} value in line protocol for {what} '{_brace(name)}' on line {{line}}: "
                f"expected type {_TYPE_NAMES[existing]}, but got {_TYPE_NAMES[kind]}"
            )
    if new or table is None:
        additions[table_name] = staged + new
    return None


def _brace(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


class _WalCommitter:
    """Appends queued writes to the WAL on its own thread, all queued ones as one record.

    `submit` never blocks; the returned future completes once the record is appended (and
    fsync'd if any request in it asked for sync) and its rows are pending for the next flush.
    """

    def __init__(self, wal: Wal, appended: Callable[[int, list[RowGroup]], None]):
        self._wal = wal
        self._appended = appended
        self._changed = threading.Condition()
        self._queue: list[tuple[list[RowGroup], bool, Future]] = []
        self._submitted = 0
        self._finished = 0
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="plughost-wal-commit", daemon=True)
        self._thread.start()

    def submit(self, groups: list[RowGroup], *, sync: bool) -> Future:
        done: Future = Future()
        with self._changed:
            if self._closing:
                raise WriteError("the database is closing")
            self._queue.append((groups, sync, done))
            self._submitted += 1
            self._changed.notify_all()
        return done

    def drain(self) -> None:
        """Block until every write submitted before this call has been appended (or failed)."""
        with self._changed:
            target = self._submitted
            self._changed.wait_for(lambda: self._finished >= target)

    def close(self) -> None:
        """Append what is queued, then stop the thread; blocks until it has stopped."""
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._queue or self._closing)
                if not self._queue:
                    return
                batch, self._queue = self._queue, []
            groups = [g for request_groups, _, _ in batch for g in request_groups]
            try:
                sequence = self._wal.append(encode_wal_record(groups), sync=any(s for _, s, _ in batch))
                self._appended(sequence, groups)
            except BaseException as e:
                log.exception("appending %d writes to the WAL failed", len(batch))
                for _, _, done in batch:
                    done.set_exception(e)
            else:
                for _, _, done in batch:
                    done.set_result(sequence)
            with self._changed:
                self._finished += len(batch)
                self._changed.notify_all()
