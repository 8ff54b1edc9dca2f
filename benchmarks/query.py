"""Query overhead of LocalDatabase against DataFusion on one pre-registered in-memory table.

Writes 1k series x 1k points (2 tags, 2 fields; 1M rows) through `write_lp`, then times
typical plugin queries two ways in the same run:

- plughost: `LocalDatabase.query`, which builds a fresh SessionContext per query over the
  buffered batches (and, in the second round, over the same rows persisted to Parquet);
- baseline: the same SQL on a SessionContext created once, with the same rows registered
  once as an in-memory table split into one partition per core.

The ratio is our per-query overhead. The write phase also prints `write_lp` throughput next
to `host.lineprotocol.parse` alone. Run: `python -m benchmarks.query [--quick]`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa
from datafusion import SessionConfig, SessionContext

from host.database import LocalDatabase
from host.lineprotocol import parse

T0 = 1_704_067_200_000_000_000
STEP = 10_000_000_000  # 10 s between points of a series
BATCH_LINES = 10_000

QUERIES = {
    "count(*)": "SELECT count(*) FROM cpu",
    "last point of a series": "SELECT * FROM cpu WHERE host = 'host42' ORDER BY time DESC LIMIT 1",
    "DATE_BIN 10 min by region": (
        "SELECT DATE_BIN(INTERVAL '10 minutes', time, '1970-01-01T00:00:00Z') AS _time, region, "
        "avg(usage) AS usage, max(load) AS load FROM cpu GROUP BY _time, region"
    ),
    "filter on one tag": "SELECT avg(usage), min(time), max(time) FROM cpu WHERE host = 'host7'",
}


def bodies(series: int, points: int):
    """Line-protocol bodies of BATCH_LINES lines, point by point across all series."""
    lines = []
    for p in range(points):
        for s in range(series):
            lines.append(f"cpu,host=host{s},region=r{s % 10} usage={(s * 7 + p) % 100}.5,load={p % 13}i {T0 + p * STEP + s}")
            if len(lines) == BATCH_LINES:
                yield "\n".join(lines)
                lines = []
    if lines:
        yield "\n".join(lines)


def timed(run, repeat: int) -> float:
    run()  # warm up
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def baseline_context(table: pa.Table) -> SessionContext:
    config = SessionConfig().with_information_schema(True)
    ctx = SessionContext(config)
    per_partition = -(-table.num_rows // (os.cpu_count() or 1))
    ctx.register_record_batches("cpu", [[b] for b in table.to_batches(max_chunksize=per_partition)])
    return ctx


def compare(db: LocalDatabase, ctx: SessionContext, repeat: int, label: str) -> None:
    print(f"\n{label}")
    print(f"  {'query':28} {'plughost':>10} {'baseline':>10} {'ratio':>7}")
    for name, sql in QUERIES.items():
        ours = db.query("bench", sql)
        theirs = ctx.sql(sql).to_arrow_table()
        assert ours.num_rows == theirs.num_rows, (name, ours.num_rows, theirs.num_rows)
        ours_s = timed(lambda: db.query("bench", sql), repeat)
        theirs_s = timed(lambda: ctx.sql(sql).to_arrow_table(), repeat)
        print(f"  {name:28} {ours_s * 1000:8.2f}ms {theirs_s * 1000:8.2f}ms {ours_s / theirs_s:6.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 series x 500 points, fewer repeats")
    args = parser.parse_args()
    series, points, repeat = (100, 500, 3) if args.quick else (1000, 1000, 10)

    with tempfile.TemporaryDirectory() as tmp:
        with LocalDatabase(Path(tmp), flush_interval=3600) as db:
            all_bodies = list(bodies(series, points))
            start = time.perf_counter()
            for body in all_bodies[:5]:
                parse(body)
            parse_rate = sum(b.count("\n") + 1 for b in all_bodies[:5]) / (time.perf_counter() - start)
            start = time.perf_counter()
            for body in all_bodies:
                db.write_lp("bench", body)
            write_rate = series * points / (time.perf_counter() - start)
            db.flush_now()
            print(f"{series * points:,} rows in {len(all_bodies)} bodies of {BATCH_LINES:,} lines")
            print(f"  write_lp (parse + validate + WAL fsync + buffer): {write_rate:,.0f} lines/s")
            print(f"  parse alone (baseline):                           {parse_rate:,.0f} lines/s "
                  f"-> write_lp runs at {write_rate / parse_rate:.2f}x of parse speed")

            ctx = baseline_context(db.query("bench", "SELECT * FROM cpu"))
            compare(db, ctx, repeat, "buffered in memory (per-query SessionContext vs one registered table)")
            db.persist_now()
            compare(db, ctx, repeat, "persisted to Parquet (listing table per file vs in-memory table)")


if __name__ == "__main__":
    main()
