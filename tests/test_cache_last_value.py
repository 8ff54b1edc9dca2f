"""The last-value cache on real Arrow batches: definitions, InfluxDB 3's semantics, ttl, persistence round trips."""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cache.last_value import LastValueCache, decode_rows, define_last_cache

TAG = pa.dictionary(pa.int32(), pa.string())
TIME = pa.timestamp("ns")
CPU = pa.schema([("host", TAG), ("region", TAG), ("usage", pa.float64()), ("time", TIME)])
WIDER = pa.schema([("host", TAG), ("region", TAG), ("usage", pa.float64()), ("status", pa.string()), ("time", TIME)])


def batch(rows: list[tuple], schema: pa.Schema = CPU) -> pa.RecordBatch:
    columns = list(zip(*rows)) if rows else [[] for _ in schema]
    return pa.RecordBatch.from_arrays([pa.array(c, type=f.type) for c, f in zip(columns, schema)], schema=schema)


def rows_of(table: pa.Table) -> list[tuple]:
    """Rows as tuples, time as int nanoseconds."""
    table = table.set_column(table.schema.get_field_index("time"), "time", table["time"].cast(pa.int64()))
    return [tuple(row.values()) for row in table.to_pylist()]


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- definitions ---------------------------------------------------------------------------------


def test_defaults_follow_influxdb3():
    definition = define_last_cache("db", "cpu", CPU)
    assert definition.key_columns == ("host", "region")
    assert definition.key_column_ids == (0, 1)
    assert definition.value_columns is None
    assert (definition.count, definition.ttl) == (1, 4 * 60 * 60)
    assert definition.name == "cpu_host_region_last_cache"


def test_explicit_columns_and_name():
    definition = define_last_cache("db", "cpu", CPU, name="mine", key_columns=["region"],
                                   value_columns=["usage", "time"], count=3, ttl=60)
    assert definition.name == "mine"
    assert (definition.key_columns, definition.value_columns, definition.value_column_ids) == (
        ("region",), ("usage",), (2,))
    assert define_last_cache("db", "cpu", CPU, key_columns=["region"]).name == "cpu_region_last_cache"


@pytest.mark.parametrize("parameters, message", [
    ({"key_columns": ["nope"]}, "invalid key column 'nope': the table has no such column"),
    ({"key_columns": ["usage"]}, "invalid key column 'usage': its type is double"),
    ({"key_columns": ["time"]}, "invalid key column 'time': its type is time"),
    ({"key_columns": ["host", "host"]}, "'host' is given twice"),
    ({"value_columns": ["nope"]}, "invalid value column 'nope': the table has no such column"),
    ({"value_columns": ["host"]}, "invalid value column 'host': it is a key column"),
    ({"count": 0}, "invalid last cache count 0: must be a whole number of rows, at least 1"),
    ({"ttl": -1}, "invalid last cache ttl -1"),
])
def test_bad_parameters_are_named(parameters, message):
    with pytest.raises(ValueError, match=message):
        define_last_cache("db", "cpu", CPU, **parameters)


def test_string_integer_and_boolean_fields_can_be_keys():
    schema = pa.schema([("s", pa.string()), ("i", pa.int64()), ("u", pa.uint64()), ("b", pa.bool_()),
                        ("v", pa.float64()), ("time", TIME)])
    definition = define_last_cache("db", "t", schema, key_columns=["s", "i", "u", "b"])
    cache = LastValueCache(definition, schema, Clock())
    cache.ingest(batch([("x", 1, 2, True, 1.0, 10), ("x", 1, 2, False, 2.0, 11), ("x", 1, 2, True, 3.0, 12)], schema))
    assert sorted(rows_of(cache.table(schema))) == [("x", 1, 2, False, 2.0, 11), ("x", 1, 2, True, 3.0, 12)]


# -- semantics -----------------------------------------------------------------------------------


def test_keeps_the_last_count_rows_per_key_newest_first_and_ignores_older_rows():
    cache = LastValueCache(define_last_cache("db", "cpu", CPU, count=2), CPU, Clock())
    cache.ingest(batch([("a", "x", 1.0, 10), ("b", "x", 2.0, 5), ("a", "x", 3.0, 8), ("a", "x", 4.0, 12),
                        ("a", "x", 5.0, 11), ("a", "x", 6.0, 20)]))
    assert rows_of(cache.table(CPU)) == [("a", "x", 6.0, 20), ("a", "x", 4.0, 12), ("b", "x", 2.0, 5)]
    cache.ingest(batch([("b", "x", 7.0, 4), ("b", "x", 8.0, 6), ("a", "x", 9.0, 20)]))  # 4 and 20 are not newer
    assert sorted(rows_of(cache.table(CPU))) == [
        ("a", "x", 4.0, 12), ("a", "x", 6.0, 20), ("b", "x", 2.0, 5), ("b", "x", 8.0, 6)]


def test_the_answer_keeps_the_tables_column_types():
    cache = LastValueCache(define_last_cache("db", "cpu", CPU), CPU, Clock())
    cache.ingest(batch([("a", "x", 1.0, 10)]))
    assert cache.table(CPU).schema == CPU


def test_rows_without_every_key_column_are_not_cached():
    cache = LastValueCache(define_last_cache("db", "cpu", CPU), CPU, Clock())
    assert cache.ingest(batch([(None, "x", 1.0, 10), ("a", None, 2.0, 11)])) is None
    assert cache.table(CPU).num_rows == 0


def test_a_dictionary_repeating_a_value_is_still_one_key():
    hosts = pa.DictionaryArray.from_arrays(pa.array([0, 1, 0], pa.int32()), pa.array(["a", "a"]))
    regions = pa.array(["x", "x", "x"], TAG)
    rows = pa.RecordBatch.from_arrays(
        [hosts, regions, pa.array([1.0, 2.0, 3.0]), pa.array([10, 12, 11], TIME)], schema=CPU)
    cache = LastValueCache(define_last_cache("db", "cpu", CPU, count=3), CPU, Clock())
    cache.ingest(rows)
    assert rows_of(cache.table(CPU)) == [("a", "x", 2.0, 12), ("a", "x", 1.0, 10)]  # 11 came after 12


def test_a_table_without_tags_has_one_key():
    schema = pa.schema([("usage", pa.float64()), ("time", TIME)])
    definition = define_last_cache("db", "m", schema, count=2)
    assert (definition.key_columns, definition.name) == ((), "m__last_cache")
    cache = LastValueCache(definition, schema, Clock())
    cache.ingest(batch([(1.0, 1), (2.0, 3), (3.0, 2)], schema))
    assert rows_of(cache.table(schema)) == [(2.0, 3), (1.0, 1)]


def test_value_columns_follow_new_columns_unless_fixed():
    accepting = LastValueCache(define_last_cache("db", "cpu", CPU), CPU, Clock())
    fixed = LastValueCache(define_last_cache("db", "cpu", CPU, name="fixed", value_columns=["usage"]), CPU, Clock())
    for cache in (accepting, fixed):
        cache.ingest(batch([("a", "x", 1.0, 10)]))
        cache.ingest(batch([("b", "x", 2.0, 11, )]))
        cache.ingest(batch([("c", "y", 3.0, "ok", 12)], WIDER))
    assert accepting.table(WIDER).schema == WIDER
    assert sorted(rows_of(accepting.table(WIDER))) == [
        ("a", "x", 1.0, None, 10), ("b", "x", 2.0, None, 11), ("c", "y", 3.0, "ok", 12)]
    assert fixed.table(WIDER).column_names == ["host", "region", "usage", "time"]
    # a column the table gained without a write since is in the answer, as nulls
    assert accepting.table(WIDER.insert(4, pa.field("later", pa.int64()))).column("later").null_count == 3


def test_rows_expire_after_the_ttl_from_insertion_and_the_key_then_accepts_older_times():
    clock = Clock()
    cache = LastValueCache(define_last_cache("db", "cpu", CPU, ttl=60), CPU, clock)
    cache.ingest(batch([("a", "x", 1.0, 100)]))
    clock.now += 30
    cache.ingest(batch([("b", "x", 2.0, 100)]))
    clock.now += 31  # a's row is 61 s old, b's 31 s
    assert rows_of(cache.table(CPU)) == [("b", "x", 2.0, 100)]
    assert cache.evict() is True and cache.num_rows == 1
    assert cache.evict() is False
    cache.ingest(batch([("a", "x", 3.0, 50), ("b", "x", 4.0, 50)]))  # a was emptied: 50 counts again
    assert sorted(rows_of(cache.table(CPU))) == [("a", "x", 3.0, 50), ("b", "x", 2.0, 100)]


# -- persistence ------------------------------------------------------------------------------------


def test_restoring_snapshots_and_deltas_rebuilds_the_same_contents():
    clock = Clock()
    definition = define_last_cache("db", "cpu", CPU, count=2, ttl=100)
    cache = LastValueCache(definition, CPU, clock)
    deltas = [cache.ingest(batch([("a", "x", 1.0, 10), ("b", "y", 2.0, 10)]))]
    snapshot = cache.take_snapshot()()
    clock.now += 50
    deltas = [cache.ingest(batch([("a", "x", 3.0, 11)])), cache.ingest(batch([("c", "y", "new", 12)], pa.schema(
        [("host", TAG), ("region", TAG), ("status", pa.string()), ("time", TIME)])))]
    delta_bytes = [delta() for delta in deltas]
    assert [r[:2] for r in rows_of(decode_rows(delta_bytes[0]))] == [("a", "x")]

    restored = LastValueCache(definition, WIDER, clock)
    restored.restore(snapshot, delta_bytes)
    assert sorted(rows_of(restored.table(WIDER))) == sorted(rows_of(cache.table(WIDER)))
    clock.now += 51  # the first flush's rows expire in both, the later ones in neither
    restored.restore(None, [])
    assert sorted(rows_of(restored.table(WIDER))) == sorted(rows_of(cache.table(WIDER)))
    assert restored.table(WIDER).num_rows == 2
    # after the restore, older rows are still refused
    restored.ingest(batch([("a", "x", 9.0, 11)]))
    assert sorted(rows_of(restored.table(WIDER))) == sorted(rows_of(cache.table(WIDER)))


# -- against a row-at-a-time model of InfluxDB 3's LastCacheStore ------------------------------------


class ReferenceCache:
    """InfluxDB 3's `LastCache::push`, one row at a time."""

    def __init__(self, count: int):
        self.count = count
        self.stores: dict[tuple, tuple[int, list[tuple]]] = {}

    def push(self, row: tuple) -> None:
        host, region, usage, time = row
        if host is None or region is None:
            return
        last, rows = self.stores.get((host, region), (0, []))
        if time <= last:
            return
        self.stores[(host, region)] = (time, [row, *rows][: self.count])

    def rows(self) -> list[tuple]:
        return sorted(row for _, rows in self.stores.values() for row in rows)


rows_strategy = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c", None]), st.sampled_from(["x", "y"]),
              st.integers(0, 9).map(float), st.integers(-3, 40)),
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(count=st.integers(1, 3), flushes=st.lists(rows_strategy, min_size=1, max_size=5))
def test_matches_a_row_at_a_time_model(count, flushes):
    cache = LastValueCache(define_last_cache("db", "cpu", CPU, count=count), CPU, Clock())
    reference = ReferenceCache(count)
    persisted = []
    for rows in flushes:
        delta = cache.ingest(batch(rows))
        if delta is not None:
            persisted.append(delta())
        for row in rows:
            reference.push(row)
        assert sorted(rows_of(cache.table(CPU))) == reference.rows()
    restored = LastValueCache(cache.definition, CPU, Clock())
    restored.restore(None, persisted)
    assert sorted(rows_of(restored.table(CPU))) == reference.rows()
