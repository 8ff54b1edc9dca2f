"""The catalog: databases, tables, their columns and Parquet files, persisted atomically.

The catalog lives in `<data_dir>/catalog.json`. Every change is written to a temporary file,
fsync'd, renamed over the old file and the directory fsync'd before the changing call
returns, so a crash leaves either the old or the new catalog, never a torn one.

Readers never lock: `Catalog.database(name)` returns an immutable `DatabaseSchema` snapshot,
and a change replaces the snapshot as a whole. Writers (column additions, admin calls,
persistence bookkeeping) are serialized by one lock and block for the catalog's fsync.

Column order. A table's Arrow schema is its tags in first-seen order, then its fields in
first-seen order, then `time`. (InfluxDB 3 fixes the tag order at the first write too; IOx
sorted columns by name, which we do not.)
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Literal

import msgspec
import pyarrow as pa

from host.errors import AlreadyExists, InvalidName, InvalidSchema, NotFound

TAG = "tag"
TIME = "time"
TIME_COLUMN = "time"
INTERNAL_DATABASE = "_internal"

TAG_ARROW_TYPE = pa.dictionary(pa.int32(), pa.string())
TIME_ARROW_TYPE = pa.timestamp("ns")
FIELD_ARROW_TYPES: dict[str, pa.DataType] = {
    "float64": pa.float64(),
    "int64": pa.int64(),
    "uint64": pa.uint64(),
    "bool": pa.bool_(),
    "utf8": pa.string(),
}
# The field type names InfluxDB 3's `create table --fields name:type` accepts.
FIELD_TYPE_NAMES: dict[str, str] = {name: name for name in FIELD_ARROW_TYPES} | {"string": "utf8"}

# InfluxDB 3's rule for database names.
_DATABASE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")

ColumnType = Literal["tag", "time", "float64", "int64", "uint64", "bool", "utf8"]


def check_database_name(name: str) -> None:
    """Raise InvalidName unless `name` follows InfluxDB 3's database naming rule."""
    if not isinstance(name, str) or not _DATABASE_NAME.fullmatch(name):
        raise InvalidName(
            f"invalid database name {name!r}: use 1 to 64 letters, digits, '_' or '-'"
        )


def check_table_name(name: str) -> None:
    """Raise InvalidName for an empty table name or one with control characters."""
    if not isinstance(name, str) or not name or any(ord(c) < 32 for c in name):
        raise InvalidName(f"invalid table name {name!r}: must be non-empty printable text")


def field_type(name: str) -> str:
    """The canonical field type for an InfluxDB 3 type name; raise InvalidSchema if unknown."""
    try:
        return FIELD_TYPE_NAMES[name]
    except (KeyError, TypeError):
        known = ", ".join(FIELD_TYPE_NAMES)
        raise InvalidSchema(f"unknown field type {name!r}: expected one of {known}") from None


class ColumnDef(msgspec.Struct, frozen=True):
    """One column: its name and its type (`tag`, `time`, or a field type name)."""

    name: str
    type: str

    @property
    def arrow_type(self) -> pa.DataType:
        if self.type == TAG:
            return TAG_ARROW_TYPE
        if self.type == TIME:
            return TIME_ARROW_TYPE
        return FIELD_ARROW_TYPES[self.type]


class ParquetFile(msgspec.Struct, frozen=True):
    """A persisted Parquet file of one table; `path` is relative to the data directory."""

    path: str
    first_sequence: int
    last_sequence: int
    row_count: int
    size_bytes: int
    min_time: int
    max_time: int


class _TableRecord(msgspec.Struct, frozen=True):
    id: int
    name: str
    columns: tuple[ColumnDef, ...]
    parquet_files: tuple[ParquetFile, ...] = ()


class _DatabaseRecord(msgspec.Struct, frozen=True):
    id: int
    name: str
    tables: tuple[_TableRecord, ...] = ()


class _CatalogRecord(msgspec.Struct, frozen=True):
    """The on-disk format of `catalog.json`."""

    next_id: int = 1
    persisted_sequence: int = 0
    databases: tuple[_DatabaseRecord, ...] = ()


class TableSchema:
    """One table's columns in schema order (tags, fields, time). Immutable."""

    __slots__ = ("id", "name", "columns", "types", "arrow_schema")

    def __init__(self, id: int, name: str, columns: Iterable[ColumnDef]):
        columns = tuple(columns)
        tags = [c for c in columns if c.type == TAG]
        fields = [c for c in columns if c.type not in (TAG, TIME)]
        self.id = id
        self.name = name
        self.columns: tuple[ColumnDef, ...] = (*tags, *fields, ColumnDef(TIME_COLUMN, TIME))
        self.types: dict[str, str] = {c.name: c.type for c in self.columns}
        self.arrow_schema = pa.schema([pa.field(c.name, c.arrow_type) for c in self.columns])

    @property
    def tag_names(self) -> list[str]:
        return [c.name for c in self.columns if c.type == TAG]

    def with_columns(self, added: Iterable[ColumnDef]) -> TableSchema:
        return TableSchema(self.id, self.name, (*self.columns, *added))

    def __repr__(self) -> str:
        return f"TableSchema({self.name!r}, {[(c.name, c.type) for c in self.columns]})"


class DatabaseSchema:
    """One database: its id, name and tables by name. Immutable."""

    __slots__ = ("id", "name", "tables", "tables_by_id")

    def __init__(self, id: int, name: str, tables: Mapping[str, TableSchema]):
        self.id = id
        self.name = name
        self.tables: dict[str, TableSchema] = dict(tables)
        self.tables_by_id: dict[int, TableSchema] = {t.id: t for t in self.tables.values()}

    def with_table(self, table: TableSchema) -> DatabaseSchema:
        return DatabaseSchema(self.id, self.name, self.tables | {table.name: table})

    def without_table(self, name: str) -> DatabaseSchema:
        return DatabaseSchema(self.id, self.name, {n: t for n, t in self.tables.items() if n != name})


class Catalog:
    """Databases, tables and Parquet files of one data directory.

    Reads are lock-free snapshots. Each mutating call blocks until the new catalog is durable
    on disk, then returns; mutations are serialized.
    """

    FILE_NAME = "catalog.json"

    def __init__(self, data_dir: Path):
        self._path = Path(data_dir) / self.FILE_NAME
        self._lock = threading.Lock()
        record = _CatalogRecord()
        if self._path.exists():
            record = msgspec.json.decode(self._path.read_bytes(), type=_CatalogRecord)
        self._next_id = record.next_id
        self._persisted_sequence = record.persisted_sequence
        self._databases: dict[str, DatabaseSchema] = {}
        self._files: dict[int, tuple[ParquetFile, ...]] = {}
        for db in record.databases:
            tables = {}
            for t in db.tables:
                tables[t.name] = TableSchema(t.id, t.name, t.columns)
                self._files[t.id] = t.parquet_files
            self._databases[db.name] = DatabaseSchema(db.id, db.name, tables)

    # -- reads (lock-free) -------------------------------------------------------------------

    def database(self, name: str) -> DatabaseSchema | None:
        return self._databases.get(name)

    def database_names(self) -> list[str]:
        return sorted(self._databases)

    def databases(self) -> list[DatabaseSchema]:
        return list(self._databases.values())

    def table(self, database: str, table: str) -> TableSchema | None:
        db = self._databases.get(database)
        return db.tables.get(table) if db else None

    def table_by_id(self, table_id: int) -> tuple[DatabaseSchema, TableSchema] | None:
        for db in self._databases.values():
            table = db.tables_by_id.get(table_id)
            if table is not None:
                return db, table
        return None

    @property
    def persisted_sequence(self) -> int:
        """The WAL sequence whose rows, and all before it, are in Parquet files."""
        return self._persisted_sequence

    def parquet_files(self, table_id: int) -> tuple[ParquetFile, ...]:
        return self._files.get(table_id, ())

    def iter_parquet_files(self) -> Iterator[tuple[str, str, ParquetFile]]:
        """Every committed Parquet file as (database, table, file)."""
        for db in list(self._databases.values()):
            for table in db.tables.values():
                for f in self._files.get(table.id, ()):
                    yield db.name, table.name, f

    # -- mutations (serialized, durable on return) -------------------------------------------

    def create_database(self, name: str) -> DatabaseSchema:
        """Create an empty database. Raises InvalidName, AlreadyExists."""
        check_database_name(name)
        with self._lock:
            if name in self._databases or name == INTERNAL_DATABASE:
                raise AlreadyExists(f"database already exists: {name}")
            db = DatabaseSchema(self._take_id(), name, {})
            self._databases = self._databases | {name: db}
            self._save()
            return db

    def delete_database(self, name: str) -> DatabaseSchema:
        """Remove a database and its tables from the catalog. Raises NotFound."""
        with self._lock:
            db = self._databases.get(name)
            if db is None:
                raise NotFound(f"database not found: {name}")
            self._databases = {n: d for n, d in self._databases.items() if n != name}
            for table_id in db.tables_by_id:
                self._files.pop(table_id, None)
            self._save()
            return db

    def create_table(self, database: str, table: str, columns: Iterable[ColumnDef]) -> TableSchema:
        """Create a table in an existing database. Raises NotFound, AlreadyExists, InvalidSchema."""
        check_table_name(table)
        columns = tuple(columns)
        _check_unique(table, columns)
        with self._lock:
            db = self._databases.get(database)
            if db is None:
                raise NotFound(f"database not found: {database}")
            if table in db.tables:
                raise AlreadyExists(f"table already exists: {database}.{table}")
            schema = TableSchema(self._take_id(), table, columns)
            self._databases = self._databases | {database: db.with_table(schema)}
            self._save()
            return schema

    def delete_table(self, database: str, table: str) -> TableSchema:
        """Remove a table from the catalog. Raises NotFound."""
        with self._lock:
            db = self._databases.get(database)
            schema = db.tables.get(table) if db else None
            if schema is None:
                raise NotFound(f"table not found: {database}.{table}")
            self._databases = self._databases | {database: db.without_table(table)}
            self._files.pop(schema.id, None)
            self._save()
            return schema

    def add_columns(
        self, database: str, additions: Mapping[str, Iterable[ColumnDef]]
    ) -> DatabaseSchema:
        """Create the database and tables as needed and append new columns to tables.

        A column that already exists with the same type is skipped; with another type it
        raises InvalidSchema (callers validate against a snapshot first, so this only fires
        on a real conflict). Returns the new database snapshot, durable on return.
        """
        check_database_name(database)
        with self._lock:
            db = self._databases.get(database)
            if db is None:
                db = DatabaseSchema(self._take_id(), database, {})
            for table_name, columns in additions.items():
                table = db.tables.get(table_name)
                if table is None:
                    check_table_name(table_name)
                    table = TableSchema(self._take_id(), table_name, ())
                new = []
                for column in columns:
                    existing = table.types.get(column.name)
                    if existing is None:
                        new.append(column)
                    elif existing != column.type:
                        raise InvalidSchema(
                            f"column {table_name}.{column.name} is {existing}, not {column.type}"
                        )
                _check_unique(table_name, new)
                if new or table_name not in db.tables:
                    db = db.with_table(table.with_columns(new))
            if db is not self._databases.get(database):
                self._databases = self._databases | {database: db}
                self._save()
            return db

    def record_persist(self, sequence: int, files: Mapping[int, ParquetFile]) -> set[int]:
        """Add persisted files and advance the persisted WAL sequence, durably.

        Files of tables deleted meanwhile are not recorded; their table ids are returned so
        the caller can remove the files.
        """
        with self._lock:
            dropped = set()
            live = {t for db in self._databases.values() for t in db.tables_by_id}
            for table_id, f in files.items():
                if table_id in live:
                    self._files[table_id] = (*self._files.get(table_id, ()), f)
                else:
                    dropped.add(table_id)
            self._persisted_sequence = max(self._persisted_sequence, sequence)
            self._save()
            return dropped

    # -- internals ------------------------------------------------------------------------

    def _take_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def _save(self) -> None:
        record = _CatalogRecord(
            next_id=self._next_id,
            persisted_sequence=self._persisted_sequence,
            databases=tuple(
                _DatabaseRecord(
                    db.id,
                    db.name,
                    tuple(
                        _TableRecord(t.id, t.name, t.columns, self._files.get(t.id, ()))
                        for t in db.tables.values()
                    ),
                )
                for db in self._databases.values()
            ),
        )
        write_atomically(self._path, msgspec.json.format(msgspec.json.encode(record)))


def _check_unique(table: str, columns: Iterable[ColumnDef]) -> None:
    seen = set()
    for column in columns:
        if column.name == TIME_COLUMN:
            raise InvalidSchema(f"table {table}: 'time' is reserved for the timestamp column")
        if column.name in seen:
            raise InvalidSchema(f"table {table}: column {column.name!r} is defined twice")
        seen.add(column.name)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so a crash leaves the old or the new content.

    Blocks for two fsyncs (file, then directory).
    """
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """Make a rename or unlink inside `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
