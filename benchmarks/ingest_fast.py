"""Write throughput with the columnar line-protocol fast path, against the pure-Python path.

For 10k-line batches of typical lines (`cpu,host=serverNNN,region=us-west usage_idle=..,
usage_user=..,count=..i <ts>` over 1k series), measured in one run:
1. `LocalDatabase.write_lp` in this process, as shipped (columnar fast path);
2. the same with the pure-Python path (`host.lineprotocol.parse` for every line), swapped in
   for this measurement only;
3. `host.lineprotocol.parse` alone and `host.lp_columnar.parse_body` alone;
4. a real `plughost serve` over HTTP (two keep-alive clients), which uses the fast path.
Each is run `--repeat` times and the best is kept (the machine is shared); ratios are printed
against the pure-Python write path and against `parse` alone.

Run: `python -m benchmarks.ingest_fast [--quick]`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import host.database
from benchmarks.ingest import Server, send_all
from host.database import LocalDatabase
from host.lineprotocol import parse
from host.lp_columnar import ColumnarBody, parse_body

T0_NS = 1704067200 * 10**9
BATCH = 10_000
SERIES = 1_000


def make_bodies(count: int, start: int = 0) -> list[str]:
    """`count` bodies of BATCH lines over SERIES series, distinct timestamps from row `start`."""
    bodies = []
    row = start
    for _ in range(count):
        lines = []
        for _ in range(BATCH):
            lines.append(
                f"cpu,host=server{row % SERIES:03d},region=us-west usage_idle={(row % 1000) / 10},"
                f"usage_user={(row % 333) / 10},count={row % 97}i {T0_NS + row}\n"
            )
            row += 1
        bodies.append("".join(lines))
    return bodies


@contextmanager
def pure_python_path():
    """Make `LocalDatabase.write_lp` parse every line with `host.lineprotocol.parse`."""
    shipped = host.database.parse_body
    host.database.parse_body = lambda text: ColumnarBody(*parse(text))
    try:
        yield
    finally:
        host.database.parse_body = shipped


def write_rate(bodies: list[str], data_dir: Path) -> float:
    """Lines/s of write_lp for `bodies` into a fresh LocalDatabase (fsync'd WAL, 1 s flushes)."""
    with LocalDatabase(data_dir) as database:
        started = time.perf_counter()
        for body in bodies:
            result = database.write_lp("bench", body)
            if result.errors:
                raise RuntimeError(f"write refused lines: {result.errors[0]}")
        return len(bodies) * BATCH / (time.perf_counter() - started)


def parse_rate(parser, bodies: list[str]) -> float:
    started = time.perf_counter()
    for body in bodies:
        parser(body)
    return len(bodies) * BATCH / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arguments.add_argument("--quick", action="store_true", help="small volumes, finishes in seconds")
    arguments.add_argument("--repeat", type=int, default=None, help="runs per measurement (best kept)")
    args = arguments.parse_args(argv)
    batches = 3 if args.quick else 20
    repeat = args.repeat or (2 if args.quick else 3)
    bodies = make_bodies(batches)
    rates: dict[str, float] = {}

    with tempfile.TemporaryDirectory(prefix="plughost-bench-") as root:
        root = Path(root)
        for run in range(repeat):
            measured = {
                "write_lp, columnar fast path": write_rate(bodies, root / f"fast{run}"),
                "parse_body alone": parse_rate(parse_body, bodies),
                "parse alone": parse_rate(parse, bodies),
            }
            with pure_python_path():
                measured["write_lp, pure-Python path"] = write_rate(bodies, root / f"pure{run}")
            for name, rate in measured.items():
                rates[name] = max(rates.get(name, 0.0), rate)

        server = Server(root / "server")
        try:
            payloads = [body.encode() for body in bodies]
            send_all(server.url, payloads[:1], "warmup")
            for run in range(repeat):
                rate = len(payloads) * BATCH / send_all(server.url, payloads, f"bench{run}")
                rates["HTTP write, columnar fast path"] = max(rates.get("HTTP write, columnar fast path", 0.0), rate)
        finally:
            server.stop()

    pure = rates["write_lp, pure-Python path"]
    parse_alone = rates["parse alone"]
    print(f"{batches} batches of {BATCH:,} lines over {SERIES:,} series, best of {repeat} runs")
    print(f"{'':32} {'lines/s':>10} {'/ pure write_lp':>16} {'/ parse alone':>14}")
    for name in ("write_lp, pure-Python path", "write_lp, columnar fast path", "HTTP write, columnar fast path",
                 "parse alone", "parse_body alone"):
        rate = rates[name]
        print(f"{name:32} {rate:>10,.0f} {rate / pure:>16.2f} {rate / parse_alone:>14.2f}")


if __name__ == "__main__":
    main()
