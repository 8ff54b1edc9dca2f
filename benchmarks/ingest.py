"""Ingest throughput and query latency of a real `plughost serve` over HTTP, against parse-only baselines.

Starts a server subprocess (auth off, temporary data directory, default 1 s WAL flush), then:
1. writes batches of 1k and of 10k lines over keep-alive connections from two concurrent
   clients, and reports lines/s;
2. in the same run, parses the same lines without storing them, with the C extension
   `line-protocol-parser` (PyPI) and with plughost's own `host.lineprotocol.parse`, and writes
   them into a `LocalDatabase` in this process (no HTTP), and prints server-ingest / baseline;
3. loads enough rows for 1M in total and reports p50/p99 latency of a few queries through
   /api/v3/query_sql.

Run: `python -m benchmarks.ingest [--quick]` (`--quick` finishes in seconds with smaller volumes).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
T0_NS = 1704067200 * 10**9
CLIENTS = 2
QUERIES = {
    "count(*)": "SELECT count(*) FROM cpu",
    "avg by host": "SELECT host, avg(usage_user) AS u FROM cpu GROUP BY host ORDER BY host",
    "last 10 of one host": "SELECT * FROM cpu WHERE host = 'host7' ORDER BY time DESC LIMIT 10",
    "time-range filter": "SELECT max(usage_system) FROM cpu WHERE time >= '2024-01-01T00:00:00.000001' "
                         "AND time < '2024-01-01T00:00:00.00005'",
}


def make_batches(count: int, size: int, start: int) -> list[bytes]:
    """`count` bodies of `size` lines each, distinct timestamps from row number `start`."""
    batches = []
    row = start
    for _ in range(count):
        lines = []
        for _ in range(size):
            lines.append(
                f"cpu,host=host{row % 100},region=r{row % 7} usage_user={(row % 1000) / 10},"
                f"usage_system={(row % 333) / 3},count={row}i {T0_NS + row}\n"
            )
            row += 1
        batches.append("".join(lines).encode())
    return batches


class Server:
    """A `plughost serve` subprocess on a free loopback port."""

    def __init__(self, data_dir: Path):
        self.log_path = data_dir.parent / "server.log"
        python_path = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
        env = {**os.environ, "TZ": "UTC", "PYTHONPATH": python_path, "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "host.cli", "serve", "--without-auth", "--data-dir", str(data_dir),
                 "--plugin-dir", str(data_dir.parent / "plugins"), "--http-bind", "127.0.0.1:0"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            )
        deadline = time.monotonic() + 60
        while not (match := re.search(r"serving on (http://\S+)", self.log_path.read_text())):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{self.log_path.read_text()}")
            time.sleep(0.05)
        self.url = match.group(1)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(60)


def send_all(url: str, batches: list[bytes], db: str, *, keep_alive: bool = True) -> float:
    """Send `batches` from CLIENTS clients at once; return the seconds it took. Raises on a non-204.

    With `keep_alive` false every request opens a new connection.
    """
    shares = [batches[i::CLIENTS] for i in range(CLIENTS)]
    failures: list[str] = []
    headers = {} if keep_alive else {"Connection": "close"}

    def client(share: list[bytes]) -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            for body in share:
                response = http.post("/api/v3/write_lp", params={"db": db}, content=body, headers=headers)
                if response.status_code != 204:
                    failures.append(f"{response.status_code} {response.text[:200]}")
                    return

    threads = [threading.Thread(target=client, args=(share,)) for share in shares]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"write failed: {failures[0]}")
    return elapsed


def parse_with_pypi(batches: list[bytes]) -> float:
    from line_protocol_parser import parse_line

    started = time.perf_counter()
    for body in batches:
        for line in body.decode().splitlines():
            parse_line(line)
    return time.perf_counter() - started


def parse_with_plughost(batches: list[bytes]) -> float:
    from host.lineprotocol import parse

    started = time.perf_counter()
    for body in batches:
        parse(body.decode())
    return time.perf_counter() - started


def write_in_process(batches: list[bytes], data_dir: Path) -> float:
    """The same writes straight into a LocalDatabase in this process: the server minus HTTP."""
    from host.database import LocalDatabase

    database = LocalDatabase(data_dir)
    database.start()
    try:
        started = time.perf_counter()
        for body in batches:
            database.write_lp("bench", body.decode())
        return time.perf_counter() - started
    finally:
        database.close()


def wait_for_rows(url: str, db: str, rows: int) -> None:
    deadline = time.monotonic() + 300
    with httpx.Client(base_url=url, timeout=120) as http:
        while time.monotonic() < deadline:
            response = http.post("/api/v3/query_sql", json={"db": db, "q": "SELECT count(*) AS n FROM cpu"})
            if response.status_code == 200 and response.json() == [{"n": rows}]:
                return
            time.sleep(0.1)
    raise RuntimeError(f"{rows} rows never became queryable")


def query_latencies(url: str, db: str, runs: int) -> dict[str, tuple[float, float]]:
    results = {}
    with httpx.Client(base_url=url, timeout=120) as http:
        for name, sql in QUERIES.items():
            timings = []
            for _ in range(runs):
                started = time.perf_counter()
                response = http.post("/api/v3/query_sql", json={"db": db, "q": sql})
                timings.append(time.perf_counter() - started)
                if response.status_code != 200:
                    raise RuntimeError(f"{name}: {response.status_code} {response.text[:200]}")
            timings.sort()
            results[name] = (statistics.median(timings), timings[min(len(timings) - 1, int(len(timings) * 0.99))])
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small volumes, finishes in seconds")
    args = parser.parse_args(argv)
    small_batches, large_batches = (20, 6) if args.quick else (200, 60)
    query_rows = 100_000 if args.quick else 1_000_000
    runs = 10 if args.quick else 50

    with tempfile.TemporaryDirectory(prefix="plughost-bench-") as root:
        server = Server(Path(root) / "data")
        try:
            print(f"server {server.url}, {CLIENTS} concurrent keep-alive clients, WAL flush 1s")
            print(f"{'batch':>8} {'lines':>9} {'HTTP lines/s':>13} | {'pypi parse/s':>13} {'ratio':>6} | "
                  f"{'own parse/s':>12} {'ratio':>6} | {'in-process/s':>12} {'ratio':>6}")
            written = 0
            for count, size in ((small_batches, 1_000), (large_batches, 10_000)):
                batches = make_batches(count, size, written)
                lines = count * size
                http = lines / send_all(server.url, batches, "bench")
                pypi = lines / parse_with_pypi(batches)
                own = lines / parse_with_plughost(batches)
                direct = lines / write_in_process(batches, Path(root) / f"direct{size}")
                written += lines
                print(f"{size:>8,} {lines:>9,} {http:>13,.0f} | {pypi:>13,.0f} {http / pypi:>6.2f} | "
                      f"{own:>12,.0f} {http / own:>6.2f} | {direct:>12,.0f} {http / direct:>6.2f}")

            remaining = query_rows - written
            if remaining > 0:
                send_all(server.url, make_batches(remaining // 10_000, 10_000, written), "bench")
                written += remaining // 10_000 * 10_000
            wait_for_rows(server.url, "bench", written)
            print(f"\nquery latency over HTTP on {written:,} rows ({runs} runs each)")
            for name, (p50, p99) in query_latencies(server.url, "bench", runs).items():
                print(f"  {name:<22} p50 {p50 * 1000:8.1f} ms   p99 {p99 * 1000:8.1f} ms")
        finally:
            code = server.stop()
        print(f"\nserver stopped with exit status {code}")


if __name__ == "__main__":
    main()
