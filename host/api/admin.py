"""Database and table administration (`/api/v3/configure/database`, `/api/v3/configure/table`), `/health` and `/ping`.

Statuses follow InfluxDB 3: 200 with an empty body on success, 409 when the database or table
already exists, 404 when it does not, 400 for an invalid name or body, 415 for a non-JSON body.
"""

from __future__ import annotations

import uuid
from typing import Literal

import msgspec
import pyarrow as pa
from starlette.requests import Request
from starlette.responses import Response

from host.api import (
    in_thread, json_response, parse_bool, read_json, require, result_response, server_of, text_error,
    validate_db_name,
)
from host.errors import AlreadyExists, InvalidName, InvalidSchema, NotFound
from host.formats import UnknownFormat, format_named

DATABASE_COLUMN = "iox::database"

FieldType = Literal["utf8", "int64", "uint64", "float64", "bool"]


class CreateDatabaseRequest(msgspec.Struct):
    db: str
    retention_period: str | None = None


class TableField(msgspec.Struct):
    name: str
    type: FieldType


class CreateTableRequest(msgspec.Struct):
    db: str
    table: str
    tags: list[str]
    fields: list[TableField]


async def configure_database(request: Request) -> Response:
    """GET lists databases (`?format=`), POST `{"db": name}` creates one, DELETE `?db=` deletes one."""
    db = server_of(request).database
    if request.method == "GET":
        return await _show_databases(request)
    if request.method == "POST":
        create = await read_json(request, CreateDatabaseRequest)
        validate_db_name(create.db)
        await _admin(request, db.create_database, create.db)
    else:
        await _admin(request, server_of(request).delete_database, require(request.query_params, "db"))
    return Response(status_code=200)


async def configure_table(request: Request) -> Response:
    """POST `{"db","table","tags":[..],"fields":[{"name","type"}]}` creates a table, DELETE `?db=&table=` deletes one."""
    db = server_of(request).database
    if request.method == "POST":
        create = await read_json(request, CreateTableRequest)
        validate_db_name(create.db)
        fields = [(field.name, field.type) for field in create.fields]
        await _admin(request, db.create_table, create.db, create.table, create.tags, fields)
    else:
        params = request.query_params
        await _admin(request, server_of(request).delete_table, require(params, "db"), require(params, "table"))
    return Response(status_code=200)


async def health(request: Request) -> Response:
    return Response("OK", media_type="text/plain; charset=utf-8")


async def ping(request: Request) -> Response:
    server = server_of(request)
    request_id = str(uuid.uuid4())
    body = {"version": server.version, "revision": server.revision, "process_id": server.process_id}
    response = json_response(body)
    response.headers.update({
        "Request-Id": request_id, "X-Request-Id": request_id,
        "X-Influxdb-Build": server.build, "X-Influxdb-Version": server.version,
    })
    return response


async def _show_databases(request: Request) -> Response:
    params = request.query_params
    try:
        fmt = format_named(params.get("format", "json"))
    except UnknownFormat as error:
        raise text_error(400, f"serde error: {error}") from None
    parse_bool(params, "show_deleted", False)  # accepted for compatibility; deletes are immediate
    names = await in_thread(request, "query", server_of(request).database.list_databases)
    table = pa.table({DATABASE_COLUMN: pa.array(names, pa.string())})
    return result_response(table, fmt)


async def _admin(request: Request, call, *args) -> None:
    try:
        await in_thread(request, "write", call, *args)
    except AlreadyExists as error:
        raise text_error(409, str(error)) from None
    except NotFound as error:
        raise text_error(404, str(error)) from None
    except (InvalidName, InvalidSchema) as error:
        raise text_error(400, str(error)) from None
