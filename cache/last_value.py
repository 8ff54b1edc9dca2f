"""The last-value cache (LVC): the newest rows of each key-column combination of a table, as InfluxDB 3 keeps them.

A cache keeps, per unique combination of its key columns, the last `count` rows it accepted,
newest first. A row is accepted only if its time is later than every time the cache already
accepted for its key (no out-of-order updates) and it has a value in every key column. Rows
live `ttl` seconds from their insertion (wall clock, not the row's timestamp); once every row
of a key is gone, the key accepts any time again. Value columns are all non-key columns,
including ones the table gains later, or a fixed list to which `time` is always added.

The contents are one Arrow table (the answer's columns plus a key id and the insertion
time), each key's rows together and newest first, replaced as a whole on each change, so
readers never lock. Each flush is applied with a handful of vectorized passes over that
flush's rows (`pyarrow.compute`); only the distinct keys of the flush are touched in Python.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

DEFAULT_COUNT = 1
DEFAULT_TTL_SECONDS = 4 * 60 * 60  # InfluxDB 3's DEFAULT_CACHE_TTL
TIME = "time"

# Hidden columns; the control character keeps them apart from any line-protocol column name.
_KEY = "\x1fkey"
_INSERTED = "\x1finserted"
_MAX_CHUNKS = 32
_SNAPSHOT_MIN_ROWS = 10_000


class LastCacheDefinition(msgspec.Struct, frozen=True):
    """One LVC as created: its table, name, columns (with their ids at creation), count and ttl.

    `value_columns` None means every non-key column, including columns added later.
    Column ids are positions in the table's schema when the cache was created.
    """

    database: str
    table: str
    name: str
    key_columns: tuple[str, ...]
    key_column_ids: tuple[int, ...]
    value_columns: tuple[str, ...] | None
    value_column_ids: tuple[int, ...] | None
    count: int
    ttl: int  # seconds


def define_last_cache(
    database: str,
    table: str,
    schema: pa.Schema,
    *,
    name: str | None = None,
    key_columns: Sequence[str] | None = None,
    value_columns: Sequence[str] | None = None,
    count: int | None = None,
    ttl: int | None = None,
) -> LastCacheDefinition:
    """Check the parameters against the table's schema and fill in InfluxDB 3's defaults.

    Defaults: key columns are the table's tags in order, value columns all other columns,
    count 1, ttl 4 hours, name `<table>_<key columns joined by _>_last_cache`.
    Raises ValueError naming the bad parameter.
    """
    count = DEFAULT_COUNT if count is None else count
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"invalid last cache count {count!r}: must be a whole number of rows, at least 1")
    ttl = DEFAULT_TTL_SECONDS if ttl is None else ttl
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 0:
        raise ValueError(f"invalid last cache ttl {ttl!r}: must be a whole number of seconds, at least 0")
    if key_columns is None:
        keys = [f.name for f in schema if pa.types.is_dictionary(f.type)]
    else:
        keys = list(key_columns)
        for column in keys:
            field = _field(schema, column, "key")
            if not is_valid_key_type(field.type):
                raise ValueError(
                    f"invalid key column {column!r}: its type is {column_type_name(field.type)}; key columns "
                    "must be tags or string, int64, uint64 or bool fields"
                )
        _check_unique(keys, "key")
    values = None
    if value_columns is not None:
        values = [column for column in value_columns if column != TIME]
        for column in values:
            _field(schema, column, "value")
            if column in keys:
                raise ValueError(f"invalid value column {column!r}: it is a key column of this cache")
        _check_unique(values, "value")
    ids = {n: i for i, n in enumerate(schema.names)}
    return LastCacheDefinition(
        database=database,
        table=table,
        name=name or f"{table}_{'_'.join(keys)}_last_cache",
        key_columns=tuple(keys),
        key_column_ids=tuple(ids[k] for k in keys),
        value_columns=None if values is None else tuple(values),
        value_column_ids=None if values is None else tuple(ids[v] for v in values),
        count=count,
        ttl=ttl,
    )


def is_valid_key_type(kind: pa.DataType) -> bool:
    """Tags, strings, integers, unsigned integers and booleans can key an LVC."""
    return (
        pa.types.is_dictionary(kind)
        or kind in (pa.string(), pa.int64(), pa.uint64(), pa.bool_())
    )


def column_type_name(kind: pa.DataType) -> str:
    """The catalog's name for a column of Arrow type `kind` (tag, time, float64, utf8, ...)."""
    if pa.types.is_dictionary(kind):
        return "tag"
    if pa.types.is_timestamp(kind):
        return "time"
    return {pa.string(): "utf8", pa.bool_(): "bool"}.get(kind, str(kind))


class LastValueCache:
    """The contents of one LVC. `ingest`, `evict` and `restore` come from one thread at a time.

    `table` may be called from any thread at any time: it reads the current contents, which
    are never modified in place. Nothing here blocks on I/O.
    """

    def __init__(self, definition: LastCacheDefinition, schema: pa.Schema, clock: Callable[[], float] = time.time):
        self.definition = definition
        self._clock = clock
        self._keys = list(definition.key_columns)
        self._fields = self._output_fields(schema)
        self._rows = _conform(pa.table({}), self._fields_with_hidden())
        self._ids: dict[tuple, int] = {}  # key values -> key id
        self._keys_by_id: dict[int, tuple] = {}
        self._next_id = 0
        self._logged_rows = 0

    # -- writes ---------------------------------------------------------------------------------

    def ingest(self, batch: pa.RecordBatch) -> Callable[[], bytes] | None:
        """Apply one flush's rows of the table.

        Returns None if nothing changed, else the change to persist, as a function that
        encodes the rows cached (`decode_rows` reads them back).
        """
        for key in self._keys:
            if batch.column(key).null_count:
                batch = batch.filter(pc.is_valid(batch.column(key)))
        if batch.num_rows == 0:
            return None
        self._fields = _union(self._output_fields(batch.schema), pa.schema(self._fields))
        key_ids = self._key_ids([batch.column(k) for k in self._keys], batch.num_rows)
        taken = self._newer_rows(key_ids, pc.cast(batch.column(TIME), pa.int64()))
        if len(taken) == 0:
            return None
        names = set(batch.schema.names)
        rows = pa.Table.from_batches([batch.take(taken)]).select([f.name for f in self._fields if f.name in names])
        rows = rows.append_column(_INSERTED, pa.repeat(pa.scalar(self._clock(), pa.float64()), len(taken)))
        self._merge(rows, key_ids.take(taken))
        self._logged_rows += len(taken)
        return functools.partial(encode_rows, rows)

    def evict(self) -> bool:
        """Drop rows older than the ttl; returns whether any were dropped."""
        rows = self._rows
        live = pc.greater(rows[_INSERTED], self._clock() - self.definition.ttl)
        if pc.all(live).as_py() is not False:
            return False
        kept = rows.filter(live)
        gone = pc.unique(rows.filter(pc.invert(live))[_KEY])
        emptied = gone.filter(pc.invert(pc.is_in(gone, value_set=kept[_KEY].combine_chunks())))
        for key_id in emptied.to_pylist():
            del self._ids[self._keys_by_id.pop(key_id)]
        self._rows = kept
        return True

    def restore(self, snapshot: bytes | None, deltas: Sequence[bytes]) -> None:
        """Load persisted contents (encoded snapshot and deltas, in order), then evict expired rows."""
        for data in ([snapshot] if snapshot is not None else []) + list(deltas):
            rows = decode_rows(data)
            if rows.num_rows == 0:
                continue
            ids = self._key_ids([rows[k].combine_chunks() for k in self._keys], rows.num_rows)
            rows = rows.append_column(_KEY, ids)
            rows = rows.take(pc.sort_indices(rows, [(_KEY, "ascending"), (TIME, "descending")]))
            rows = rows.filter(_leading(rows[_KEY].combine_chunks(), self.definition.count))
            self._fields = _union(self._fields, rows.schema)
            self._merge(rows.drop_columns([_KEY]), rows[_KEY].combine_chunks())
        self.evict()
        self._logged_rows = 0

    def snapshot_due(self) -> bool:
        """True once the rows persisted as deltas outweigh the contents (time for a snapshot)."""
        return self._logged_rows > max(_SNAPSHOT_MIN_ROWS, self._rows.num_rows)

    def take_snapshot(self) -> Callable[[], bytes]:
        """The whole contents as of now, as a function that encodes them; resets `snapshot_due`."""
        self._logged_rows = 0
        return functools.partial(encode_rows, self._rows.drop_columns([_KEY]))

    # -- reads ------------------------------------------------------------------------------------

    def table(self, schema: pa.Schema) -> pa.Table:
        """The cached rows that have not expired: key columns, then value columns, in `schema`'s types.

        `schema` is the table's current schema (columns it gained since the last write appear
        as nulls). Each key's rows are newest first.
        """
        rows = self._rows
        rows = rows.filter(pc.greater(rows[_INSERTED], self._clock() - self.definition.ttl))
        return _conform(rows, self._output_fields(schema))

    @property
    def num_rows(self) -> int:
        """Rows held, expired ones not yet evicted included."""
        return self._rows.num_rows

    # -- internals --------------------------------------------------------------------------------

    def _output_fields(self, schema: pa.Schema) -> list[pa.Field]:
        keys = [schema.field(k) for k in self._keys]
        explicit = self.definition.value_columns
        if explicit is None:
            values = [f for f in schema if f.name not in self.definition.key_columns]
        else:
            values = [schema.field(c) for c in explicit] + [schema.field(TIME)]
        return keys + values

    def _fields_with_hidden(self) -> list[pa.Field]:
        return [*self._fields, pa.field(_KEY, pa.int64()), pa.field(_INSERTED, pa.float64())]

    def _key_ids(self, columns: list[pa.Array], n: int) -> pa.Array:
        """Each row's key id, new keys getting new ids; only the flush's distinct keys reach Python.

        Rows are grouped by combining the columns' dictionary indices into one integer (each
        step re-encoded, so it stays below n * dictionary size), and each group's values are
        read from one of its rows.
        """
        code = None
        for position, column in enumerate(columns):
            encoded = column if pa.types.is_dictionary(column.type) else pc.dictionary_encode(column)
            indices = pc.cast(encoded.indices, pa.int64())
            code = indices if code is None else pc.add(pc.multiply(code, len(encoded.dictionary)), indices)
            if 0 < position < len(columns) - 1:
                code = pc.cast(pc.dictionary_encode(code).indices, pa.int64())
        if code is None:
            code = pa.repeat(pa.scalar(0, pa.int64()), n)
        groups = pc.dictionary_encode(code)
        first_rows = pc.index_in(groups.dictionary, value_set=code)
        keys = list(zip(*(_python_values(column, first_rows) for column in columns))) if columns else [()]
        group_ids = [self._ids.get(key) for key in keys]
        if None in group_ids:
            group_ids = [self._new_id(key) if i is None else i for key, i in zip(keys, group_ids)]
        return pa.array(group_ids, pa.int64()).take(groups.indices)

    def _new_id(self, key: tuple) -> int:
        key_id = self._ids.get(key)  # a dictionary repeating a value lists its key twice
        if key_id is None:
            key_id = self._ids[key] = self._next_id
            self._keys_by_id[key_id] = key
            self._next_id += 1
        return key_id

    def _newer_rows(self, key_ids: pa.Array, times: pa.Array) -> pa.Array:
        """Indices of the rows to cache, by key id, newest first, at most `count` per key.

        A row counts only if it is later than the key's cached time and than every earlier row
        of its key in this flush (InfluxDB 3 applies rows one at a time in write order). A key's
        cached time is its first cached row's (rows are newest first); a key without rows,
        never seen or emptied by the ttl, takes any time after 0, as in InfluxDB 3.
        """
        cached = self._rows
        position = pc.index_in(key_ids, value_set=cached[_KEY].combine_chunks())
        floor = pc.fill_null(pc.cast(cached[TIME], pa.int64()).take(position), 0).combine_chunks()
        count = self.definition.count
        if count == 1:
            # the newest row of each key, the first written among equal times, is the only candidate
            order = pc.sort_indices(pa.table({"k": key_ids, "t": times}), [("k", "ascending"), ("t", "descending")])
            order = order.filter(_leading(key_ids.take(order), 1))
            return order.filter(pc.greater(times.take(order), floor.take(order)))
        # Rows in (key, write order) order; ranking the times and offsetting each key's ranks
        # past the previous key's lets one running maximum serve as every key's own.
        n = len(times)
        order = pc.sort_indices(key_ids)  # stable: write order within a key
        ordinal = pc.cumulative_sum(pc.cast(_leading(key_ids.take(order), 1), pa.int64()))
        sorted_times = times.take(order)
        ranked = pc.add(pc.multiply(ordinal, n + 1), pc.cast(pc.rank(sorted_times, tiebreaker="dense"), pa.int64()))
        before = pa.concat_arrays([pa.array([-1], pa.int64()), pc.cumulative_max(ranked).slice(0, n - 1)])
        newer = pc.and_(pc.greater(ranked, before), pc.greater(sorted_times, floor.take(order)))
        order = order.filter(newer)
        ids = key_ids.take(order)
        newest_first = pc.sort_indices(pa.table({"k": ids, "t": times.take(order)}),
                                       [("k", "ascending"), ("t", "descending")])
        return order.take(newest_first).filter(_leading(ids.take(newest_first), count))

    def _merge(self, rows: pa.Table, key_ids: pa.Array) -> None:
        """Make `rows` (grouped by key, newest first, at most `count` each) the newest rows of their keys."""
        fields = self._fields_with_hidden()
        new = _conform(rows.append_column(_KEY, key_ids), fields)
        cached = _conform(self._rows, fields)
        if cached.num_rows:
            touched = pc.is_in(cached[_KEY], value_set=pc.unique(key_ids))
            if self.definition.count > 1:
                combined = pa.concat_tables([cached.filter(touched), new])
                combined = combined.take(pc.sort_indices(combined, [(_KEY, "ascending"), (TIME, "descending")]))
                new = combined.filter(_leading(combined[_KEY].combine_chunks(), self.definition.count))
            cached = cached.filter(pc.invert(touched))
        merged = pa.concat_tables([cached, new])
        if merged.num_columns and merged.column(0).num_chunks > _MAX_CHUNKS:
            merged = merged.combine_chunks()
        self._rows = merged


def _field(schema: pa.Schema, column: str, role: str) -> pa.Field:
    index = schema.get_field_index(column)
    if index < 0:
        raise ValueError(f"invalid {role} column {column!r}: the table has no such column")
    return schema.field(index)


def _check_unique(columns: list[str], role: str) -> None:
    seen = set()
    for column in columns:
        if column in seen:
            raise ValueError(f"invalid {role} columns: {column!r} is given twice")
        seen.add(column)


def _python_values(column: pa.Array, rows: pa.Array) -> list:
    picked = column.take(rows)
    # decoding first: a dictionary array's to_pylist goes through one scalar per value
    return (picked.dictionary_decode() if pa.types.is_dictionary(picked.type) else picked).to_pylist()


def _leading(groups: pa.Array, count: int) -> pa.Array:
    """A mask of the first `count` rows of each run of equal values in `groups`."""
    n = len(groups)
    if n == 0:
        return pa.array([], pa.bool_())
    starts = pa.concat_arrays([pa.array([True]), pc.not_equal(groups.slice(1), groups.slice(0, n - 1))])
    if count == 1:
        return starts
    index = pc.subtract(pc.cumulative_sum(pa.repeat(pa.scalar(1, pa.int64()), n)), 1)
    start_index = pc.cumulative_max(pc.if_else(starts, index, 0))
    return pc.less(pc.subtract(index, start_index), count)


def _union(fields: list[pa.Field], schema: pa.Schema) -> list[pa.Field]:
    """`fields` plus those of `schema` (minus hidden ones) it lacks, keeping `fields`' order."""
    known = {f.name for f in fields}
    return fields + [f for f in schema if f.name not in known and f.name not in (_KEY, _INSERTED)]


def _conform(table: pa.Table, fields: list[pa.Field]) -> pa.Table:
    """`table` with exactly `fields`, in order; columns it lacks are null."""
    names = table.column_names
    if names == [f.name for f in fields] and all(table.schema.field(f.name).type == f.type for f in fields):
        return table
    columns = [
        table[f.name] if f.name in names else pa.nulls(table.num_rows, f.type)
        for f in fields
    ]
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def encode_rows(rows: pa.Table) -> bytes:
    """Rows (a delta or a snapshot) as Arrow IPC stream bytes."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, rows.schema) as writer:
        writer.write_table(rows)
    return sink.getvalue().to_pybytes()


def decode_rows(data: bytes) -> pa.Table:
    """Rows encoded by `encode_rows`."""
    return pa.ipc.open_stream(data).read_all()
