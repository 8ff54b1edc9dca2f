"""host.wal on real files: order, group commit, torn tails, corruption, truncation, SIGKILL."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from host.wal import Wal, WalCorrupted

PROJECT = Path(__file__).resolve().parent.parent
MAGIC_SIZE = 8
HEADER_SIZE = 16


def segments(directory):
    return sorted(directory.glob("*.wal"))


def replayed(directory, after=0):
    wal = Wal(directory)
    try:
        return list(wal.replay(after))
    finally:
        wal.close()


def test_sequences_start_at_one_and_records_replay_in_order(tmp_path):
    wal = Wal(tmp_path)
    assert wal.last_sequence == 0
    assert [wal.append(f"record {i}".encode()) for i in range(5)] == [1, 2, 3, 4, 5]
    assert wal.last_sequence == 5
    assert list(wal.replay()) == [(i + 1, f"record {i}".encode()) for i in range(5)]
    assert list(wal.replay(after=3)) == [(4, b"record 3"), (5, b"record 4")]
    assert list(wal.replay(after=5)) == []
    wal.close()


def test_reopen_after_close_continues_the_sequence(tmp_path):
    wal = Wal(tmp_path)
    wal.append(b"one")
    wal.append(b"")
    wal.close()
    wal.close()  # harmless
    reopened = Wal(tmp_path)
    assert reopened.last_sequence == 2
    assert reopened.append(b"three") == 3
    reopened.close()
    assert replayed(tmp_path) == [(1, b"one"), (2, b""), (3, b"three")]


def test_unsynced_appends_become_durable_at_close(tmp_path):
    wal = Wal(tmp_path)
    for i in range(100):
        wal.append(b"%d" % i, sync=False)
    wal.close()
    assert [payload for _, payload in replayed(tmp_path)] == [b"%d" % i for i in range(100)]


def test_append_after_close_is_refused(tmp_path):
    wal = Wal(tmp_path)
    wal.close()
    with pytest.raises(ValueError, match="closed"):
        wal.append(b"late")


def test_segments_are_named_after_their_first_sequence_and_roll_over(tmp_path):
    wal = Wal(tmp_path, segment_bytes=300)
    for _ in range(10):
        wal.append(b"p" * 100)  # 116 bytes framed: two records per segment
    big = wal.append(b"B" * 1000)  # larger than a segment: gets one to itself
    wal.append(b"after")
    wal.close()
    names = [path.name for path in segments(tmp_path)]
    assert names == [f"{start:020d}.wal" for start in (1, 3, 5, 7, 9, big, big + 1)]
    assert all(path.read_bytes()[:MAGIC_SIZE] == b"PLUGWAL1" for path in segments(tmp_path))
    assert [sequence for sequence, _ in replayed(tmp_path)] == list(range(1, 13))


def test_concurrent_appenders_share_fsyncs_and_lose_nothing(tmp_path, monkeypatch):
    fsyncs = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd))[1])
    wal = Wal(tmp_path, segment_bytes=8192)
    fsyncs.clear()
    acknowledged = {}

    def writer(name):
        for i in range(50):
            payload = f"{name}:{i}".encode()
            acknowledged[wal.append(payload)] = payload

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    records = len(acknowledged)
    assert records == 400
    # Serial appends would need 400 fsyncs (plus a few for new segments); sharing needs far fewer.
    assert len(fsyncs) < records / 2
    wal.close()
    log = replayed(tmp_path)
    assert [sequence for sequence, _ in log] == list(range(1, 401))
    assert dict(log) == acknowledged
    for n in range(8):  # each writer's records appear in the order it appended them
        mine = [payload for _, payload in log if payload.startswith(f"{n}:".encode())]
        assert mine == [f"{n}:{i}".encode() for i in range(50)]


@pytest.mark.parametrize("cut", [1, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 50, HEADER_SIZE + 99])
def test_a_record_cut_short_is_dropped_and_appends_continue_cleanly(tmp_path, cut):
    wal = Wal(tmp_path)
    for _ in range(3):
        wal.append(b"x" * 100)
    wal.close()
    segment = segments(tmp_path)[-1]
    good_end = MAGIC_SIZE + 2 * (HEADER_SIZE + 100)
    os.truncate(segment, good_end + cut)  # the third record, torn mid-write

    wal = Wal(tmp_path)
    assert wal.last_sequence == 2
    assert segment.stat().st_size == good_end  # the torn bytes are gone from disk
    assert [sequence for sequence, _ in wal.replay()] == [1, 2]
    assert wal.append(b"after") == 3
    wal.close()
    assert replayed(tmp_path) == [(1, b"x" * 100), (2, b"x" * 100), (3, b"after")]


@pytest.mark.parametrize(
    "garbage",
    [b"\x07\x00\x00\x00garbage", b"\x00" * 4096, os.urandom(64), b"\x05\x00\x00\x00" + b"\x00" * 20],
    ids=["short", "zeros", "random", "bad-crc"],
)
def test_garbage_after_the_last_record_is_cut_off(tmp_path, garbage):
    wal = Wal(tmp_path)
    for i in range(3):
        wal.append(b"%d" % i)
    wal.close()
    segment = segments(tmp_path)[-1]
    size = segment.stat().st_size
    with open(segment, "ab") as file:
        file.write(garbage)

    wal = Wal(tmp_path)
    assert wal.last_sequence == 3
    assert segment.stat().st_size == size
    assert wal.append(b"after") == 4
    wal.close()
    assert replayed(tmp_path)[-2:] == [(3, b"2"), (4, b"after")]


def test_a_segment_created_but_never_written_is_recreated(tmp_path):
    wal = Wal(tmp_path, segment_bytes=100)
    wal.append(b"a" * 50)
    wal.append(b"b" * 50)  # opens segment 2
    wal.close()
    newest = segments(tmp_path)[-1]
    assert newest.name == f"{2:020d}.wal"
    os.truncate(newest, 3)  # the crash came before its magic was durable
    wal = Wal(tmp_path, segment_bytes=100)
    assert wal.last_sequence == 1
    assert wal.append(b"c") == 2
    wal.close()
    assert replayed(tmp_path) == [(1, b"a" * 50), (2, b"c")]


def test_a_newest_segment_that_is_not_a_wal_segment_is_refused(tmp_path):
    (tmp_path / f"{1:020d}.wal").write_bytes(b"this is not a write-ahead log")
    with pytest.raises(WalCorrupted, match="bad magic"):
        Wal(tmp_path)


def write_segments(directory, records=6):
    wal = Wal(directory, segment_bytes=200)
    for i in range(records):
        wal.append(bytes([65 + i]) * 100)  # 116 bytes framed: one record per segment
    wal.close()
    return segments(directory)


def test_damage_inside_an_older_segment_raises_naming_file_and_offset(tmp_path):
    files = write_segments(tmp_path)
    data = bytearray(files[1].read_bytes())
    data[MAGIC_SIZE + HEADER_SIZE + 40] ^= 0xFF  # flip a payload bit of record 2
    files[1].write_bytes(bytes(data))

    wal = Wal(tmp_path)  # only the newest segment is scanned at open
    records = wal.replay()
    assert next(records) == (1, b"A" * 100)
    with pytest.raises(WalCorrupted) as raised:
        next(records)
    assert raised.value.path == files[1]
    assert raised.value.offset == MAGIC_SIZE
    assert str(raised.value) == f"{files[1]}: corrupt WAL at offset 8: record fails its CRC"
    # Replay that starts past the damaged segment does not need it.
    assert [sequence for sequence, _ in wal.replay(after=2)] == [3, 4, 5, 6]
    wal.close()


def test_an_older_segment_missing_its_last_records_raises(tmp_path):
    wal = Wal(tmp_path, segment_bytes=300)
    for _ in range(4):
        wal.append(b"y" * 100)  # segments hold records 1-2 and 3-4
    wal.close()
    first = segments(tmp_path)[0]
    os.truncate(first, MAGIC_SIZE + HEADER_SIZE + 100)  # record 2 gone, at a record boundary
    wal = Wal(tmp_path, segment_bytes=300)
    with pytest.raises(WalCorrupted, match="segment ends at sequence 1, the next starts at 3"):
        list(wal.replay())
    wal.close()


def test_a_torn_record_in_an_older_segment_is_corruption_not_a_tail(tmp_path):
    files = write_segments(tmp_path)
    os.truncate(files[0], MAGIC_SIZE + HEADER_SIZE + 10)
    with pytest.raises(WalCorrupted, match=r"offset 8: record payload cut short \(10 of 100 bytes\)"):
        replayed(tmp_path)


def test_truncate_through_deletes_only_segments_wholly_at_or_below(tmp_path):
    write_segments(tmp_path)  # records 1..6, one per segment
    wal = Wal(tmp_path, segment_bytes=200)
    wal.truncate_through(3)
    assert [path.name for path in segments(tmp_path)] == [f"{n:020d}.wal" for n in (4, 5, 6)]
    assert [sequence for sequence, _ in wal.replay()] == [4, 5, 6]
    wal.truncate_through(100)  # the segment being appended to stays
    assert [path.name for path in segments(tmp_path)] == [f"{6:020d}.wal"]
    assert wal.append(b"next") == 7
    wal.close()
    assert [sequence for sequence, _ in replayed(tmp_path)] == [6, 7]


def test_truncate_through_keeps_a_segment_holding_any_later_record(tmp_path):
    wal = Wal(tmp_path, segment_bytes=300)
    for _ in range(6):
        wal.append(b"z" * 100)  # segments: 1-2, 3-4, 5-6
    wal.truncate_through(3)  # segment 3-4 still holds record 4
    assert [path.name for path in segments(tmp_path)] == [f"{n:020d}.wal" for n in (3, 5)]
    assert [sequence for sequence, _ in wal.replay(after=3)] == [4, 5, 6]
    wal.close()


APPENDER = """
import sys, threading
from pathlib import Path
from host.wal import Wal

wal = Wal(Path(sys.argv[1]), segment_bytes=32 * 1024)
print_lock = threading.Lock()

def appender(name):
    i = 0
    while True:
        sequence = wal.append(b"%d:%d:" % (name, i) + b"." * (i % 300))
        with print_lock:
            print(sequence, name, i, flush=True)
        i += 1

for name in range(4):
    threading.Thread(target=appender, args=(name,), daemon=True).start()
threading.Event().wait()
"""


def test_every_acknowledged_record_survives_sigkill_mid_stream(tmp_path):
    child = subprocess.Popen(
        [sys.executable, "-c", APPENDER, str(tmp_path)], stdout=subprocess.PIPE, cwd=PROJECT
    )
    acknowledged = {}
    deadline = time.monotonic() + 60
    try:
        while len(acknowledged) < 600 and time.monotonic() < deadline:
            line = child.stdout.readline()
            assert line, "the appender died on its own"
            sequence, name, i = map(int, line.split())
            acknowledged[sequence] = b"%d:%d:" % (name, i) + b"." * (i % 300)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    assert len(acknowledged) >= 600, "the appender was too slow to reach 600 records"
    assert len(segments(tmp_path)) > 1
    log = dict(replayed(tmp_path))
    assert {sequence: log.get(sequence) for sequence in acknowledged} == acknowledged
    assert sorted(log) == list(range(1, len(log) + 1))


FILLER = """
import resource, signal, sys
from pathlib import Path
from host.wal import Wal

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over-size writes fail with EFBIG instead
wal = Wal(Path(sys.argv[1]))
resource.setrlimit(resource.RLIMIT_FSIZE, (4100, 4100))
appended = 0
try:
    while True:
        wal.append(b"r" * 150)
        appended += 1
except OSError as error:
    print(appended, error.errno, flush=True)
wal.append(b"x" * 10)  # still fits: the failed record left nothing behind
print(appended + 1, flush=True)
"""


def test_a_write_the_disk_refuses_leaves_no_partial_record(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", FILLER, str(tmp_path)], capture_output=True, cwd=PROJECT, timeout=60
    )
    assert result.returncode == 0, result.stderr.decode()
    first_line, second_line = result.stdout.decode().split("\n")[:2]
    appended, errno = map(int, first_line.split())
    assert errno == 27  # EFBIG
    assert appended == (4100 - MAGIC_SIZE) // (HEADER_SIZE + 150)  # 108 bytes left: a torn write
    assert int(second_line) == appended + 1
    log = replayed(tmp_path)
    assert [sequence for sequence, _ in log] == list(range(1, appended + 2))
    assert log[-1] == (appended + 1, b"x" * 10)
