"""Plugin caches that survive restarts, end to end through a real `plughost serve`.

Trigger-local and global values written by plugins come back after a clean restart and after
kill -9, with their remaining ttl; unpicklable values work in-run and are reported once;
deleting a trigger drops its persisted namespace; dry runs persist nothing.
"""

from __future__ import annotations

import signal
import sqlite3
import textwrap
import threading
import time

import httpx
import pytest

from conftest import wait_until

TRIGGER = "/api/v3/configure/processing_engine_trigger"
SETTINGS = {"run_async": False, "error_behavior": "log"}

PLUGINS = {
    "count_writes.py": """
        def process_writes(influxdb3_local, table_batches, args=None):
            cache = influxdb3_local.cache
            runs = cache.get("runs", 0) + 1
            cache.put("runs", runs)
            shared = cache.get("runs", 0, use_global=True) + 1
            cache.put("runs", shared, use_global=True)
            influxdb3_local.write(LineBuilder("counts").int64_field("local", runs).int64_field("shared", shared))
    """,
    "kv.py": """
        import json, threading
        def process_request(influxdb3_local, query_parameters, request_headers, request_body, args=None):
            cache = influxdb3_local.cache
            use_global = query_parameters.get("global") == "1"
            op = query_parameters["op"]
            if op == "put":
                ttl = query_parameters.get("ttl")
                cache.put(query_parameters["key"], request_body.decode(), None if ttl is None else float(ttl),
                          use_global=use_global)
                return {"put": query_parameters["key"]}
            if op == "get":
                keys = query_parameters["keys"].split(",")
                return {key: cache.get(key, use_global=use_global) for key in keys}
            if op == "lock":
                lock = cache.get("lock") or threading.Lock()
                cache.put("lock", lock)
                with cache.get("lock"):
                    pass
                seen = cache.get("seen", [])
                seen.append(len(seen))
                cache.put("seen", seen)
                return {"same_lock": cache.get("lock") is lock, "seen": seen}
            if op == "ttl":
                cache.put(query_parameters["key"], 1, ttl=float(query_parameters["ttl"]))
                return {}
            raise ValueError(op)
    """,
}


def _install(server) -> None:
    server.plugin_dir.mkdir(parents=True, exist_ok=True)
    for name, source in PLUGINS.items():
        (server.plugin_dir / name).write_text(textwrap.dedent(source))


def _create(server, db, name, plugin, spec):
    with server.client() as client:
        client.post("/api/v3/configure/database", json={"db": db})
        response = client.post(TRIGGER, json={
            "db": db, "plugin_filename": plugin, "trigger_name": name, "trigger_specification": spec,
            "trigger_arguments": None, "trigger_settings": SETTINGS, "disabled": False})
    assert response.status_code == 200, response.text


def _call(server, path, body=b"", **params):
    with server.client() as client:
        response = client.post(f"/api/v3/engine/{path}", params=params, content=body)
    assert response.status_code == 200, response.text
    return response.json()


def _stored(server, namespace):
    """The plugin cache rows the server's store holds for `namespace`, read from its SQLite file."""
    connection = sqlite3.connect(f"file:{server.data_dir / 'caches.sqlite'}?mode=ro", uri=True)
    try:
        return connection.execute(
            "SELECT key, expires_at FROM plugin_cache WHERE namespace = ? ORDER BY key", (namespace,)).fetchall()
    finally:
        connection.close()


def _log_texts(server, trigger):
    response = server.query("_internal", "SELECT log_level, log_text FROM system.processing_engine_logs "
                                         f"WHERE trigger_name = '{trigger}' ORDER BY event_time")
    return [(r["log_level"], r["log_text"]) for r in response.json()] if response.status_code == 200 else []


@pytest.fixture
def cache_server(start_server):
    server = start_server()
    _install(server)
    return server


def test_run_counts_in_both_caches_continue_after_a_restart(cache_server):
    server = cache_server
    _create(server, "countdb", "counter", "count_writes.py", "table:cpu")
    for n in range(1, 4):
        assert server.write("countdb", f"cpu v={n}").status_code == 204
        server.rows_when("countdb", "SELECT max(local) AS m FROM counts", lambda r, n=n: r and r[0]["m"] == n)
    server.restart()
    assert server.write("countdb", "cpu v=4").status_code == 204
    found = server.rows_when("countdb", "SELECT local, shared FROM counts ORDER BY local", lambda r: len(r) == 4)
    assert found[-1] == {"local": 4, "shared": 4}


def test_global_values_are_shared_by_triggers_and_survive_a_restart(cache_server):
    server = cache_server
    _create(server, "kvdb", "kv_a", "kv.py", "request:kv/a")
    _create(server, "kvdb", "kv_b", "kv.py", "request:kv/b")
    _call(server, "kv/a", b"from-a", op="put", key="shared", **{"global": "1"})
    _call(server, "kv/a", b"local-a", op="put", key="mine")
    assert _call(server, "kv/b", op="get", keys="shared", **{"global": "1"}) == {"shared": "from-a"}
    assert _call(server, "kv/b", op="get", keys="mine") == {"mine": None}
    server.restart()
    assert _call(server, "kv/b", op="get", keys="shared", **{"global": "1"}) == {"shared": "from-a"}
    assert _call(server, "kv/a", op="get", keys="mine") == {"mine": "local-a"}


def test_remaining_ttl_is_kept_across_a_restart(cache_server):
    server = cache_server
    _create(server, "ttldb", "kv", "kv.py", "request:ttl")
    ttl = 4.0
    put_at = time.time()
    _call(server, "ttl", b"short", op="put", key="short", ttl=str(ttl))
    _call(server, "ttl", b"short", op="put", key="gshort", ttl=str(ttl), **{"global": "1"})
    _call(server, "ttl", b"long", op="put", key="long", ttl="3600")
    _call(server, "ttl", b"zero", op="put", key="zero", ttl="0")
    [(_, stored_expiry)] = [row for row in _stored(server, "trigger:ttldb:kv") if row[0] == "long"]
    assert put_at + 3600 <= stored_expiry <= time.time() + 3600
    server.restart()
    restarted_at = time.time()
    assert _call(server, "ttl", op="get", keys="long,zero") == {"long": "long", "zero": None}

    def expired():
        local = _call(server, "ttl", op="get", keys="short")
        shared = _call(server, "ttl", op="get", keys="gshort", **{"global": "1"})
        return local == {"short": None} and shared == {"gshort": None}

    wait_until(expired, timeout=30, interval=0.05, message="the short-ttl keys to expire")
    # restored with the ttl they had left: gone before a fresh ttl counted from the restart would end
    assert put_at + ttl <= time.time() < restarted_at + ttl
    assert _call(server, "ttl", op="get", keys="long") == {"long": "long"}


def test_ttl_of_a_restored_entry_is_not_restarted(cache_server):
    server = cache_server
    _create(server, "ttl2db", "kv", "kv.py", "request:ttl2")
    _call(server, "ttl2", b"v", op="put", key="k", ttl="3600")
    [(_, before)] = _stored(server, "trigger:ttl2db:kv")
    server.restart()
    assert _call(server, "ttl2", op="get", keys="k") == {"k": "v"}
    [(_, after)] = _stored(server, "trigger:ttl2db:kv")
    assert after == before


def test_invalid_ttls_are_rejected_by_name(cache_server):
    server = cache_server
    _create(server, "badttl", "kv", "kv.py", "request:badttl")
    for ttl in ("-1", "nan", "1e30"):
        with server.client() as client:
            response = client.post("/api/v3/engine/badttl", params={"op": "put", "key": "k", "ttl": ttl})
        assert response.status_code == 500
        assert "ValueError: cannot convert float seconds to Duration" in response.json()["error"]
    assert _stored(server, "trigger:badttl:kv") == []


def test_an_unpicklable_value_works_in_run_and_is_reported_once(cache_server):
    server = cache_server
    _create(server, "lockdb", "locker", "kv.py", "request:lock")
    assert _call(server, "lock", op="lock") == {"same_lock": True, "seen": [0]}
    assert _call(server, "lock", op="lock") == {"same_lock": True, "seen": [0, 1]}
    assert _call(server, "lock", op="lock") == {"same_lock": True, "seen": [0, 1, 2]}

    def warnings():
        found = [t for level, t in _log_texts(server, "locker") if level == "WARN" and "cannot be pickled" in t]
        return found or None

    found = wait_until(warnings, message="the unpicklable-value warning in the trigger's log")
    time.sleep(0.2)  # a few flushes: a repeated warning would have landed by now
    found = warnings()
    assert len(found) == 1 and "'lock'" in found[0] and "memory only" in found[0]
    assert [key for key, _ in _stored(server, "trigger:lockdb:locker")] == ["seen"]
    server.restart()
    # the lock is gone; the list comes back as it was at its last put()
    assert _call(server, "lock", op="lock") == {"same_lock": True, "seen": [0, 1, 2, 3]}


def test_every_acknowledged_put_survives_kill_9(cache_server):
    server = cache_server
    _create(server, "killdb", "acker", "kv.py", "request:ack")
    acknowledged: list[str] = []
    stop = threading.Event()

    def writer(prefix, use_global):
        params = {"op": "put", **({"global": "1"} if use_global else {})}
        with server.client() as client:
            for i in range(100_000):
                if stop.is_set():
                    return
                key = f"{prefix}{i}"
                try:
                    response = client.post("/api/v3/engine/ack", params={**params, "key": key}, content=b"x")
                except httpx.TransportError:
                    return
                if response.status_code == 200:
                    acknowledged.append(key)

    threads = [threading.Thread(target=writer, args=("l", False)), threading.Thread(target=writer, args=("g", True))]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: sum(k.startswith("l") for k in acknowledged) >= 20
                   and sum(k.startswith("g") for k in acknowledged) >= 20,
                   timeout=30, message="acknowledged puts")
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(10)
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)
    server.start()
    local = [k for k in acknowledged if k.startswith("l")]
    shared = [k for k in acknowledged if k.startswith("g")]
    assert _call(server, "ack", op="get", keys=",".join(local)) == {k: "x" for k in local}
    assert _call(server, "ack", op="get", keys=",".join(shared), **{"global": "1"}) == {k: "x" for k in shared}


def test_deleting_a_trigger_drops_its_cache(cache_server):
    server = cache_server
    _create(server, "deldb", "gone", "kv.py", "request:gone")
    _call(server, "gone", b"v", op="put", key="k")
    _call(server, "gone", b"g", op="put", key="kept", **{"global": "1"})
    assert [key for key, _ in _stored(server, "trigger:deldb:gone")] == ["k"]
    with server.client() as client:
        deleted = client.request("DELETE", TRIGGER, params={"db": "deldb", "trigger_name": "gone", "force": "true"})
    assert deleted.status_code == 200, deleted.text
    assert _stored(server, "trigger:deldb:gone") == []
    _create(server, "deldb", "gone", "kv.py", "request:gone")
    assert _call(server, "gone", op="get", keys="k") == {"k": None}
    assert _call(server, "gone", op="get", keys="kept", **{"global": "1"}) == {"kept": "g"}


def test_dry_runs_persist_nothing(cache_server):
    server = cache_server
    (server.plugin_dir / "dry.py").write_text(textwrap.dedent("""
        def process_scheduled_call(influxdb3_local, call_time, args=None):
            influxdb3_local.cache.put("local", 1)
            influxdb3_local.cache.put("shared", 2, use_global=True)
            influxdb3_local.info("cached", influxdb3_local.cache.get("local"), influxdb3_local.cache.get("shared", use_global=True))
    """))
    with server.client() as client:
        client.post("/api/v3/configure/database", json={"db": "drydb"})
        answer = client.post("/api/v3/plugin_test/schedule", json={
            "filename": "dry.py", "database": "drydb", "schedule": "0 0 * * * *", "cache_name": "mine"}).json()
    assert answer["errors"] == [] and "INFO: cached 1 2" in answer["log_lines"]
    connection = sqlite3.connect(f"file:{server.data_dir / 'caches.sqlite'}?mode=ro", uri=True)
    try:
        assert connection.execute("SELECT count(*) FROM plugin_cache").fetchone() == (0,)
    finally:
        connection.close()


def test_a_trigger_local_cache_past_its_key_limit_raises_naming_the_limit():
    from sandbox.guest.local import MAX_KEYS, PluginCache

    cache = PluginCache(services=None, local_namespace=None, global_namespace="global", default_ttl=None)
    for i in range(MAX_KEYS):
        cache.put(f"k{i}", i)
    cache.put("k0", "replaced")  # an existing key still takes a new value
    with pytest.raises(ValueError, match=f"limit of {MAX_KEYS} keys"):
        cache.put("one-more", 1)
    assert cache.delete("k1") and cache.get("k0") == "replaced"
    cache.put("one-more", 1)
    assert cache.get("one-more") == 1


def test_the_global_cache_past_its_key_limit_raises_naming_the_limit():
    from cache.plugin_cache import MAX_KEYS, CacheFull, GlobalCache

    cache = GlobalCache()
    for i in range(MAX_KEYS - 1):
        cache.put("global", f"k{i}", b"v")
    cache.put("global", "expiring", b"v", ttl=0)
    cache.put("global", "fits", b"v")  # the expired key made room
    with pytest.raises(CacheFull, match=f"limit of {MAX_KEYS} keys"):
        cache.put("global", "one-more", b"v")
    cache.put("other", "one-more", b"v")
