"""Schedule precision through a real `plughost serve`: N triggers on `every:1s` for a while, and how
late each run's plugin entry is after its tick (jitter), plus ticks missed or run twice.

Each plugin run takes `time.time_ns()` as its first statement and queues one row
(`tick,trigger=<name> call=<call_time>i,entered=<ns>i`), so every run is counted exactly. The
baseline, measured in this process during the same run, is a bare thread waking at every second
boundary with `threading.Event.wait` — what one OS timer gives on this machine under the same
load; the ratios show what the scheduler, the dispatcher hop and the worker process add.

Run: `python -m benchmarks.schedule_precision [--quick]` (200 triggers for 60 s; --quick: 10 for 6 s).
"""

from __future__ import annotations

import argparse
import collections
import statistics
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.trigger_latency import SETTINGS, TRIGGER, Server, percentiles

TICK_PLUGIN = (
    "import time\n"
    "from datetime import timezone\n"
    "def process_scheduled_call(influxdb3_local, call_time, args=None):\n"
    "    entered = time.time_ns()\n"
    "    call = int(call_time.replace(tzinfo=timezone.utc).timestamp())\n"
    "    influxdb3_local.write(LineBuilder('tick').tag('trigger', args['name'])"
    ".int64_field('call', call).int64_field('entered', entered))\n"
)


def bare_timer_jitter(seconds: float) -> list[float]:
    """Lateness (ms) of a thread waking at each whole second, for `seconds`."""
    lateness = []
    stop = threading.Event()
    end = time.time() + seconds
    while time.time() < end:
        tick = int(time.time()) + 1
        stop.wait(max(0.0, tick - time.time()))
        lateness.append((time.time_ns() - tick * 1_000_000_000) / 1e6)
    return lateness


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 triggers for 6 s")
    options = parser.parse_args()
    triggers, seconds = (10, 6.0) if options.quick else (200, 60.0)

    with tempfile.TemporaryDirectory(prefix="schedule-precision-") as root:
        server = Server(Path(root))
        try:
            (Path(root) / "plugins" / "tick.py").write_text(TICK_PLUGIN)
            server.http.post("/api/v3/configure/database", json={"db": "bench"})
            for k in range(triggers):
                response = server.http.post(TRIGGER, json={
                    "db": "bench", "plugin_filename": "tick.py", "trigger_name": f"t{k}",
                    "trigger_specification": "every:1s", "trigger_arguments": {"name": f"t{k}"},
                    "trigger_settings": SETTINGS, "disabled": False})
                if response.status_code != 200:
                    raise RuntimeError(f"creating trigger t{k} failed: {response.text}")
            window_start = int(time.time()) + 2  # every trigger exists well before this tick
            time.sleep(max(0.0, window_start - time.time()))
            baseline = bare_timer_jitter(seconds)
            window_end = int(time.time()) - 1
            time.sleep(2)  # the last ticks' queued rows reach a flush
            rows = server.query(
                f"SELECT trigger, call, entered FROM tick WHERE call >= {window_start} AND call <= {window_end}")
            dropped = sum(r["dropped_events"] for r in server.query(
                "SELECT dropped_events FROM system.processing_engine_triggers"))
        finally:
            server.stop()

    ticks = window_end - window_start + 1
    runs = collections.Counter((r["trigger"], r["call"]) for r in rows)
    missed = triggers * ticks - len(runs)
    duplicated = sum(count - 1 for count in runs.values())
    jitter = [(r["entered"] - r["call"] * 1_000_000_000) / 1e6 for r in rows]
    print(f"schedule precision: {triggers} triggers on every:1s, {ticks} ticks each "
          f"({triggers * ticks} expected runs)")
    print(f"{'':34}{'p50':>9}{'p99':>9}{'max':>9}  (ms late)")
    engine, bare = percentiles(jitter), percentiles(baseline)
    print(f"{'plugin entry after its tick':34}{engine[0]:9.3f}{engine[1]:9.3f}{engine[2]:9.3f}")
    print(f"{'bare thread timer (baseline)':34}{bare[0]:9.3f}{bare[1]:9.3f}{bare[2]:9.3f}")
    print(f"ratio engine/baseline: p50 x{engine[0] / bare[0]:.1f}, p99 x{engine[1] / bare[1]:.1f}")
    print(f"missed runs: {missed}, duplicated runs: {duplicated}, dropped_events reported: {dropped}, "
          f"mean runs per trigger per tick: {len(rows) / (triggers * ticks):.3f}")
    if jitter:
        print(f"jitter spread across triggers (stdev): {statistics.pstdev(jitter):.3f} ms")


if __name__ == "__main__":
    main()
