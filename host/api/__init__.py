"""The HTTP API's shared parts: the route table, bounded request bodies, InfluxDB 3's error bodies.

Handlers find the composition root as `request.app.state.server` (`host.server.Server`) and run
database calls through `in_thread`, so the event loop never waits on a write or a query.
"""

from __future__ import annotations

import functools
import zlib

import anyio.to_thread
import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from host.formats import QueryFormat, render

WRITE_CONCURRENCY = 16  # writes mostly wait on the WAL's group-commit fsync
QUERY_CONCURRENCY = 4

_DB_NAME_MAX_LENGTH = 64


class ApiError(Exception):
    """A request failed; `response` is what InfluxDB 3 answers in that case."""

    def __init__(self, response: Response):
        super().__init__(response.status_code)
        self.response = response


def text_error(status: int, message: str) -> ApiError:
    return ApiError(Response(message, status_code=status, media_type="text/plain; charset=utf-8"))


def json_error(status: int, message: str, data=None) -> ApiError:
    return ApiError(json_response({"error": message, "data": data}, status))


def json_response(content, status: int = 200) -> Response:
    return Response(msgspec.json.encode(content), status_code=status, media_type="application/json")


def result_response(table, fmt: QueryFormat) -> StreamingResponse:
    """A query result streamed in `fmt`, its Content-Type exactly InfluxDB 3's (no charset added)."""
    return StreamingResponse(render(table, fmt), headers={"content-type": fmt.content_type})


def server_of(request: Request):
    """The `host.server.Server` this request reached."""
    return request.app.state.server


async def in_thread(request: Request, limiter: str, call, /, *args, **kwargs):
    """Run `call(*args, **kwargs)` on a worker thread under the app's `limiter` ("write" or "query")."""
    return await anyio.to_thread.run_sync(
        functools.partial(call, *args, **kwargs), limiter=getattr(request.app.state, f"{limiter}_limiter")
    )


async def read_body(request: Request) -> bytes:
    """The request body, gunzipped if `Content-Encoding: gzip`.

    Streams the body and stops at the server's `max_http_request_size`, counted both on the
    wire and after decoding, so neither a huge body nor a gzip bomb is ever held in memory.
    Raises ApiError: 413 when too large, 400 for an unknown encoding or broken gzip.
    """
    limit = server_of(request).config.max_http_request_size
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip"):
        raise text_error(400, f"unacceptable content-encoding: {encoding}")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS) if encoding == "gzip" else None
    pieces: list[bytes] = []
    received = decoded = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise _too_large(limit)
        if decoder is not None:
            try:
                # max_length caps the output: a bomb stops at limit + 1 bytes
                chunk = decoder.decompress(chunk, limit + 1 - decoded)
            except zlib.error as error:
                raise text_error(400, f"error decoding gzip stream: {error}") from None
            decoded += len(chunk)
            if decoded > limit:
                raise _too_large(limit)
        if chunk:
            pieces.append(chunk)
    if decoder is not None and not decoder.eof:
        raise text_error(400, "error decoding gzip stream: unexpected end of file")
    return b"".join(pieces)


def _too_large(limit: int) -> ApiError:
    return json_error(413, f"max request size ({limit} bytes) exceeded")


async def read_json(request: Request, kind: type):
    """The body decoded as `kind` (a msgspec Struct). Raises ApiError 415 unless JSON, 400 if invalid."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not (content_type == "application/json" or
            (content_type.startswith("application/") and content_type.endswith("+json"))):
        raise text_error(415, "unacceptable content-type, expected: application/json")
    return decode_json(await read_body(request), kind)


def decode_json(body: bytes, kind: type):
    """`body` decoded as `kind`. Raises ApiError 400 naming what was wrong."""
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.DecodeError as error:
        raise text_error(400, f"serde json error: {error}") from None


def require(params, name: str) -> str:
    """Query parameter `name`. Raises ApiError 400 when absent."""
    value = params.get(name)
    if value is None:
        raise text_error(400, f"serde error: missing field `{name}`")
    return value


def parse_bool(params, name: str, default: bool) -> bool:
    """Query parameter `name` as `true`/`false`. Raises ApiError 400 for anything else."""
    value = params.get(name)
    if value is None:
        return default
    if value not in ("true", "false"):
        raise text_error(400, f"serde error: invalid value for `{name}`: expected `true` or `false`, got `{value}`")
    return value == "true"


def validate_db_name(name: str, *, accept_rp: bool = False) -> None:
    """Refuse a database name InfluxDB 3 refuses. Raises ApiError 400 with its message.

    A name starts with an ASCII letter or digit and holds only letters, digits, `_` and `-`;
    with `accept_rp` (v1 writes) one `/` may separate a retention policy.
    """
    if not name:
        raise json_error(400, "db name cannot be empty")
    if len(name) > _DB_NAME_MAX_LENGTH:
        raise json_error(400, f"db name exceeds the maximum length of {_DB_NAME_MAX_LENGTH} characters")
    if not (name[0].isascii() and name[0].isalnum()):
        raise json_error(400, "db name did not start with a number or letter")
    database, slash, policy = name.partition("/") if accept_rp else (name, "", "")
    if slash and (not policy or "/" in policy):
        raise json_error(400, "db name with invalid retention policy, if providing a retention policy "
                              "name, must be of form '<db_name>/<rp_name>'")
    if not all(c.isascii() and (c.isalnum() or c in "_-") for c in database + policy):
        raise json_error(400, _INVALID_CHAR)


_INVALID_CHAR = ("invalid character in database name: must be ASCII, containing only letters, "
                 "numbers, underscores, or hyphens")


async def handle_api_error(request: Request, error: ApiError) -> Response:
    return error.response


async def not_found(request: Request, error: Exception) -> Response:
    return Response("not found", status_code=404, media_type="text/plain; charset=utf-8")


class CorsMiddleware:
    """ASGI middleware: answer CORS preflights and allow every origin, as InfluxDB 3 does.

    Sits outside authentication: browsers send preflights without credentials.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS":
            headers = [(b"access-control-allow-origin", b"*"), (b"access-control-allow-methods", b"*"),
                       (b"access-control-allow-headers", b"*"), (b"access-control-max-age", b"86400")]
            await send({"type": "http.response.start", "status": 204, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return

        async def send_allowing_origin(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"access-control-allow-origin", b"*")]
            await send(message)

        await self.app(scope, receive, send_allowing_origin)


def routes() -> list[Route]:
    """Every InfluxDB 3 route plughost serves (the processing engine's routes come separately)."""
    from host.api import admin, query, write

    return [
        Route("/api/v3/write_lp", write.write_lp, methods=["POST"]),
        Route("/api/v2/write", write.write_v2, methods=["POST"]),
        Route("/write", write.write_v1, methods=["POST"]),
        Route("/api/v3/query_sql", query.query_sql, methods=["GET", "POST"]),
        Route("/api/v3/configure/database", admin.configure_database, methods=["GET", "POST", "DELETE"]),
        Route("/api/v3/configure/table", admin.configure_table, methods=["POST", "DELETE"]),
        Route("/health", admin.health, methods=["GET"]),
        Route("/api/v1/health", admin.health, methods=["GET"]),
        Route("/ping", admin.ping, methods=["GET", "POST"]),
    ]
