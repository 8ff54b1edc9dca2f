"""SQL with Apache DataFusion over a database's buffered batches and Parquet files.

Every query gets a fresh `SessionContext` whose catalog `public` is implemented here: schema
`iox` holds the database's tables, schema `system` the registered system tables, and
registered table functions (`last_cache(...)` and the like) are DataFusion UDTFs. Tables are
built lazily, when the planner asks for them, from one consistent snapshot each:

- buffered batches are read in place (shared with the buffer, not copied), spread over one
  partition per core;
- each Parquet file is a listing table read with the table's current schema (columns a file
  predates read as null);
- the parts are combined with UNION ALL.

The planner asks from inside DataFusion's async runtime, where DataFusion calls that block on
that runtime (registering a file) would panic; those run on the engine's builder threads.

A union is a DataFusion view, and `information_schema.tables` / `SHOW TABLES` would list it as
'VIEW'. InfluxDB 3 lists user tables as 'BASE TABLE'. information_schema is read at execution
time, after planning has resolved every table the query reads, so from then on the session
answers lookups with empty base tables of the same schema.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
from datafusion import DataFrame, Expr, SessionConfig, SessionContext, SQLOptions, udtf
from datafusion.catalog import CatalogProvider, SchemaProvider, Table

from host.buffer import QueryableBuffer
from host.catalog import INTERNAL_DATABASE, Catalog, DatabaseSchema, TableSchema
from host.errors import DatabaseNotFound, QueryError

SystemTableProvider = Callable[[str], pa.Table]
TableFunctionProvider = Callable[[str, list[str]], pa.Table]

_READ_ONLY = SQLOptions().with_allow_ddl(False).with_allow_dml(False).with_allow_statements(False)
_PARTITIONS = max(1, os.cpu_count() or 1)


class QueryEngine:
    """Runs SQL for one data directory. Thread-safe; each query blocks its caller only."""

    def __init__(self, data_dir: Path, catalog: Catalog, buffer: QueryableBuffer):
        self._data_dir = Path(data_dir).resolve()
        self._catalog = catalog
        self._buffer = buffer
        self._system_tables: dict[str, SystemTableProvider] = {}
        self._table_functions: dict[str, TableFunctionProvider] = {}
        self._builder = ThreadPoolExecutor(max_workers=4, thread_name_prefix="plughost-sql")

    def register_system_table(self, name: str, provider: SystemTableProvider) -> None:
        """Make `system.<name>` exist in every database, built by `provider(database)` per query."""
        self._system_tables[name] = provider

    def register_table_function(self, name: str, provider: TableFunctionProvider) -> None:
        """Make `name('arg', ...)` usable in FROM; `provider(database, args)` builds the table."""
        self._table_functions[name] = provider

    def query(self, database: str, sql: str, params: Mapping[str, str] | None = None) -> pa.Table:
        """Run `sql` against `database`; `$name` placeholders take `params`.

        Blocks for the query. Raises DatabaseNotFound, or QueryError with DataFusion's message.
        """
        db = self._catalog.database(database)
        if db is None:
            if database != INTERNAL_DATABASE:
                raise DatabaseNotFound(f"database not found: {database}")
            db = DatabaseSchema(0, INTERNAL_DATABASE, {})
        return _Session(self, db).run(sql, dict(params) if params else None)


class _Session:
    """The state of one query: its contexts, the tables it built, and its planning phase."""

    def __init__(self, engine: QueryEngine, db: DatabaseSchema):
        self.engine = engine
        self.db = db
        self.planning = True
        self.failure: BaseException | None = None
        # Parts of tables (memory, files) live here, out of the query's sight.
        self._parts = SessionContext()
        self._part_names = (f"p{i}" for i in itertools.count())
        self._built: dict[tuple, object] = {}
        config = (
            SessionConfig()
            .with_information_schema(True)
            .with_create_default_catalog_and_schema(False)
            .with_default_catalog_and_schema("public", "iox")
        )
        self.ctx = SessionContext(config)
        self.ctx.register_catalog_provider("public", _Catalog(self))
        for name, provider in engine._table_functions.items():
            self.ctx.register_udtf(udtf(self._table_function(name, provider), name))

    def run(self, sql: str, params: dict[str, str] | None) -> pa.Table:
        try:
            frame = self.ctx.sql_with_options(sql, _READ_ONLY, param_values=params)
            self.planning = False
            return frame.to_arrow_table()
        except Exception as e:
            if self.failure is not None:
                raise QueryError(str(self.failure)) from self.failure
            raise QueryError(str(e)) from None

    # -- tables ---------------------------------------------------------------------------
    # These run inside DataFusion's planner, on a thread that is driving its async runtime;
    # DataFusion calls that block on that runtime (registering files) must go to the
    # engine's builder threads instead.

    def user_table(self, name: str) -> Table | None:
        schema = self.db.tables.get(name)
        if schema is None:
            return None
        if not self.planning:
            return self._once(("described", name), lambda: _described(schema.arrow_schema))
        return self._once(("iox", name), lambda: self._build_user_table(schema))

    def system_table(self, name: str) -> Table | None:
        provider = self.engine._system_tables.get(name)
        if provider is None:
            return None
        table = self._once(("system-data", name), lambda: self._call(provider, self.db.name))
        if not self.planning:
            return self._once(("described-system", name), lambda: _described(table.schema))
        return self._once(("system", name), lambda: self._memory(table.schema, table.to_batches()))

    def _build_user_table(self, schema: TableSchema) -> Table:
        snapshot = self.engine._buffer.snapshot(schema)
        arrow_schema = schema.arrow_schema
        frames = []
        if snapshot.batches or not snapshot.files:
            frames.append(self._memory_frame(arrow_schema, snapshot.batches))
        if snapshot.files:
            paths = [str(self.engine._data_dir / f.path) for f in snapshot.files]
            frames.append(self.engine._builder.submit(self._files_frame, arrow_schema, paths).result())
        return Table(_union(frames))

    def _files_frame(self, schema: pa.Schema, paths: list[str]) -> DataFrame:
        frames = []
        for path in paths:
            part = next(self._part_names)
            self._parts.register_listing_table(part, path, schema=schema)
            frames.append(self._parts.table(part))
        return _union(frames)

    def _memory_frame(self, schema: pa.Schema, batches: list[pa.RecordBatch]) -> DataFrame:
        return _union([self._parts.read_batches(p) for p in _partitions(schema, batches)])

    def _memory(self, schema: pa.Schema, batches: list[pa.RecordBatch]) -> Table:
        return Table(self._memory_frame(schema, batches))

    def _once(self, key: tuple, build: Callable[[], object]):
        built = self._built.get(key)
        if built is None:
            built = self._built[key] = build()
        return built

    def _table_function(self, name: str, provider: TableFunctionProvider):
        def call(*exprs) -> Table:
            args = []
            for raw in exprs:
                expr = Expr(raw)
                if expr.variant_name() != "Literal":
                    raise self._fail(QueryError(f"{name}(): arguments must be literals"))
                value = expr.python_value()
                args.append(value if isinstance(value, str) else str(value))

            def build() -> Table:
                table = self._call(provider, self.db.name, args)
                return self._memory(table.schema, table.to_batches())

            return self._once(("function", name, *args), build)

        return call

    def _call(self, provider, *args) -> pa.Table:
        """Call a registered provider; its exception becomes the query's error, unwrapped."""
        try:
            return provider(*args)
        except Exception as e:
            raise self._fail(e)

    def _fail(self, error: BaseException) -> BaseException:
        self.failure = self.failure or error
        return error


def _described(schema: pa.Schema) -> Table:
    """An empty base table with `schema`, for information_schema after planning."""
    return Table(ds.dataset([], schema=schema))


def _union(frames: list[DataFrame]) -> DataFrame:
    frame = frames[0]
    for other in frames[1:]:
        frame = frame.union(other)
    return frame


def _partitions(schema: pa.Schema, batches: list[pa.RecordBatch]) -> list[list[pa.RecordBatch]]:
    """Spread batches over one partition per core by rows (zero-copy slices)."""
    total = sum(b.num_rows for b in batches)
    if total == 0:
        return [[pa.RecordBatch.from_pylist([], schema=schema)]]
    share = -(-total // _PARTITIONS)
    partitions: list[list[pa.RecordBatch]] = [[]]
    room = share
    for batch in batches:
        offset = 0
        while offset < batch.num_rows:
            if room == 0:
                partitions.append([])
                room = share
            take = min(room, batch.num_rows - offset)
            partitions[-1].append(batch.slice(offset, take) if take < batch.num_rows else batch)
            offset += take
            room -= take
    return partitions


class _Catalog(CatalogProvider):
    def __init__(self, session: _Session):
        self._schemas = {"iox": _UserTables(session), "system": _SystemTables(session)}

    def schema_names(self) -> set[str]:
        return set(self._schemas)

    def schema(self, name: str) -> SchemaProvider | None:
        return self._schemas.get(name)


class _UserTables(SchemaProvider):
    def __init__(self, session: _Session):
        self._session = session

    # datafusion-python reads `table_names` as an attribute, not a method.
    @property
    def table_names(self) -> list[str]:
        return list(self._session.db.tables)

    def table(self, name: str) -> Table | None:
        return self._session.user_table(name)

    def table_exist(self, name: str) -> bool:
        return name in self._session.db.tables


class _SystemTables(SchemaProvider):
    def __init__(self, session: _Session):
        self._session = session

    @property
    def table_names(self) -> list[str]:
        return list(self._session.engine._system_tables)

    def table(self, name: str) -> Table | None:
        return self._session.system_table(name)

    def table_exist(self, name: str) -> bool:
        return name in self._session.engine._system_tables
