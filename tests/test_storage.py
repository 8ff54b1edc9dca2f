"""LocalDatabase storage: catalog, write validation, flushes, subscribers, persistence, admin."""

from __future__ import annotations

import json
import threading
import time

import pyarrow as pa
import pytest

from conftest import wait_until
from host.buffer import RowGroup, build_batch, decode_wal_record, encode_wal_record, widen
from host.catalog import Catalog, ColumnDef, TableSchema
from host.database import LocalDatabase
from host.errors import (
    AlreadyExists,
    DatabaseNotFound,
    InvalidName,
    InvalidSchema,
    NotFound,
    WriteError,
)
from host.interface import Database

T0 = 1_704_067_200_000_000_000  # 2024-01-01T00:00:00Z in ns
TAG = pa.dictionary(pa.int32(), pa.string())


@pytest.fixture
def db(tmp_path):
    """A started database that only flushes when told to (flush_now)."""
    database = LocalDatabase(tmp_path / "data", flush_interval=3600)
    database.start()
    yield database
    database.close()


def count(db, database, table) -> int:
    return db.query(database, f'SELECT count(*) AS n FROM "{table}"').column("n")[0].as_py()


# -- catalog ------------------------------------------------------------------------------------


def test_catalog_changes_survive_a_reload(tmp_path):
    catalog = Catalog(tmp_path)
    catalog.create_database("weather")
    catalog.create_table("weather", "home", [ColumnDef("room", "tag"), ColumnDef("temp", "float64")])
    catalog.add_columns("weather", {"home": [ColumnDef("hum", "int64")], "garden": [ColumnDef("soil", "utf8")]})

    reloaded = Catalog(tmp_path)
    home = reloaded.table("weather", "home")
    assert [(c.name, c.type) for c in home.columns] == [
        ("room", "tag"), ("temp", "float64"), ("hum", "int64"), ("time", "time")
    ]
    assert reloaded.table("weather", "garden").arrow_schema.names == ["soil", "time"]
    assert json.loads((tmp_path / "catalog.json").read_text())["databases"][0]["name"] == "weather"
    assert not list(tmp_path.glob("*.tmp"))


def test_catalog_refuses_a_column_type_change(tmp_path):
    catalog = Catalog(tmp_path)
    catalog.add_columns("db", {"t": [ColumnDef("v", "float64")]})
    with pytest.raises(InvalidSchema, match="t.v is float64, not int64"):
        catalog.add_columns("db", {"t": [ColumnDef("v", "int64")]})


def test_table_schema_orders_tags_then_fields_then_time():
    schema = TableSchema(1, "t", [ColumnDef("a", "float64"), ColumnDef("host", "tag"), ColumnDef("b", "bool"), ColumnDef("dc", "tag")])
    assert schema.arrow_schema == pa.schema(
        [("host", TAG), ("dc", TAG), ("a", pa.float64()), ("b", pa.bool_()), ("time", pa.timestamp("ns"))]
    )


# -- buffer -------------------------------------------------------------------------------------


def test_build_batch_fills_columns_a_group_lacks_with_nulls():
    schema = TableSchema(7, "cpu", [ColumnDef("host", "tag"), ColumnDef("usage", "float64"), ColumnDef("n", "int64")])
    batch = build_batch(schema, {
        (("host",), ("usage",)): [("a", 1.0, 10), ("b", 2.0, 20)],
        ((), ("n",)): [(5, 30)],
    })
    assert batch.schema == schema.arrow_schema
    assert batch.set_column(3, "time", batch.column("time").cast(pa.int64())).to_pydict() == {
        "host": ["a", "b", None],
        "usage": [1.0, 2.0, None],
        "n": [None, None, 5],
        "time": [10, 20, 30],
    }


def test_widen_adds_null_columns_in_schema_order():
    old = pa.RecordBatch.from_pydict({"v": [1.0], "time": pa.array([1], pa.timestamp("ns"))})
    new_schema = pa.schema([("host", TAG), ("v", pa.float64()), ("time", pa.timestamp("ns"))])
    wide = widen(old, new_schema)
    assert wide.schema == new_schema
    assert wide.column("host").to_pylist() == [None]


def test_wal_record_round_trips():
    groups = [RowGroup(3, ("host",), ("v", "ok"), [("a", 1.5, True, T0), ("b", -2.0, False, T0 + 1)])]
    assert decode_wal_record(encode_wal_record(groups)).groups == groups


# -- writes ---------------------------------------------------------------------------------------


def test_local_database_is_a_database(db):
    assert isinstance(db, Database)


def test_write_creates_database_table_and_typed_columns(db):
    result = db.write_lp(
        "sensors",
        f'home,room=kitchen temp=21.5,co=3i,ok=t,note="fine",count=7u {T0}\n'
        f"home,room=garage,floor=0 temp=18.0 {T0 + 1}",
    )
    assert result.lines_written == 2 and result.errors == []
    assert "sensors" in db.list_databases() and db.list_tables("sensors") == ["home"]
    assert db.table_schema("sensors", "home") == pa.schema([
        ("room", TAG), ("floor", TAG),
        ("temp", pa.float64()), ("co", pa.int64()), ("ok", pa.bool_()), ("note", pa.string()), ("count", pa.uint64()),
        ("time", pa.timestamp("ns")),
    ])


def test_rows_become_visible_at_the_flush(db):
    db.write_lp("d", f"m v=1 {T0}")
    assert count(db, "d", "m") == 0
    flush = db.flush_now()
    assert flush is not None and flush.sequence >= 1
    assert count(db, "d", "m") == 1
    assert db.flush_now() is None  # nothing pending


def test_the_flush_thread_flushes_on_its_interval_despite_failing_subscribers(tmp_path):
    calls = []

    def failing(flush):
        calls.append(flush.sequence)
        raise RuntimeError("subscriber bug")

    with LocalDatabase(tmp_path, flush_interval=0.05) as database:
        database.subscribe(failing)
        database.write_lp("d", f"m v=1 {T0}")
        wait_until(lambda: count(database, "d", "m") == 1, message="the periodic flush")
        database.write_lp("d", f"m v=2 {T0 + 1}")
        wait_until(lambda: count(database, "d", "m") == 2, message="the next periodic flush")
    assert len(calls) == 2 and calls[0] < calls[1]


def test_field_type_conflict_rejects_the_line_with_influxdb3s_message(db):
    db.write_lp("d", f"cpu,host=a usage=1.5 {T0}")
    result = db.write_lp("d", f"cpu,host=b usage=2.5 {T0 + 1}\ncpu,host=c usage=3i {T0 + 2}")
    assert result.lines_written == 1
    [error] = result.errors
    assert (error.line_number, error.original_line) == (2, f"cpu,host=c usage=3i {T0 + 2}")
    # InfluxDB 3 writes the 0-based line index into the text
    assert error.error_message == (
        "invalid field value in line protocol for field 'usage' on line 1: "
        "expected type iox::column_type::field::float, but got iox::column_type::field::integer"
    )
    db.flush_now()
    assert db.query("d", "SELECT host FROM cpu ORDER BY time").column("host").to_pylist() == ["a", "b"]


def test_a_body_conflicting_with_itself_keeps_the_first_type(db):
    result = db.write_lp("d", f"m x=1 {T0}\nm x=1i {T0 + 1}\nm x=2 {T0 + 2}")
    assert result.lines_written == 2
    assert [e.line_number for e in result.errors] == [2]
    assert db.table_schema("d", "m").field("x").type == pa.float64()


def test_a_tag_and_a_field_cannot_share_a_name(db):
    db.write_lp("d", f"m,host=a v=1 {T0}")
    result = db.write_lp("d", f"m host=1 {T0}\nm,v=x w=1 {T0}")
    assert [e.line_number for e in result.errors] == [1, 2]
    assert "expected type iox::column_type::tag, but got iox::column_type::field::float" in result.errors[0].error_message
    assert "expected type iox::column_type::field::float, but got iox::column_type::tag" in result.errors[1].error_message
    assert "w" not in db.table_schema("d", "m").names


def test_time_is_not_a_column_name_a_line_can_use(db):
    result = db.write_lp("d", f"m time=1 {T0}\nm,time=x v=1 {T0}")
    assert result.lines_written == 0 and len(result.errors) == 2
    assert "iox::column_type::timestamp" in result.errors[0].error_message


def test_a_table_name_with_control_characters_rejects_the_line(db):
    result = db.write_lp("d", f"bad\x01name v=1 {T0}\ngood v=1 {T0}")
    assert result.lines_written == 1
    assert [(e.line_number, e.error_message) for e in result.errors] == [
        (1, "invalid table name 'bad\\x01name': must be non-empty printable text")
    ]


def test_parse_errors_are_listed_with_their_line_numbers(db):
    result = db.write_lp("d", f"m v=1 {T0}\nnot line protocol\nm v=2 {T0 + 1}\nm v= {T0}")
    assert result.lines_written == 2
    assert [(e.line_number, e.original_line) for e in result.errors] == [
        (2, "not line protocol"), (4, f"m v= {T0}")
    ]
    assert all(e.error_message for e in result.errors)


def test_without_accept_partial_one_bad_line_stores_nothing(db):
    db.write_lp("d", f"m v=1 {T0}")
    for body in (f"m v=2 {T0}\nm v=3i {T0}", f"m v=2 {T0}\nbroken", f"new v=1 {T0}\nm,t=1 v=1i {T0}"):
        with pytest.raises(WriteError) as refused:
            db.write_lp("d", body, accept_partial=False)
        assert [e.line_number for e in refused.value.errors] == [2]
        assert "nothing stored" in str(refused.value)
    db.flush_now()
    assert count(db, "d", "m") == 1
    assert db.list_tables("d") == ["m"]  # the refused body's new table was not created
    assert db.table_schema("d", "m").names == ["v", "time"]


@pytest.mark.parametrize("name", ["", "a" * 65, "has space", "semi;colon", "dot.ted", "_internal"])
def test_bad_database_names_are_refused_for_writes(db, name):
    with pytest.raises(WriteError, match="database"):
        db.write_lp(name, f"m v=1 {T0}")
    assert db.list_databases() == ["_internal"]


def test_precision_scales_timestamps_to_nanoseconds(db):
    for precision, timestamp in [("s", 1_704_067_200), ("ms", 1_704_067_200_000), ("us", 1_704_067_200_000_000),
                                 ("ns", T0), ("second", 1_704_067_200), ("auto", 1_704_067_200_000)]:
        db.write_lp("d", f"m,p={precision} v=1 {timestamp}", precision=precision)
    db.flush_now()
    times = db.query("d", "SELECT CAST(time AS BIGINT) AS t FROM m").column("t").to_pylist()
    assert times == [T0] * 6
    with pytest.raises(WriteError, match="precision"):
        db.write_lp("d", "m v=1 1", precision="minutes")


def test_an_out_of_range_scaled_timestamp_rejects_the_line(db):
    result = db.write_lp("d", f"m v=1 {2**62}\nm v=2 1", precision="s")
    assert result.lines_written == 1
    assert [e.line_number for e in result.errors] == [1]


def test_lines_without_timestamp_share_the_servers_write_time(db):
    before = time.time_ns()
    db.write_lp("d", "m v=1\nm v=2\nm v=3")
    after = time.time_ns()
    db.flush_now()
    times = set(db.query("d", "SELECT CAST(time AS BIGINT) AS t FROM m").column("t").to_pylist())
    assert len(times) == 1 and before <= times.pop() <= after


def test_no_sync_writes_are_included_by_flush_now(db):
    for i in range(20):
        db.write_lp("d", f"m v={i} {T0 + i}", no_sync=True)
    db.flush_now()
    assert count(db, "d", "m") == 20


def test_concurrent_writers_lose_nothing_and_agree_on_the_schema(db):
    def writer(w: int) -> None:
        for i in range(25):
            lines = [f"m,writer=w{w} v={i}i,f{i % 5}=1 {T0 + w * 1000 + i * 10 + j}" for j in range(10)]
            assert db.write_lp("d", "\n".join(lines)).errors == []

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    db.flush_now()
    assert count(db, "d", "m") == 8 * 25 * 10
    assert db.query("d", "SELECT count(DISTINCT time) AS n FROM m").column("n")[0].as_py() == 2000
    assert db.table_schema("d", "m").names == ["writer", "v", "f0", "f1", "f2", "f3", "f4", "time"]


# -- subscribers --------------------------------------------------------------------------------


def test_subscribers_get_every_flush_with_full_schema_batches(db):
    seen = []
    seen_after_failure = []

    def failing(flush):
        raise RuntimeError("subscriber bug")

    db.subscribe(seen.append)
    db.subscribe(failing)
    unsubscribe = db.subscribe(seen_after_failure.append)

    db.write_lp("d", f"cpu,host=a usage=1 {T0}\nmem free=3i {T0}")
    db.write_lp("e", f"cpu,host=b usage=2 {T0}")
    first = db.flush_now()
    db.write_lp("d", f"cpu,host=c usage=3,extra=1i {T0 + 1}")
    second = db.flush_now()

    assert seen == [first, second] and seen_after_failure == [first, second]
    assert second.sequence > first.sequence
    assert sorted((t.database, t.table, t.batch.num_rows) for t in first.tables) == [
        ("d", "cpu", 1), ("d", "mem", 1), ("e", "cpu", 1)
    ]
    [flushed] = second.tables
    assert flushed.batch.schema == db.table_schema("d", "cpu")
    assert flushed.batch.column("extra").to_pylist() == [1]

    unsubscribe()
    db.write_lp("d", f"cpu,host=d usage=4 {T0 + 2}")
    third = db.flush_now()
    assert seen[-1] is third and seen_after_failure == [first, second]


def test_a_subscriber_can_call_flush_now(db):
    inner = []

    def reentrant(flush):
        inner.append(db.flush_now())

    db.subscribe(reentrant)
    db.write_lp("d", f"m v=1 {T0}")
    db.flush_now()
    assert inner[0] is None


# -- persistence ---------------------------------------------------------------------------------


def test_persisting_moves_the_buffer_to_parquet_files(tmp_path):
    with LocalDatabase(tmp_path, flush_interval=3600, buffer_limit_bytes=20_000) as database:
        for batch in range(10):
            body = "\n".join(f"m,host=h{i % 7} v={i}i {T0 + batch * 1000 + i}" for i in range(500))
            database.write_lp("d", body)
            database.flush_now()
        files = wait_until(
            lambda: database.query("d", "SELECT * FROM system.parquet_files").to_pylist(),
            message="a Parquet file",
        )
        wait_until(lambda: database.buffered_bytes < 20_000, message="the buffer to shrink")
        assert count(database, "d", "m") == 5000
        assert sum(f["row_count"] for f in database.query("d", "SELECT * FROM system.parquet_files").to_pylist()) > 0
        assert all((tmp_path / f["path"]).is_file() and f["path"].startswith("dbs/d/m/") for f in files)


def test_queries_see_every_row_exactly_once_while_persisting(db):
    expected = 0
    for round_ in range(4):
        body = "\n".join(f"m,host=h{i % 3} v={i}i {T0 + round_ * 10_000 + i}" for i in range(2000))
        db.write_lp("d", body)
        db.flush_now()
        expected += 2000
        counts = []
        stop = threading.Event()

        def hammer():
            while not stop.is_set():
                counts.append(count(db, "d", "m"))

        reader = threading.Thread(target=hammer)
        reader.start()
        wait_until(lambda: len(counts) >= 2, message="queries before the persist")
        assert db.persist_now() > 0
        seen_before = len(counts)
        wait_until(lambda: len(counts) >= seen_before + 2, message="queries after the persist")
        stop.set()
        reader.join()
        assert set(counts) == {expected}


def test_parquet_files_written_before_a_new_column_read_it_as_null(db):
    db.write_lp("d", f"m,host=a v=1 {T0}")
    db.flush_now()
    db.persist_now()
    db.write_lp("d", f"m,host=b,dc=x v=2,w=true {T0 + 1}")
    db.flush_now()
    rows = db.query("d", "SELECT host, dc, v, w FROM m ORDER BY time").to_pylist()
    assert rows == [
        {"host": "a", "dc": None, "v": 1.0, "w": None},
        {"host": "b", "dc": "x", "v": 2.0, "w": True},
    ]


def test_memory_stays_bounded_under_sustained_writes(tmp_path):
    limit = 100_000
    with LocalDatabase(tmp_path, flush_interval=0.02, buffer_limit_bytes=limit) as database:
        peak = 0
        for batch in range(60):
            body = "\n".join(f"m,host=h{i % 11} v={i}.5,n={i}i {T0 + batch * 1000 + i}" for i in range(400))
            database.write_lp("d", body)
            peak = max(peak, database.buffered_bytes)
        database.flush_now()
        wait_until(lambda: database.buffered_bytes <= limit, message="the persister to catch up")
        assert count(database, "d", "m") == 60 * 400
        files = database.query("d", "SELECT count(*) AS n FROM system.parquet_files").column("n")[0].as_py()
    assert files >= 2
    assert peak < 6 * limit  # the persister keeps up; memory does not grow with the data


# -- admin ------------------------------------------------------------------------------------------


def test_database_admin(db):
    db.create_database("alpha")
    with pytest.raises(AlreadyExists, match="alpha"):
        db.create_database("alpha")
    with pytest.raises(InvalidName, match="bad name"):
        db.create_database("bad name")
    db.write_lp("beta", f"m v=1 {T0}")
    assert db.list_databases() == ["_internal", "alpha", "beta"]
    assert db.list_tables("alpha") == []

    db.flush_now()
    db.persist_now()
    assert (db.data_dir / "dbs" / "beta").is_dir()
    db.delete_database("beta")
    assert not (db.data_dir / "dbs" / "beta").exists()
    with pytest.raises(DatabaseNotFound, match="database not found: beta"):
        db.query("beta", "SELECT 1")
    with pytest.raises(NotFound, match="beta"):
        db.delete_database("beta")
    with pytest.raises(InvalidName):
        db.delete_database("_internal")

    db.write_lp("beta", f"m v=2i {T0}")  # a new database; the old type is gone with it
    db.flush_now()
    assert db.query("beta", "SELECT v FROM m").to_pylist() == [{"v": 2}]


def test_table_admin(db):
    db.create_database("d")
    db.create_table("d", "home", ["room"], [("temp", "float64"), ("co", "int64"), ("note", "string"), ("on", "bool"), ("n", "uint64")])
    assert db.table_schema("d", "home") == pa.schema([
        ("room", TAG), ("temp", pa.float64()), ("co", pa.int64()), ("note", pa.string()),
        ("on", pa.bool_()), ("n", pa.uint64()), ("time", pa.timestamp("ns")),
    ])
    result = db.write_lp("d", f"home,room=k temp=1,co=1.5 {T0}")
    assert "expected type iox::column_type::field::integer" in result.errors[0].error_message

    with pytest.raises(AlreadyExists, match="home"):
        db.create_table("d", "home", [], [])
    with pytest.raises(NotFound, match="nope"):
        db.create_table("nope", "t", [], [])
    with pytest.raises(InvalidSchema, match="decimal"):
        db.create_table("d", "t", [], [("x", "decimal")])
    with pytest.raises(InvalidSchema, match="twice"):
        db.create_table("d", "t", ["x"], [("x", "int64")])
    with pytest.raises(NotFound, match="d.nope"):
        db.table_schema("d", "nope")
    with pytest.raises(NotFound):
        db.list_tables("nope")


def test_deleting_a_table_removes_its_rows_and_files(db):
    db.write_lp("d", f"gone,host=a v=1 {T0}\nkept v=1 {T0}")
    db.flush_now()
    db.persist_now()
    db.write_lp("d", f"gone,host=b v=2 {T0 + 1}")
    db.flush_now()
    db.write_lp("d", f"gone,host=c v=3 {T0 + 2}")  # still pending at the delete

    db.delete_table("d", "gone")
    assert db.list_tables("d") == ["kept"]
    assert not (db.data_dir / "dbs" / "d" / "gone").exists()
    with pytest.raises(NotFound, match="d.gone"):
        db.delete_table("d", "gone")

    db.write_lp("d", f"gone v=9i {T0 + 3}")  # same name, new table, new types
    db.flush_now()
    assert db.query("d", "SELECT v, CAST(time AS BIGINT) AS t FROM gone").to_pylist() == [{"v": 9, "t": T0 + 3}]
