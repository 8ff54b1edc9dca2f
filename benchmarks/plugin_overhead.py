"""Invocation overhead of a no-op process_writes, warm, against an InfluxDB-3-style engine and a process pool.

Measured in one run, on the same 10-row flush:
1. plughost, full path: host → worker process → the trigger's subinterpreter → reply to the host
   (`PluginHandle.run_writes`);
2. plughost, the in-worker part alone: the same plugin-side code driven in this process through a
   subinterpreter (`sandbox.worker.SubinterpreterHost`), without the process hop;
3. InfluxDB-3-style baseline: one shared interpreter; per call the plugin source is re-executed
   in fresh globals and the batch is converted to row dicts (what InfluxDB 3 does per call);
4. a `multiprocessing` pool round trip (`Pool.apply`) carrying the same rows to a no-op function.

Prints median and p99 in µs and the ratios against plughost's full path.

Run: `python -m benchmarks.plugin_overhead [--quick]`.

The module also holds the setup the other plugin benchmarks share (a null database, synthetic
flushes, temporary plugin directories, timing helpers).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import msgspec
import pyarrow as pa

from host.interface import FlushedTable, WalFlush, WriteResult

NOOP_PLUGIN = "def process_writes(influxdb3_local, table_batches, args=None):\n    pass\n"


class NullDatabase:
    """A Database for benchmarks whose plugins never call back into it."""

    def write_lp(self, database, lines, *, precision="auto", accept_partial=True, no_sync=False):
        return WriteResult(lines_written=0)

    def query(self, database, sql, params=None):
        raise NotImplementedError("benchmark plugins do not query")

    def subscribe(self, listener):
        return lambda: None


def cpu_batch(rows: int) -> pa.RecordBatch:
    """`rows` rows of a typical table: two tags, a float and an int field, time."""
    return pa.RecordBatch.from_arrays(
        [
            pa.array([f"host{i % 100}" for i in range(rows)]).dictionary_encode(),
            pa.array([f"r{i % 7}" for i in range(rows)]).dictionary_encode(),
            pa.array([(i % 1000) / 10 for i in range(rows)], pa.float64()),
            pa.array(range(rows), pa.int64()),
            pa.array(range(1_700_000_000_000_000_000, 1_700_000_000_000_000_000 + rows), pa.timestamp("ns")),
        ],
        ["host", "region", "usage", "count", "time"],
    )


def cpu_flush(rows: int) -> WalFlush:
    return WalFlush(1, [FlushedTable("bench", "cpu", cpu_batch(rows))])


def eager_rows(batch: pa.RecordBatch) -> list[dict]:
    """InfluxDB 3's per-call conversion done the Python way: every row a dict, time as int ns."""
    columns = [c.cast(pa.int64()) if pa.types.is_timestamp(c.type) else c for c in batch.columns]
    return pa.RecordBatch.from_arrays(columns, batch.schema.names).to_pylist()


@contextlib.contextmanager
def temporary_plugins(plugins: dict[str, str]) -> Iterator[Path]:
    """A temporary plugin directory holding `plugins` (file name → source), removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="plughost-bench-") as directory:
        for name, source in plugins.items():
            (Path(directory) / name).write_text(source)
        yield Path(directory)


def timings(call: Callable[[], object], repeat: int, warmup: int = 0) -> list[float]:
    """Seconds taken by each of `repeat` calls, after `warmup` untimed ones."""
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples


def median_p99(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


class InfluxDB3StyleEngine:
    """The baseline: InfluxDB 3's per-call work, in this one interpreter."""

    class Local:
        def info(self, *args):
            pass

    def __init__(self, source: str, filename: str) -> None:
        self.source = source
        self.filename = filename

    def run_writes(self, batch: pa.RecordBatch, table: str, args) -> None:
        code = compile(self.source, self.filename, "exec")
        plugin_globals: dict = {}
        exec(code, plugin_globals)
        table_batches = [{"table_name": table, "rows": eager_rows(batch)}]
        plugin_globals["process_writes"](self.Local(), table_batches, None if args is None else dict(args))


def _pool_noop(rows):
    return len(rows)


def in_worker_runner(plugin_path: Path, flush_layout, segment: memoryview):
    """Drive the plugin side in a subinterpreter of this process; returns (a no-arg call, a
    close call that ends the interpreter's threads and destroys it — 3.13.0 hangs at exit otherwise)."""
    import marshal

    from sandbox import protocol
    from sandbox.guest import framing
    from sandbox.worker import SubinterpreterHost

    host_end, reply_end = socket.socketpair()
    config = protocol.LoadConfig(
        trigger_name="bench", database="bench", plugin_path=str(plugin_path), plugin_dir=str(plugin_path.parent),
        kind="writes", reload="on_change", dry_run=False, cache_local_namespace=None,
        cache_global_namespace="global", cache_default_ttl=None, services_path="/nonexistent",
    )
    interpreter = SubinterpreterHost()
    interrupt_read, interrupt_write = os.pipe()
    interpreter.install(msgspec.json.encode(config), os.dup(reply_end.fileno()), interrupt_read)
    framing.receive(host_end)
    layout = marshal.dumps(msgspec.to_builtins(flush_layout))
    call = ("writes", None, None, 0, (), ())

    def run():
        interpreter.run(call, layout, segment)
        framing.receive(host_end)

    def close():
        os.close(interrupt_write)
        interpreter.shutdown(5.0)
        host_end.close()
        reply_end.close()

    return run, close


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls, finishes in a few seconds")
    options = parser.parse_args(argv)
    calls = 1000 if options.quick else 10000
    warmup = 200 if options.quick else 1000

    import mmap

    from sandbox.runtime import PluginRuntime, PluginSpec

    flush = cpu_flush(10)
    results: dict[str, list[float]] = {}

    with temporary_plugins({"noop.py": NOOP_PLUGIN}) as plugin_dir, \
            PluginRuntime(NullDatabase(), plugin_dir, plugin_dir / "run", workers=1) as runtime:
        handle = runtime.load(PluginSpec("noop", "bench", "noop.py", "writes"))
        shared = runtime.share(flush)
        results["plughost, full path (host→worker→sub→host)"] = timings(
            lambda: handle.run_writes(shared, None, None), calls, warmup)
        fd = os.dup(shared.fd_for(object()))
        segment = mmap.mmap(fd, shared.size, prot=mmap.PROT_READ)
        view = memoryview(segment).toreadonly()
        run_in_worker, close_in_worker = in_worker_runner(plugin_dir / "noop.py", shared.layout, view)
        results["plughost, in-worker part (exec into sub + plugin side)"] = timings(run_in_worker, calls, warmup)
        close_in_worker()
        shared.release()

    engine = InfluxDB3StyleEngine(NOOP_PLUGIN, "noop.py")
    batch = flush.tables[0].batch
    results["InfluxDB-3-style (re-exec source + row dicts, one interpreter)"] = timings(
        lambda: engine.run_writes(batch, "cpu", None), calls, warmup)

    rows = eager_rows(batch)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        results["multiprocessing Pool.apply round trip"] = timings(
            lambda: pool.apply(_pool_noop, (rows,)), calls // 2, warmup // 2)

    full = statistics.median(results["plughost, full path (host→worker→sub→host)"])
    print(f"no-op process_writes, 10-row batch, {calls} calls (warm); ratios are median / plughost full path\n")
    print(f"{'path':64} {'median µs':>10} {'p99 µs':>9} {'ratio':>7}")
    for label, samples in results.items():
        median, p99 = median_p99(samples)
        print(f"{label:64} {median * 1e6:10.1f} {p99 * 1e6:9.1f} {median / full:7.2f}")
    in_worker = statistics.median(results["plughost, in-worker part (exec into sub + plugin side)"])
    print(f"\nwhere the full path's time goes: {in_worker * 1e6:.1f} µs in the worker (subinterpreter exec + "
          f"plugin-side runtime), {max(full - in_worker, 0) * 1e6:.1f} µs for the two process hops and host-side encode/decode")


if __name__ == "__main__":
    main()
