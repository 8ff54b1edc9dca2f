"""The write endpoints: `/api/v3/write_lp`, and the v2 (`/api/v2/write`) and v1 (`/write`) compatibility ones.

All three store line protocol through `Database.write_lp` and answer as InfluxDB 3 does:
204 when every line was stored; 400 with
`{"error": "partial write of line protocol occurred", "data": [<each rejected line>]}` when
some lines were refused and the rest stored (`accept_partial=true`, v3's default); 400 with
`{"error": "parsing failed for write_lp endpoint", "data": <first bad line>}` when the whole
request was refused (`accept_partial=false`, always so for v1 and v2).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from host.api import (
    ApiError, in_thread, json_error, json_response, parse_bool, read_body, require, server_of, text_error,
    validate_db_name,
)
from host.errors import InvalidName
from host.interface import LineError, WriteError, WriteResult

# precision names each endpoint accepts, mapped to the names Database.write_lp takes
_V3_PRECISIONS = {
    "auto": "auto", "s": "s", "second": "s", "ms": "ms", "millisecond": "ms",
    "us": "us", "u": "us", "microsecond": "us", "ns": "ns", "n": "ns", "nanosecond": "ns",
}
_V2_PRECISIONS = {"s": "s", "ms": "ms", "us": "us", "ns": "ns",
                  "second": "s", "millisecond": "ms", "microsecond": "us", "nanosecond": "ns"}
_V1_PRECISIONS = {**_V2_PRECISIONS, "n": "ns", "u": "us"}

PARTIAL_WRITE = "partial write of line protocol occurred"
PARSING_FAILED = "parsing failed for write_lp endpoint"
# InfluxDB 3 answers 422 rather than 400 when a line was refused for hitting a catalog limit
_LIMIT_MESSAGES = ("Update to schema would exceed number of", "Adding a new database would exceed limit of")


async def write_lp(request: Request) -> Response:
    """POST /api/v3/write_lp?db=&precision=&accept_partial=&no_sync= (body: line protocol)."""
    params = request.query_params
    if not request.url.query:
        raise text_error(400, "missing query parameter 'db'")
    database = require(params, "db")
    precision = _precision(params, _V3_PRECISIONS, "auto")
    accept_partial = parse_bool(params, "accept_partial", True)
    no_sync = parse_bool(params, "no_sync", False)
    validate_db_name(database)
    return await _write(request, database, precision, accept_partial=accept_partial, no_sync=no_sync)


async def write_v2(request: Request) -> Response:
    """POST /api/v2/write?bucket=&org=&precision= (InfluxDB 2 compatible; `org` is ignored)."""
    params = request.query_params
    bucket = params.get("bucket", "")
    if not bucket:
        raise json_error(400, "missing bucket value")
    precision = _precision(params, _V2_PRECISIONS, "ns", legacy=True)
    validate_db_name(bucket)
    return await _write(request, bucket, precision, accept_partial=False, no_sync=False)


async def write_v1(request: Request) -> Response:
    """POST /write?db=&rp=&precision= (InfluxDB 1 compatible; a named `rp` makes the database `db/rp`)."""
    params = request.query_params
    if not request.url.query:
        raise json_error(400, "no db destination provided")
    if "db" not in params:
        raise json_error(400, "failed to deserialize db/rp/precision in request: missing field `db`")
    database = params["db"]
    policy = params.get("rp", "").lower()
    if policy not in ("", "''", "autogen", "default"):
        database = f"{database}/{policy}"
    precision = _precision(params, _V1_PRECISIONS, "ns", legacy=True)
    validate_db_name(database, accept_rp=True)
    return await _write(request, database, precision, accept_partial=False, no_sync=False)


def _precision(params, accepted: dict[str, str], default: str, *, legacy: bool = False) -> str:
    name = params.get("precision")
    if name is None:
        return default
    try:
        return accepted[name]
    except KeyError:
        expected = ", ".join(f"`{n}`" for n in accepted)
        message = f"unknown variant `{name}`, expected one of {expected}"
        if legacy:
            raise json_error(400, f"failed to deserialize db/rp/precision in request: {message}") from None
        raise text_error(400, f"serde error: {message}") from None


async def _write(request: Request, database: str, precision: str, *, accept_partial: bool,
                 no_sync: bool) -> Response:
    body = await read_body(request)
    try:
        lines = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise text_error(400, f"body content is not valid utf8: {error}") from None
    db = server_of(request).database
    try:
        result: WriteResult = await in_thread(
            request, "write", db.write_lp, database, lines,
            precision=precision, accept_partial=accept_partial, no_sync=no_sync,
        )
    except InvalidName as error:
        raise json_error(400, str(error)) from None
    except WriteError as error:
        raise _refused(error, accept_partial) from None
    if result.errors:
        raise _partial(result.errors)
    return Response(status_code=204)


def _refused(error: WriteError, accept_partial: bool) -> ApiError:
    if not error.errors:
        return json_error(400, str(error))
    if accept_partial:
        return _partial(error.errors)
    return ApiError(json_response({"error": PARSING_FAILED, "data": error.errors[0]}, 400))


def _partial(errors: list[LineError]) -> ApiError:
    limit_hit = any(e.error_message.startswith(_LIMIT_MESSAGES) for e in errors)
    return ApiError(json_response({"error": PARTIAL_WRITE, "data": errors}, 422 if limit_hit else 400))

