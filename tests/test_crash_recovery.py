"""Durability of acknowledged writes: clean shutdown on SIGTERM/SIGINT, and SIGKILL in the middle of a write stream."""

from __future__ import annotations

import signal
import threading

import httpx

from conftest import wait_until

T0_NS = 1704067200 * 10**9


def test_sigterm_exits_0_and_keeps_the_data(start_server):
    # a long flush interval: the rows are still unflushed when the signal arrives
    running = start_server(wal_flush_interval="1h")
    body = "".join(f"kept,k=k{i % 3} v={i}i {T0_NS + i}\n" for i in range(1000))
    assert running.write("durable", body).status_code == 204
    assert running.stop(signal.SIGTERM) == 0
    log = running.log()
    assert "received SIGTERM" in log and "plughost stopped" in log

    running.start()
    rows = running.rows_when("durable", "SELECT count(*) AS n, sum(v) AS total FROM kept",
                             lambda rows: rows[0]["n"] == 1000)
    assert rows == [{"n": 1000, "total": sum(range(1000))}]


def test_sigint_exits_0(start_server):
    running = start_server()
    assert running.write("interrupted", f"m v=1 {T0_NS}").status_code == 204
    assert running.stop(signal.SIGINT) == 0
    assert "received SIGINT" in running.log()


def test_every_acknowledged_write_survives_sigkill(start_server):
    running = start_server(wal_flush_interval="10ms")
    acknowledged: list[int] = []  # batch numbers answered 204
    stop = threading.Event()
    batch_lines = 200

    def stream(first_batch: int):
        with httpx.Client(base_url=running.base_url, headers=running.headers, timeout=30) as client:
            batch = first_batch
            while not stop.is_set():
                body = "".join(f"crash,batch=b{batch} seq={batch * batch_lines + i}i {T0_NS + batch * batch_lines + i}\n"
                               for i in range(batch_lines))
                try:
                    response = client.post("/api/v3/write_lp", params={"db": "crashdb"}, content=body)
                except httpx.TransportError:
                    return  # the server died mid-request: this batch was never acknowledged
                if response.status_code == 204:
                    acknowledged.append(batch)
                batch += 2

    writers = [threading.Thread(target=stream, args=(first,)) for first in (0, 1)]
    for writer in writers:
        writer.start()
    wait_until(lambda: len(acknowledged) >= 25, timeout=60, message="25 acknowledged batches")
    running.kill()
    stop.set()
    for writer in writers:
        writer.join(30)
    assert running.process.returncode == -signal.SIGKILL

    running.start()
    expected = {batch * batch_lines + i for batch in acknowledged for i in range(batch_lines)}
    rows = running.rows_when("crashdb", "SELECT count(*) AS n FROM crash", lambda rows: rows[0]["n"] >= len(expected))
    stored = {row["seq"] for row in running.query("crashdb", "SELECT seq FROM crash").json()}
    assert expected <= stored, f"{len(expected - stored)} acknowledged rows lost"
    assert rows[0]["n"] == len(stored)  # nothing stored twice by the WAL replay
