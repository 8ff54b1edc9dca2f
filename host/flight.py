"""Arrow Flight queries: the gRPC service InfluxDB 3's clients (influxdb3-python, Go, Java) and Grafana use.

Two ways in, one way to the data (`Database.query`, as `/api/v3/query_sql`):

- **DoGet with a JSON ticket**, what InfluxDB 3's client libraries send:
  `{"database": ..., "sql_query": ..., "query_type": "sql", "params": {...}}`. The database may
  also be named `namespace_name`, `bucket` or `bucket-name`; `query_type` defaults to `sql`.
- **Flight SQL**, what Grafana and ADBC/JDBC drivers send: GetFlightInfo with a
  `CommandStatementQuery`, the database in the `database` header (or `bucket`, `bucket-name`,
  `iox-namespace-name`). GetFlightInfo runs the query and answers one endpoint whose ticket is
  a JSON ticket naming that result, so the DoGet that follows streams it without running the
  query a second time.

Every call needs a token, as on HTTP (`Authorization: Bearer|Token <token>` or
`Basic base64(user:token)`): none is UNAUTHENTICATED, a wrong one PERMISSION_DENIED. Handshake
echoes its payload, as InfluxDB 3 does, and answers a Basic login with the token as a Bearer
header. Bad SQL is INVALID_ARGUMENT and an unknown database NOT_FOUND, both carrying
DataFusion's message first (pyarrow appends a "Detail:" with the Python traceback, which a
Python-implemented Flight server cannot suppress). Anything else Flight SQL asks for is
UNIMPLEMENTED.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.flight as flight

from host.api import QUERY_CONCURRENCY
from host.auth import Malformed, TokenStore, token_from_request
from host.interface import Database, DatabaseNotFound, QueryError

FLIGHT_SQL_TYPE_PREFIX = "type.googleapis.com/arrow.flight.protocol.sql."
STATEMENT_QUERY = FLIGHT_SQL_TYPE_PREFIX + "CommandStatementQuery"
DATABASE_HEADERS = ("database", "bucket", "bucket-name", "iox-namespace-name")
RESULT_TTL_SECONDS = 300.0  # how long a GetFlightInfo result waits for its DoGet
CLOSE_TIMEOUT_SECONDS = 10.0

log = logging.getLogger("plughost.flight")


class InvalidArgument(ValueError):
    """The request is malformed or the SQL engine refused the query (gRPC INVALID_ARGUMENT)."""


class NotFound(KeyError):
    """The named database does not exist (gRPC NOT_FOUND)."""

    __str__ = Exception.__str__  # KeyError would quote the message


class Unimplemented(NotImplementedError):
    """A request plughost understands but does not serve (gRPC UNIMPLEMENTED)."""


class FlightTicket(msgspec.Struct, omit_defaults=True):
    """A DoGet ticket: the JSON InfluxDB 3's clients send, or the one a GetFlightInfo handed out.

    `result` names a result GetFlightInfo already computed; when it has expired, the query runs again.
    """

    sql_query: str
    query_type: str = "sql"
    database: str | None = None
    namespace_name: str | None = None
    bucket: str | None = None
    bucket_name: str | None = msgspec.field(default=None, name="bucket-name")
    params: dict[str, Any] | None = None
    result: str | None = None

    def database_name(self) -> str:
        """The database the ticket names, under any of its accepted keys. Raises InvalidArgument."""
        name = self.database or self.namespace_name or self.bucket or self.bucket_name
        if not name:
            raise InvalidArgument("the ticket names no database: set \"database\"")
        return name


def decode_ticket(ticket: bytes) -> FlightTicket:
    """The JSON ticket in `ticket`. Raises InvalidArgument naming what was wrong."""
    try:
        return msgspec.json.decode(ticket, type=FlightTicket)
    except msgspec.DecodeError as error:
        raise InvalidArgument(
            f"invalid ticket: {error}; expected JSON like "
            '{"database": "mydb", "sql_query": "SELECT 1", "query_type": "sql"}'
        ) from None


# -- protobuf, just enough: Flight SQL commands arrive as a google.protobuf.Any -----------------


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(data):
            raise ValueError("truncated varint")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 64 bits")


def protobuf_fields(data: bytes) -> dict[int, int | bytes]:
    """The fields of one protobuf message, by number (the last occurrence wins). Raises ValueError.

    Varints come back as int, length-delimited fields as bytes, fixed 32/64-bit fields as bytes.
    """
    fields: dict[int, int | bytes] = {}
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            fields[number], position = _varint(data, position)
            continue
        if wire_type == 2:
            size, position = _varint(data, position)
        elif wire_type in (1, 5):
            size = 8 if wire_type == 1 else 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")
        if position + size > len(data):
            raise ValueError("truncated field")
        fields[number] = data[position:position + size]
        position += size
    return fields


def decode_any(data: bytes) -> tuple[str, bytes]:
    """(type_url, value) of a serialized google.protobuf.Any. Raises ValueError."""
    fields = protobuf_fields(data)
    type_url, value = fields.get(1, b""), fields.get(2, b"")
    if not isinstance(type_url, bytes) or not isinstance(value, bytes) or not type_url:
        raise ValueError("not a google.protobuf.Any")
    return type_url.decode(), value


def statement_query(command: bytes) -> str:
    """The SQL of a Flight SQL command, which must be a CommandStatementQuery.

    Raises InvalidArgument for bytes that are not a protobuf Any, Unimplemented for any other command.
    """
    try:
        type_url, value = decode_any(command)
        if type_url != STATEMENT_QUERY:
            raise Unimplemented(
                f"Flight SQL command {type_url.removeprefix(FLIGHT_SQL_TYPE_PREFIX)} is not supported; "
                "plughost answers CommandStatementQuery"
            )
        query = protobuf_fields(value).get(1, b"")
        if not isinstance(query, bytes):
            raise ValueError("CommandStatementQuery.query is not a string")
        return query.decode()
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidArgument(f"invalid Flight SQL command: {error}") from None


# -- authentication ---------------------------------------------------------------------------


class _Caller(flight.ServerMiddleware):
    """One call's headers, and the token it authenticated with."""

    def __init__(self, headers: dict[str, list], token: str | None, handshake: bool):
        self.headers = headers
        self.token = token
        self.handshake = handshake

    def header(self, *names: str) -> str | None:
        for name in names:
            values = self.headers.get(name)
            if values:
                value = values[0]
                return value.decode() if isinstance(value, bytes) else value
        return None

    def sending_headers(self) -> dict[str, str]:
        # a Basic login (JDBC, pyarrow's authenticate_basic_token) expects a bearer token back
        if self.handshake and self.token is not None:
            return {"authorization": f"Bearer {self.token}"}
        return {}


class _Authenticate(flight.ServerMiddlewareFactory):
    """Admit a call only with a valid token, checked by the same TokenStore as HTTP requests."""

    def __init__(self, tokens: TokenStore | None):
        self.tokens = tokens

    def start_call(self, info: flight.CallInfo, headers: dict[str, list]) -> _Caller:
        handshake = info.method == flight.FlightMethod.HANDSHAKE
        if self.tokens is None:
            return _Caller(headers, None, handshake)
        values = headers.get("authorization")
        if not values:
            raise flight.FlightUnauthenticatedError(
                "no token: send the header 'authorization: Bearer <token>'")
        header = values[0] if isinstance(values[0], bytes) else values[0].encode("latin-1")
        try:
            token = token_from_request({b"authorization": header}, "", b"")
        except Malformed as error:
            raise flight.FlightUnauthenticatedError(str(error)) from None
        if not self.tokens.authenticate(token):
            raise flight.FlightUnauthorizedError("the token was not accepted: it is not a token of this server")
        return _Caller(headers, token, handshake)


class _EchoHandshake(flight.ServerAuthHandler):
    """Handshake answers with its own payload (InfluxDB 3 does this for the JDBC driver).

    Tokens are checked by `_Authenticate` on every call, Handshake included, so nothing is left to check here.
    """

    def authenticate(self, outgoing, incoming) -> None:
        try:
            payload = incoming.read()
        except OSError:  # no message at all: a header-only login, such as a Basic one
            return
        outgoing.write(payload)

    def is_valid(self, token: bytes) -> bytes:
        return b""


# -- the service -------------------------------------------------------------------------------


class _Results:
    """Results computed by GetFlightInfo, held until their DoGet takes them or they expire."""

    def __init__(self, ttl: float):
        self._ttl = ttl
        self._results: dict[str, tuple[float, pa.Table]] = {}
        self._lock = threading.Lock()

    def put(self, table: pa.Table) -> str:
        handle = secrets.token_urlsafe(16)
        now = time.monotonic()
        with self._lock:
            for stale in [h for h, (at, _) in self._results.items() if now - at > self._ttl]:
                del self._results[stale]
            self._results[handle] = (now, table)
        return handle

    def take(self, handle: str) -> pa.Table | None:
        with self._lock:
            entry = self._results.pop(handle, None)
        return entry[1] if entry is not None else None


class FlightService(flight.FlightServerBase):
    """The Flight and Flight SQL query service over one database.

    Listens as soon as it is constructed (gRPC threads call into it); `port` is where.
    `close()` stops it. Construction raises OSError when the address cannot be bound.
    """

    def __init__(self, database: Database, tokens: TokenStore | None, host: str = "127.0.0.1", port: int = 0):
        location = flight.Location.for_grpc_tcp(f"[{host}]" if ":" in host else host, port)
        try:
            super().__init__(
                location,
                auth_handler=_EchoHandshake(),
                middleware={"caller": _Authenticate(tokens)},
            )
        except pa.ArrowException as error:
            raise OSError(f"cannot serve Flight on {host}:{port}: the address is in use or not one of "
                          f"this machine's (gRPC: {error})") from None
        self.host = host
        self._database = database
        self._results = _Results(RESULT_TTL_SECONDS)
        self._query_slots = threading.BoundedSemaphore(QUERY_CONCURRENCY)
        self._closed = False

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def close(self, timeout: float = CLOSE_TIMEOUT_SECONDS) -> None:
        """Stop taking calls and let the ones in flight finish. Blocks for at most `timeout` seconds.

        gRPC's shutdown waits for every call without a deadline, and a client that stops reading
        keeps its DoGet alive forever, so the wait runs on a thread given up after `timeout`.
        """
        if self._closed:
            return
        self._closed = True
        stopper = threading.Thread(target=self.shutdown, name="plughost-flight-stop", daemon=True)
        stopper.start()
        stopper.join(timeout)
        if stopper.is_alive():
            log.warning("Flight calls still running %.0f s after shutdown began; leaving them", timeout)

    # -- Flight RPCs, called on gRPC threads --

    def do_get(self, context: flight.ServerCallContext, ticket: flight.Ticket) -> flight.RecordBatchStream:
        request = decode_ticket(ticket.ticket)
        table = self._results.take(request.result) if request.result else None
        if table is None:
            table = self._run(request)
        return flight.RecordBatchStream(table)

    def get_flight_info(self, context: flight.ServerCallContext,
                        descriptor: flight.FlightDescriptor) -> flight.FlightInfo:
        if descriptor.descriptor_type != flight.DescriptorType.CMD:
            raise InvalidArgument("plughost answers GetFlightInfo for Flight SQL commands only, not for paths")
        sql = statement_query(descriptor.command)
        caller: _Caller = context.get_middleware("caller")
        database = caller.header(*DATABASE_HEADERS)
        if not database:
            raise InvalidArgument("no database named: send the header 'database: <name>'")
        request = FlightTicket(sql_query=sql, database=database)
        table = self._run(request)
        request.result = self._results.put(table)
        endpoint = flight.FlightEndpoint(msgspec.json.encode(request), [])
        return flight.FlightInfo(table.schema, descriptor, [endpoint], table.num_rows, table.nbytes)

    def list_flights(self, context, criteria):
        raise Unimplemented("ListFlights is not supported")

    def list_actions(self, context) -> list:
        return []

    def do_action(self, context, action: flight.Action):
        raise Unimplemented(f"action {action.type!r} is not supported")

    def do_put(self, context, descriptor, reader, writer):
        raise Unimplemented("DoPut is not supported: write line protocol to /api/v3/write_lp")

    def _run(self, request: FlightTicket) -> pa.Table:
        """Run a ticket's query. Blocks for a query slot and the query. Raises InvalidArgument, NotFound, Unimplemented."""
        language = request.query_type.lower()
        if language == "influxql":
            raise Unimplemented("InfluxQL is not supported yet: send the query as SQL (query_type \"sql\")")
        if language != "sql":
            raise InvalidArgument(f"unknown query_type {request.query_type!r}: expected \"sql\" or \"influxql\"")
        database = request.database_name()
        with self._query_slots:
            try:
                return self._database.query(database, request.sql_query, request.params)
            except DatabaseNotFound as error:
                raise NotFound(str(error)) from None
            except QueryError as error:
                raise InvalidArgument(str(error)) from None

