"""Every wire format of the sandbox, as msgspec Structs: control channel, trigger channel, services, data layouts.

Three channels exist (see docs/architecture.md, "Sandbox"):

- **control** (host ↔ worker main, one per worker): length-prefixed msgpack of `ControlMessage`;
  file descriptors (a trigger's channel, never data) travel as SCM_RIGHTS next to a message.
- **trigger** (host ↔ one trigger's interpreter, one socketpair per trigger): frames of a JSON
  header plus a raw binary payload (`sandbox.guest.framing`), because the plugin side is pure
  Python and cannot import msgspec. Host → plugin: `RunRequest`; plugin → host: `LoadReply`,
  then one `RunReply` per request (an `ObjectsReply` for a `measure` request). The memfd of a shared flush rides as SCM_RIGHTS on the run
  request that first needs it in that worker.
- **services** (plugin → host, Unix socket in the run dir): the same JSON-header framing;
  `ServiceRequest` in, `ServiceReply` out.

The plugin side writes and reads these JSON documents with the stdlib `json` module, using the
field names declared here; the host decodes them with these Structs, which validates everything a
plugin could have tampered with before the host acts on it.
"""

from __future__ import annotations

import struct
from typing import Literal

import msgspec

# ---------------------------------------------------------------------------------------------
# Arrow data layouts: a flush in shared memory, a query result in a services payload.


class Span(msgspec.Struct, array_like=True, frozen=True):
    """A byte range `[offset, offset + length)` inside a shared segment or a payload."""

    offset: int
    length: int


class ColumnLayout(msgspec.Struct, frozen=True, omit_defaults=True):
    """One Arrow array laid out in a segment, in Arrow's own physical format.

    `type` is one of: int8 int16 int32 int64 uint8 uint16 uint32 uint64 float32 float64 (data),
    bool (bit-packed data), utf8 / large_utf8 (offsets int32 / int64 + data), timestamp
    (int64 nanoseconds in data), dictionary (`index_type` indices in data, values in
    `dictionary`). `offset` is the array's element offset into its buffers; validity is an
    LSB-first bitmap, absent when the array has no nulls.
    """

    name: str
    type: str
    length: int
    offset: int = 0
    null_count: int = 0
    validity: Span | None = None
    offsets: Span | None = None
    data: Span | None = None
    index_type: str | None = None
    dictionary: ColumnLayout | None = None


class TableLayout(msgspec.Struct, frozen=True):
    """The rows one flush added to one table of one database."""

    database: str
    table: str
    num_rows: int
    columns: list[ColumnLayout]


class FlushLayout(msgspec.Struct, frozen=True):
    """Everything in one shared flush segment; `size` is the segment's length in bytes."""

    flush_id: int
    size: int
    tables: list[TableLayout]


class ResultLayout(msgspec.Struct, frozen=True):
    """A query result whose buffers follow the services reply header as its payload."""

    num_rows: int
    columns: list[ColumnLayout]


# ---------------------------------------------------------------------------------------------
# Results shared by the trigger channel and the public API (re-exported by sandbox.runtime).


class LogLine(msgspec.Struct):
    """One line a plugin logged (info/warn/error, or a line it printed)."""

    time_ns: int
    level: Literal["INFO", "WARN", "ERROR"]
    text: str


class HttpResponse(msgspec.Struct):
    """A request trigger's response after InfluxDB 3's Flask-style conversion."""

    status: int
    headers: dict[str, str]
    body: bytes


# ---------------------------------------------------------------------------------------------
# Trigger channel (JSON header + payload frames).


class LoadConfig(msgspec.Struct, frozen=True):
    """What a trigger's interpreter needs to load and run its plugin (sent once, at load)."""

    trigger_name: str
    database: str
    plugin_path: str  # absolute; a .py file or a package directory
    plugin_dir: str
    kind: Literal["writes", "schedule", "request"]
    reload: Literal["on_change", "every_call"]
    dry_run: bool
    cache_local_namespace: str | None  # None: the local cache lives inside the interpreter
    cache_global_namespace: str
    cache_default_ttl: float | None
    services_path: str


class LoadReply(msgspec.Struct, frozen=True):
    """The outcome of importing the plugin module in its interpreter."""

    ok: bool
    error: str | None = None
    traceback: str | None = None
    file: str | None = None
    line: int | None = None
    refused_module: str | None = None  # an extension module that refused a subinterpreter
    native_id: int | None = None  # the worker's OS thread that runs this trigger (for its CPU time)


class RunRequest(msgspec.Struct, frozen=True, omit_defaults=True):
    """One invocation. Payload: the request body for requests; for writes with `attach`, the
    flush's `FlushLayout` (JSON) — `attach` marks the request that carries the flush's memfd to
    a worker that has not mapped it yet. `measure` runs no plugin code: the interpreter counts
    its objects and answers with an `ObjectsReply`.
    """

    kind: Literal["writes", "schedule", "request", "measure"]
    flush_id: int = 0
    attach: bool = False
    table: str | None = None
    args: dict[str, str] | None = None
    call_time: int = 0  # epoch seconds, for schedule runs
    query_params: dict[str, str] = {}
    headers: dict[str, str] = {}


class ResponseHead(msgspec.Struct, frozen=True):
    """Status and headers of a request trigger's response; the body is the frame's payload."""

    status: int
    headers: dict[str, str]


class RunReply(msgspec.Struct, frozen=True):
    """The outcome of one invocation, as the plugin side reports it."""

    ok: bool
    error: str | None
    traceback: str | None
    logs: list[LogLine]
    writes: dict[str, list[str]]
    response: ResponseHead | None
    cpu_time: float
    rss_start: int = 0  # the worker's resident bytes when the run started and when it ended
    rss_end: int = 0
    thread_cpu: float = 0.0  # CPU seconds the trigger's OS thread has used in all, at the run's end


class ObjectsReply(msgspec.Struct, frozen=True):
    """The objects the garbage collector tracks in a trigger's interpreter (containers only:
    str, bytes and numbers are not tracked), and their shallow size in bytes."""

    objects: int
    object_bytes: int


# ---------------------------------------------------------------------------------------------
# Services channel (JSON header + payload frames), plugin → host.


class QueryCall(msgspec.Struct, tag_field="op", tag="query", frozen=True):
    database: str
    sql: str
    params: dict[str, str] | None = None


class WriteCall(msgspec.Struct, tag_field="op", tag="write", frozen=True):
    database: str
    lines: str
    no_sync: bool


class CacheGetCall(msgspec.Struct, tag_field="op", tag="cache_get", frozen=True):
    namespace: str
    key: str


class CachePutCall(msgspec.Struct, tag_field="op", tag="cache_put", frozen=True):
    """The pickled value is the frame's payload."""

    namespace: str
    key: str
    ttl: float | None = None


class CacheDeleteCall(msgspec.Struct, tag_field="op", tag="cache_delete", frozen=True):
    namespace: str
    key: str


class CacheLoadCall(msgspec.Struct, tag_field="op", tag="cache_load", frozen=True):
    """A trigger-local namespace's persisted entries. The reply's `found` says whether the host
    persists (write-through wanted); its payload is the marshalled [(key, pickled value, expires_at)]."""

    namespace: str


ServiceRequest = QueryCall | WriteCall | CacheGetCall | CachePutCall | CacheDeleteCall | CacheLoadCall


class ServiceReply(msgspec.Struct, frozen=True, omit_defaults=True):
    """`error_type` names the exception the plugin side raises: QueryError, ValueError, TypeError, Exception."""

    ok: bool
    error_type: str | None = None
    error: str | None = None
    found: bool = False  # cache_get: a value follows as payload; cache_delete: the key existed
    result: ResultLayout | None = None  # query: buffers follow as payload


# ---------------------------------------------------------------------------------------------
# Control channel (length-prefixed msgpack), host ↔ worker main.


class Load(msgspec.Struct, tag=True, frozen=True):
    """Start a trigger: its channel's worker end travels as the message's one fd."""

    trigger_id: int
    config: LoadConfig
    main_interpreter: bool  # process mode: the plugin runs in the worker's main interpreter
    memory_cap: int | None = None  # process mode with max_memory: RLIMIT_AS allowance after loading


class Interrupt(msgspec.Struct, tag=True, frozen=True):
    """Raise PluginLimitExceeded in the trigger's running plugin (ignored when none is running)."""

    trigger_id: int


class ReleaseFlush(msgspec.Struct, tag=True, frozen=True):
    flush_id: int


class Shutdown(msgspec.Struct, tag=True, frozen=True):
    """Close every trigger, giving plugin threads `deadline` seconds to finish, then exit."""

    deadline: float


class Ready(msgspec.Struct, tag=True, frozen=True):
    pid: int


class Abandoned(msgspec.Struct, tag=True, frozen=True):
    """Worker → host: a closed trigger's interpreter could not be destroyed because threads the
    plugin started outlived the close deadline; it stays in the worker until the worker exits."""

    trigger_id: int
    reason: str  # e.g. "plugin threads still running: leaked, leaked"


ControlMessage = Load | Interrupt | ReleaseFlush | Shutdown | Ready | Abandoned

_LENGTH = struct.Struct("<I")
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(ControlMessage)


def encode_control(message: ControlMessage) -> bytes:
    """Frame one control message: a 4-byte little-endian length, then msgpack."""
    body = _encoder.encode(message)
    return _LENGTH.pack(len(body)) + body


def decode_control(body: bytes) -> ControlMessage:
    """Decode a control message body (without its length prefix); raises msgspec.ValidationError."""
    return _decoder.decode(body)


CONTROL_LENGTH = _LENGTH
