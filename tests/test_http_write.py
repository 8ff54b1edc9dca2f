"""The write endpoints over real HTTP: v3 write_lp (partial writes), v2 and v1 (all or nothing), gzip, size limits."""

from __future__ import annotations

import gzip
import itertools

import httpx
import pytest

T0 = 1704067200  # 2024-01-01T00:00:00Z in seconds
T0_NS = T0 * 10**9
_names = itertools.count()


def fresh_db(prefix: str) -> str:
    return f"{prefix}{next(_names)}"


def barrier(server, db: str, table: str) -> None:
    """Write a marker row and wait until it is queryable: every earlier accepted write is then visible too."""
    marker = f"marker{next(_names)}"
    assert server.write(db, f"{table},marker={marker} seen=true").status_code == 204
    server.rows_when(db, f"SELECT * FROM {table} WHERE marker = '{marker}'", lambda rows: len(rows) == 1)


def test_write_lp_stores_lines_and_answers_204(server):
    db = fresh_db("wlp")
    body = (f"cpu,host=a,region=eu usage=1.5,count=3i,ok=true,note=\"hi there\" {T0_NS}\n"
            f"cpu,host=b usage=2.25 {T0_NS + 1_500_000_000}\n")
    response = server.write(db, body)
    assert response.status_code == 204
    assert response.content == b""
    rows = server.rows_when(db, "SELECT host, region, usage, count, ok, note, time FROM cpu ORDER BY host",
                            lambda rows: len(rows) == 2)
    assert rows == [
        {"host": "a", "region": "eu", "usage": 1.5, "count": 3, "ok": True, "note": "hi there",
         "time": "2024-01-01T00:00:00"},
        {"host": "b", "usage": 2.25, "time": "2024-01-01T00:00:01.500"},
    ]


def test_partial_write_stores_good_lines_and_lists_each_bad_one(server):
    db = fresh_db("partial")
    body = (f"m,k=a v=1 {T0_NS}\n"
            f"m,k=b v= {T0_NS}\n"
            f"m,k=c v=3 {T0_NS}\n"
            f"this is not line protocol\n")
    response = server.write(db, body)
    assert response.status_code == 400
    answer = response.json()
    assert answer["error"] == "partial write of line protocol occurred"
    assert [(e["line_number"], e["original_line"]) for e in answer["data"]] == [
        (2, f"m,k=b v= {T0_NS}"), (4, "this is not line protocol")]
    assert all(e["error_message"] for e in answer["data"])
    rows = server.rows_when(db, "SELECT k, v FROM m ORDER BY k", lambda rows: len(rows) == 2)
    assert rows == [{"k": "a", "v": 1.0}, {"k": "c", "v": 3.0}]


def test_every_line_bad_gets_the_partial_write_shape(server):
    db = fresh_db("allbad")
    response = server.write(db, "garbage\nmore garbage\n")
    assert response.status_code == 400
    answer = response.json()
    assert answer["error"] == "partial write of line protocol occurred"
    assert [e["line_number"] for e in answer["data"]] == [1, 2]


def test_accept_partial_false_refuses_the_whole_request(server):
    db = fresh_db("whole")
    assert server.write(db, f"t,k=first v=1 {T0_NS}").status_code == 204
    response = server.write(db, f"t,k=x v=1 {T0_NS}\nt,k=y v=oops {T0_NS}\n", accept_partial="false")
    assert response.status_code == 400
    answer = response.json()
    assert answer["error"] == "parsing failed for write_lp endpoint"
    assert answer["data"]["line_number"] == 2
    assert answer["data"]["original_line"] == f"t,k=y v=oops {T0_NS}"
    barrier(server, db, "t")
    assert server.query(db, "SELECT k FROM t WHERE k IS NOT NULL ORDER BY k").json() == [{"k": "first"}]


def test_write_lp_parameter_errors(server):
    with server.client() as client:
        missing = client.post("/api/v3/write_lp", content=b"m v=1")
        assert (missing.status_code, missing.text) == (400, "missing query parameter 'db'")
        bad_name = client.post("/api/v3/write_lp", params={"db": "_nope"}, content=b"m v=1")
        assert bad_name.status_code == 400
        assert bad_name.json() == {"error": "db name did not start with a number or letter", "data": None}
        bad_char = client.post("/api/v3/write_lp", params={"db": "no/pe"}, content=b"m v=1")
        assert bad_char.status_code == 400
        assert "invalid character in database name" in bad_char.json()["error"]
        bad_precision = client.post("/api/v3/write_lp", params={"db": "x", "precision": "fortnight"},
                                    content=b"m v=1")
        assert bad_precision.status_code == 400
        assert "fortnight" in bad_precision.text
        not_utf8 = client.post("/api/v3/write_lp", params={"db": fresh_db("utf")}, content=b"m v=\"\xff\"")
        assert not_utf8.status_code == 400
        assert not_utf8.text.startswith("body content is not valid utf8")


@pytest.mark.parametrize("precision, stamp", [
    ("s", T0), ("second", T0), ("ms", T0 * 10**3), ("us", T0 * 10**6), ("ns", T0_NS), ("auto", T0),
    ("auto", T0 * 10**3), ("auto", T0_NS),
])
def test_write_lp_precision(server, precision, stamp):
    db = fresh_db("prec")
    assert server.write(db, f"p v=1 {stamp}", precision=precision).status_code == 204
    rows = server.rows_when(db, "SELECT time FROM p", lambda rows: len(rows) == 1)
    assert rows == [{"time": "2024-01-01T00:00:00"}]


def test_v2_write_stores_with_bucket_and_precision(server):
    db = fresh_db("vtwo")
    response = server.write(db, f"w,src=v2 v=7i {T0}", path="/api/v2/write", bucket=db, org="ignored",
                            precision="s")
    assert response.status_code == 204
    rows = server.rows_when(db, "SELECT src, v, time FROM w", lambda rows: len(rows) == 1)
    assert rows == [{"src": "v2", "v": 7, "time": "2024-01-01T00:00:00"}]


def test_v2_write_rejects_the_whole_request_on_one_bad_line(server):
    db = fresh_db("vtwobad")
    with server.client() as client:
        response = client.post("/api/v2/write", params={"bucket": db},
                               content=f"w v=1 {T0_NS}\nw v=\n".encode())
        assert response.status_code == 400
        assert response.json()["error"] == "parsing failed for write_lp endpoint"
        assert response.json()["data"]["line_number"] == 2
        no_bucket = client.post("/api/v2/write", params={"org": "o"}, content=b"w v=1")
        assert no_bucket.status_code == 400
        assert no_bucket.json() == {"error": "missing bucket value", "data": None}
    barrier(server, db, "w")
    rows = server.query(db, "SELECT * FROM w").json()
    assert len(rows) == 1 and "v" not in rows[0]


def test_v1_write_stores_and_rejects_whole(server):
    db = fresh_db("vone")
    with server.client() as client:
        ok = client.post("/write", params={"db": db, "precision": "ms"}, content=f"o v=1 {T0 * 1000}".encode())
        assert ok.status_code == 204
        bad = client.post("/write", params={"db": db}, content=f"o v=2 {T0_NS}\no v=x=y\n".encode())
        assert bad.status_code == 400
        assert bad.json()["error"] == "parsing failed for write_lp endpoint"
        no_db = client.post("/write", params={"rp": "autogen"}, content=b"o v=1")
        assert no_db.status_code == 400
        assert "missing field `db`" in no_db.json()["error"]
    barrier(server, db, "o")
    rows = server.query(db, "SELECT v, time FROM o WHERE v IS NOT NULL").json()
    assert rows == [{"v": 1.0, "time": "2024-01-01T00:00:00"}]


@pytest.mark.parametrize("path, db_param", [("/api/v3/write_lp", "db"), ("/api/v2/write", "bucket"),
                                             ("/write", "db")])
def test_gzip_bodies_are_accepted_everywhere(server, path, db_param):
    db = fresh_db("gz")
    lines = "".join(f"g,i={i} v={i} {T0_NS + i}\n" for i in range(500)).encode()
    with server.client() as client:
        response = client.post(path, params={db_param: db}, content=gzip.compress(lines),
                               headers={"Content-Encoding": "gzip"})
    assert response.status_code == 204
    rows = server.rows_when(db, "SELECT count(*) AS n, sum(v) AS total FROM g", lambda rows: rows[0]["n"] == 500)
    assert rows == [{"n": 500, "total": float(sum(range(500)))}]


def test_broken_gzip_and_unknown_encoding_are_400(server):
    with server.client() as client:
        broken = client.post("/api/v3/write_lp", params={"db": "gzbad"}, content=b"not gzip at all",
                             headers={"Content-Encoding": "gzip"})
        assert broken.status_code == 400
        assert broken.text.startswith("error decoding gzip stream")
        truncated = client.post("/api/v3/write_lp", params={"db": "gzbad"},
                                content=gzip.compress(b"m v=1\n" * 100)[:-12],
                                headers={"Content-Encoding": "gzip"})
        assert truncated.status_code == 400
        unknown = client.post("/api/v3/write_lp", params={"db": "gzbad"}, content=b"m v=1",
                              headers={"Content-Encoding": "br"})
        assert (unknown.status_code, unknown.text) == (400, "unacceptable content-encoding: br")


@pytest.fixture(scope="module")
def small_server(start_module_server):
    return start_module_server(max_http_request_size="64KiB")


def test_oversized_bodies_are_413_and_the_server_keeps_serving(small_server):
    limit = 64 * 1024
    expected = {"error": f"max request size ({limit} bytes) exceeded", "data": None}
    line = b"big,k=v value=1234567890i\n"
    oversized = line * (limit // len(line) + 10)
    with small_server.client() as client:
        declared = client.post("/api/v3/write_lp", params={"db": "big"}, content=oversized)
        assert (declared.status_code, declared.json()) == (413, expected)

        def chunks():  # no Content-Length: the limit must be enforced while streaming
            for start in range(0, len(oversized), 8192):
                yield oversized[start:start + 8192]

        streamed = client.post("/api/v3/write_lp", params={"db": "big"}, content=chunks())
        assert (streamed.status_code, streamed.json()) == (413, expected)

        bomb = gzip.compress(line * (4 * limit // len(line)))  # small on the wire, 4x the limit decoded
        assert len(bomb) < limit
        exploded = client.post("/api/v3/write_lp", params={"db": "big"}, content=bomb,
                               headers={"Content-Encoding": "gzip"})
        assert (exploded.status_code, exploded.json()) == (413, expected)

        fits = client.post("/api/v3/write_lp", params={"db": "big"}, content=line * 100)
        assert fits.status_code == 204
        huge_query = client.post("/api/v3/query_sql", json={"db": "big", "q": "SELECT 1 " + " " * limit})
        assert huge_query.status_code == 413
    small_server.rows_when("big", "SELECT count(*) AS n FROM big", lambda rows: rows == [{"n": 100}])


def test_an_oversized_body_does_not_reach_the_database(small_server):
    line = b"never,k=v value=1i\n"
    with small_server.client() as client:
        response = client.post("/api/v3/write_lp", params={"db": "never"}, content=line * 10_000)
    assert response.status_code == 413
    with small_server.client() as client:
        names = [row["iox::database"] for row in
                 client.get("/api/v3/configure/database", params={"format": "json"}).json()]
    assert "never" not in names


def test_concurrent_writers_all_land(server):
    db = fresh_db("conc")

    def send(worker: int) -> int:
        with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=60) as client:
            statuses = set()
            for batch in range(5):
                lines = "".join(f"c,w={worker} seq={batch * 100 + i}i {T0_NS + batch * 100 + i}\n"
                                for i in range(100))
                statuses.add(client.post("/api/v3/write_lp", params={"db": db}, content=lines).status_code)
            return statuses == {204}

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(send, range(4)))
    server.rows_when(db, "SELECT count(*) AS n FROM c", lambda rows: rows == [{"n": 2000}])
