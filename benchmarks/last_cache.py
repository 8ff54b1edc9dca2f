"""The last-value cache against SQL over the table, and what feeding the caches costs per flush.

Writes 1k series x 1k points (1M rows) through `LocalDatabase.write_lp`, flushing every
10k-row body, with a `CacheService` holding an LVC (key: host, region) and a DVC (region,
host) on the table. Then, in the same run:

- queries: the newest row of every series through `last_cache('cpu')`, against the same
  answer computed by SQL over the table (ROW_NUMBER() per series, and a `last_value`
  aggregate); and one series' newest row, against `ORDER BY time DESC LIMIT 1`. Answers are
  checked equal before timing;
- feeding: the flushes' own batches applied again to fresh caches, as microseconds per
  10k-row flush, next to what `flush_now()` itself took per flush in the write phase.

Run: `python -m benchmarks.last_cache [--quick]`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from cache.distinct_value import DistinctValueCache
from cache.last_value import LastValueCache
from cache.service import CacheService
from cache.store import CacheStore
from benchmarks.query import BATCH_LINES, bodies, timed
from host.database import LocalDatabase


NEWEST_ROWS = "SELECT host, region, usage, load, time FROM {source}"
BY_ROW_NUMBER = ("(SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY host, region ORDER BY time DESC) AS rn "
                 "FROM cpu) AS ranked WHERE rn = 1) AS newest")
BY_LAST_VALUE = ("SELECT host, region, last_value(usage ORDER BY time) AS usage, last_value(load ORDER BY time) AS load, "
                 "max(time) AS time FROM cpu GROUP BY host, region")
ONE_SERIES_CACHE = "SELECT usage, load, time FROM last_cache('cpu') WHERE host = 'host42'"
ONE_SERIES_TABLE = "SELECT usage, load, time FROM cpu WHERE host = 'host42' ORDER BY time DESC LIMIT 1"


def rows(db: LocalDatabase, sql: str) -> list[tuple]:
    table = db.query("bench", sql)
    table = table.set_column(table.schema.get_field_index("time"), "time", table["time"].cast("int64"))
    return sorted(tuple(row.values()) for row in table.to_pylist())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1k series x 100 points, fewer repeats")
    args = parser.parse_args()
    series, points, repeat = (1000, 100, 3) if args.quick else (1000, 1000, 10)

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        db = LocalDatabase(data_dir, flush_interval=3600)
        db.start()
        store = CacheStore.in_directory(data_dir)
        caches = CacheService(db, store)
        db.create_database("bench")
        db.create_table("bench", "cpu", ["host", "region"], [("usage", "float64"), ("load", "int64")])
        lvc = caches.create_last_cache("bench", "cpu")
        dvc = caches.create_distinct_cache("bench", "cpu", ["region", "host"])
        flushed = []
        db.subscribe(lambda flush: flushed.extend(t.batch for t in flush.tables))
        try:
            flush_times = []
            for body in bodies(series, points):
                db.write_lp("bench", body)
                start = time.perf_counter()
                db.flush_now()
                flush_times.append(time.perf_counter() - start)
            store.sync()
            print(f"{series * points:,} rows, {series:,} series, flushed every {BATCH_LINES:,} rows")

            print("\nnewest row of every series")
            cached = NEWEST_ROWS.format(source="last_cache('cpu')")
            by_row_number = NEWEST_ROWS.format(source=BY_ROW_NUMBER)
            assert rows(db, cached) == rows(db, by_row_number) == rows(db, BY_LAST_VALUE)
            assert len(rows(db, cached)) == series
            cache_s = timed(lambda: db.query("bench", cached), repeat)
            for name, sql in (("ROW_NUMBER() per series", by_row_number), ("last_value() aggregate", BY_LAST_VALUE)):
                table_s = timed(lambda: db.query("bench", sql), repeat)
                print(f"  last_cache(): {cache_s * 1000:8.2f}ms   SQL {name}: {table_s * 1000:8.2f}ms   "
                      f"-> {table_s / cache_s:6.1f}x faster")

            print("\nnewest row of one series")
            assert rows(db, ONE_SERIES_CACHE) == rows(db, ONE_SERIES_TABLE)
            cache_s = timed(lambda: db.query("bench", ONE_SERIES_CACHE), repeat)
            table_s = timed(lambda: db.query("bench", ONE_SERIES_TABLE), repeat)
            print(f"  last_cache() WHERE host: {cache_s * 1000:8.2f}ms   ORDER BY time DESC LIMIT 1: "
                  f"{table_s * 1000:8.2f}ms   -> {table_s / cache_s:6.1f}x faster")

            schema = db.table_schema("bench", "cpu")
            fresh_lvc = LastValueCache(lvc, schema)
            fresh_dvc = DistinctValueCache(dvc)
            lvc_us, dvc_us, encode_us = [], [], []
            for batch in flushed:
                start = time.perf_counter()
                delta = fresh_lvc.ingest(batch)
                lvc_us.append((time.perf_counter() - start) * 1e6)
                start = time.perf_counter()
                fresh_dvc.ingest(batch)
                dvc_us.append((time.perf_counter() - start) * 1e6)
                start = time.perf_counter()
                delta()
                encode_us.append((time.perf_counter() - start) * 1e6)
            flush_us = statistics.median(flush_times) * 1e6
            print(f"\nfeeding the caches, median per {BATCH_LINES:,}-row flush ({len(flushed)} flushes)")
            print(f"  LVC ingest (on the flush thread):        {statistics.median(lvc_us):9.0f} us")
            print(f"  DVC ingest (on the flush thread):        {statistics.median(dvc_us):9.0f} us")
            print(f"  LVC delta encoding (store's own thread): {statistics.median(encode_us):9.0f} us")
            print(f"  flush_now() in the write phase, caches included (baseline): {flush_us:9.0f} us "
                  f"-> the caches are {(statistics.median(lvc_us) + statistics.median(dvc_us)) / flush_us:.0%} of it")
        finally:
            db.close()
            caches.close()
            store.close()


if __name__ == "__main__":
    main()
