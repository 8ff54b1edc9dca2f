"""The SQL query endpoint, `/api/v3/query_sql`, as InfluxDB 3 serves it.

GET takes `db`, `q`, `format` and `params` (a JSON object, as a string) from the query string;
POST takes the same names from a JSON body. Without `format`, the `Accept` header decides.
An unknown database is 404 with `{"error": "query error: ...", "data": null}`; a query the SQL
engine refuses is 400 with DataFusion's message as the plain-text body.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pyarrow as pa
from starlette.requests import Request
from starlette.responses import Response

from host.api import (
    decode_json, in_thread, json_error, read_body, require, result_response, server_of, text_error,
)
from host.formats import QueryFormat, UnknownFormat, format_from_accept, format_named, render
from host.interface import DatabaseNotFound, QueryError


_RENDER_AT_ONCE_ROWS = 10_000


class QueryRequest(msgspec.Struct):
    """The JSON body of POST /api/v3/query_sql."""

    db: str
    q: str
    format: str | None = None
    params: dict[str, Any] | None = None


async def query_sql(request: Request) -> Response:
    """GET/POST /api/v3/query_sql: run SQL, stream the result in the asked format."""
    try:
        header_format = format_from_accept(request.headers.get("accept"))
    except UnknownFormat as error:
        raise text_error(400, str(error)) from None
    if request.method == "GET":
        query = _from_query_string(request)
    else:
        query = decode_json(await read_body(request), QueryRequest)
    try:
        fmt = format_named(query.format) if query.format is not None else header_format
    except UnknownFormat as error:
        raise text_error(400, f"serde error: {error}") from None

    try:
        result = await in_thread(request, "query", _run, server_of(request).database, query, fmt)
    except DatabaseNotFound as error:
        raise json_error(404, f"query error: {error}") from None
    except QueryError as error:
        raise text_error(400, str(error)) from None
    if isinstance(result, bytes):
        return Response(result, headers={"content-type": fmt.content_type})
    return result_response(result, fmt)


def _run(db, query: QueryRequest, fmt: QueryFormat) -> bytes | pa.Table:
    """Run the query; render a small result at once, on this thread, saving the streaming hops."""
    table = db.query(query.db, query.q, query.params)
    if table.num_rows <= _RENDER_AT_ONCE_ROWS:
        return b"".join(render(table, fmt))
    return table


def _from_query_string(request: Request) -> QueryRequest:
    params = request.query_params
    if not request.url.query:
        raise text_error(400, "missing query parameters 'db' and 'q'")
    statement_params = None
    if "params" in params:
        statement_params = decode_json(params["params"].encode(), dict[str, Any])
    return QueryRequest(
        db=require(params, "db"), q=require(params, "q"), format=params.get("format"), params=statement_params
    )
