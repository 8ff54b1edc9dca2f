"""Trigger latency through a real `plughost serve` (10 ms WAL flush): from a write's HTTP
acknowledgement to the plugin's entry point, and the engine's own part of it (the flush handed to
the engine → the entry point called), with 1 idle trigger and with 100.

The measured trigger (`table:lat`) logs `entry <values>` as its first statement; the log line's
timestamp is taken inside the plugin. `system.processing_engine_runs.queued` is when the engine
received the flush. Idle triggers are `table:idle<N>` triggers in the same database that never
get rows, so every flush is checked against all of them. The 1-idle run is the baseline: the
ratio shows what 99 more triggers cost. Target: engine part p99 ≤ 1 ms in both.

Run: `python -m benchmarks.trigger_latency [--quick]`.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
TRIGGER = "/api/v3/configure/processing_engine_trigger"
SETTINGS = {"run_async": False, "error_behavior": "log"}
ENTRY_PLUGIN = (
    "def process_writes(influxdb3_local, table_batches, args=None):\n"
    "    influxdb3_local.info('entry', ','.join(str(r['i']) for b in table_batches for r in b['rows']))\n"
)


class Server:
    """A `plughost serve` subprocess (auth off, 10 ms flush) on a free loopback port."""

    def __init__(self, root: Path):
        (root / "plugins").mkdir()
        (root / "plugins" / "entry.py").write_text(ENTRY_PLUGIN)
        self.log_path = root / "server.log"
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "TZ": "UTC", "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "host.cli", "serve", "--without-auth", "--data-dir", str(root / "data"),
                 "--plugin-dir", str(root / "plugins"), "--http-bind", "127.0.0.1:0",
                 "--wal-flush-interval", "10ms"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            )
        deadline = time.monotonic() + 60
        while not (match := re.search(r"serving on (http://\S+)", self.log_path.read_text())):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise RuntimeError(f"server did not start:\n{self.log_path.read_text()}")
            time.sleep(0.05)
        self.http = httpx.Client(base_url=match.group(1), timeout=120)
        deadline = time.monotonic() + 60
        while self.http.get("/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)

    def create_trigger(self, name: str, spec: str) -> None:
        response = self.http.post(TRIGGER, json={
            "db": "bench", "plugin_filename": "entry.py", "trigger_name": name, "trigger_specification": spec,
            "trigger_settings": SETTINGS, "disabled": False})
        if response.status_code != 200:
            raise RuntimeError(f"creating trigger {name} failed: {response.status_code} {response.text}")

    def query(self, sql: str) -> list[dict]:
        response = self.http.post("/api/v3/query_sql", json={"db": "bench", "q": sql})
        response.raise_for_status()
        return response.json()

    def stop(self) -> None:
        self.http.close()
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(60)


def measure(idle: int, writes: int) -> dict[str, list[float]]:
    """Milliseconds per write: ack → entry, and the engine part (flush handed over → entry) split
    into the hand-over to the trigger's worker thread and the runtime's call into the plugin."""
    with tempfile.TemporaryDirectory(prefix="trigger-latency-") as root:
        server = Server(Path(root))
        try:
            server.http.post("/api/v3/configure/database", json={"db": "bench"})
            for k in range(idle):
                server.create_trigger(f"idle{k}", f"table:idle{k}")
            server.create_trigger("lat", "table:lat")
            acks: dict[int, int] = {}
            for i in range(writes):
                response = server.http.post("/api/v3/write_lp", params={"db": "bench"}, content=f"lat i={i}i")
                acks[i] = time.time_ns()
                if response.status_code != 204:
                    raise RuntimeError(f"write failed: {response.status_code} {response.text}")
                time.sleep(random.uniform(0.02, 0.03))  # one write per flush, at varying flush phases
            deadline = time.monotonic() + 60
            while True:
                entries = server.query(
                    "SELECT CAST(event_time AS BIGINT) AS at, log_text FROM system.processing_engine_logs "
                    "WHERE trigger_name = 'lat' AND log_text LIKE 'entry %' ORDER BY event_time")
                if sum(len(e["log_text"].split()[1].split(",")) for e in entries) >= writes:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("the plugin never saw every write")
                time.sleep(0.1)
            runs = server.query("SELECT CAST(queued AS BIGINT) AS queued, CAST(started AS BIGINT) AS started "
                                "FROM system.processing_engine_runs WHERE trigger_name = 'lat' ORDER BY queued")
        finally:
            server.stop()
    results: dict[str, list[float]] = {"ack": [], "engine": [], "handover": [], "runtime": []}
    for entry, run in zip(entries, runs, strict=True):
        for value in entry["log_text"].split()[1].split(","):
            results["ack"].append((entry["at"] - acks[int(value)]) / 1e6)
        results["engine"].append((entry["at"] - run["queued"]) / 1e6)
        results["handover"].append((run["started"] - run["queued"]) / 1e6)
        results["runtime"].append((entry["at"] - run["started"]) / 1e6)
    return results


def percentiles(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], ordered[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer writes, finishes in seconds")
    options = parser.parse_args()
    writes = 40 if options.quick else 300
    results = {idle: measure(idle, writes) for idle in (1, 100)}
    print(f"trigger latency, {writes} writes, 10 ms WAL flush (milliseconds)")
    print(f"{'':38}{'p50':>9}{'p99':>9}{'max':>9}")
    labels = {"ack": "write ack -> plugin entry", "engine": "engine part (flush -> entry)",
              "handover": "  of which: to the trigger's thread", "runtime": "  of which: runtime call to entry"}
    for idle, measured in results.items():
        print(f"{idle} idle trigger(s):")
        for key, label in labels.items():
            p50, p99, worst = percentiles(measured[key])
            print(f"  {label:36}{p50:9.3f}{p99:9.3f}{worst:9.3f}")
    base, many = (percentiles(results[idle]["engine"]) for idle in (1, 100))
    print(f"engine part, 100 idle / 1 idle: p50 x{many[0] / base[0]:.2f}, p99 x{many[1] / base[1]:.2f}")
    print(f"target engine part p99 <= 1 ms: {'met' if max(base[1], many[1]) <= 1.0 else 'NOT met'}")


if __name__ == "__main__":
    main()
