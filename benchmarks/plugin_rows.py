"""Rows per second through a plugin that sums one float field, by how the batch reaches the plugin.

For batches of 1k, 100k and 1M rows (two tags, a float, an int, time), in one run:
1. plughost columnar: `sum(batch.column("usage").values)` on a view of the shared flush;
2. plughost lazy rows: `for row in batch["rows"]: total += row["usage"]` (rows decoded on access);
3. InfluxDB-3-style eager dicts: rows converted to dicts, plugin re-executed, loop over rows;
4. rows converted to dicts and pickled to a `multiprocessing` worker that sums them.
Paths 1–2 are plughost's full path (host → worker → subinterpreter → host). Also printed: the
cost of the one copy into shared memory (`PluginRuntime.share`), and the handoff cost (a no-op
plugin's run) at each size, which should not grow with the batch.

Run: `python -m benchmarks.plugin_rows [--quick]` (`--quick`: 1k and 100k rows, fewer repeats).
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time

from benchmarks.plugin_overhead import (
    NOOP_PLUGIN, InfluxDB3StyleEngine, NullDatabase, cpu_flush, eager_rows, temporary_plugins, timings,
)

COLUMNAR = """
def process_writes(influxdb3_local, table_batches, args=None):
    total = 0.0
    for batch in table_batches:
        total += sum(batch.column("usage").values)
    influxdb3_local.info(total)
"""
ROWS = """
def process_writes(influxdb3_local, table_batches, args=None):
    total = 0.0
    for batch in table_batches:
        for row in batch["rows"]:
            total += row["usage"]
    influxdb3_local.info(total)
"""


def _pool_sum(rows):
    return sum(row["usage"] for row in rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1k and 100k rows only, fewer repeats")
    options = parser.parse_args(argv)
    sizes = {1_000: 20, 100_000: 3} if options.quick else {1_000: 100, 100_000: 10, 1_000_000: 3}

    from sandbox.runtime import PluginRuntime, PluginSpec

    baseline = InfluxDB3StyleEngine(ROWS, "rows.py")
    table: dict[int, dict[str, float]] = {}
    handoff: dict[int, float] = {}
    share_cost: dict[int, float] = {}
    plugins = {"columnar.py": COLUMNAR, "rows.py": ROWS, "noop.py": NOOP_PLUGIN}
    with temporary_plugins(plugins) as plugin_dir, \
            PluginRuntime(NullDatabase(), plugin_dir, plugin_dir / "run", workers=1) as runtime, \
            multiprocessing.get_context("spawn").Pool(1) as pool:
        handles = {name: runtime.load(PluginSpec(name, "bench", f"{name}.py", "writes")) for name in ("columnar", "rows", "noop")}
        for size, repeat in sizes.items():
            flush = cpu_flush(size)
            batch = flush.tables[0].batch
            started = time.perf_counter()
            shared = runtime.share(flush)
            share_cost[size] = time.perf_counter() - started
            expected = sum(batch.column("usage").to_pylist())
            for name in ("columnar", "rows"):
                result = handles[name].run_writes(shared, None, None)
                assert result.ok and abs(float(result.logs[0].text) - expected) < 1e-6 * max(1.0, expected), result
            row = table.setdefault(size, {})
            row["plughost columnar"] = statistics.median(timings(lambda: handles["columnar"].run_writes(shared, None, None), repeat, 1))
            row["plughost lazy rows"] = statistics.median(timings(lambda: handles["rows"].run_writes(shared, None, None), repeat, 1))
            handoff[size] = statistics.median(timings(lambda: handles["noop"].run_writes(shared, None, None), max(repeat, 20), 2))
            row["InfluxDB-3-style eager dicts"] = statistics.median(timings(lambda: baseline.run_writes(batch, "cpu", None), repeat, 1))
            row["dicts pickled to a worker process"] = statistics.median(
                timings(lambda: pool.apply(_pool_sum, (eager_rows(batch),)), repeat, 1))
            shared.release()

    labels = list(next(iter(table.values())))
    print("rows/s through a plugin summing one float field (full call, median); ratio = rows/s vs eager dicts\n")
    print(f"{'rows':>9} " + " ".join(f"{label:>34}" for label in labels))
    for size, row in table.items():
        eager = row["InfluxDB-3-style eager dicts"]
        cells = [f"{size / seconds:14,.0f} rows/s ({eager / seconds:6.1f}×)" for seconds in row.values()]
        print(f"{size:>9,} " + " ".join(f"{cell:>34}" for cell in cells))
    print("\nhandoff (a no-op plugin's full run) and the one copy into shared memory per flush:")
    for size in table:
        print(f"{size:>9,} rows: handoff {handoff[size] * 1e6:8.1f} µs, share() copy {share_cost[size] * 1e3:8.2f} ms")
    sizes_seen = sorted(handoff)
    print(f"handoff growth {sizes_seen[0]:,} → {sizes_seen[-1]:,} rows: {handoff[sizes_seen[-1]] / handoff[sizes_seen[0]]:.2f}×")


if __name__ == "__main__":
    main()
