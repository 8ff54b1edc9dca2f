"""SQL over LocalDatabase: the DataFusion surface InfluxDB 3 plugins rely on.

The data is written through write_lp; half of `home` is persisted to Parquet before the rest
is written, so every query reads a table made of a Parquet file and buffered batches.
"""

from __future__ import annotations

import time
from datetime import datetime

import pyarrow as pa
import pytest

from host.database import LocalDatabase
from host.errors import DatabaseNotFound, QueryError

H = 3_600_000_000_000  # one hour in ns
T0 = 1_704_096_000_000_000_000  # 2024-01-01T08:00:00Z
ROOMS = ("Kitchen", "Living Room")


def home_lines(hours: range) -> str:
    lines = []
    for hour in hours:
        for r, room in enumerate(ROOMS):
            room_tag = room.replace(" ", "\\ ")
            lines.append(f"home,room={room_tag} temp={20 + hour + r}.5,hum={35 + r}.0,co={hour * (r + 1)}i {T0 + hour * H}")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    database = LocalDatabase(tmp_path_factory.mktemp("sql"), flush_interval=3600)
    database.start()
    database.write_lp("weather", home_lines(range(0, 6)))
    database.flush_now()
    assert database.persist_now() > 0
    database.write_lp("weather", home_lines(range(6, 12)))
    now = time.time_ns()
    database.write_lp("weather", f"recent,host=a v=1 {now - 60 * 10**9}\nrecent,host=a v=2 {now - 3600 * 10**9}")
    database.write_lp("other", f"m v=1 {T0}")
    database.flush_now()
    yield database
    database.close()


def rows(db, sql, params=None, database="weather"):
    return db.query(database, sql, params).to_pylist()


def test_the_table_is_split_between_parquet_and_buffer(db):
    files = rows(db, "SELECT table_name, row_count FROM system.parquet_files")
    assert files == [{"table_name": "home", "row_count": 12}]
    assert rows(db, "SELECT count(*) AS n FROM home") == [{"n": 24}]


def test_show_tables_lists_user_tables_as_base_tables(db):
    tables = rows(db, "SHOW TABLES")
    user = [(t["table_schema"], t["table_name"], t["table_type"]) for t in tables if t["table_schema"] == "iox"]
    assert sorted(user) == [("iox", "home", "BASE TABLE"), ("iox", "recent", "BASE TABLE")]
    assert ("system", "parquet_files", "BASE TABLE") in [
        (t["table_schema"], t["table_name"], t["table_type"]) for t in tables
    ]
    assert {t["table_catalog"] for t in tables} == {"public"}


def test_information_schema_columns_use_datafusions_type_names(db):
    db.write_lp("types", 'all,tag=x f=1.5,i=1i,u=1u,b=true,s="x" 1')
    db.flush_now()
    columns = rows(
        db,
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'all'",
        database="types",
    )
    types = {c["column_name"]: c["data_type"] for c in columns}
    assert types.pop("time").startswith("Timestamp(")
    assert types == {"tag": "Dictionary(Int32, Utf8)", "f": "Float64", "i": "Int64", "u": "UInt64",
                     "b": "Boolean", "s": "Utf8"}


def test_tags_come_back_dictionary_encoded(db):
    table = db.query("weather", "SELECT room, temp, time FROM home LIMIT 1")
    assert table.schema.field("room").type == pa.dictionary(pa.int32(), pa.string())
    assert table.schema.field("time").type == pa.timestamp("ns")


def test_named_parameters_including_in_lists(db):
    got = rows(db, "SELECT count(*) AS n FROM home WHERE room = $room", {"room": "Kitchen"})
    assert got == [{"n": 12}]
    got = rows(db, "SELECT count(*) AS n FROM home WHERE room IN ($a, $b)", {"a": "Kitchen", "b": "Living Room"})
    assert got == [{"n": 24}]
    # compared as numbers, not as text
    got = rows(db, "SELECT count(*) AS n FROM home WHERE co > $min", {"min": "10"})
    assert got == [{"n": sum(1 for h in range(12) for r in range(2) if h * (r + 1) > 10)}]


def test_table_names_in_single_or_double_quotes(db):
    assert rows(db, "SELECT count(*) AS n FROM 'home'") == [{"n": 24}]
    assert rows(db, 'SELECT count(*) AS n FROM "home"') == [{"n": 24}]


def test_date_bin_grouped_by_time_and_tag(db):
    got = rows(
        db,
        """SELECT DATE_BIN(INTERVAL '4 hours', time, '1970-01-01T00:00:00Z') AS _time, "room", avg(temp) AS temp
           FROM home GROUP BY _time, "room" ORDER BY _time, room""",
    )
    assert len(got) == 6
    assert got[0]["room"] == "Kitchen" and got[0]["temp"] == pytest.approx(20.5 + 1.5)
    assert got[0]["_time"].replace(tzinfo=None) == datetime(2024, 1, 1, 8)


@pytest.mark.parametrize("literal", ["2024-01-01T14:00:00Z", "2024-01-01 14:00:00+00:00", "2024-01-01T15:00:00+01:00"])
def test_time_compared_with_string_literals(db, literal):
    assert rows(db, f"SELECT count(*) AS n FROM home WHERE time >= '{literal}'") == [{"n": 12}]
    assert rows(db, "SELECT count(*) AS n FROM home WHERE time >= $start", {"start": literal}) == [{"n": 12}]


def test_first_and_last_value_ordered_by_time(db):
    got = rows(
        db,
        "SELECT room, first_value(temp ORDER BY time) AS first, last_value(temp ORDER BY time) AS last "
        "FROM home GROUP BY room ORDER BY room",
    )
    assert got == [
        {"room": "Kitchen", "first": 20.5, "last": 31.5},
        {"room": "Living Room", "first": 21.5, "last": 32.5},
    ]


def test_now_minus_an_interval(db):
    assert rows(db, "SELECT v FROM recent WHERE time > now() - INTERVAL '5 minutes'") == [{"v": 1.0}]
    assert rows(db, "SELECT count(*) AS n FROM recent WHERE time > now() - INTERVAL '2 hours'") == [{"n": 2}]


def test_aggregates(db):
    [got] = rows(
        db,
        """SELECT count(*) AS n, CAST(min(time) AS BIGINT) AS first, CAST(max(time) AS BIGINT) AS last,
                  avg(co) AS avg, sum(co) AS sum, min(temp) AS min, max(temp) AS max, median(co) AS median,
                  stddev(hum) AS stddev, var(hum) AS var, approx_median(hum) AS approx
           FROM home""",
    )
    co = [h * (r + 1) for h in range(12) for r in range(2)]
    assert got["n"] == 24 and got["first"] == T0 and got["last"] == T0 + 11 * H
    assert got["sum"] == sum(co) and got["avg"] == pytest.approx(sum(co) / 24)
    assert (got["min"], got["max"]) == (20.5, 32.5)
    assert got["median"] == pytest.approx(sorted(co)[11] / 2 + sorted(co)[12] / 2)
    assert got["stddev"] == pytest.approx(0.5107539184552492) and got["var"] == pytest.approx(0.2608695652173913)
    assert 35.0 <= got["approx"] <= 36.0


def test_timestamp_from_nanosecond_parameter(db):
    got = rows(
        db,
        "SELECT count(*) AS n FROM home WHERE time >= to_timestamp_nanos(arrow_cast($start_ns, 'Int64'))",
        {"start_ns": str(T0 + 10 * H)},
    )
    assert got == [{"n": 4}]


def test_order_by_time_desc_limit(db):
    got = rows(db, "SELECT room, co FROM home WHERE room = 'Kitchen' ORDER BY time DESC LIMIT 2")
    assert got == [{"room": "Kitchen", "co": 11}, {"room": "Kitchen", "co": 10}]


def test_sql_errors_carry_datafusions_message(db):
    with pytest.raises(QueryError, match="nope"):
        db.query("weather", "SELECT * FROM nope")
    with pytest.raises(QueryError, match="(?i)expected"):
        db.query("weather", "SELEC 1")
    with pytest.raises(QueryError, match="DDL not supported"):
        db.query("weather", "CREATE TABLE x AS SELECT 1")
    with pytest.raises(QueryError, match="DML not supported"):
        db.query("weather", "INSERT INTO home VALUES ('x', 1.0, 1.0, 1, now())")


def test_unknown_database(db):
    with pytest.raises(DatabaseNotFound, match="^database not found: missing$"):
        db.query("missing", "SELECT 1")


def test_the_internal_database_exists_without_user_tables(db):
    assert rows(db, "SELECT count(*) AS n FROM information_schema.tables WHERE table_schema = 'iox'",
                database="_internal") == [{"n": 0}]


def test_registered_system_tables_are_built_per_query_for_the_database(db):
    calls = []

    def triggers(database):
        calls.append(database)
        return pa.table({"trigger_name": [f"{database}-t1", f"{database}-t2"], "disabled": [False, True]})

    db.register_system_table("processing_engine_triggers", triggers)
    got = rows(db, "SELECT trigger_name FROM system.processing_engine_triggers WHERE NOT disabled", database="other")
    assert got == [{"trigger_name": "other-t1"}]
    assert calls == ["other"]
    assert {"table_name": "processing_engine_triggers", "table_type": "BASE TABLE"} in rows(
        db, "SELECT table_name, table_type FROM information_schema.tables WHERE table_schema = 'system'"
    )


def test_registered_table_functions_take_literal_arguments(db):
    calls = []

    def last_cache(database, args):
        calls.append((database, args))
        if args[0] != "home":
            raise KeyError(f"no last cache for table {args[0]}")
        return pa.table({"room": ["Kitchen", "Living Room"], "temp": [31.5, 32.5]})

    db.register_table_function("last_cache", last_cache)
    got = rows(db, "SELECT temp FROM last_cache('home', 'home_room_last_cache') WHERE room = 'Kitchen'")
    assert got == [{"temp": 31.5}]
    assert calls == [("weather", ["home", "home_room_last_cache"])]
    with pytest.raises(QueryError, match="no last cache for table cpu"):
        db.query("weather", "SELECT * FROM last_cache('cpu')")
    with pytest.raises(QueryError, match="literals"):
        db.query("weather", "SELECT * FROM last_cache(room)")


def test_a_join_of_two_tables(db):
    got = rows(
        db,
        "SELECT count(*) AS n FROM home h JOIN home k ON h.time = k.time AND h.room <> k.room",
    )
    assert got == [{"n": 24}]
