"""A tiny in-memory `host.interface.Database`: the proof that the plugin engine embeds in any server.

Tables are pyarrow Tables per database (tags dictionary<int32, utf8>, then fields, then
`time` timestamp[ns]); `query` runs DataFusion SQL over them with `$name` parameters; `write_lp`
parses with `host.lineprotocol` and holds rows until `flush()`, which makes them queryable and
hands a `WalFlush` to every subscriber — the same contract plughost's own storage follows.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import datafusion
import pyarrow as pa

from host.interface import (
    DatabaseNotFound, FlushedTable, FlushListener, LineError, QueryError, WalFlush, WriteError, WriteResult,
)
from host.lineprotocol import normalize_precision, parse, to_nanoseconds

_FIELD_TYPES = {"f": pa.float64(), "i": pa.int64(), "u": pa.uint64(), "b": pa.bool_(), "s": pa.utf8()}
_TAG_TYPE = pa.dictionary(pa.int32(), pa.utf8())


class InMemoryDatabase:
    """Databases of pyarrow Tables; thread-safe; flushes only when `flush()` is called."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tables: dict[str, dict[str, pa.Table]] = {}
        self._pending: dict[tuple[str, str], list[tuple[dict, dict, int]]] = {}
        self._field_types: dict[tuple[str, str], dict[str, pa.DataType]] = {}
        self._tags: dict[tuple[str, str], list[str]] = {}
        self._listeners: list[FlushListener] = []
        self._sequence = 0
        self.writes: list[tuple[str, str, bool]] = []  # (database, lines, no_sync), for assertions

    def write_lp(self, database: str, lines: str, *, precision: str = "auto", accept_partial: bool = True,
                 no_sync: bool = False) -> WriteResult:
        if not database or database.startswith("_") and database != "_internal":
            raise WriteError(f"invalid database name {database!r}")
        precision = normalize_precision(precision)
        parsed, errors = parse(lines)
        if errors and not accept_partial:
            raise WriteError("parse error", [LineError(e.original_line, e.line_number, e.message) for e in errors])
        now = time.time_ns()
        with self._lock:
            self._tables.setdefault(database, {})
            for line in parsed:
                key = (database, line.measurement)
                types = self._field_types.setdefault(key, {})
                for name, code, _ in line.fields:
                    if types.setdefault(name, _FIELD_TYPES[code]) != _FIELD_TYPES[code]:
                        raise WriteError(f"field {name!r} of {line.measurement} has type {types[name]}")
                tags = self._tags.setdefault(key, [])
                for name, _ in line.tags:
                    if name not in tags:
                        tags.append(name)
                stamp = now if line.timestamp is None else (
                    line.timestamp if precision == "auto" else to_nanoseconds(line.timestamp, precision))
                self._pending.setdefault(key, []).append(
                    (dict(line.tags), {name: value for name, _, value in line.fields}, stamp))
            self.writes.append((database, lines, no_sync))
        return WriteResult(lines_written=len(parsed), errors=[LineError(e.original_line, e.line_number, e.message) for e in errors])

    def flush(self) -> WalFlush:
        """Make pending rows queryable and notify subscribers; returns the flush (maybe empty)."""
        with self._lock:
            pending, self._pending = self._pending, {}
            self._sequence += 1
            flushed = []
            for (database, table), rows in pending.items():
                batch = self._batch(database, table, rows)
                existing = self._tables[database].get(table)
                combined = pa.Table.from_batches([batch]) if existing is None else pa.concat_tables(
                    [existing, pa.Table.from_batches([batch])], promote_options="default")
                self._tables[database][table] = combined
                flushed.append(FlushedTable(database, table, batch))
            flush = WalFlush(self._sequence, flushed)
            listeners = list(self._listeners)
        for listener in listeners:
            listener(flush)
        return flush

    def _batch(self, database: str, table: str, rows: list[tuple[dict, dict, int]]) -> pa.RecordBatch:
        tags = sorted(self._tags[(database, table)])
        fields = self._field_types[(database, table)]
        columns, names = [], []
        for tag in tags:
            columns.append(pa.array([r[0].get(tag) for r in rows], pa.utf8()).dictionary_encode())
            names.append(tag)
        for field, kind in fields.items():
            columns.append(pa.array([r[1].get(field) for r in rows], kind))
            names.append(field)
        columns.append(pa.array([r[2] for r in rows], pa.timestamp("ns")))
        names.append("time")
        return pa.RecordBatch.from_arrays(columns, names)

    def query(self, database: str, sql: str, params: dict[str, str] | None = None) -> pa.Table:
        with self._lock:
            if database not in self._tables:
                raise DatabaseNotFound(f"database not found: {database}")
            tables = dict(self._tables[database])
        context = datafusion.SessionContext()
        for name, table in tables.items():
            context.register_record_batches(name, [table.to_batches()])
        try:
            return context.sql(sql, param_values=params or None).to_arrow_table()
        except Exception as e:
            raise QueryError(str(e)) from e

    def subscribe(self, listener: FlushListener) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                self._listeners.remove(listener)

        return unsubscribe
