"""Two CPU-bound plugins on two cores: throughput of running them together versus one at a time.

Both triggers are loaded into ONE worker process, so any speed-up comes from each trigger's
isolated subinterpreter having its own GIL, not from extra processes. Baseline, in the same run:
two threads of one interpreter running the same pure-Python loop (one shared GIL), and two
processes running it (what the machine's free cores allow right now — the ceiling).
Throughput ratio = 2 × (time of one run alone) / (wall time of two concurrent runs).

Run: `python -m benchmarks.plugin_parallel [--quick]`.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import threading
import time
from datetime import datetime

from benchmarks.plugin_overhead import NullDatabase, temporary_plugins

BURN = """
def burn(n):
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def process_scheduled_call(influxdb3_local, call_time, args):
    influxdb3_local.info(burn(int(args["n"])))
"""


def burn(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def concurrently(*calls) -> float:
    """Wall time of running every call on its own thread at once."""
    threads = [threading.Thread(target=call) for call in calls]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def alone(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter loops, fewer repeats")
    options = parser.parse_args(argv)
    n = 1_500_000 if options.quick else 6_000_000
    repeat = 3 if options.quick else 5

    from sandbox.runtime import PluginRuntime, PluginSpec

    args = {"n": str(n)}
    call_time = datetime(2024, 1, 1)
    with temporary_plugins({"burn.py": BURN}) as plugin_dir, \
            PluginRuntime(NullDatabase(), plugin_dir, plugin_dir / "run", workers=1) as runtime:
        first = runtime.load(PluginSpec("burn-1", "bench", "burn.py", "schedule"))
        second = runtime.load(PluginSpec("burn-2", "bench", "burn.py", "schedule"))
        assert first.run_schedule(call_time, args).ok and second.run_schedule(call_time, args).ok
        one = statistics.median(alone(lambda: first.run_schedule(call_time, args)) for _ in range(repeat))
        two = statistics.median(
            concurrently(lambda: first.run_schedule(call_time, args), lambda: second.run_schedule(call_time, args))
            for _ in range(repeat))

    thread_one = statistics.median(alone(lambda: burn(n)) for _ in range(repeat))
    thread_two = statistics.median(concurrently(lambda: burn(n), lambda: burn(n)) for _ in range(repeat))
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(burn, [1000, 1000])
        process_one = statistics.median(alone(lambda: pool.apply(burn, (n,))) for _ in range(repeat))
        process_two = statistics.median(alone(lambda: pool.map(burn, [n, n], chunksize=1)) for _ in range(repeat))

    load = os.getloadavg()[0]
    print(f"two CPU-bound plugins ({n:,} iterations each), throughput of two at once vs one alone")
    print(f"({os.cpu_count()} cores; 1-minute load average {load:.2f} — other busy processes eat into the speed-up)\n")
    print(f"{'setup':58} {'one alone s':>12} {'two at once s':>14} {'throughput':>11}")
    print(f"{'plughost: 2 subinterpreters in 1 worker (own GILs)':58} {one:12.3f} {two:14.3f} {2 * one / two:10.2f}×")
    print(f"{'baseline: 2 threads in 1 interpreter (shared GIL)':58} {thread_one:12.3f} {thread_two:14.3f} "
          f"{2 * thread_one / thread_two:10.2f}×")
    print(f"{'ceiling: 2 processes (multiprocessing)':58} {process_one:12.3f} {process_two:14.3f} "
          f"{2 * process_one / process_two:10.2f}×")


if __name__ == "__main__":
    main()
