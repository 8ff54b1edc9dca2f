"""The processing engine's HTTP API: trigger configuration, plugin dry runs, `/api/v3/engine/<path>`,
and what running plugins use (`GET /api/v3/plugin_usage[?db=]`, see docs/plugins.md, "Operations").

Bodies follow InfluxDB 3 (`influxdb3_types::http`): create/delete take a JSON body or, when a
query string is present, the query string; enable/disable take `?db=&trigger_name=`. Successes
are 200 with an empty body; an unknown engine path is 404 with InfluxDB 3's `{error: "not found"}`.

Statuses for refusals: 400 bad request body, spec, setting or plugin file; 404 unknown database
or trigger; 409 duplicate trigger name or request path, or deleting an enabled trigger without
`force` (InfluxDB 3 answers these last ones, and plugin-file errors, with 500; see docs/triggers.md).
"""

from __future__ import annotations

import asyncio
import functools
from typing import Literal
from urllib.parse import parse_qsl

import anyio.to_thread
import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from host.api import json_response, read_body, read_json, require, text_error
from host.plugin_manager import (
    DatabaseNotFound,
    InvalidTrigger,
    PluginFileError,
    ProcessingEngine,
    RequestPathTaken,
    TriggerRunning,
)
from triggers.catalog import SettingsError, TriggerExists, TriggerNotFound, TriggerSettings, memory_setting, seconds_setting
from triggers.spec import TriggerSpecError


class TriggerSettingsBody(msgspec.Struct, forbid_unknown_fields=True):
    """`trigger_settings`: InfluxDB 3's two required keys, then our limits and isolation."""

    run_async: bool
    error_behavior: Literal["log", "retry", "disable"]
    max_run_time: float | str | None = None
    max_cpu_time: float | str | None = None
    max_memory: int | str | None = None
    isolation: Literal["auto", "interpreter", "process"] = "auto"

    def validated(self) -> TriggerSettings:
        """Raises SettingsError naming the setting."""
        return TriggerSettings(
            run_async=self.run_async,
            error_behavior=self.error_behavior,
            max_run_time=seconds_setting("max_run_time", self.max_run_time),
            max_cpu_time=seconds_setting("max_cpu_time", self.max_cpu_time),
            max_memory=memory_setting("max_memory", self.max_memory),
            isolation=self.isolation,
        )


class CreateTriggerRequest(msgspec.Struct):
    db: str
    plugin_filename: str
    trigger_name: str
    trigger_specification: str
    trigger_settings: TriggerSettingsBody
    disabled: bool
    trigger_arguments: dict[str, str] | None = None


class DeleteTriggerRequest(msgspec.Struct):
    db: str
    trigger_name: str
    force: bool = False


class WalPluginTestRequest(msgspec.Struct):
    filename: str
    database: str
    input_lp: str
    cache_name: str | None = None
    input_arguments: dict[str, str] | None = None


class SchedulePluginTestRequest(msgspec.Struct):
    filename: str
    database: str
    schedule: str | None = None
    cache_name: str | None = None
    input_arguments: dict[str, str] | None = None


_JSON_IN_QUERY = ("trigger_settings", "trigger_arguments")
_BOOLEAN_IN_QUERY = ("disabled", "force")
_BOOLEANS = {"true": True, "false": False}


async def _body_or_query(request: Request, kind: type):
    """The request as `kind`: from the query string when there is one (InfluxDB 3's rule), else the JSON body."""
    if not request.url.query:
        return await read_json(request, kind)
    fields: dict = dict(request.query_params)
    for name in _JSON_IN_QUERY:
        if name in fields:
            try:
                fields[name] = msgspec.json.decode(fields[name])
            except msgspec.DecodeError as error:
                raise text_error(400, f"serde error: `{name}` must be JSON: {error}") from None
    for name in _BOOLEAN_IN_QUERY:
        if fields.get(name) in _BOOLEANS:
            fields[name] = _BOOLEANS[fields[name]]
    try:
        return msgspec.convert(fields, kind)
    except msgspec.ValidationError as error:
        raise text_error(400, f"serde error: {error}") from None


async def _call(function, /, *args, **kwargs):
    """Run an engine call on a worker thread and turn its refusals into InfluxDB 3-style answers."""
    try:
        return await anyio.to_thread.run_sync(functools.partial(function, *args, **kwargs))
    except (TriggerSpecError, SettingsError, InvalidTrigger, PluginFileError) as error:
        raise text_error(400, str(error)) from None
    except (DatabaseNotFound, TriggerNotFound) as error:
        raise text_error(404, str(error)) from None
    except (TriggerExists, RequestPathTaken, TriggerRunning) as error:
        raise text_error(409, str(error)) from None
    except OSError as error:
        raise text_error(500, f"could not save the trigger catalog: {error}") from None


def routes(engine: ProcessingEngine) -> list[Route]:
    """The processing engine's routes, bound to `engine`."""

    async def configure_trigger(request: Request) -> Response:
        if request.method == "POST":
            create = await _body_or_query(request, CreateTriggerRequest)
            try:
                settings = create.trigger_settings.validated()
            except SettingsError as error:
                raise text_error(400, str(error)) from None
            await _call(engine.create_trigger, create.db, create.trigger_name, create.plugin_filename,
                        create.trigger_specification, create.trigger_arguments, settings, create.disabled)
        else:
            delete = await _body_or_query(request, DeleteTriggerRequest)
            await _call(engine.delete_trigger, delete.db, delete.trigger_name, delete.force)
        return Response(status_code=200)

    async def enable_trigger(request: Request) -> Response:
        params = request.query_params
        await _call(engine.enable_trigger, require(params, "db"), require(params, "trigger_name"))
        return Response(status_code=200)

    async def disable_trigger(request: Request) -> Response:
        params = request.query_params
        await _call(engine.disable_trigger, require(params, "db"), require(params, "trigger_name"))
        return Response(status_code=200)

    async def test_wal_plugin(request: Request) -> Response:
        test = await read_json(request, WalPluginTestRequest)
        return json_response(await _call(engine.test_wal, test.filename, test.database, test.input_lp,
                                         test.input_arguments, test.cache_name))

    async def test_schedule_plugin(request: Request) -> Response:
        test = await read_json(request, SchedulePluginTestRequest)
        return json_response(await _call(engine.test_schedule, test.filename, test.database, test.schedule,
                                         test.input_arguments, test.cache_name))

    async def plugin_usage(request: Request) -> Response:
        database = request.query_params.get("db") or None
        usage = await anyio.to_thread.run_sync(engine.usage, database)
        return json_response({"triggers": usage})

    async def request_trigger(request: Request) -> Response:
        # InfluxDB 3: percent-decoded pairs, the last of a repeated key wins; header names are
        # lowercase, the last of a repeated header wins, and Authorization never reaches plugins.
        query_params = dict(parse_qsl(request.url.query, keep_blank_values=True))
        headers = {name.decode("latin-1"): value.decode("latin-1")
                   for name, value in request.headers.raw if name.lower() != b"authorization"}
        body = await read_body(request)
        answer = await asyncio.wrap_future(
            engine.submit_request(request.path_params["path"], query_params, headers, body))
        return Response(answer.body, status_code=answer.status, headers=answer.headers)

    return [
        Route("/api/v3/configure/processing_engine_trigger", configure_trigger, methods=["POST", "DELETE"]),
        Route("/api/v3/configure/processing_engine_trigger/enable", enable_trigger, methods=["POST"]),
        Route("/api/v3/configure/processing_engine_trigger/disable", disable_trigger, methods=["POST"]),
        Route("/api/v3/plugin_test/wal", test_wal_plugin, methods=["POST"]),
        Route("/api/v3/plugin_test/schedule", test_schedule_plugin, methods=["POST"]),
        Route("/api/v3/plugin_usage", plugin_usage, methods=["GET"]),
        Route("/api/v3/engine/{path:path}", request_trigger, methods=["GET", "POST"]),
    ]
