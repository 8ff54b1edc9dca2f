"""Cache configuration over real HTTP, and the `plughost create|delete last_cache|distinct_cache` commands.

The server is plughost's own app (`host.server.create_app`) with the cache routes added, run by
uvicorn on 127.0.0.1 in this process, over a real database and store in a temporary directory.
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn

from cache import cli as cache_cli
from cache.service import CacheService
from cache.store import CacheStore
from conftest import wait_until
from host.api.caches import routes
from host.cli import build_parser
from host.client import RequestFailed
from host.config import ServeConfig
from host.server import Server, create_app

LAST = "/api/v3/configure/last_cache"
DISTINCT = "/api/v3/configure/distinct_cache"


class CacheServer:
    """A plughost app with the cache routes, served by uvicorn on a thread."""

    def __init__(self, data_dir: Path):
        config = ServeConfig(data_dir=data_dir, plugin_dir=data_dir / "plugins", http_host="127.0.0.1",
                             http_port=0, wal_flush_interval=3600.0, without_auth=False, log_level="error",
                             max_http_request_size=10 * 1024 * 1024)
        self.server = Server(config)
        self.token = self.server.start()
        self.store = CacheStore.in_directory(data_dir)
        self.caches = CacheService(self.server.database, self.store)
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        self.base_url = "http://127.0.0.1:%d" % listener.getsockname()[1]
        self.uvicorn = uvicorn.Server(uvicorn.Config(create_app(self.server, routes(self.caches)), log_config=None,
                                                     lifespan="on"))
        self.thread = threading.Thread(target=self.uvicorn.run, kwargs={"sockets": [listener]}, daemon=True)
        self.thread.start()
        wait_until(lambda: self.uvicorn.started, timeout=30, message="uvicorn to start")

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30)

    def stop(self) -> None:
        self.uvicorn.should_exit = True
        self.thread.join(30)
        self.server.close()
        self.caches.close()
        self.store.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    running = CacheServer(tmp_path_factory.mktemp("cache-http"))
    database = running.server.database
    database.create_database("db")
    database.create_table("db", "cpu", ["host", "region"], [("usage", "float64"), ("ok", "bool"), ("os", "utf8")])
    yield running
    running.stop()


def test_last_cache_create_answers_201_with_the_definition(served):
    with served.client() as client:
        created = client.post(LAST, json={"db": "db", "table": "cpu", "key_columns": ["host"],
                                          "value_columns": ["usage"], "count": 3, "ttl": 120})
        assert created.status_code == 201
        assert created.headers["content-type"] == "application/json"
        assert created.json() == {"table": "cpu", "name": "cpu_host_last_cache", "key_columns": [0],
                                  "value_columns": {"explicit": {"columns": [2]}}, "count": 3, "ttl": 120}
        defaults = client.post(LAST, json={"db": "db", "table": "cpu", "name": "defaults"})
        assert defaults.status_code == 201
        assert defaults.json() == {"table": "cpu", "name": "defaults", "key_columns": [0, 1],
                                   "value_columns": "all_non_key_columns", "count": 1, "ttl": 14400}
        again = client.post(LAST, json={"db": "db", "table": "cpu", "name": "defaults", "ttl": 5})
        assert again.status_code == 409 and "'defaults' already exists" in again.text


@pytest.mark.parametrize("body, status, message", [
    ({"db": "nodb", "table": "cpu"}, 404, "database not found: nodb"),
    ({"db": "db", "table": "nope"}, 404, "table not found: db.nope"),
    ({"db": "db", "table": "cpu", "key_columns": ["nope"]}, 400, "invalid key column 'nope'"),
    ({"db": "db", "table": "cpu", "key_columns": ["usage"]}, 400, "invalid key column 'usage': its type is double"),
    ({"db": "db", "table": "cpu", "value_columns": ["nope"]}, 400, "invalid value column 'nope'"),
    ({"db": "db", "table": "cpu", "name": "zero", "count": 0}, 400, "invalid last cache count 0"),
    ({"table": "cpu"}, 400, "missing required field `db`"),
    ({"db": "bad name", "table": "cpu"}, 400, "invalid character in database name"),
])
def test_last_cache_create_refusals(served, body, status, message):
    with served.client() as client:
        response = client.post(LAST, json=body)
    assert response.status_code == status
    assert message in response.text


def test_last_cache_delete_by_body_or_query_string(served):
    with served.client() as client:
        for name in ("by_body", "by_query"):
            assert client.post(LAST, json={"db": "db", "table": "cpu", "name": name}).status_code == 201
        deleted = client.request("DELETE", LAST, json={"db": "db", "table": "cpu", "name": "by_body"})
        assert (deleted.status_code, deleted.content) == (200, b"")
        assert client.delete(LAST, params={"db": "db", "table": "cpu", "name": "by_query"}).status_code == 200
        again = client.delete(LAST, params={"db": "db", "table": "cpu", "name": "by_query"})
        assert again.status_code == 404 and "last cache not found: 'by_query'" in again.text
        assert client.delete(LAST, params={"db": "db", "table": "cpu"}).status_code == 400  # no name
        assert client.delete(LAST).status_code == 415  # no query string and no JSON body


def test_distinct_cache_create_and_delete(served):
    with served.client() as client:
        created = client.post(DISTINCT, json={"db": "db", "table": "cpu", "columns": ["region", "os"],
                                              "max_cardinality": 5, "max_age": 60})
        assert created.status_code == 201
        assert created.json() == {"table_name": "cpu", "cache_name": "cpu_region_os_distinct_cache",
                                  "column_ids": [1, 4], "max_cardinality": 5, "max_age_seconds": 60}
        conflict = client.post(DISTINCT, json={"db": "db", "table": "cpu", "columns": ["region", "os"]})
        assert conflict.status_code == 409
        wrong_type = client.post(DISTINCT, json={"db": "db", "table": "cpu", "columns": ["ok"]})
        assert wrong_type.status_code == 400 and "invalid column 'ok': its type is bool" in wrong_type.text
        empty = client.post(DISTINCT, json={"db": "db", "table": "cpu", "columns": []})
        assert empty.status_code == 400 and "no columns provided" in empty.text
        gone = client.request("DELETE", DISTINCT, json={"db": "db", "table": "cpu",
                                                        "name": "cpu_region_os_distinct_cache"})
        assert gone.status_code == 200
        assert client.request("DELETE", DISTINCT, json={"db": "db", "table": "cpu",
                                                        "name": "cpu_region_os_distinct_cache"}).status_code == 404


def test_caches_are_queried_through_query_sql(served):
    with served.client() as client:
        assert client.post(LAST, json={"db": "db", "table": "cpu", "name": "q", "key_columns": ["host"],
                                       "value_columns": ["usage"]}).status_code == 201
        assert client.post(DISTINCT, json={"db": "db", "table": "cpu", "name": "q",
                                           "columns": ["host"]}).status_code == 201
        now = time.time_ns()
        written = client.post("/api/v3/write_lp", params={"db": "db"},
                              content=f"cpu,host=a usage=1 {now}\ncpu,host=b usage=2 {now}\ncpu,host=a usage=3 {now + 1}")
        assert written.status_code == 204
        served.server.database.flush_now()
        last = client.post("/api/v3/query_sql", json={
            "db": "db", "q": "SELECT host, usage FROM last_cache('cpu', 'q') ORDER BY host"})
        assert last.json() == [{"host": "a", "usage": 3.0}, {"host": "b", "usage": 2.0}]
        distinct = client.post("/api/v3/query_sql", json={
            "db": "db", "q": "SELECT host FROM distinct_cache('cpu', 'q') ORDER BY host"})
        assert distinct.json() == [{"host": "a"}, {"host": "b"}]
        listed = client.post("/api/v3/query_sql", json={
            "db": "db", "q": "SELECT name, count, ttl FROM system.last_caches WHERE name = 'q'"})
        assert listed.json() == [{"name": "q", "count": 1, "ttl": 14400}]
        missing = client.post("/api/v3/query_sql", json={"db": "db", "q": "SELECT * FROM last_cache('cpu', 'x')"})
        assert missing.status_code == 400 and "could not find cache for the given arguments" in missing.text


def run_command(served, *argv: str) -> int:
    """Run a cache command as `plughost` parses it, against the served app."""
    parser = build_parser([cache_cli.register])
    args = parser.parse_args([*argv, "--host", served.base_url, "--token", served.token])
    return args.handler(args)


def test_cli_creates_and_deletes_caches(served, capsys):
    assert run_command(served, "create", "last_cache", "-d", "db", "-t", "cpu", "--key-columns", "host,region",
                       "--value-columns", "usage", "--count", "2", "--ttl", "1h 30m", "cli_last") == 0
    printed = capsys.readouterr().out
    assert printed.startswith("new cache created: {")
    assert '"name": "cli_last"' in printed and '"ttl": 5400' in printed and '"count": 2' in printed
    with pytest.raises(RequestFailed, match="'cli_last' already exists"):
        run_command(served, "create", "last_cache", "-d", "db", "-t", "cpu", "cli_last")
    assert run_command(served, "delete", "last_cache", "-d", "db", "-t", "cpu", "cli_last") == 0
    assert capsys.readouterr().out == "last cache deleted successfully\n"

    assert run_command(served, "create", "distinct_cache", "-d", "db", "-t", "cpu", "--columns", "region,host",
                       "--max-cardinality", "50", "--max-age", "2d") == 0
    printed = capsys.readouterr().out
    assert '"cache_name": "cpu_region_host_distinct_cache"' in printed and '"max_age_seconds": 172800' in printed
    assert run_command(served, "delete", "distinct_cache", "-d", "db", "-t", "cpu",
                       "cpu_region_host_distinct_cache") == 0
    assert capsys.readouterr().out == "distinct cache deleted successfully\n"


@pytest.mark.parametrize("text, seconds", [
    ("4h", 14400), ("90s", 90), ("1 day", 86400), ("1h 30m", 5400), ("2weeks", 1209600), ("1500ms", 1),
])
def test_durations_read_like_influxdb3(text, seconds):
    assert cache_cli.duration_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "4", "4 parsecs", "h"])
def test_bad_durations_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError, match="invalid duration"):
        cache_cli.duration_seconds(text)
