"""The cache service: every last-value and distinct-value cache of a server, fed by WAL flushes, answered in SQL, kept in the store.

`CacheService(database, store)` loads every cache definition and its contents from the
store (so caches answer at once after a restart), registers the SQL table functions
`last_cache('table'[, 'name'])` and `distinct_cache('table'[, 'name'])` and the system tables
`system.last_caches` and `system.distinct_caches`, and subscribes to the database's flushes.
On each flush, every cache of a flushed table applies that table's batch, and the change is
queued to the store (never waited for: the flush thread does not touch the disk). Expired
rows and combinations are dropped every `EVICTION_INTERVAL` seconds of flushes, as InfluxDB
3's `--last-cache-eviction-interval` and `--distinct-cache-eviction-interval` default to.

Deleting a table or database must drop its caches: the owner calls `drop_table` / `drop_database`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import msgspec
import pyarrow as pa

from cache.distinct_value import DistinctCacheDefinition, DistinctValueCache, define_distinct_cache
from cache.last_value import LastCacheDefinition, LastValueCache, define_last_cache
from cache.store import CacheStore, DefinitionExists
from host.interface import FlushListener, QueryError, WalFlush

log = logging.getLogger("plughost.cache")

LAST_CACHE = "last_cache"
DISTINCT_CACHE = "distinct_cache"
EVICTION_INTERVAL = 10.0  # seconds

LAST_CACHES_SCHEMA = pa.schema([
    pa.field("table", pa.string(), nullable=False),
    pa.field("name", pa.string(), nullable=False),
    pa.field("key_column_ids", pa.list_(pa.uint16()), nullable=False),
    pa.field("key_column_names", pa.list_(pa.string()), nullable=False),
    pa.field("value_column_ids", pa.list_(pa.uint16())),
    pa.field("value_column_names", pa.list_(pa.string())),
    pa.field("count", pa.uint64(), nullable=False),
    pa.field("ttl", pa.uint64(), nullable=False),
])
DISTINCT_CACHES_SCHEMA = pa.schema([
    pa.field("table", pa.string(), nullable=False),
    pa.field("name", pa.string(), nullable=False),
    pa.field("column_ids", pa.list_(pa.uint16()), nullable=False),
    pa.field("column_names", pa.list_(pa.string()), nullable=False),
    pa.field("max_cardinality", pa.uint64(), nullable=False),
    pa.field("max_age_seconds", pa.uint64(), nullable=False),
])

_PLANNING = "Error during planning: "


class CacheNotFound(LookupError):
    """The database, table or cache named does not exist."""


class CacheExists(Exception):
    """A cache of that kind and name already exists on the table."""


class CacheHost(Protocol):
    """What the service needs from a database (`host.database.LocalDatabase` provides it)."""

    def subscribe(self, listener: FlushListener) -> Callable[[], None]: ...

    def table_schema(self, database: str, table: str) -> pa.Schema:
        """Raises LookupError for an unknown database or table."""
        ...

    def list_databases(self) -> list[str]: ...

    def register_table_function(self, name: str, provider: Callable[[str, list[str]], pa.Table]) -> None: ...

    def register_system_table(self, name: str, provider: Callable[[str], pa.Table]) -> None: ...


class _Entry:
    """A cache as the service holds it: its store id and its contents."""

    kind: str

    def __init__(self, store_id: int, cache: LastValueCache | DistinctValueCache):
        self.store_id = store_id
        self.cache = cache

    @property
    def definition(self) -> LastCacheDefinition | DistinctCacheDefinition:
        return self.cache.definition

    def ingest(self, batch: pa.RecordBatch, store: CacheStore) -> None:
        delta = self.cache.ingest(batch)
        if delta is None:
            return
        if self.cache.snapshot_due():
            store.replace_state(self.store_id, self.cache.take_snapshot())
        else:
            store.append_state(self.store_id, delta)


class _LastEntry(_Entry):
    kind = LAST_CACHE

    def evict(self, store: CacheStore) -> None:
        # replaying deltas then evicting gives the same contents: only the log's size matters
        if self.cache.evict() and self.cache.snapshot_due():
            store.replace_state(self.store_id, self.cache.take_snapshot())


class _DistinctEntry(_Entry):
    kind = DISTINCT_CACHE

    def evict(self, store: CacheStore) -> None:
        # pruning to max_cardinality is not reproducible by replaying deltas: snapshot it
        if self.cache.prune():
            store.replace_state(self.store_id, self.cache.take_snapshot())


_DEFINITION_TYPES = {LAST_CACHE: LastCacheDefinition, DISTINCT_CACHE: DistinctCacheDefinition}


class CacheService:
    """The LVCs and DVCs of one database server. Thread-safe.

    The constructor blocks while it loads the caches from the store. Create and delete calls
    block until the definition is durable in the store; flushes never wait for the store.
    """

    def __init__(self, database: CacheHost, store: CacheStore, *, clock: Callable[[], float] = time.time):
        self._database = database
        self._store = store
        self._clock = clock
        self._lock = threading.Lock()  # serializes registry changes with flushes being applied
        self._entries: dict[tuple[str, str, str, str], _Entry] = {}
        self._last_eviction = clock()
        self._load()
        database.register_table_function(LAST_CACHE, self._last_cache_function)
        database.register_table_function(DISTINCT_CACHE, self._distinct_cache_function)
        database.register_system_table("last_caches", self._last_caches_table)
        database.register_system_table("distinct_caches", self._distinct_caches_table)
        self._unsubscribe = database.subscribe(self._on_flush)

    def close(self) -> None:
        """Stop following flushes and wait until every queued change is in the store."""
        self._unsubscribe()
        self._store.sync()

    # -- last-value caches --------------------------------------------------------------------

    def create_last_cache(
        self,
        database: str,
        table: str,
        *,
        name: str | None = None,
        key_columns: Sequence[str] | None = None,
        value_columns: Sequence[str] | None = None,
        count: int | None = None,
        ttl: int | None = None,
    ) -> LastCacheDefinition:
        """Create an LVC (see `cache.last_value.define_last_cache` for the defaults).

        It caches rows flushed from now on. Blocks until the definition is durable.
        Raises CacheNotFound (database, table), ValueError (parameters), CacheExists.
        """
        schema = self._schema(database, table)
        definition = define_last_cache(
            database, table, schema, name=name, key_columns=key_columns, value_columns=value_columns,
            count=count, ttl=ttl,
        )
        return self._add(_LastEntry, LastValueCache(definition, schema, self._clock)).definition

    def delete_last_cache(self, database: str, table: str, name: str) -> None:
        """Delete an LVC and its contents. Blocks until durable. Raises CacheNotFound."""
        self._remove([self._entry(LAST_CACHE, database, table, name)])

    def last_caches(self, database: str) -> list[LastCacheDefinition]:
        """The database's LVCs, by table then name."""
        return self._definitions(LAST_CACHE, database)

    def last_cache_table(self, database: str, table: str, name: str | None = None) -> pa.Table:
        """What `last_cache('table'[, 'name'])` answers. Raises QueryError as InfluxDB 3 words it."""
        schema, entry = self._queried(LAST_CACHE, database, table, name)
        return entry.cache.table(schema)

    # -- distinct-value caches ----------------------------------------------------------------

    def create_distinct_cache(
        self,
        database: str,
        table: str,
        columns: Sequence[str],
        *,
        name: str | None = None,
        max_cardinality: int | None = None,
        max_age: int | None = None,
    ) -> DistinctCacheDefinition:
        """Create a DVC (see `cache.distinct_value.define_distinct_cache` for the defaults).

        It caches rows flushed from now on. Blocks until the definition is durable.
        Raises CacheNotFound (database, table), ValueError (parameters), CacheExists.
        """
        schema = self._schema(database, table)
        definition = define_distinct_cache(
            database, table, schema, columns, name=name, max_cardinality=max_cardinality, max_age=max_age,
        )
        return self._add(_DistinctEntry, DistinctValueCache(definition, self._clock)).definition

    def delete_distinct_cache(self, database: str, table: str, name: str) -> None:
        """Delete a DVC and its contents. Blocks until durable. Raises CacheNotFound."""
        self._remove([self._entry(DISTINCT_CACHE, database, table, name)])

    def distinct_caches(self, database: str) -> list[DistinctCacheDefinition]:
        """The database's DVCs, by table then name."""
        return self._definitions(DISTINCT_CACHE, database)

    def distinct_cache_table(self, database: str, table: str, name: str | None = None) -> pa.Table:
        """What `distinct_cache('table'[, 'name'])` answers. Raises QueryError as InfluxDB 3 words it."""
        _, entry = self._queried(DISTINCT_CACHE, database, table, name)
        return entry.cache.table()

    # -- upkeep ---------------------------------------------------------------------------------

    def drop_table(self, database: str, table: str) -> None:
        """Delete every cache of a table (call when the table is deleted). Blocks until durable."""
        self._remove([e for (_, db, t, _), e in self._entries.items() if (db, t) == (database, table)])

    def drop_database(self, database: str) -> None:
        """Delete every cache of a database (call when it is deleted). Blocks until durable."""
        self._remove([e for (_, db, _, _), e in self._entries.items() if db == database])

    def evict(self) -> None:
        """Drop expired LVC rows and prune DVCs now (flushes do it every EVICTION_INTERVAL)."""
        with self._lock:
            self._evict()

    # -- internals --------------------------------------------------------------------------------

    def _load(self) -> None:
        stale = []
        for kind, make in ((LAST_CACHE, self._last_entry), (DISTINCT_CACHE, self._distinct_entry)):
            for stored in self._store.definitions(kind):
                definition = msgspec.json.decode(stored.definition, type=_DEFINITION_TYPES[kind])
                try:
                    schema = self._database.table_schema(definition.database, definition.table)
                except LookupError:
                    log.warning("dropping %s %r: table %s.%s no longer exists", kind, definition.name,
                                definition.database, definition.table)
                    stale.append(stored.id)
                    continue
                entry = make(stored.id, definition, schema)
                entry.cache.restore(*self._store.load_state(stored.id))
                self._entries[(kind, definition.database, definition.table, definition.name)] = entry
        if stale:
            self._store.remove_definitions(stale)

    def _last_entry(self, store_id: int, definition: LastCacheDefinition, schema: pa.Schema) -> _Entry:
        return _LastEntry(store_id, LastValueCache(definition, schema, self._clock))

    def _distinct_entry(self, store_id: int, definition: DistinctCacheDefinition, schema: pa.Schema) -> _Entry:
        return _DistinctEntry(store_id, DistinctValueCache(definition, self._clock))

    def _on_flush(self, flush: WalFlush) -> None:
        with self._lock:
            entries = self._entries
            for flushed in flush.tables:
                for (_, db, table, _), entry in entries.items():
                    if db != flushed.database or table != flushed.table:
                        continue
                    try:
                        entry.ingest(flushed.batch, self._store)
                    except Exception:
                        log.exception("%s %r of %s.%s failed to apply a flush", entry.kind, entry.definition.name,
                                      db, table)
            if self._clock() - self._last_eviction >= EVICTION_INTERVAL:
                self._evict()

    def _evict(self) -> None:
        self._last_eviction = self._clock()
        for entry in self._entries.values():
            try:
                entry.evict(self._store)
            except Exception:
                log.exception("evicting from %s %r failed", entry.kind, entry.definition.name)

    def _schema(self, database: str, table: str) -> pa.Schema:
        if database not in self._database.list_databases():
            raise CacheNotFound(f"database not found: {database}")
        try:
            return self._database.table_schema(database, table)
        except LookupError:
            raise CacheNotFound(f"table not found: {database}.{table}") from None

    def _add(self, make: type[_Entry], cache: LastValueCache | DistinctValueCache) -> _Entry:
        definition = cache.definition
        key = (make.kind, definition.database, definition.table, definition.name)
        if key in self._entries:
            raise _exists(key)
        try:
            store_id = self._store.add_definition(*key, msgspec.json.encode(definition))
        except DefinitionExists:
            raise _exists(key) from None
        entry = make(store_id, cache)
        with self._lock:
            self._entries = {**self._entries, key: entry}
        return entry

    def _remove(self, entries: list[_Entry]) -> None:
        doomed = {id(e) for e in entries}
        with self._lock:
            self._entries = {k: e for k, e in self._entries.items() if id(e) not in doomed}
        if entries:
            self._store.remove_definitions(e.store_id for e in entries)

    def _entry(self, kind: str, database: str, table: str, name: str) -> _Entry:
        entry = self._entries.get((kind, database, table, name))
        if entry is None:
            what = "last cache" if kind == LAST_CACHE else "distinct cache"
            raise CacheNotFound(f"{what} not found: {name!r} on table {database}.{table}")
        return entry

    def _definitions(self, kind: str, database: str) -> list:
        found = [(t, n, e.definition) for (k, db, t, n), e in self._entries.items() if k == kind and db == database]
        return [definition for _, _, definition in sorted(found, key=lambda item: item[:2])]

    def _queried(self, kind: str, database: str, table: str, name: str | None) -> tuple[pa.Schema, _Entry]:
        try:
            schema = self._database.table_schema(database, table)
        except LookupError:
            raise QueryError(f"{_PLANNING}provided table name ({table}) is invalid") from None
        entries = self._entries
        if name is not None:
            entry = entries.get((kind, database, table, name))
        else:
            candidates = [e for (k, db, t, _), e in entries.items() if (k, db, t) == (kind, database, table)]
            entry = candidates[0] if len(candidates) == 1 else None
        if entry is None:
            what = "cache" if kind == LAST_CACHE else "distinct value cache"
            raise QueryError(f"{_PLANNING}could not find {what} for the given arguments")
        return schema, entry

    def _last_cache_function(self, database: str, args: list[str]) -> pa.Table:
        table, name = _function_arguments(args)
        return self.last_cache_table(database, table, name)

    def _distinct_cache_function(self, database: str, args: list[str]) -> pa.Table:
        table, name = _function_arguments(args)
        return self.distinct_cache_table(database, table, name)

    def _last_caches_table(self, database: str) -> pa.Table:
        rows = [
            {
                "table": d.table,
                "name": d.name,
                "key_column_ids": list(d.key_column_ids),
                "key_column_names": list(d.key_columns),
                "value_column_ids": None if d.value_column_ids is None else list(d.value_column_ids),
                "value_column_names": None if d.value_columns is None else list(d.value_columns),
                "count": d.count,
                "ttl": d.ttl,
            }
            for d in self.last_caches(database)
        ]
        return pa.Table.from_pylist(rows, schema=LAST_CACHES_SCHEMA)

    def _distinct_caches_table(self, database: str) -> pa.Table:
        rows = [
            {
                "table": d.table,
                "name": d.name,
                "column_ids": list(d.column_ids),
                "column_names": list(d.columns),
                "max_cardinality": d.max_cardinality,
                "max_age_seconds": d.max_age,
            }
            for d in self.distinct_caches(database)
        ]
        return pa.Table.from_pylist(rows, schema=DISTINCT_CACHES_SCHEMA)


def _function_arguments(args: list[str]) -> tuple[str, str | None]:
    if not args:
        raise QueryError(f"{_PLANNING}first argument must be the table name as a string")
    return args[0], (args[1] if len(args) > 1 else None)


def _exists(key: tuple[str, str, str, str]) -> CacheExists:
    kind, database, table, name = key
    what = "last cache" if kind == LAST_CACHE else "distinct cache"
    return CacheExists(f"a {what} named {name!r} already exists on table {database}.{table}")
