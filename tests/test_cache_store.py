"""The caches' SQLite store: definitions, the delta log and snapshots, plugin cache entries, and SIGKILL safety."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cache.store import CacheStore, DefinitionExists
from conftest import REPO, subprocess_env


@pytest.fixture
def store(tmp_path):
    opened = CacheStore.in_directory(tmp_path)
    yield opened
    opened.close()


def test_definitions_are_unique_per_kind_table_and_name(store):
    first = store.add_definition("last_cache", "db", "cpu", "c1", b"one")
    store.add_definition("distinct_cache", "db", "cpu", "c1", b"other kind")
    store.add_definition("last_cache", "db", "mem", "c1", b"other table")
    with pytest.raises(DefinitionExists, match="'c1' already exists on table db.cpu"):
        store.add_definition("last_cache", "db", "cpu", "c1", b"again")
    assert [(d.id, d.table, d.definition) for d in store.definitions("last_cache")] == [
        (first, "cpu", b"one"), (first + 2, "mem", b"other table")]
    store.remove_definitions([first])
    assert [d.table for d in store.definitions("last_cache")] == ["mem"]


def test_state_is_the_snapshot_then_the_deltas_after_it(store):
    cache = store.add_definition("last_cache", "db", "cpu", "c", b"{}")
    other = store.add_definition("last_cache", "db", "cpu", "d", b"{}")
    assert store.load_state(cache) == (None, [])
    store.append_state(cache, lambda: b"d1")
    store.append_state(other, lambda: b"x1")
    store.append_state(cache, lambda: b"d2")
    store.replace_state(cache, lambda: b"snapshot through d2")
    store.append_state(cache, lambda: b"d3")
    store.sync()
    assert store.load_state(cache) == (b"snapshot through d2", [b"d3"])
    assert store.load_state(other) == (None, [b"x1"])
    store.remove_definitions([cache])
    assert store.load_state(cache) == (None, [])


def test_a_failing_operation_fails_alone(store):
    cache = store.add_definition("last_cache", "db", "cpu", "c", b"{}")

    def broken() -> bytes:
        raise RuntimeError("encoder broke")

    failed = store.append_state(cache, broken)
    kept = store.append_state(cache, lambda: b"kept")
    with pytest.raises(RuntimeError, match="encoder broke"):
        failed.result(10)
    assert kept.result(10) is None
    assert store.load_state(cache) == (None, [b"kept"])


def test_plugin_cache_entries(tmp_path):
    now = [1000.0]
    with_clock = CacheStore.in_directory(tmp_path)
    try:
        plugin = type(with_clock.plugin_cache)(with_clock, clock=lambda: now[0])
        plugin.put("global", "a", b"1", None)
        plugin.put("global", "b", b"2", 1010.0)
        plugin.put("trigger:db:t1", "a", b"3", None)
        plugin.put("global", "a", b"replaced", None)
        assert plugin.get("global", "a") == b"replaced"
        assert plugin.get("global", "b") == b"2"
        assert plugin.get("global", "missing") is None
        assert plugin.namespaces() == ["global", "trigger:db:t1"]
        now[0] = 1010.0
        assert plugin.get("global", "b") is None
        assert plugin.load("global") == [("a", b"replaced", None)]
        assert plugin.delete("global", "b") is True  # stored though expired
        assert plugin.delete("global", "b") is False
        plugin.put("global", "c", b"4", 1005.0)
        assert plugin.purge_expired() == 1
        assert plugin.drop_namespace("trigger:db:t1") is True
        assert plugin.drop_namespace("trigger:db:t1") is False
        assert plugin.namespaces() == ["global"]
    finally:
        with_clock.close()
    reopened = CacheStore.in_directory(tmp_path)
    try:
        assert reopened.plugin_cache.load("global") == [("a", b"replaced", None)]
    finally:
        reopened.close()


def test_concurrent_puts_share_commits(store):
    plugin = store.plugin_cache
    errors = []

    def writer(n: int) -> None:
        try:
            for i in range(50):
                plugin.put("global", f"{n}:{i}", str(i).encode(), None)
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(plugin.load("global")) == 200


_KILLED_WRITER = """
import sys
from pathlib import Path
from cache.store import CacheStore

store = CacheStore.in_directory(Path(sys.argv[1]))
cache = store.add_definition("last_cache", "db", "cpu", "c", b"definition")
print("definition", cache, flush=True)
i = 0
while True:
    store.plugin_cache.put("global", f"key{i}", f"value{i}".encode() * 50, None)
    store.append_state(cache, lambda i=i: f"delta{i}".encode() * 50).result()
    print("acked", i, flush=True)
    i += 1
"""


def test_every_acknowledged_write_survives_sigkill(tmp_path):
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
        cwd=REPO, env=subprocess_env(),
    )
    acknowledged = []
    try:
        assert child.stdout.readline().split()[0] == "definition"
        deadline = time.monotonic() + 60
        while len(acknowledged) < 300 and time.monotonic() < deadline:
            line = child.stdout.readline()
            assert line, "the writer exited early"
            acknowledged.append(int(line.split()[1]))
        child.send_signal(signal.SIGKILL)  # mid-stream: the writer is inside its next put
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert len(acknowledged) == 300

    with sqlite3.connect(Path(tmp_path) / "caches.sqlite") as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    store = CacheStore.in_directory(tmp_path)
    try:
        [definition] = store.definitions("last_cache")
        assert definition.definition == b"definition"
        for i in acknowledged:
            assert store.plugin_cache.get("global", f"key{i}") == f"value{i}".encode() * 50
        _, deltas = store.load_state(definition.id)
        assert deltas[: len(acknowledged)] == [f"delta{i}".encode() * 50 for i in acknowledged]
    finally:
        store.close()
