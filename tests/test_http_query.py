"""/api/v3/query_sql over real HTTP: every output format, GET and POST, parameters, and its errors."""

from __future__ import annotations

import csv
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

T0_NS = 1704067200 * 10**9
DB = "querydb"
SQL = "SELECT host, usage, count, ok, time FROM cpu ORDER BY time"
EXPECTED = [
    {"host": "a", "usage": 1.0, "count": 1, "ok": True, "time": "2024-01-01T00:00:00"},
    {"host": "b", "usage": 0.25, "time": "2024-01-01T00:00:00.000000001"},
    {"host": "c", "count": -3, "ok": False, "time": "2024-01-01T00:00:00.123"},
]


@pytest.fixture(scope="module")
def loaded(server):
    body = (f"cpu,host=a usage=1,count=1i,ok=true {T0_NS}\n"
            f"cpu,host=b usage=0.25 {T0_NS + 1}\n"
            f"cpu,host=c count=-3i,ok=false {T0_NS + 123_000_000}\n")
    assert server.write(DB, body).status_code == 204
    big = "".join(f"many,k=k{i % 7} v={i}i {T0_NS + i}\n" for i in range(20_000))
    assert server.write(DB, big).status_code == 204
    server.rows_when(DB, "SELECT count(*) AS n FROM many", lambda rows: rows == [{"n": 20_000}])
    server.rows_when(DB, SQL, lambda rows: len(rows) == 3)
    return server


def test_json_is_an_array_of_objects_without_nulls(loaded):
    response = loaded.query(DB, SQL, "json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == EXPECTED


def test_jsonl_is_one_object_per_line(loaded):
    for name in ("jsonl", "json_lines"):
        response = loaded.query(DB, SQL, name)
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/jsonl"
        assert response.text.endswith("\n")
        assert [json.loads(line) for line in response.text.splitlines()] == EXPECTED


def test_csv_has_a_header_and_empty_nulls(loaded):
    response = loaded.query(DB, SQL, "csv")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv"
    assert response.text == (
        "host,usage,count,ok,time\n"
        "a,1.0,1,true,2024-01-01T00:00:00\n"
        "b,0.25,,,2024-01-01T00:00:00.000000001\n"
        "c,,-3,false,2024-01-01T00:00:00.123\n"
    )


def test_pretty_is_an_ascii_table(loaded):
    response = loaded.query(DB, SQL, "pretty")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text == (
        "+------+-------+-------+-------+-------------------------------+\n"
        "| host | usage | count | ok    | time                          |\n"
        "+------+-------+-------+-------+-------------------------------+\n"
        "| a    | 1.0   | 1     | true  | 2024-01-01T00:00:00           |\n"
        "| b    | 0.25  |       |       | 2024-01-01T00:00:00.000000001 |\n"
        "| c    |       | -3    | false | 2024-01-01T00:00:00.123       |\n"
        "+------+-------+-------+-------+-------------------------------+"
    )


def test_parquet_holds_the_same_rows(loaded):
    response = loaded.query(DB, SQL, "parquet")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/vnd.apache.parquet"
    table = pq.read_table(io.BytesIO(response.content))
    assert table.column_names == ["host", "usage", "count", "ok", "time"]
    assert table.column("host").to_pylist() == ["a", "b", "c"]
    assert table.column("usage").to_pylist() == [1.0, 0.25, None]
    assert table.column("time").cast(pa.int64()).to_pylist() == [T0_NS, T0_NS + 1, T0_NS + 123_000_000]


@pytest.mark.parametrize("accept, content_type", [
    ("text/csv", "text/csv"), ("text/plain", "text/plain; charset=utf-8"),
    ("application/vnd.apache.parquet", "application/vnd.apache.parquet"), ("application/json", "application/json"),
    ("*/*", "application/json"), ("text/html,application/xhtml+xml,*/*;q=0.8", "application/json"),
])
def test_format_comes_from_accept_when_not_given(loaded, accept, content_type):
    with loaded.client() as client:
        response = client.get("/api/v3/query_sql", params={"db": DB, "q": SQL}, headers={"Accept": accept})
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type


def test_get_takes_params_as_a_json_string(loaded):
    with loaded.client() as client:
        response = client.get("/api/v3/query_sql", params={
            "db": DB, "q": "SELECT host FROM cpu WHERE host = $h", "params": json.dumps({"h": "b"}),
            "format": "json"})
    assert response.status_code == 200
    assert response.json() == [{"host": "b"}]


def test_post_takes_params_in_the_body(loaded):
    with loaded.client() as client:
        response = client.post("/api/v3/query_sql", json={
            "db": DB, "q": "SELECT host FROM cpu WHERE host = $h", "params": {"h": "c"}})
    assert response.status_code == 200
    assert response.json() == [{"host": "c"}]


def test_large_results_stream_as_one_valid_document(loaded):
    rows = loaded.query(DB, "SELECT k, v FROM many ORDER BY v", "json").json()
    assert len(rows) == 20_000
    assert rows[0] == {"k": "k0", "v": 0} and rows[-1] == {"k": f"k{19_999 % 7}", "v": 19_999}
    text = loaded.query(DB, "SELECT k, v FROM many ORDER BY v", "csv").text
    assert list(csv.reader(io.StringIO(text)))[1:] == [[f"k{i % 7}", str(i)] for i in range(20_000)]
    lines = loaded.query(DB, "SELECT v FROM many ORDER BY v", "jsonl").text.splitlines()
    assert [json.loads(line)["v"] for line in lines] == list(range(20_000))


def test_empty_results(loaded):
    where = " WHERE host = 'nobody'"
    assert loaded.query(DB, SQL.replace(" ORDER", where + " ORDER"), "json").json() == []
    assert loaded.query(DB, SQL.replace(" ORDER", where + " ORDER"), "jsonl").text == ""
    assert loaded.query(DB, SQL.replace(" ORDER", where + " ORDER"), "csv").text == ""


def test_sql_errors_are_400_with_the_engines_message(loaded):
    response = loaded.query(DB, "SELECT nope FROM cpu")
    assert response.status_code == 400
    assert "nope" in response.text
    with pytest.raises(ValueError):
        json.loads(response.text)  # DataFusion's message as plain text, as InfluxDB 3 sends it
    missing_table = loaded.query(DB, "SELECT * FROM no_such_table")
    assert missing_table.status_code == 400
    assert "no_such_table" in missing_table.text
    syntax = loaded.query(DB, "SELEC 1")
    assert syntax.status_code == 400
    assert "SELEC" in syntax.text


def test_unknown_database_is_404_json(loaded):
    response = loaded.query("no_such_db", "SELECT 1")
    assert response.status_code == 404
    body = response.json()
    assert body["data"] is None
    assert body["error"].startswith("query error:") and "no_such_db" in body["error"]


def test_request_errors(loaded):
    with loaded.client() as client:
        no_params = client.get("/api/v3/query_sql")
        assert (no_params.status_code, no_params.text) == (400, "missing query parameters 'db' and 'q'")
        no_q = client.get("/api/v3/query_sql", params={"db": DB})
        assert no_q.status_code == 400 and "`q`" in no_q.text
        bad_format = client.get("/api/v3/query_sql", params={"db": DB, "q": "SELECT 1", "format": "xml"})
        assert bad_format.status_code == 400 and "xml" in bad_format.text
        bad_accept = client.get("/api/v3/query_sql", params={"db": DB, "q": "SELECT 1"},
                                headers={"Accept": "image/png"})
        assert bad_accept.status_code == 400 and "image/png" in bad_accept.text
        bad_json = client.post("/api/v3/query_sql", content=b"{not json")
        assert bad_json.status_code == 400 and bad_json.text.startswith("serde json error")
        bad_params = client.get("/api/v3/query_sql", params={"db": DB, "q": "SELECT 1", "params": "[1"})
        assert bad_params.status_code == 400
        wrong_method = client.put("/api/v3/query_sql", params={"db": DB, "q": "SELECT 1"})
        assert (wrong_method.status_code, wrong_method.text) == (404, "not found")
