"""WAL append throughput: group commit against one fsync per append, in the same run.

Each configuration appends 1 KiB records to a fresh WAL in a temporary directory on the same
file system as the system temp dir:

- `Wal.append(sync=True)` from 1 and from 8 threads; with group commit, the 8 threads share
  fsyncs, so throughput should grow with writers while fsyncs per record fall;
- the baseline: the same records written and fsync'd one at a time under a lock (what an
  append without group commit costs), from 8 threads;
- `Wal.append(sync=False)` from 1 thread, which never waits for the disk.

Prints appends/s, fsyncs per record, and ratios against the baseline.
Run: `python -m benchmarks.wal [--quick]`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

from host.wal import Wal

PAYLOAD = b"x" * 1024


class FsyncCounter:
    """Counts os.fsync calls process-wide while installed (the WAL calls os.fsync)."""

    def __init__(self):
        self.calls = 0
        self._real = os.fsync

    def __enter__(self):
        def counting(fd):
            self.calls += 1
            return self._real(fd)

        os.fsync = counting
        return self

    def __exit__(self, *exc):
        os.fsync = self._real


def run_threads(threads: int, per_thread: int, append) -> float:
    """Seconds for `threads` threads to call append() `per_thread` times each."""
    start_gate = threading.Barrier(threads + 1)

    def work():
        start_gate.wait()
        for _ in range(per_thread):
            append()

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    start_gate.wait()
    started = time.perf_counter()
    for worker in workers:
        worker.join()
    return time.perf_counter() - started


def wal_appends(threads: int, per_thread: int, sync: bool) -> tuple[float, float]:
    """(appends/s, fsyncs per record) for Wal.append."""
    with tempfile.TemporaryDirectory() as directory:
        wal = Wal(Path(directory) / "wal")
        with FsyncCounter() as fsyncs:
            seconds = run_threads(threads, per_thread, lambda: wal.append(PAYLOAD, sync=sync))
        wal.close()
    records = threads * per_thread
    return records / seconds, fsyncs.calls / records


def serial_fsync_appends(threads: int, per_thread: int) -> float:
    """appends/s when every append writes and fsyncs under one lock."""
    with tempfile.TemporaryDirectory() as directory:
        fd = os.open(Path(directory) / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        lock = threading.Lock()

        def append():
            with lock:
                os.write(fd, PAYLOAD)
                os.fsync(fd)

        try:
            seconds = run_threads(threads, per_thread, append)
        finally:
            os.close(fd)
    return threads * per_thread / seconds


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arguments.add_argument("--quick", action="store_true", help="fewer records; a few seconds")
    quick = arguments.parse_args().quick
    synced = 40 if quick else 250  # records per thread for the fsync-bound runs
    unsynced = 5_000 if quick else 50_000

    baseline = serial_fsync_appends(8, synced)
    one, one_fsyncs = wal_appends(1, synced, sync=True)
    eight, eight_fsyncs = wal_appends(8, synced, sync=True)
    nosync, _ = wal_appends(1, unsynced, sync=False)

    print(f"WAL appends of {len(PAYLOAD)} B records under {tempfile.gettempdir()}")
    print(f"  {'configuration':42} {'appends/s':>10} {'fsync/rec':>9} {'vs baseline':>11}")
    rows = (
        ("baseline: fsync per append, 8 threads", baseline, 1.0),
        ("Wal sync=True, 1 thread", one, one_fsyncs),
        ("Wal sync=True, 8 threads (group commit)", eight, eight_fsyncs),
        ("Wal sync=False, 1 thread", nosync, 0.0),
    )
    for label, rate, fsyncs in rows:
        print(f"  {label:42} {rate:10,.0f} {fsyncs:9.2f} {rate / baseline:10.1f}x")
    print(f"  group commit: 8 threads reach {eight / one:.1f}x the appends/s of 1 thread")


if __name__ == "__main__":
    main()
