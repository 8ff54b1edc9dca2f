"""Last-value and distinct-value cache configuration: `/api/v3/configure/last_cache` and `/api/v3/configure/distinct_cache`.

Bodies and statuses follow InfluxDB 3 (`influxdb3_types::http`, `influxdb3/tests/server/configure.rs`):
POST takes a JSON body and answers 201 with the new cache's definition (the JSON
`influxdb3_client` reads); DELETE takes the query string when there is one, else a JSON body,
and answers 200 with an empty body. Refusals are plain text: 400 for a bad body or parameter
(unknown column, a column of the wrong type, count 0), 404 for an unknown database, table or
cache, 409 when a cache of that name already exists on the table, 415 for a non-JSON body.
"""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cache.distinct_value import DistinctCacheDefinition
from cache.last_value import LastCacheDefinition
from cache.service import CacheExists, CacheNotFound, CacheService
from host.api import in_thread, json_response, read_json, text_error, validate_db_name

LAST_CACHE_PATH = "/api/v3/configure/last_cache"
DISTINCT_CACHE_PATH = "/api/v3/configure/distinct_cache"


class LastCacheCreateRequest(msgspec.Struct):
    db: str
    table: str
    name: str | None = None
    key_columns: list[str] | None = None
    value_columns: list[str] | None = None
    count: int | None = None
    ttl: int | None = None  # seconds


class DistinctCacheCreateRequest(msgspec.Struct):
    db: str
    table: str
    columns: list[str]
    name: str | None = None
    max_cardinality: int | None = None
    max_age: int | None = None  # seconds


class CacheDeleteRequest(msgspec.Struct):
    db: str
    table: str
    name: str


class LastCacheCreated(msgspec.Struct):
    """`influxdb3_client::LastCacheCreatedResponse`; `value_columns` is `"all_non_key_columns"`
    or `{"explicit": {"columns": [ids]}}`."""

    table: str
    name: str
    key_columns: list[int]
    value_columns: str | dict[str, dict[str, list[int]]]
    count: int
    ttl: int


class DistinctCacheCreated(msgspec.Struct):
    """`influxdb3_types::http::DistinctCacheCreatedResponse`, less `table_id` (plughost's catalog
    exposes no table ids)."""

    table_name: str
    cache_name: str
    column_ids: list[int]
    max_cardinality: int
    max_age_seconds: int


def last_cache_created(definition: LastCacheDefinition) -> LastCacheCreated:
    ids = definition.value_column_ids
    return LastCacheCreated(
        table=definition.table,
        name=definition.name,
        key_columns=list(definition.key_column_ids),
        value_columns="all_non_key_columns" if ids is None else {"explicit": {"columns": list(ids)}},
        count=definition.count,
        ttl=definition.ttl,
    )


def distinct_cache_created(definition: DistinctCacheDefinition) -> DistinctCacheCreated:
    return DistinctCacheCreated(
        table_name=definition.table,
        cache_name=definition.name,
        column_ids=list(definition.column_ids),
        max_cardinality=definition.max_cardinality,
        max_age_seconds=definition.max_age,
    )


async def _delete_request(request: Request) -> CacheDeleteRequest:
    """The delete's parameters: the query string if there is one (InfluxDB 3's rule), else the JSON body."""
    if not request.url.query:
        return await read_json(request, CacheDeleteRequest)
    try:
        return msgspec.convert(dict(request.query_params), CacheDeleteRequest)
    except msgspec.ValidationError as error:
        raise text_error(400, f"serde error: {error}") from None


async def _call(request: Request, function, /, *args, **kwargs):
    """Run a service call on a worker thread; its refusals become InfluxDB 3's statuses."""
    try:
        return await in_thread(request, "write", function, *args, **kwargs)
    except ValueError as error:
        raise text_error(400, str(error)) from None
    except CacheNotFound as error:
        raise text_error(404, str(error)) from None
    except CacheExists as error:
        raise text_error(409, str(error)) from None


def routes(service: CacheService) -> list[Route]:
    """The cache configuration routes, bound to `service`."""

    async def configure_last_cache(request: Request) -> Response:
        if request.method == "POST":
            create = await read_json(request, LastCacheCreateRequest)
            validate_db_name(create.db)
            definition = await _call(
                request, service.create_last_cache, create.db, create.table, name=create.name,
                key_columns=create.key_columns, value_columns=create.value_columns, count=create.count,
                ttl=create.ttl,
            )
            return json_response(last_cache_created(definition), 201)
        delete = await _delete_request(request)
        await _call(request, service.delete_last_cache, delete.db, delete.table, delete.name)
        return Response(status_code=200)

    async def configure_distinct_cache(request: Request) -> Response:
        if request.method == "POST":
            create = await read_json(request, DistinctCacheCreateRequest)
            validate_db_name(create.db)
            definition = await _call(
                request, service.create_distinct_cache, create.db, create.table, create.columns,
                name=create.name, max_cardinality=create.max_cardinality, max_age=create.max_age,
            )
            return json_response(distinct_cache_created(definition), 201)
        delete = await _delete_request(request)
        await _call(request, service.delete_distinct_cache, delete.db, delete.table, delete.name)
        return Response(status_code=200)

    return [
        Route(LAST_CACHE_PATH, configure_last_cache, methods=["POST", "DELETE"]),
        Route(DISTINCT_CACHE_PATH, configure_distinct_cache, methods=["POST", "DELETE"]),
    ]
