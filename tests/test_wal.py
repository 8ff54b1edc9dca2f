"""The write-ahead log on real files: order, torn tails, truncation, and SIGKILL mid-stream."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from host.wal import Wal, WalCorrupted


def test_records_come_back_in_order_after_reopen(tmp_path):
    wal = Wal(tmp_path)
    sequences = [wal.append(f"record {i}".encode()) for i in range(5)]
    wal.close()
    assert sequences == [1, 2, 3, 4, 5]
    reopened = Wal(tmp_path)
    assert list(reopened.replay(after=2)) == [(3, b"record 2"), (4, b"record 3"), (5, b"record 4")]
    assert reopened.append(b"next") == 6


def test_concurrent_appenders_lose_nothing(tmp_path):
    wal = Wal(tmp_path, segment_bytes=4096)
    results: list[int] = []

    def writer(n):
        for i in range(50):
            results.append(wal.append(f"{n}:{i}".encode(), sync=i % 10 == 0))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wal.close()
    replayed = list(Wal(tmp_path).replay())
    assert sorted(results) == list(range(1, 201))
    assert [s for s, _ in replayed] == list(range(1, 201))
    assert {p for _, p in replayed} == {f"{n}:{i}".encode() for n in range(4) for i in range(50)}


@pytest.mark.parametrize("damage", ["cut", "garbage"])
def test_torn_tail_is_cut_and_appends_continue(tmp_path, damage):
    wal = Wal(tmp_path)
    for i in range(3):
        wal.append(b"x" * 100)
    wal.close()
    segment = sorted(tmp_path.glob("*.wal"))[-1]
    size = segment.stat().st_size
    with open(segment, "r+b") as f:
        if damage == "cut":
            f.truncate(size - 10)
        else:
            f.seek(0, 2)
            f.write(b"\x07\x00\x00\x00garbage")
    wal = Wal(tmp_path)
    expected_last = 2 if damage == "cut" else 3
    assert [s for s, _ in wal.replay()] == list(range(1, expected_last + 1))
    assert wal.append(b"after") == expected_last + 1
    wal.close()
    assert list(Wal(tmp_path).replay())[-1] == (expected_last + 1, b"after")


def test_damage_in_an_older_segment_is_reported(tmp_path):
    wal = Wal(tmp_path, segment_bytes=200)
    for i in range(10):
        wal.append(b"y" * 100)
    wal.close()
    first = sorted(tmp_path.glob("*.wal"))[0]
    data = bytearray(first.read_bytes())
    data[20] ^= 0xFF
    first.write_bytes(bytes(data))
    with pytest.raises(WalCorrupted, match=first.name):
        Wal(tmp_path)


def test_truncate_through_removes_only_fully_covered_segments(tmp_path):
    wal = Wal(tmp_path, segment_bytes=200)
    for i in range(10):
        wal.append(b"z" * 100)
    before = len(list(tmp_path.glob("*.wal")))
    wal.truncate_through(6)
    remaining = [s for s, _ in wal.replay()]
    assert remaining[0] <= 7 and remaining[-1] == 10
    assert len(list(tmp_path.glob("*.wal"))) < before
    wal.truncate_through(10)
    assert wal.append(b"still works") == 11


CHILD = """
import sys
from pathlib import Path
from host.wal import Wal
wal = Wal(Path(sys.argv[1]), segment_bytes=64 * 1024)
i = 0
while True:
    seq = wal.append(("payload %d" % i).encode() * 20)
    print(seq, flush=True)
    i += 1
"""


def test_every_acknowledged_record_survives_sigkill(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                             cwd=Path(__file__).parent.parent)
    acknowledged = []
    deadline = time.monotonic() + 30
    while len(acknowledged) < 300 and time.monotonic() < deadline:
        acknowledged.append(int(child.stdout.readline()))
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert len(acknowledged) >= 300
    replayed = {s for s, _ in Wal(tmp_path).replay()}
    assert set(acknowledged) <= replayed
