"""Line-protocol parsing speed: `host.lineprotocol.parse` against the `line-protocol-parser` C extension.

Both parse the same 10k-line bodies in the same run; the baseline (PyPI `line-protocol-parser`,
a C extension that parses one line into a dict) is fed `body.split("\\n")` line by line, so
both sides pay for splitting the body. Ours also types every value, checks InfluxDB's limits,
numbers the lines and collects per-line errors, which the baseline does not.

Workloads: typical metrics (2 tags, 3 numeric fields, varied values, 100 series), lines with a
string field, lines whose names and strings need escapes, and lines whose string spans physical
lines (which takes our careful, character-level parser; the baseline, fed physical lines, cannot
parse those at all and is timed on their single-line equivalent).

Prints lines/s for both and the ratio ours/baseline (above 1 means we are faster).
Run: `python -m benchmarks.parse [--quick]`.
"""

from __future__ import annotations

import argparse
import time

from host.lineprotocol import parse

try:
    from line_protocol_parser import parse_line as baseline_parse_line
except ImportError as missing:
    raise SystemExit(
        "the baseline needs the line-protocol-parser package: pip install line-protocol-parser"
    ) from missing

LINES = 10_000
T0 = 1_700_000_000_000_000_000


def metrics_body() -> str:
    return "\n".join(
        f"cpu,host=server{i % 100:02d},region=us-west usage_idle={(i * 37) % 1000 / 10},"
        f"usage_user={(i * 13) % 997 / 7:.4f},count={i}i {T0 + i * 1_000_000_000}"
        for i in range(LINES)
    )


def strings_body() -> str:
    return "\n".join(
        f'log,host=server{i % 100:02d},level=info msg="request {i} served in {i % 97} ms",'
        f"status=200i {T0 + i}"
        for i in range(LINES)
    )


def escaped_body() -> str:
    return "\n".join(
        rf'disk\ io,mount\ point=/mnt/data\,{i % 10} read\ bytes={i}i,path="C:\\logs\\{i}" {T0 + i}'
        for i in range(LINES)
    )


def multiline_body(line_break: str = "\n") -> str:
    return "\n".join(
        f'log,host=server{i % 100:02d} msg="traceback {i}:{line_break}  line {i % 7}{line_break}  '
        f'error",code={i}i {T0 + i}'
        for i in range(LINES)
    )


def baseline(body: str) -> list:
    return [baseline_parse_line(line) for line in body.split("\n")]


def best_seconds(run, body: str, repeat: int) -> float:
    run(body)  # warm up
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run(body)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arguments.add_argument("--quick", action="store_true", help="fewer repeats; a few seconds")
    repeat = 3 if arguments.parse_args().quick else 15

    print(f"parsing {LINES} lines per body; best of {repeat} runs each, alternating")
    print(f"  {'workload':10} {'plughost lines/s':>17} {'baseline lines/s':>17} {'ratio':>6}  ours µs/line")
    workloads = (
        ("metrics", metrics_body, metrics_body),
        ("strings", strings_body, strings_body),
        ("escaped", escaped_body, escaped_body),
        ("multiline", multiline_body, lambda: multiline_body(line_break=" ")),
    )
    for name, make, make_for_baseline in workloads:
        body = make()
        baseline_body = make_for_baseline()
        lines, errors = parse(body)
        assert len(lines) == LINES and not errors, (name, errors[:1])
        assert len(baseline(baseline_body)) == LINES
        ours = theirs = float("inf")
        # Alternate the two so that a slow phase of a shared machine hits both alike.
        for _ in range(repeat):
            ours = min(ours, best_seconds(parse, body, 1))
            theirs = min(theirs, best_seconds(baseline, baseline_body, 1))
        print(
            f"  {name:10} {LINES / ours:17,.0f} {LINES / theirs:17,.0f} {theirs / ours:6.2f}"
            f"  {ours / LINES * 1e6:12.2f}"
        )


if __name__ == "__main__":
    main()
