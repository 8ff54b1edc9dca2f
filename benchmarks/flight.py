"""Fetching a large result through Arrow Flight against `/api/v3/query_sql`, and what the front door costs HTTP.

Starts real `plughost serve` processes (auth off, temporary data directories), then:
1. loads 1M rows and fetches all of them, in the same run, four ways, each until the client
   holds a usable result: Flight through the front door (influxdb3-python's `query()`, the HTTP
   port), Flight straight to the gRPC listener behind it (the relay's cost), `query_sql` with
   `format=json` (decoded with msgspec) and with `format=parquet` (read into Arrow). Ratios are
   against `format=json`.
2. sends the same HTTP requests to a server with the front door (the default) and to one with
   `--flight-bind` (uvicorn owns the HTTP socket), alternating: line-protocol writes over
   keep-alive connections and with a new connection per request, and bare `GET /ping` on a new
   connection each (the front door's whole cost is per connection). Prints front door / direct.

Run: `python -m benchmarks.flight [--quick]` (`--quick`: 50k rows and a few writes, to check it runs;
its figures are too small to trust).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import msgspec
import pyarrow.flight as flight
import pyarrow.parquet as pq
from influxdb_client_3 import InfluxDBClient3

from benchmarks.ingest import CLIENTS, send_all

REPO = Path(__file__).resolve().parent.parent
T0_NS = 1704067200 * 10**9
_SERVING = re.compile(r"serving on (http://\S+)")
_FLIGHT = re.compile(r"serving Arrow Flight on .*?grpc://([^:\s]+):(\d+)")


class Server:
    """A `plughost serve` subprocess on a free loopback port; `flight_port` is its gRPC listener."""

    def __init__(self, root: Path, *extra_args: str):
        root.mkdir(parents=True)
        self.log_path = root / "server.log"
        python_path = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
        env = {**os.environ, "TZ": "UTC", "PYTHONPATH": python_path, "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "host.cli", "serve", "--without-auth", "--data-dir", str(root / "data"),
                 "--plugin-dir", str(root / "plugins"), "--http-bind", "127.0.0.1:0",
                 "--wal-flush-interval", "100ms", *extra_args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            )
        self.url = ""
        self.flight_port = 0

    def wait_ready(self) -> Server:
        deadline = time.monotonic() + 60
        while not ((serving := _SERVING.search(text := self.log_path.read_text()))
                   and (grpc := _FLIGHT.search(text))):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{self.log_path.read_text()}")
            time.sleep(0.05)
        self.url = serving.group(1)
        self.flight_port = int(grpc.group(2))
        return self

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(60)


def make_body(start: int, size: int) -> bytes:
    return "".join(
        f"cpu,host=host{row % 100},region=r{row % 7} usage_user={(row % 1000) / 10},"
        f"usage_system={(row % 333) / 3},count={row}i {T0_NS + row}\n"
        for row in range(start, start + size)
    ).encode()


def load(url: str, rows: int) -> None:
    """Write `rows` rows in 10k-line bodies from CLIENTS clients, then wait until all are queryable."""
    bodies = [make_body(start, min(10_000, rows - start)) for start in range(0, rows, 10_000)]
    send(url, bodies, keep_alive=True)
    deadline = time.monotonic() + 300
    with httpx.Client(base_url=url, timeout=120) as http:
        while time.monotonic() < deadline:
            response = http.post("/api/v3/query_sql", json={"db": "bench", "q": "SELECT count(*) AS n FROM cpu"})
            if response.status_code == 200 and response.json() == [{"n": rows}]:
                return
            time.sleep(0.1)
    raise RuntimeError(f"{rows} rows never became queryable")


def send(url: str, bodies: list[bytes], keep_alive: bool) -> float:
    """POST `bodies` to /api/v3/write_lp from concurrent clients; seconds taken. Raises on a non-204."""
    return send_all(url, bodies, "bench", keep_alive=keep_alive)


SQL = "SELECT * FROM cpu"


def fetch_influxdb3_client(server: Server) -> int:
    with InfluxDBClient3(host=server.url, token="unused", database="bench") as client:
        return client.query(SQL, mode="all").num_rows


def fetch_flight(port: int) -> int:
    """DoGet with the ticket influxdb3-python sends, on a bare pyarrow Flight client."""
    ticket = flight.Ticket(json.dumps({"database": "bench", "sql_query": SQL, "query_type": "sql"}).encode())
    with flight.connect(f"grpc://127.0.0.1:{port}") as client:
        return client.do_get(ticket).read_all().num_rows


def fetch_http(server: Server, fmt: str) -> int:
    with httpx.Client(base_url=server.url, timeout=300) as http:
        response = http.post("/api/v3/query_sql", json={"db": "bench", "q": SQL, "format": fmt})
        response.raise_for_status()
        if fmt == "json":
            return len(msgspec.json.decode(response.content))
        return pq.read_table(io.BytesIO(response.content)).num_rows


def best_of(runs: int, fetch, rows: int) -> float:
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        got = fetch()
        timings.append(time.perf_counter() - started)
        if got != rows:
            raise RuntimeError(f"fetched {got} rows, expected {rows}")
    return min(timings)


def compare_fetch(server: Server, rows: int, runs: int) -> None:
    http_port = httpx.URL(server.url).port
    ways = {
        "influxdb3-python query(), HTTP port": lambda: fetch_influxdb3_client(server),
        "Flight DoGet, HTTP port (relayed)": lambda: fetch_flight(http_port),
        "Flight DoGet, gRPC listener": lambda: fetch_flight(server.flight_port),
        "query_sql format=json": lambda: fetch_http(server, "json"),
        "query_sql format=parquet": lambda: fetch_http(server, "parquet"),
    }
    seconds = {name: best_of(runs, fetch, rows) for name, fetch in ways.items()}
    baseline = seconds["query_sql format=json"]
    print(f"\nfetch all {rows:,} rows (6 columns), best of {runs}; ratio = json time / this time")
    print(f"{'way':<37} {'seconds':>8} {'rows/s':>12} {'vs json':>8}")
    for name, value in seconds.items():
        print(f"{name:<37} {value:>8.3f} {rows / value:>12,.0f} {baseline / value:>7.1f}x")


def ping(url: str, requests: int) -> float:
    """GET /ping `requests` times from CLIENTS threads, each on a new connection; seconds taken."""
    def pinger(count: int) -> None:
        with httpx.Client(base_url=url, timeout=60, headers={"Connection": "close"}) as http:
            for _ in range(count):
                http.get("/ping").raise_for_status()

    threads = [threading.Thread(target=pinger, args=(requests // CLIENTS,)) for _ in range(CLIENTS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def compare_http(front: Server, direct: Server, bodies: int, rounds: int) -> None:
    big = [make_body(i * 10_000, 10_000) for i in range(bodies)]
    small = [make_body(i * 100, 100) for i in range(bodies * 10)]
    pings = bodies * 50
    workloads = {
        "write, keep-alive, 10k lines (lines/s)": (lambda url: send(url, big, True), 10_000 * len(big)),
        "write, new conn., 100 lines (lines/s)": (lambda url: send(url, small, False), 100 * len(small)),
        "GET /ping, new conn. (requests/s)": (lambda url: ping(url, pings), pings),
    }
    print(f"\nHTTP, {CLIENTS} clients; best of {rounds} alternating rounds; ratio = front door / direct")
    print(f"{'workload':<40} {'front door':>11} {'direct':>11} {'ratio':>6}")
    for name, (run, units) in workloads.items():
        best = {"front": 0.0, "direct": 0.0}
        for _ in range(rounds):
            for label, server in (("front", front), ("direct", direct)):
                best[label] = max(best[label], units / run(server.url))
        print(f"{name:<40} {best['front']:>11,.0f} {best['direct']:>11,.0f} {best['front'] / best['direct']:>6.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50k rows and a few writes; finishes in seconds")
    args = parser.parse_args(argv)
    rows, runs, bodies, rounds = (50_000, 2, 3, 1) if args.quick else (1_000_000, 3, 40, 5)

    with tempfile.TemporaryDirectory(prefix="plughost-bench-flight-") as root:
        front = Server(Path(root) / "front")
        direct = Server(Path(root) / "direct", "--flight-bind", "127.0.0.1:0")
        try:
            front.wait_ready()
            direct.wait_ready()
            print(f"front door: {front.url} (Flight relayed to port {front.flight_port}); "
                  f"direct: {direct.url}, Flight on port {direct.flight_port}")
            load(front.url, rows)
            compare_fetch(front, rows, runs)
            compare_http(front, direct, bodies, rounds)
        finally:
            front.stop()
            direct.stop()


if __name__ == "__main__":
    main()
