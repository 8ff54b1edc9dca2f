"""Database and table administration, /health, /ping, CORS and unknown routes over real HTTP."""

from __future__ import annotations

import uuid

import httpx

T0_NS = 1704067200 * 10**9


def database_names(client) -> list[str]:
    response = client.get("/api/v3/configure/database", params={"format": "json"})
    assert response.status_code == 200
    return [row["iox::database"] for row in response.json()]


def test_create_list_and_delete_a_database(server):
    with server.client() as client:
        created = client.post("/api/v3/configure/database", json={"db": "admin_db"})
        assert (created.status_code, created.content) == (200, b"")
        assert "admin_db" in database_names(client)
        again = client.post("/api/v3/configure/database", json={"db": "admin_db"})
        assert again.status_code == 409
        assert again.text

        csv = client.get("/api/v3/configure/database", params={"format": "csv"})
        assert csv.headers["content-type"] == "text/csv"
        assert csv.text.startswith("iox::database\n") and "\nadmin_db\n" in csv.text
        pretty = client.get("/api/v3/configure/database", params={"format": "pretty"})
        assert "| iox::database |" in pretty.text and "| admin_db      |" in pretty.text

        deleted = client.delete("/api/v3/configure/database", params={"db": "admin_db"})
        assert deleted.status_code == 200
        assert "admin_db" not in database_names(client)
        missing = client.delete("/api/v3/configure/database", params={"db": "admin_db"})
        assert missing.status_code == 404


def test_deleting_a_database_removes_its_data(server):
    with server.client() as client:
        assert server.write("doomed", f"m v=1 {T0_NS}").status_code == 204
        server.rows_when("doomed", "SELECT v FROM m", lambda rows: rows == [{"v": 1.0}])
        assert client.delete("/api/v3/configure/database", params={"db": "doomed"}).status_code == 200
        assert server.query("doomed", "SELECT v FROM m").status_code == 404


def test_database_request_errors(server):
    with server.client() as client:
        invalid = client.post("/api/v3/configure/database", json={"db": "bad name"})
        assert invalid.status_code == 400
        assert "invalid character" in invalid.json()["error"]
        not_json = client.post("/api/v3/configure/database", content=b'{"db": "x"}',
                               headers={"Content-Type": "text/plain"})
        assert (not_json.status_code, not_json.text) == (415, "unacceptable content-type, expected: application/json")
        broken = client.post("/api/v3/configure/database", content=b"{", headers={"Content-Type": "application/json"})
        assert broken.status_code == 400 and broken.text.startswith("serde json error")
        no_db = client.delete("/api/v3/configure/database")
        assert no_db.status_code == 400 and "`db`" in no_db.text


def test_create_write_and_delete_a_table(server):
    with server.client() as client:
        assert client.post("/api/v3/configure/database", json={"db": "tables_db"}).status_code == 200
        table = {"db": "tables_db", "table": "sensors", "tags": ["room"],
                 "fields": [{"name": "temp", "type": "float64"}, {"name": "label", "type": "utf8"},
                            {"name": "hits", "type": "int64"}, {"name": "ok", "type": "bool"},
                            {"name": "n", "type": "uint64"}]}
        created = client.post("/api/v3/configure/table", json=table)
        assert (created.status_code, created.content) == (200, b"")
        assert client.post("/api/v3/configure/table", json=table).status_code == 409

        empty = server.query("tables_db", "SELECT room, temp, label, hits, ok, n, time FROM sensors")
        assert (empty.status_code, empty.json()) == (200, [])
        assert server.write("tables_db", f"sensors,room=kitchen temp=21.5,hits=2i {T0_NS}").status_code == 204
        rows = server.rows_when("tables_db", "SELECT room, temp, hits FROM sensors", lambda rows: len(rows) == 1)
        assert rows == [{"room": "kitchen", "temp": 21.5, "hits": 2}]
        wrong_type = server.write("tables_db", f"sensors,room=hall temp=\"warm\" {T0_NS}")
        assert wrong_type.status_code == 400  # the declared float column refuses a string

        deleted = client.delete("/api/v3/configure/table", params={"db": "tables_db", "table": "sensors"})
        assert deleted.status_code == 200
        assert client.delete("/api/v3/configure/table",
                             params={"db": "tables_db", "table": "sensors"}).status_code == 404


def test_table_request_errors(server):
    with server.client() as client:
        no_db = client.post("/api/v3/configure/table",
                            json={"db": "no_such_db_for_table", "table": "t", "tags": [], "fields": []})
        assert no_db.status_code == 404
        bad_type = client.post("/api/v3/configure/table", json={
            "db": "tables_db", "table": "t", "tags": [], "fields": [{"name": "x", "type": "decimal"}]})
        assert bad_type.status_code == 400 and "decimal" in bad_type.text
        missing = client.post("/api/v3/configure/table", json={"db": "tables_db", "table": "t"})
        assert missing.status_code == 400
        no_table = client.delete("/api/v3/configure/table", params={"db": "tables_db"})
        assert no_table.status_code == 400 and "`table`" in no_table.text


def test_health_and_ping(server):
    with server.client() as client:
        health = client.get("/health")
        assert (health.status_code, health.text) == (200, "OK")
        assert client.get("/api/v1/health").text == "OK"
        for method in ("GET", "POST"):
            ping = client.request(method, "/ping")
            assert ping.status_code == 200
            body = ping.json()
            assert set(body) == {"version", "revision", "process_id"}
            assert uuid.UUID(body["process_id"])
            assert ping.headers["x-influxdb-version"] == body["version"]
            assert ping.headers["x-influxdb-build"] == "plughost"
            assert ping.headers["request-id"] == ping.headers["x-request-id"]


def test_cors_and_unknown_routes(server):
    with httpx.Client(base_url=server.base_url) as anonymous:  # browsers send preflights without credentials
        preflight = anonymous.options("/api/v3/write_lp")
    with server.client() as client:
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == "*"
        assert preflight.headers["access-control-allow-methods"] == "*"
        assert client.get("/health").headers["access-control-allow-origin"] == "*"
        unknown = client.get("/api/v3/nothing/here")
        assert (unknown.status_code, unknown.text) == (404, "not found")


def test_the_listener_lets_asyncio_turn_off_nagle():
    # asyncio sets TCP_NODELAY only on sockets whose proto is TCP; without it every response
    # written as headers-then-body stalled ~40 ms on the client's delayed ACK
    import socket

    from host.server import _listen

    listener = _listen("127.0.0.1", 0)
    with listener:
        assert listener.proto == socket.IPPROTO_TCP
