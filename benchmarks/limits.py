"""Limits, measured: how fast a runaway stops, how far a memory hog gets, and what an offender costs its neighbours.

1. **Stop time.** A schedule trigger with `max_run_time` L runs a plugin that never returns: a
   pure-Python loop, a loop that swallows BaseException, and a C loop (`sum(range(10**13))`).
   Measured: the time from the call to its failed result. Target: L + 100 ms. The first is stopped
   by the interrupt; the other two by killing their worker (after which the trigger has a
   process of its own, which is then killed in turn).
2. **Memory.** A hog appending 1 KB objects until stopped, `max_memory` M, in interpreter and
   process mode: the peak charged to the run against M (target: below M + 10%). Then one
   `bytearray` of 1 GiB (C code, not interruptible): process mode refuses the allocation under
   its address-space cap; interpreter mode is stopped by killing the worker.
3. **Neighbours.** p99 latency of a healthy no-op trigger's run and of writes to a real
   `LocalDatabase` (fsync'd WAL), first with nothing else running (the baseline), then while an
   offender in the other pool worker spins into its CPU limit over and over (interrupted, its
   interpreter re-created, again). Target: at most 10% worse.

`--soak SECONDS` runs the whole engine instead: writes flowing, a healthy writes trigger copying
them, and an offender trigger cycling through every fault (loops, C loops, hogs, segfaults,
`os._exit`, exceptions) for that long; then it checks that every acknowledged write and its copy
are there and prints faults survived, worker restarts, and the host's memory before and after.

Run: `python -m benchmarks.limits [--quick] [--soak SECONDS]`.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import statistics
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

from benchmarks.plugin_overhead import NullDatabase, median_p99, temporary_plugins, timings
from sandbox import procfs
from sandbox.limits import RunLimits, format_bytes
from sandbox.runtime import PluginRuntime, PluginSpec

CALL_TIME = datetime(2024, 1, 1)
OFFENDER = """
import ctypes, os, re, sys

def process_scheduled_call(influxdb3_local, call_time, args):
    how = args["how"]
    if how == "ready":
        return
    if how == "loop":
        while True:
            pass
    if how == "swallow":
        while True:
            try:
                while True:
                    pass
            except BaseException:
                pass
    if how == "c_loop":
        sum(range(10 ** 13))
    if how == "hog":
        hog = []
        while True:
            hog.append(bytes(1000))
    if how == "bytearray":
        bytearray(1 << 30)

def process_writes(influxdb3_local, table_batches, args=None):
    for batch in table_batches:
        for row in batch["rows"]:
            how = row["how"]
            if how == "segfault":
                ctypes.string_at(0)
            if how == "os_exit":
                os._exit(3)
            if how == "exception":
                raise ValueError("offended")
            process_scheduled_call(influxdb3_local, None, {"how": how})
"""
HEALTHY = """
def process_scheduled_call(influxdb3_local, call_time, args):
    pass

def process_writes(influxdb3_local, table_batches, args=None):
    for batch in table_batches:
        for row in batch["rows"]:
            influxdb3_local.write(LineBuilder("copy").int64_field("v", row["v"]).time_ns(row["time"]))
"""


def load(runtime: PluginRuntime, name: str, filename: str, **options):
    return runtime.load(PluginSpec(trigger_name=name, database="bench", plugin_filename=filename,
                                   kind="schedule", **options))


def stop_times(runtime: PluginRuntime, limit: float, rounds: int) -> None:
    print(f"1. stopping a run that never returns, max_run_time {limit * 1000:.0f}ms "
          f"({rounds} runs each; target: within the limit + 100ms)\n")
    print(f"{'plugin':38} {'median':>9} {'worst':>9} {'over limit (worst)':>19} {'ratio':>6}  how it ended")
    for how, label in (("loop", "pure-Python loop"), ("swallow", "loop swallowing BaseException"),
                       ("c_loop", "C loop: sum(range(10**13))")):
        handle = load(runtime, f"stop-{how}", "offender.py", limits=RunLimits(max_run_time=limit))
        elapsed, ends = [], collections.Counter()
        for _ in range(rounds):
            handle.run_schedule(CALL_TIME, {"how": "ready"})  # (re)loaded: the timed run starts at once
            started = time.perf_counter()
            result = handle.run_schedule(CALL_TIME, {"how": how})
            elapsed.append(time.perf_counter() - started)
            ends["killed" if "worker process was killed" in (result.error or "") else "interrupted"] += 1
        worst = max(elapsed)
        print(f"{label:38} {statistics.median(elapsed) * 1000:7.0f}ms {worst * 1000:7.0f}ms "
              f"{(worst - limit) * 1000:17.0f}ms {worst / limit:6.2f}  "
              + ", ".join(f"{n}× {end}" for end, n in ends.items()) + f" (now in {handle.mode} mode)")
        handle.close()
    print()


def memory_peaks(runtime: PluginRuntime, limit: int) -> None:
    print(f"2. memory hogs, max_memory {format_bytes(limit)} (target: stopped below the limit + 10%)\n")
    print(f"{'plugin':38} {'mode':12} {'peak charged':>13} {'ratio':>6}  how it ended")
    for how, label in (("hog", "appends 1 KB objects"), ("bytearray", "one bytearray(1 GiB)")):
        for isolation in ("interpreter", "process"):
            handle = load(runtime, f"mem-{how}-{isolation}", "offender.py", isolation=isolation,
                          limits=RunLimits(max_memory=limit))
            handle.run_schedule(CALL_TIME, {"how": "ready"})
            result = handle.run_schedule(CALL_TIME, {"how": how})
            ending = ("refused by the address-space cap" if "refused" in (result.error or "")
                      else "worker killed" if "killed" in (result.error or "") else "interrupted")
            print(f"{label:38} {isolation:12} {format_bytes(result.peak_memory):>13} "
                  f"{result.peak_memory / limit:6.2f}  {ending}")
            handle.close()
    print()


def p99_ms(samples: list[float]) -> float:
    return median_p99(samples)[1] * 1000


def neighbours(runtime: PluginRuntime, database, calls: int) -> None:
    healthy = load(runtime, "healthy", "healthy.py")
    offender = load(runtime, "offender", "offender.py", limits=RunLimits(max_cpu_time=0.3))
    counter = iter(range(10 ** 9))

    def write():
        n = next(counter)
        database.write_lp("bench", f"w,host=h{n % 4} v={n}i {1_700_000_000_000_000_000 + n}")

    stops = collections.Counter()

    def offend(stop: threading.Event):
        while not stop.is_set():
            result = offender.run_schedule(CALL_TIME, {"how": "loop"})
            stops[result.error.split(" (")[0] if result.error else "finished?"] += 1

    samples = {(what, busy): [] for what in ("runs", "writes") for busy in (False, True)}
    for busy in (False, True, False, True):  # interleaved, so drift in the machine's load hits both
        stop = threading.Event()
        offender_thread = threading.Thread(target=offend, args=(stop,), daemon=True)
        if busy:
            offender_thread.start()
            time.sleep(0.4)  # past DEMOTE_AFTER and into its first interrupt
        samples[("runs", busy)] += timings(lambda: healthy.run_schedule(CALL_TIME, None), calls, calls // 10)
        samples[("writes", busy)] += timings(write, calls // 4, 20)
        stop.set()
        if busy:
            offender_thread.join(30)
    print(f"3. neighbours of an offender spinning into max_cpu_time 300ms over and over "
          f"({sum(stops.values())} of its runs stopped meanwhile; target: p99 at most 10% worse)\n")
    print(f"{'what':44} {'alone p50/p99':>16} {'with offender p50/p99':>23} {'p99 ratio':>10}")
    for what, label in (("runs", "healthy trigger run (no-op, other worker)"),
                        ("writes", "write_lp to LocalDatabase (fsync'd WAL)")):
        (quiet50, quiet99), (busy50, busy99) = median_p99(samples[(what, False)]), median_p99(samples[(what, True)])
        print(f"{label:44} {quiet50 * 1e6:6.0f}/{quiet99 * 1e6:6.0f}µs {busy50 * 1e6:10.0f}/{busy99 * 1e6:6.0f}µs "
              f"{busy99 / quiet99:10.2f}")
    print()


def soak(seconds: float) -> None:
    """The engine under a rotation of faults for `seconds`; checks nothing acknowledged is lost."""
    from host.database import LocalDatabase
    from host.plugin_manager import ProcessingEngine, TriggerSettings

    faults = ["loop", "swallow", "c_loop", "hog", "segfault", "os_exit", "exception", "bytearray"]
    with tempfile.TemporaryDirectory(prefix="plughost-soak-") as directory:
        root = Path(directory)
        (root / "plugins").mkdir()
        (root / "plugins" / "offender.py").write_text(OFFENDER)
        (root / "plugins" / "healthy.py").write_text(HEALTHY)
        database = LocalDatabase(root / "data", flush_interval=0.05)
        database.start()
        runtime = PluginRuntime(database, root / "plugins", root / "run", workers=2)
        runtime.start()
        engine = ProcessingEngine(database, root / "plugins", root / "data", runtime=runtime)
        engine.start()
        database.write_lp("soak", "src v=-1i 1")
        engine.create_trigger("soak", "copy", "healthy.py", "table:src")
        engine.create_trigger("soak", "offender", "offender.py", "table:fault", settings=TriggerSettings(
            max_run_time=0.3, max_memory=64 << 20))
        host_rss_start = procfs.resident_bytes(os.getpid())
        acknowledged, write_times, injected = [], [], collections.Counter()
        pids = set()
        started = time.monotonic()
        n = 0
        while time.monotonic() - started < seconds:
            t = time.perf_counter()
            database.write_lp("soak", f"src v={n}i {1_700_000_000_000_000_000 + n}")
            write_times.append(time.perf_counter() - t)
            acknowledged.append(n)
            if n % 30 == 0:
                fault = faults[(n // 30) % len(faults)]
                database.write_lp("soak", f'fault how="{fault}"')
                injected[fault] += 1
            if n % 100 == 0:
                for usage in engine.usage("soak"):
                    pids.update(slot.worker_pid for slot in usage.slots if slot.worker_pid)
            n += 1
            time.sleep(0.01)
        deadline = time.monotonic() + 60
        wanted = set(acknowledged)
        while True:
            stored = {r["v"] for r in database.query("soak", "SELECT v FROM src").to_pylist()}
            copied = {r["v"] for r in database.query("soak", "SELECT v FROM copy").to_pylist()}
            if wanted <= stored and wanted <= copied or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        runs = database.query("soak", "SELECT trigger_name, outcome, count(*) AS n FROM system.processing_engine_runs "
                                      "GROUP BY trigger_name, outcome ORDER BY trigger_name, outcome").to_pylist()
        triggers = {r["trigger_name"]: r for r in database.query(
            "soak", "SELECT trigger_name, mode, dropped_events FROM system.processing_engine_triggers").to_pylist()}
        host_rss_end = procfs.resident_bytes(os.getpid())
        closing = time.monotonic()
        engine.close()
        runtime.close()
        closed = time.monotonic() - closing
        database.close()
    print(f"soak: {seconds:g}s, {len(acknowledged)} acknowledged writes, faults injected: "
          + ", ".join(f"{k} {v}" for k, v in injected.items()))
    print(f"  every acknowledged write stored: {wanted <= stored}; every one copied by the healthy trigger: "
          f"{wanted <= copied} (missing {len(wanted - copied)})")
    print("  runs: " + ", ".join(f"{r['trigger_name']} {r['outcome']} {r['n']}" for r in runs))
    print(f"  modes now: copy {triggers['copy']['mode']}, offender {triggers['offender']['mode']}; "
          f"dropped events: copy {triggers['copy']['dropped_events']}")
    print(f"  distinct worker pids seen: {len(pids)}; write p99 {p99_ms(write_times):.2f}ms; "
          f"host RSS {format_bytes(host_rss_start)} → {format_bytes(host_rss_end)}; close took {closed:.1f}s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, finishes in a few seconds")
    parser.add_argument("--soak", type=float, metavar="SECONDS", help="run the fault rotation for this long instead")
    options = parser.parse_args(argv)
    logging.disable(logging.ERROR)  # every fault below is logged by the engine; the figures are the point here
    if options.soak:
        soak(options.soak)
        return
    rounds, limit, calls = (2, 0.3, 2000) if options.quick else (5, 1.0, 20000)
    from host.database import LocalDatabase

    with temporary_plugins({"offender.py": OFFENDER, "healthy.py": HEALTHY}) as plugin_dir, \
            PluginRuntime(NullDatabase(), plugin_dir, plugin_dir / "run", workers=2) as runtime:
        stop_times(runtime, limit, rounds)
        memory_peaks(runtime, 64 << 20 if options.quick else 256 << 20)
        with tempfile.TemporaryDirectory(prefix="plughost-bench-") as data:
            database = LocalDatabase(Path(data), flush_interval=0.1)
            database.start()
            try:
                neighbours(runtime, database, calls)
            finally:
                database.close()


if __name__ == "__main__":
    main()
