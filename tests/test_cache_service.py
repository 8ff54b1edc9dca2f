"""The cache service over a real `LocalDatabase` and store: SQL answers, restarts, SIGKILL, drops."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from cache.service import CacheExists, CacheNotFound, CacheService
from cache.store import CacheStore
from conftest import REPO, subprocess_env
from host.database import LocalDatabase
from host.interface import QueryError

HOSTS = [f"h{i:02d}" for i in range(40)]


class Node:
    """A database, its cache store and its cache service on one data directory."""

    def __init__(self, data_dir: Path, clock=time.time):
        self.data_dir = data_dir
        self.clock = clock
        self.open()

    def open(self) -> None:
        self.db = LocalDatabase(self.data_dir, flush_interval=3600)
        self.db.start()
        self.store = CacheStore.in_directory(self.data_dir)
        self.caches = CacheService(self.db, self.store, clock=self.clock)

    def close(self) -> None:
        self.db.close()  # its last flush still reaches the caches
        self.caches.close()
        self.store.close()

    def restart(self) -> None:
        self.close()
        self.open()

    def write(self, lines: list[str]) -> None:
        self.db.write_lp("db", "\n".join(lines))
        self.db.flush_now()

    def rows(self, sql: str) -> list[tuple]:
        return [tuple(row.values()) for row in self.db.query("db", sql).to_pylist()]


@pytest.fixture
def node(tmp_path):
    opened = Node(tmp_path)
    yield opened
    opened.close()


def create_cpu(node: Node) -> None:
    node.db.create_database("db")
    node.db.create_table("db", "cpu", ["host", "region"], [("usage", "float64"), ("note", "utf8")])


def cpu_lines(start_ns: int, round_: int, step: int = 1) -> list[str]:
    return [f"cpu,host={h},region=r{i % 3} usage={round_ * 100 + i} {start_ns + round_ * step * 1000 + i}"
            for i, h in enumerate(HOSTS)]


LAST_ROWS = "SELECT host, region, usage, CAST(time AS BIGINT) AS t FROM {source} ORDER BY host, region, t DESC"
NEWEST = ("(SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY host, region ORDER BY time DESC) AS rn "
          "FROM cpu) AS ranked WHERE rn <= {count}) AS newest")


def test_last_cache_answers_what_sql_over_the_table_answers(node):
    create_cpu(node)
    node.caches.create_last_cache("db", "cpu")
    node.caches.create_last_cache("db", "cpu", name="three", key_columns=["host"], count=3)
    start = 1_700_000_000 * 10**9
    for round_ in range(6):
        node.write(cpu_lines(start, round_))
    # a row older than what the cache holds changes neither the cache nor the newest row in SQL
    node.write([f"cpu,host=h00,region=r0 usage=-1 {start}"])

    assert node.rows(LAST_ROWS.format(source="last_cache('cpu', 'cpu_host_region_last_cache')")) == \
        node.rows(LAST_ROWS.format(source=NEWEST.format(count=1)))
    three = "SELECT host, usage, CAST(time AS BIGINT) AS t FROM {source} ORDER BY host, t DESC"
    per_host = ("(SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY host ORDER BY time DESC) AS rn "
                "FROM cpu WHERE usage >= 0) AS ranked WHERE rn <= 3) AS newest")
    answer = node.rows(three.format(source="last_cache('cpu', 'three')"))
    assert answer == node.rows(three.format(source=per_host)) and len(answer) == 3 * len(HOSTS)
    filtered = "SELECT host, usage FROM {source} WHERE host IN ('h03', 'h07') AND region = 'r0' ORDER BY host"
    assert node.rows(filtered.format(source="last_cache('cpu', 'cpu_host_region_last_cache')")) == \
        node.rows(filtered.format(source=NEWEST.format(count=1))) == [("h03", 503.0)]

    table_schema = node.db.table_schema("db", "cpu")
    answer_schema = node.db.query("db", "SELECT * FROM last_cache('cpu', 'cpu_host_region_last_cache')").schema
    for name in ("host", "region", "time"):
        assert answer_schema.field(name).type == table_schema.field(name).type


def test_distinct_cache_answers_what_select_distinct_answers(node):
    create_cpu(node)
    node.caches.create_distinct_cache("db", "cpu", ["region", "host"])
    now = time.time_ns()
    node.write(cpu_lines(now - 10**9, 0))
    node.write([f"cpu,host=extra,region=r9 usage=1 {now}", f"cpu,region=r9 usage=2 {now}"])  # no host: not cached
    distinct = "SELECT region, host FROM {source} WHERE host IS NOT NULL ORDER BY region, host"
    assert node.rows(distinct.format(source="distinct_cache('cpu')")) == \
        node.rows(distinct.format(source="(SELECT DISTINCT region, host FROM cpu)"))
    assert node.rows("SELECT host FROM distinct_cache('cpu') WHERE region = 'r9'") == [("extra",)]


def test_caches_answer_at_once_after_a_restart(node):
    create_cpu(node)
    node.caches.create_last_cache("db", "cpu", count=2)
    node.caches.create_distinct_cache("db", "cpu", ["host"])
    now = time.time_ns()
    for round_ in range(3):
        node.write(cpu_lines(now - 10**9, round_))
    last = LAST_ROWS.format(source="last_cache('cpu')")
    before = node.rows(last)
    distinct_before = node.rows("SELECT host FROM distinct_cache('cpu') ORDER BY host")
    assert len(before) == 2 * len(HOSTS) and len(distinct_before) == len(HOSTS)

    node.restart()
    assert node.rows(last) == before
    assert node.rows("SELECT host FROM distinct_cache('cpu') ORDER BY host") == distinct_before
    # what the cache held still decides what is newer
    node.write([f"cpu,host=h00,region=r0 usage=-1 {now - 10**9}"])
    assert node.rows(last) == before


def test_rows_of_the_final_flush_at_close_are_kept(node):
    create_cpu(node)
    node.caches.create_last_cache("db", "cpu", key_columns=["host"])
    node.db.write_lp("db", f"cpu,host=a usage=7 {time.time_ns()}")  # not flushed yet
    node.restart()
    assert node.rows("SELECT host, usage FROM last_cache('cpu')") == [("a", 7.0)]


_KILLED_NODE = """
import sys, time
from pathlib import Path
from cache.service import CacheService
from cache.store import CacheStore
from host.database import LocalDatabase

data_dir = Path(sys.argv[1])
db = LocalDatabase(data_dir, flush_interval=3600)
db.start()
store = CacheStore.in_directory(data_dir)
caches = CacheService(db, store)
db.create_database("db")
db.create_table("db", "cpu", ["host"], [("usage", "float64")])
caches.create_last_cache("db", "cpu")
start = 1_700_000_000 * 10**9
i = 0
while True:
    db.write_lp("db", "\\n".join(f"cpu,host=h{h} usage={i} {start + i}" for h in range(20)))
    db.flush_now()
    store.sync()
    print("acked", i, flush=True)
    i += 1
"""


def test_the_last_cache_survives_sigkill(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", _KILLED_NODE, str(tmp_path)], stdout=subprocess.PIPE,
                             text=True, cwd=REPO, env=subprocess_env())
    acked = -1
    try:
        deadline = time.monotonic() + 60
        while acked < 30 and time.monotonic() < deadline:
            line = child.stdout.readline()
            assert line, "the node exited early"
            acked = int(line.split()[1])
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert acked >= 30

    node = Node(tmp_path)
    try:
        rows = node.rows("SELECT host, usage FROM last_cache('cpu') ORDER BY host")
        assert [host for host, _ in rows] == sorted(f"h{h}" for h in range(20))
        assert all(usage >= acked for _, usage in rows)
    finally:
        node.close()


def test_flushes_evict_and_prune_every_interval_and_that_survives_a_restart(tmp_path):
    now = [time.time()]
    node = Node(tmp_path, clock=lambda: now[0])
    try:
        create_cpu(node)
        node.caches.create_last_cache("db", "cpu", key_columns=["host"], ttl=60)
        node.caches.create_distinct_cache("db", "cpu", ["host"], max_cardinality=2)
        base = time.time_ns()
        node.write([f"cpu,host=a,region=r usage=1 {base}", f"cpu,host=b,region=r usage=2 {base + 1}",
                    f"cpu,host=c,region=r usage=3 {base + 2}"])
        now[0] += 61  # past the ttl and the eviction interval
        node.write([f"cpu,host=d,region=r usage=4 {base + 3}"])
        assert node.rows("SELECT host FROM last_cache('cpu')") == [("d",)]
        assert node.rows("SELECT host FROM distinct_cache('cpu') ORDER BY host") == [("c",), ("d",)]
        node.restart()
        assert node.rows("SELECT host FROM last_cache('cpu')") == [("d",)]
        assert node.rows("SELECT host FROM distinct_cache('cpu') ORDER BY host") == [("c",), ("d",)]
        node.write([f"cpu,host=a,region=r usage=5 {base - 10}"])  # a was emptied: an older time counts
        assert node.rows("SELECT host, usage FROM last_cache('cpu') ORDER BY host") == [("a", 5.0), ("d", 4.0)]
    finally:
        node.close()


def test_sql_errors_name_the_problem(node):
    create_cpu(node)
    with pytest.raises(QueryError, match=r"provided table name \(nope\) is invalid"):
        node.db.query("db", "SELECT * FROM last_cache('nope')")
    with pytest.raises(QueryError, match="could not find cache for the given arguments"):
        node.db.query("db", "SELECT * FROM last_cache('cpu')")
    node.caches.create_last_cache("db", "cpu")
    node.caches.create_last_cache("db", "cpu", name="second", key_columns=["region"])
    with pytest.raises(QueryError, match="could not find cache for the given arguments"):
        node.db.query("db", "SELECT * FROM last_cache('cpu')")  # two caches: the name is needed
    assert node.db.query("db", "SELECT * FROM last_cache('cpu', 'second')").num_rows == 0
    with pytest.raises(QueryError, match="could not find distinct value cache for the given arguments"):
        node.db.query("db", "SELECT * FROM distinct_cache('cpu')")
    with pytest.raises(QueryError, match="first argument must be the table name"):
        node.db.query("db", "SELECT * FROM last_cache()")


def test_system_tables_list_the_definitions(node):
    create_cpu(node)
    node.caches.create_last_cache("db", "cpu", value_columns=["usage"], count=5, ttl=60)
    node.caches.create_distinct_cache("db", "cpu", ["region", "host"], max_cardinality=10, max_age=600)
    assert node.db.query("db", "SELECT * FROM system.last_caches").to_pylist() == [{
        "table": "cpu", "name": "cpu_host_region_last_cache", "key_column_ids": [0, 1],
        "key_column_names": ["host", "region"], "value_column_ids": [2], "value_column_names": ["usage"],
        "count": 5, "ttl": 60,
    }]
    assert node.db.query("db", "SELECT * FROM system.distinct_caches").to_pylist() == [{
        "table": "cpu", "name": "cpu_region_host_distinct_cache", "column_ids": [1, 0],
        "column_names": ["region", "host"], "max_cardinality": 10, "max_age_seconds": 600,
    }]


def test_creating_refuses_unknown_names_duplicates_and_bad_columns(node):
    with pytest.raises(CacheNotFound, match="database not found: db"):
        node.caches.create_last_cache("db", "cpu")
    create_cpu(node)
    with pytest.raises(CacheNotFound, match="table not found: db.mem"):
        node.caches.create_distinct_cache("db", "mem", ["host"])
    with pytest.raises(ValueError, match="invalid key column 'usage'"):
        node.caches.create_last_cache("db", "cpu", key_columns=["usage"])
    with pytest.raises(ValueError, match="invalid column 'usage'"):
        node.caches.create_distinct_cache("db", "cpu", ["usage"])
    node.caches.create_last_cache("db", "cpu", name="c")
    with pytest.raises(CacheExists, match="a last cache named 'c' already exists on table db.cpu"):
        node.caches.create_last_cache("db", "cpu", name="c", count=2)
    node.caches.delete_last_cache("db", "cpu", "c")
    with pytest.raises(CacheNotFound, match="last cache not found: 'c'"):
        node.caches.delete_last_cache("db", "cpu", "c")
    node.caches.create_last_cache("db", "cpu", name="c", count=2)  # the name is free again


def test_dropping_a_table_or_database_drops_its_caches(node):
    create_cpu(node)
    node.db.create_table("db", "mem", ["host"], [("free", "int64")])
    node.caches.create_last_cache("db", "cpu")
    node.caches.create_distinct_cache("db", "cpu", ["host"])
    node.caches.create_last_cache("db", "mem")
    node.caches.drop_table("db", "cpu")
    assert [d.table for d in node.caches.last_caches("db")] == ["mem"]
    assert node.caches.distinct_caches("db") == []
    node.caches.drop_database("db")
    assert node.caches.last_caches("db") == []
    node.restart()
    assert node.caches.last_caches("db") == [] and node.store.definitions("last_cache") == []


def test_caches_of_a_table_deleted_while_stopped_are_forgotten(node):
    create_cpu(node)
    node.caches.create_last_cache("db", "cpu")
    node.caches.close()
    node.db.delete_table("db", "cpu")
    node.caches = CacheService(node.db, node.store)
    assert node.caches.last_caches("db") == [] and node.store.definitions("last_cache") == []


def test_flushes_of_other_tables_and_caches_created_later_do_not_backfill(node):
    create_cpu(node)
    start = 1_700_000_000 * 10**9
    node.write(cpu_lines(start, 0))
    node.caches.create_last_cache("db", "cpu")
    assert node.db.query("db", "SELECT * FROM last_cache('cpu')").num_rows == 0  # cached on write only
    node.write([f"mem,host=h00 free=1i {start}"])
    assert node.db.query("db", "SELECT * FROM last_cache('cpu')").num_rows == 0
    node.write(cpu_lines(start, 1)[:5])
    assert node.rows("SELECT host, usage FROM last_cache('cpu') ORDER BY host") == [
        (h, 100.0 + i) for i, h in enumerate(HOSTS[:5])]
    assert isinstance(node.db.query("db", "SELECT * FROM last_cache('cpu')"), pa.Table)
