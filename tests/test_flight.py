"""Arrow Flight queries through real clients: influxdb3-python unmodified, and the ADBC Flight SQL driver (Grafana's stand-in).

The clients talk to real `plughost serve` processes on 127.0.0.1; the front door's own tests run a
`FrontDoor` before a real `FlightService` in this process. Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
import subprocess
import sys
import threading
import time

import adbc_driver_flightsql.dbapi as flightsql
import httpx
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from adbc_driver_manager import Error as AdbcError, NotSupportedError, ProgrammingError
from influxdb_client_3 import InfluxDB3ClientQueryError, InfluxDBClient3

from host.flight import FlightService
from host.frontdoor import HTTP2_PREFACE, FrontDoor
from tests.conftest import subprocess_env, wait_until
from tests.inmemory_db import InMemoryDatabase

T0 = 1_704_067_200_000_000_000  # 2024-01-01T00:00:00Z in ns


class FlightServer:
    """Clients for a running server: `port` answers HTTP and, unless `flight_port` says otherwise, Flight."""

    def __init__(self, base_url: str, token: str, flight_port: int | None = None):
        self.base_url = base_url
        self.token = token
        self.port = httpx.URL(base_url).port
        self.flight_port = flight_port or self.port

    def client(self, database: str, token: str | None = None, **options) -> InfluxDBClient3:
        """influxdb3-python as a user would make it: one URL, for writes and queries alike."""
        if self.flight_port != self.port:
            options.setdefault("query_port_overwrite", self.flight_port)
        return InfluxDBClient3(host=self.base_url, token=token or self.token, database=database, **options)

    def adbc(self, database: str | None):
        options = {"adbc.flight.sql.authorization_header": f"Bearer {self.token}"}
        if database is not None:
            options["adbc.flight.sql.rpc.call_header.database"] = database
        return flightsql.connect(f"grpc://127.0.0.1:{self.flight_port}", db_kwargs=options, autocommit=True)

    def flight_client(self) -> flight.FlightClient:
        return flight.connect(f"grpc://127.0.0.1:{self.flight_port}")

    def bearer(self) -> flight.FlightCallOptions:
        return flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {self.token}".encode())])

    def write(self, database: str, lines: str) -> None:
        with InfluxDBClient3(host=self.base_url, token=self.token, database=database) as client:
            client.write(record=lines)

    def rows_when(self, database: str, sql: str, count: int) -> pa.Table:
        """Poll a Flight query until it returns `count` rows (writes become visible at the next flush)."""
        with self.client(database) as client:
            def check():
                try:
                    table = client.query(sql)
                except InfluxDB3ClientQueryError:  # database not created yet
                    return None
                return table if table.num_rows == count else None

            return wait_until(check, message=f"{sql!r} on {database} to return {count} rows")


@pytest.fixture(scope="module")
def plughost(start_module_server) -> FlightServer:
    """A `plughost serve` process as InfluxDB 3's clients see it by default: HTTP and Flight on one port."""
    server = start_module_server()
    return FlightServer(server.base_url, server.token)


@pytest.fixture(scope="module")
def separate_flight(start_module_server) -> FlightServer:
    """A `plughost serve` process with Flight on a port of its own (`--flight-bind`)."""
    server = start_module_server(extra_args=["--flight-bind", "127.0.0.1:0"])
    port = int(re.search(r"serving Arrow Flight on grpc://[^:\s]+:(\d+)", server.log()).group(1))
    return FlightServer(server.base_url, server.token, port)


@pytest.fixture(scope="module")
def cpu(plughost) -> str:
    """A database `cpudb` holding table `cpu`: rows (host a, usage 1.5) and (host b, usage 2.5)."""
    plughost.write("cpudb", f"cpu,host=a usage=1.5 {T0}\ncpu,host=b usage=2.5 {T0 + 1}")
    plughost.rows_when("cpudb", "SELECT * FROM cpu", 2)
    return "cpudb"


# -- influxdb3-python, unmodified ---------------------------------------------------------------


def test_client_writes_with_defaults_and_queries_an_arrow_table(plughost):
    with plughost.client("clientdb") as client:
        client.write(record=[
            f"cpu,host=a,region=eu usage=1.5,count=3i {T0}",
            f"cpu,host=b,region=us usage=2.5,count=4i {T0 + 1}",
            f"cpu,host=a,region=eu usage=3.5,count=5i {T0 + 2}",
        ])
    table = plughost.rows_when("clientdb", "SELECT * FROM cpu ORDER BY time", 3)

    assert set(table.column_names) == {"host", "region", "count", "usage", "time"}
    assert table.schema.field("usage").type == pa.float64()
    assert table.schema.field("count").type == pa.int64()
    assert table.schema.field("time").type == pa.timestamp("ns")
    assert table.column("host").to_pylist() == ["a", "b", "a"]
    assert table.column("usage").to_pylist() == [1.5, 2.5, 3.5]
    assert table.column("count").to_pylist() == [3, 4, 5]
    assert [t.value for t in table.column("time")] == [T0, T0 + 1, T0 + 2]


def test_client_reads_rows_without_pandas(plughost):
    plughost.write("readerdb", "\n".join(f"m,k=k{i % 3} v={i}i {T0 + i}" for i in range(50)))
    plughost.rows_when("readerdb", "SELECT * FROM m", 50)

    with plughost.client("readerdb") as client:
        reader = client.query("SELECT k, v FROM m WHERE v < 10 ORDER BY v", mode="reader")
        assert isinstance(reader, pa.RecordBatchReader)
        rows = reader.read_all().to_pylist()
        chunks = client.query("SELECT v FROM m ORDER BY v", mode="chunk")
        values = [v for chunk in chunks for v in chunk.data.column("v").to_pylist()]
        schema = client.query("SELECT k, v FROM m", mode="schema")

    assert rows == [{"k": f"k{i % 3}", "v": i} for i in range(10)]
    assert values == list(range(50))
    assert schema.names == ["k", "v"]


def test_client_query_parameters(plughost):
    plughost.write("paramsdb", f"cpu,host=a usage=1.0 {T0}\ncpu,host=b usage=2.0 {T0 + 1}\ncpu,host=b usage=9.0 {T0 + 2}")
    plughost.rows_when("paramsdb", "SELECT * FROM cpu", 3)

    with plughost.client("paramsdb") as client:
        table = client.query(
            "SELECT usage FROM cpu WHERE host = $host AND usage > $least ORDER BY usage",
            query_parameters={"host": "b", "least": 1.5},
        )
    assert table.column("usage").to_pylist() == [2.0, 9.0]


def test_client_with_a_wrong_token_is_refused_clearly(plughost):
    with plughost.client("clientdb", token="apiv3_not-a-real-token") as client:
        with pytest.raises(InfluxDB3ClientQueryError, match="token was not accepted"):
            client.query("SELECT 1")


def test_client_errors_carry_the_sql_engines_message(plughost):
    plughost.write("errorsdb", f"cpu,host=a usage=1.0 {T0}")
    plughost.rows_when("errorsdb", "SELECT * FROM cpu", 1)
    with plughost.client("errorsdb") as client:
        with pytest.raises(InfluxDB3ClientQueryError, match="No field named nope"):
            client.query("SELECT nope FROM cpu")
        with pytest.raises(InfluxDB3ClientQueryError, match="database not found: missingdb"):
            client.query("SELECT 1", database="missingdb")
        with pytest.raises(InfluxDB3ClientQueryError, match="InfluxQL is not supported yet"):
            client.query("SELECT * FROM cpu", language="influxql")


# -- the wire contract: tickets, status codes, handshake ----------------------------------------


def _do_get(plughost, ticket: dict | bytes, options=None) -> pa.Table:
    data = ticket if isinstance(ticket, bytes) else json.dumps(ticket).encode()
    with plughost.flight_client() as client:
        return client.do_get(flight.Ticket(data), options or plughost.bearer()).read_all()


def test_ticket_names_the_database_under_any_accepted_key(plughost, cpu):
    for key in ("database", "namespace_name", "bucket", "bucket-name"):
        table = _do_get(plughost, {key: cpu, "sql_query": "SELECT usage FROM cpu ORDER BY time"})  # sql by default
        assert table.to_pylist() == [{"usage": 1.5}, {"usage": 2.5}], key


def test_status_codes(plughost, cpu):
    with pytest.raises(flight.FlightUnauthenticatedError, match="no token"):
        _do_get(plughost, {"database": cpu, "sql_query": "SELECT 1"}, flight.FlightCallOptions())
    with pytest.raises(flight.FlightUnauthenticatedError, match="malformed"):
        _do_get(plughost, {"database": cpu, "sql_query": "SELECT 1"},
                flight.FlightCallOptions(headers=[(b"authorization", b"Bearer")]))
    with pytest.raises(flight.FlightUnauthorizedError):  # gRPC PERMISSION_DENIED
        _do_get(plughost, {"database": cpu, "sql_query": "SELECT 1"},
                flight.FlightCallOptions(headers=[(b"authorization", b"Token apiv3_wrong")]))
    with pytest.raises(pa.ArrowInvalid, match="invalid ticket"):  # INVALID_ARGUMENT
        _do_get(plughost, b"SELECT 1")
    with pytest.raises(pa.ArrowInvalid, match="names no database"):
        _do_get(plughost, {"sql_query": "SELECT 1"})
    with pytest.raises(pa.ArrowInvalid, match="unknown query_type 'flux'"):
        _do_get(plughost, {"database": cpu, "sql_query": "x", "query_type": "flux"})
    with pytest.raises(pa.ArrowInvalid, match="SELEC"):
        _do_get(plughost, {"database": cpu, "sql_query": "SELEC 1"})
    with pytest.raises(pa.ArrowKeyError, match="database not found: nowhere"):  # NOT_FOUND
        _do_get(plughost, {"database": "nowhere", "sql_query": "SELECT 1"})
    with pytest.raises(pa.ArrowNotImplementedError, match="InfluxQL is not supported yet"):  # UNIMPLEMENTED
        _do_get(plughost, {"database": cpu, "sql_query": "SHOW MEASUREMENTS", "query_type": "influxql"})
    with plughost.flight_client() as client:
        with pytest.raises(pa.ArrowNotImplementedError, match="not supported"):
            list(client.do_action(flight.Action("CancelQuery", b""), plughost.bearer()))
        assert list(client.list_actions(plughost.bearer())) == []


def test_token_schemes(plughost, cpu):
    query = {"database": cpu, "sql_query": "SELECT usage FROM cpu"}
    basic = base64.b64encode(f"anyone:{plughost.token}".encode())
    for header in (f"Bearer {plughost.token}".encode(), f"Token {plughost.token}".encode(), b"Basic " + basic):
        table = _do_get(plughost, query, flight.FlightCallOptions(headers=[(b"authorization", header)]))
        assert table.num_rows == 2, header


def test_handshake_basic_login_returns_a_bearer_token(plughost):
    with plughost.flight_client() as client:
        header, value = client.authenticate_basic_token("user", plughost.token)
        assert (header, value) == (b"authorization", f"Bearer {plughost.token}".encode())
        with pytest.raises(flight.FlightUnauthorizedError):
            client.authenticate_basic_token("user", "apiv3_wrong")


class _EchoCheck(flight.ClientAuthHandler):
    def __init__(self):
        super().__init__()
        self.answer = None

    def authenticate(self, outgoing, incoming):
        outgoing.write(b"ping from a JDBC-style handshake")
        self.answer = incoming.read()

    def get_token(self):
        return b""


def test_handshake_echoes_its_payload(plughost):
    handler = _EchoCheck()
    with plughost.flight_client() as client:
        client.authenticate(handler, plughost.bearer())
    assert handler.answer == b"ping from a JDBC-style handshake"


def test_large_result_streams_in_batches(plughost):
    rows = 60_000
    for start in range(0, rows, 20_000):
        plughost.write("bigdb", "\n".join(
            f"big,host=h{i % 10} v={i}i {T0 + i}" for i in range(start, start + 20_000)))
    plughost.rows_when("bigdb", "SELECT count(*) AS n FROM big HAVING count(*) = 60000", 1)

    with plughost.client("bigdb") as client:
        batches = list(client.query("SELECT host, v FROM big", mode="reader"))
    assert len(batches) > 1
    assert sum(b.num_rows for b in batches) == rows
    assert sorted(v for b in batches for v in b.column("v").to_pylist()) == list(range(rows))

    # Go's Arrow reader (Grafana's) takes the same stream: tags as dictionaries, one per batch
    with plughost.adbc("bigdb") as connection, connection.cursor() as cursor:
        cursor.execute("SELECT host, v FROM big ORDER BY v")
        table = cursor.fetch_arrow_table()
    assert table.column("v").to_pylist() == list(range(rows))
    assert table.column("host").to_pylist() == [f"h{i % 10}" for i in range(rows)]


def test_concurrent_queries(plughost):
    plughost.write("concurrentdb", "\n".join(f"c v={i}i {T0 + i}" for i in range(100)))
    plughost.rows_when("concurrentdb", "SELECT * FROM c", 100)
    sums, errors = [], []

    def query():
        try:
            with plughost.client("concurrentdb") as client:
                for _ in range(5):
                    sums.append(client.query("SELECT sum(v) AS s FROM c").column("s")[0].as_py())
        except Exception as error:  # surfaced by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=query) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert sums == [sum(range(100))] * 30


def test_flight_on_a_port_of_its_own(separate_flight):
    separate_flight.write("ownportdb", f"cpu usage=4.5 {T0}")
    table = separate_flight.rows_when("ownportdb", "SELECT usage FROM cpu", 1)
    assert table.to_pylist() == [{"usage": 4.5}]
    with separate_flight.adbc("ownportdb") as connection, connection.cursor() as cursor:
        cursor.execute("select 1")
        assert cursor.fetchall() == [(1,)]


# -- Flight SQL, as Grafana speaks it (ADBC's Go driver) ------------------------------------------


def test_flight_sql_health_check_and_query(plughost, cpu):
    with plughost.adbc(cpu) as connection, connection.cursor() as cursor:
        cursor.execute("select 1")
        assert cursor.fetchall() == [(1,)]
        cursor.execute("SELECT host, usage, time FROM cpu ORDER BY time")
        table = cursor.fetch_arrow_table()
    assert table.column("host").to_pylist() == ["a", "b"]
    assert table.column("usage").to_pylist() == [1.5, 2.5]
    assert table.schema.field("time").type == pa.timestamp("ns")


def test_flight_sql_get_flight_info_answers_one_endpoint(plughost, cpu):
    command = _any("type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery", _string_field(1, "select 1"))
    options = flight.FlightCallOptions(headers=[
        (b"authorization", f"Bearer {plughost.token}".encode()), (b"bucket-name", cpu.encode())])
    with plughost.flight_client() as client:
        info = client.get_flight_info(flight.FlightDescriptor.for_command(command), options)
        assert len(info.endpoints) == 1
        assert info.total_records == 1
        ticket = info.endpoints[0].ticket
        assert client.do_get(ticket, options).read_all().to_pylist() == [{"Int64(1)": 1}]
        # the result was handed over; the same ticket runs the query again
        assert client.do_get(ticket, options).read_all().num_rows == 1


def test_flight_sql_refuses_what_it_cannot_read(plughost):
    options = flight.FlightCallOptions(headers=[
        (b"authorization", f"Bearer {plughost.token}".encode()), (b"database", b"nodb")])
    with plughost.flight_client() as client:
        with pytest.raises(pa.ArrowInvalid, match="invalid Flight SQL command"):
            client.get_flight_info(flight.FlightDescriptor.for_command(b"\x0a\xff"), options)
        with pytest.raises(pa.ArrowInvalid, match="Flight SQL commands only"):
            client.get_flight_info(flight.FlightDescriptor.for_path("cpu"), options)
        unknown = _any("type.googleapis.com/arrow.flight.protocol.sql.CommandGetSqlInfo", b"")
        with pytest.raises(pa.ArrowNotImplementedError, match="CommandGetSqlInfo is not supported"):
            client.get_flight_info(flight.FlightDescriptor.for_command(unknown), options)


def test_flight_sql_errors(plughost, cpu):
    with plughost.adbc(None) as connection, connection.cursor() as cursor:
        with pytest.raises(ProgrammingError, match="send the header 'database: <name>'"):
            cursor.execute("select 1")
    with plughost.adbc("nodb") as connection, connection.cursor() as cursor:
        with pytest.raises(AdbcError, match="NOT_FOUND.*database not found: nodb"):
            cursor.execute("select 1")
    with plughost.adbc(cpu) as connection:
        with connection.cursor() as cursor:
            with pytest.raises(ProgrammingError, match="INVALID_ARGUMENT.*No field named nope"):
                cursor.execute("SELECT nope FROM cpu")
        with pytest.raises(NotSupportedError, match="CommandGetDbSchemas is not supported"):
            connection.adbc_get_objects().read_all()


# -- the front door --------------------------------------------------------------------------------


def test_http_and_flight_share_the_port(plughost, cpu):
    headers = {"Authorization": f"Bearer {plughost.token}"}
    with httpx.Client(base_url=plughost.base_url, headers=headers) as http:
        assert http.get("/health").status_code == 200
        response = http.post("/api/v3/query_sql", json={"db": cpu, "q": "SELECT count(*) AS n FROM cpu"})
        assert response.json() == [{"n": 2}]
    assert _do_get(plughost, {"database": cpu, "sql_query": "SELECT count(*) AS n FROM cpu"}).to_pylist() == [
        {"n": 2}]


def test_front_door_waits_for_a_preface_split_across_packets(plughost):
    """A client whose preface arrives in pieces still reaches gRPC, which answers with its SETTINGS frame."""
    with socket.create_connection(("127.0.0.1", plughost.port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(HTTP2_PREFACE[:3])
        time.sleep(0.05)
        sock.sendall(HTTP2_PREFACE[3:] + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")  # + empty SETTINGS
        sock.settimeout(10)
        frame = sock.recv(9)
    assert len(frame) == 9 and frame[3] == 0x04, frame  # a SETTINGS frame back: HTTP/2, so Flight


def test_front_door_hands_anything_else_to_http(plughost):
    """Bytes that start like the preface but are not it go to HTTP, which refuses them as HTTP/1.1 would."""
    with socket.create_connection(("127.0.0.1", plughost.port)) as sock:
        sock.sendall(b"PRX / HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(10)
        answer = sock.recv(100)
    assert answer.startswith(b"HTTP/1.1 4"), answer


class _Door:
    """A FrontDoor on its own event loop, relaying to a real FlightService over the in-memory database."""

    def __init__(self):
        self.database = InMemoryDatabase()
        self.database.write_lp("d", "\n".join(f"m,h=h{i % 10} v={i}i {T0 + i}" for i in range(100_000)))
        self.database.flush()
        self.flight_service = FlightService(self.database, None)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.door = FrontDoor(self.listener, self.flight_service.address)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="door-loop", daemon=True)
        self.thread.start()
        self.call(self.door.open, asyncio.Protocol)

    def call(self, function, *args):
        async def run():
            return function(*args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def close(self):
        self.call(self.door.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.flight_service.close()


@pytest.fixture
def door():
    opened = _Door()
    yield opened
    opened.close()


def _relays() -> int:
    return sum(thread.name == "plughost-flight-relay" for thread in threading.enumerate())


def test_relays_end_with_their_connections(door):
    """Clients that vanish mid-stream (a process exiting) leave no relay thread behind."""
    before = _relays()
    client = f"""
import json, os, pyarrow.flight as flight
ticket = flight.Ticket(json.dumps({{"database": "d", "sql_query": "SELECT * FROM m"}}).encode())
for _ in range(3):
    client = flight.connect("grpc://127.0.0.1:{door.port}", generic_options=[("grpc.use_local_subchannel_pool", 1)])
    client.do_get(ticket).read_chunk()  # one batch of many, then the connection goes
    client.close()
os._exit(0)
"""
    subprocess.run([sys.executable, "-c", client], check=True, timeout=60, env=subprocess_env())
    with socket.create_connection(("127.0.0.1", door.port)) as sock:
        sock.sendall(HTTP2_PREFACE)  # and one that says hello and leaves
    wait_until(lambda: _relays() == before, message="every relay thread to end")

    with flight.connect(f"grpc://127.0.0.1:{door.port}") as client:  # and the door still works
        ticket = flight.Ticket(b'{"database": "d", "sql_query": "SELECT count(*) AS n FROM m"}')
        assert client.do_get(ticket).read_all().to_pylist() == [{"n": 100_000}]


def test_closed_door_refuses_and_drops_unsorted_connections(door):
    with socket.create_connection(("127.0.0.1", door.port)) as silent:  # never says anything
        door.call(door.door.close)
        silent.settimeout(10)
        try:
            assert silent.recv(1) == b""  # closed by the door
        except ConnectionResetError:
            pass  # or reset by the kernel, if still in the listen backlog when the listener closed
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", door.port), timeout=5)


# -- a tiny protobuf writer, for the one test that builds a Flight SQL command by hand -------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string_field(number: int, value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _any(type_url: str, value: bytes) -> bytes:
    return _string_field(1, type_url) + _string_field(2, value)
