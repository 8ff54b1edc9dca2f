"""The distinct-value cache on real Arrow batches: definitions, hierarchy, max_age, max_cardinality, persistence."""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cache.distinct_value import DistinctValueCache, define_distinct_cache

TAG = pa.dictionary(pa.int32(), pa.string())
SECOND = 1_000_000_000
NOW = 1_700_000_000.0
SCHEMA = pa.schema([("region", TAG), ("host", TAG), ("os", pa.string()), ("usage", pa.float64()),
                    ("up", pa.bool_()), ("time", pa.timestamp("ns"))])


def batch(rows: list[tuple]) -> pa.RecordBatch:
    """Rows of (region, host, os, seconds before NOW)."""
    columns = list(zip(*rows)) if rows else [[], [], [], []]
    region, host, os, ago = columns
    times = [int((NOW - a) * SECOND) for a in ago]
    arrays = [pa.array(region, TAG), pa.array(host, TAG), pa.array(os, pa.string()),
              pa.nulls(len(rows), pa.float64()), pa.nulls(len(rows), pa.bool_()), pa.array(times, pa.timestamp("ns"))]
    return pa.RecordBatch.from_arrays(arrays, schema=SCHEMA)


class Clock:
    def __init__(self, now: float = NOW):
        self.now = now

    def __call__(self) -> float:
        return self.now


def rows_of(table: pa.Table) -> list[tuple]:
    return [tuple(row.values()) for row in table.to_pylist()]


def test_defaults_follow_influxdb3():
    definition = define_distinct_cache("db", "cpu", SCHEMA, ["region", "host"])
    assert (definition.name, definition.column_ids) == ("cpu_region_host_distinct_cache", (0, 1))
    assert (definition.max_cardinality, definition.max_age) == (100_000, 24 * 60 * 60)


@pytest.mark.parametrize("columns, parameters, message", [
    ([], {}, "no columns provided when creating distinct cache"),
    (["nope"], {}, "invalid column 'nope': the table has no such column"),
    (["usage"], {}, "invalid column 'usage': its type is double; a distinct value cache takes only tags and string"),
    (["up"], {}, "invalid column 'up': its type is bool"),
    (["region", "region"], {}, "a column is given twice"),
    (["region"], {"max_cardinality": 0}, "invalid max_cardinality 0"),
    (["region"], {"max_age": 0}, "invalid max_age 0"),
])
def test_bad_parameters_are_named(columns, parameters, message):
    with pytest.raises(ValueError, match=message):
        define_distinct_cache("db", "cpu", SCHEMA, columns, **parameters)


def test_answers_sorted_combinations_of_rows_having_every_column():
    cache = DistinctValueCache(define_distinct_cache("db", "cpu", SCHEMA, ["region", "host", "os"]), Clock())
    cache.ingest(batch([("us", "b", "linux", 5), ("eu", "a", "linux", 5), ("us", "a", "mac", 5),
                        ("us", "b", "linux", 4), ("us", None, "linux", 5), ("us", "c", None, 5)]))
    answer = cache.table()
    assert answer.schema == pa.schema([("region", pa.string()), ("host", pa.string()), ("os", pa.string())])
    assert rows_of(answer) == [("eu", "a", "linux"), ("us", "a", "mac"), ("us", "b", "linux")]
    assert cache.cardinality == 3


def test_entries_not_seen_within_max_age_are_hidden_then_pruned():
    clock = Clock()
    cache = DistinctValueCache(define_distinct_cache("db", "cpu", SCHEMA, ["region", "host"], max_age=60), clock)
    cache.ingest(batch([("us", "a", "-", 70), ("us", "b", "-", 30), ("eu", "a", "-", 10)]))
    assert rows_of(cache.table()) == [("eu", "a"), ("us", "b")]  # us/a was seen 70 s ago
    clock.now += 40  # us/b is now 70 s old
    assert rows_of(cache.table()) == [("eu", "a")]
    assert cache.prune() is True
    assert cache.cardinality == 1 and cache.prune() is False


def test_a_stale_parent_hides_its_children():
    # InfluxDB 3 keeps the time of the last row written through each level: here region `us`
    # was last written with an old timestamp, so us/b is hidden although us/b itself is recent
    clock = Clock()
    cache = DistinctValueCache(define_distinct_cache("db", "cpu", SCHEMA, ["region", "host"], max_age=60), clock)
    cache.ingest(batch([("us", "b", "-", 10), ("us", "a", "-", 90)]))
    assert rows_of(cache.table()) == []


def test_pruning_keeps_the_newest_max_cardinality_combinations():
    cache = DistinctValueCache(define_distinct_cache("db", "cpu", SCHEMA, ["host"], max_cardinality=2), Clock())
    cache.ingest(batch([("-", "a", "-", 3), ("-", "b", "-", 1), ("-", "c", "-", 2)]))
    assert cache.cardinality == 3  # enforced when pruning, as in InfluxDB 3
    assert cache.prune() is True
    assert rows_of(cache.table()) == [("b",), ("c",)]


def test_restoring_snapshots_and_deltas_rebuilds_the_same_contents():
    definition = define_distinct_cache("db", "cpu", SCHEMA, ["region", "host"], max_age=60)
    clock = Clock()
    cache = DistinctValueCache(definition, clock)
    cache.ingest(batch([("us", "a", "-", 50)]))
    snapshot = cache.take_snapshot()()
    deltas = [cache.ingest(batch([("us", "b", "-", 1), ("eu", "c", "-", 2)]))(),
              cache.ingest(batch([("us", "a", "-", 0)]))()]
    restored = DistinctValueCache(definition, clock)
    restored.restore(snapshot, deltas)
    assert rows_of(restored.table()) == rows_of(cache.table()) == [("eu", "c"), ("us", "a"), ("us", "b")]
    clock.now += 30  # us/a was refreshed by the last delta, so it stays
    assert rows_of(restored.table()) == rows_of(cache.table()) == [("eu", "c"), ("us", "a"), ("us", "b")]


class ReferenceCache:
    """InfluxDB 3's `DistinctCache::push` and `to_record_batch`, one row at a time."""

    def __init__(self, depth: int):
        self.levels: list[dict[tuple, int]] = [{} for _ in range(depth)]

    def push(self, values: tuple, time: int) -> None:
        if None in values:
            return
        for d in range(len(values)):
            self.levels[d][values[: d + 1]] = time

    def rows(self, cutoff: int) -> list[tuple]:
        return sorted(
            c for c in self.levels[-1]
            if all(self.levels[d][c[: d + 1]] > cutoff for d in range(len(c)))
        )


@settings(max_examples=150, deadline=None)
@given(flushes=st.lists(st.lists(
    st.tuples(st.sampled_from(["us", "eu", None]), st.sampled_from(["a", "b", "c"]),
              st.sampled_from(["linux", "mac", None]), st.integers(0, 120)), max_size=25), min_size=1, max_size=5))
def test_matches_a_row_at_a_time_model(flushes):
    definition = define_distinct_cache("db", "cpu", SCHEMA, ["region", "host", "os"], max_age=60)
    cache = DistinctValueCache(definition, Clock())
    reference = ReferenceCache(3)
    cutoff = int((NOW - 60) * SECOND)
    persisted = []
    for rows in flushes:
        delta = cache.ingest(batch(rows))
        if delta is not None:
            persisted.append(delta())
        for region, host, os, ago in rows:
            reference.push((region, host, os), int((NOW - ago) * SECOND))
        assert rows_of(cache.table()) == reference.rows(cutoff)
    restored = DistinctValueCache(definition, Clock())
    restored.restore(None, persisted)
    assert rows_of(restored.table()) == reference.rows(cutoff)
