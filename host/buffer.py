"""The write buffer: rows on their way from the WAL to Arrow, and the queryable Arrow buffer.

Rows travel as `RowGroup`s: all rows of one table that wrote the same tag and field names,
as plain tuples `(tag values..., field values..., time ns)`. The same struct is the body of a
WAL record (`WalRecord`), so what replay reads is exactly what the live path buffered.

`PendingRows` holds groups that are durable in the WAL but not yet visible. A flush turns
them into one `pa.RecordBatch` per table (`build_batch`) with the table's full schema and
appends those to the `QueryableBuffer`, which queries and persistence read.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import msgspec
import pyarrow as pa

from host.catalog import TIME_COLUMN, ParquetFile, TableSchema


class RowGroup(msgspec.Struct, array_like=True):
    """Rows of one table that share their column names.

    Each row is `(*tag_values, *field_values, time_ns)`, ordered like `tags` + `fields`.
    """

    table_id: int
    tags: tuple[str, ...]
    fields: tuple[str, ...]
    rows: list[tuple]


class WalRecord(msgspec.Struct, array_like=True):
    """The payload of one WAL record: the accepted rows of one or more write requests."""

    groups: list[RowGroup]


_wal_encoder = msgspec.msgpack.Encoder()
_wal_decoder = msgspec.msgpack.Decoder(WalRecord)


def encode_wal_record(groups: list[RowGroup]) -> bytes:
    return _wal_encoder.encode(WalRecord(groups))


def decode_wal_record(payload: bytes) -> WalRecord:
    return _wal_decoder.decode(payload)


GroupKey = tuple[tuple[str, ...], tuple[str, ...]]


class PendingFlush(NamedTuple):
    """Everything pending at one flush: WAL sequences and row lists per table and key."""

    first_sequence: int
    last_sequence: int
    tables: dict[int, dict[GroupKey, list[tuple]]]


class PendingRows:
    """Rows durable in the WAL, waiting for the next flush. Thread-safe; nothing blocks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tables: dict[int, dict[GroupKey, list[tuple]]] = {}
        self._first_sequence = 0
        self._last_sequence = 0

    def add(self, sequence: int, groups: Iterable[RowGroup]) -> None:
        """Add the groups of WAL record `sequence`; sequences must arrive in order."""
        with self._lock:
            if not self._first_sequence:
                self._first_sequence = sequence
            self._last_sequence = sequence
            for group in groups:
                keyed = self._tables.setdefault(group.table_id, {})
                key = (group.tags, group.fields)
                rows = keyed.get(key)
                if rows is None:
                    keyed[key] = group.rows
                else:
                    rows.extend(group.rows)

    def take(self) -> PendingFlush | None:
        """Remove and return everything pending, or None when nothing is."""
        with self._lock:
            if not self._first_sequence:
                return None
            taken = PendingFlush(self._first_sequence, self._last_sequence, self._tables)
            self._tables = {}
            self._first_sequence = 0
            return taken


def build_batch(schema: TableSchema, groups: Mapping[GroupKey, list[tuple]]) -> pa.RecordBatch:
    """One record batch in `schema` from row groups; columns a group lacks are null."""
    parts: dict[str, list] = {c.name: [] for c in schema.columns}
    for (tags, fields), rows in groups.items():
        values = dict(zip((*tags, *fields, TIME_COLUMN), zip(*rows)))
        missing = None
        for name, column_parts in parts.items():
            column = values.get(name)
            if column is None:
                missing = missing or (None,) * len(rows)
                column = missing
            column_parts.append(column)
    arrays = []
    for column in schema.columns:
        chunks = parts[column.name]
        values = chunks[0] if len(chunks) == 1 else list(itertools.chain.from_iterable(chunks))
        arrays.append(pa.array(values, type=column.arrow_type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema.arrow_schema)


def widen(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """`batch` in a schema that added columns since it was built; new columns are null."""
    if batch.num_columns == len(schema):
        return batch
    present = set(batch.schema.names)
    arrays = [
        batch.column(f.name) if f.name in present else pa.nulls(batch.num_rows, f.type)
        for f in schema
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


class BufferedBatch(NamedTuple):
    first_sequence: int
    last_sequence: int
    batch: pa.RecordBatch


class TableSnapshot(NamedTuple):
    """What a query of one table reads: buffered batches and committed Parquet files."""

    schema: TableSchema
    batches: list[pa.RecordBatch]
    files: tuple[ParquetFile, ...]


class QueryableBuffer:
    """Flushed batches and the Parquet files queries see, per table id.

    Batches and files change together under one lock, so a snapshot sees every row exactly
    once while persistence swaps batches for a file. Nothing here blocks on I/O.
    """

    def __init__(self, files: Mapping[int, tuple[ParquetFile, ...]]) -> None:
        self._lock = threading.Lock()
        self._batches: dict[int, list[BufferedBatch]] = {}
        self._files: dict[int, tuple[ParquetFile, ...]] = dict(files)
        self._nbytes = 0
        self._sequence = 0

    @property
    def nbytes(self) -> int:
        """Bytes of Arrow data held in memory."""
        return self._nbytes

    @property
    def sequence(self) -> int:
        """The last WAL sequence whose rows are in this buffer."""
        return self._sequence

    def append(self, first_sequence: int, last_sequence: int, batches: Mapping[int, pa.RecordBatch]) -> None:
        with self._lock:
            for table_id, batch in batches.items():
                self._batches.setdefault(table_id, []).append(
                    BufferedBatch(first_sequence, last_sequence, batch)
                )
                self._nbytes += batch.nbytes
            self._sequence = max(self._sequence, last_sequence)

    def snapshot(self, schema: TableSchema) -> TableSnapshot:
        """The table's batches, widened to `schema`, and its files, as of now."""
        with self._lock:
            entries = self._batches.get(schema.id, [])
            for i, entry in enumerate(entries):
                if entry.batch.num_columns != len(schema.columns):
                    wide = widen(entry.batch, schema.arrow_schema)
                    self._nbytes += wide.nbytes - entry.batch.nbytes
                    entries[i] = entry._replace(batch=wide)
            return TableSnapshot(
                schema, [e.batch for e in entries], self._files.get(schema.id, ())
            )

    def persistable(self) -> tuple[int, dict[int, list[BufferedBatch]]]:
        """The last flushed sequence and, per table, the batches up to it."""
        with self._lock:
            return self._sequence, {t: list(b) for t, b in self._batches.items() if b}

    def commit_persisted(self, through: int, files: Mapping[int, ParquetFile]) -> None:
        """Swap batches up to `through` for the Parquet files now holding them."""
        with self._lock:
            for table_id, entries in self._batches.items():
                kept = [e for e in entries if e.last_sequence > through]
                self._nbytes -= sum(e.batch.nbytes for e in entries if e.last_sequence <= through)
                self._batches[table_id] = kept
            for table_id, f in files.items():
                self._files[table_id] = (*self._files.get(table_id, ()), f)

    def drop_table(self, table_id: int) -> None:
        with self._lock:
            self._nbytes -= sum(e.batch.nbytes for e in self._batches.pop(table_id, []))
            self._files.pop(table_id, None)
