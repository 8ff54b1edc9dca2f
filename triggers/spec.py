"""Trigger specifications: the `--trigger-spec` grammar, its canonical string, and the serde JSON
InfluxDB 3 shows in `system.processing_engine_triggers`.

    table:NAME     fires on WAL flushes that wrote rows to table NAME      kind "writes"
    all_tables     fires on WAL flushes that wrote rows to the database    kind "writes"
    every:DUR      fires on multiples of DUR since the epoch               kind "schedule"
    cron:EXPR      fires when the cron expression matches (UTC)            kind "schedule"
    request:PATH   serves /api/v3/engine/PATH                             kind "request"

Parsing follows InfluxDB 3's `TriggerSpecificationDefinition::from_string_rep`: the input and the
part after the prefix are trimmed, and every error reads `failed to parse trigger from <spec>:
<why>`. Where InfluxDB 3 says nothing about why (bad cron, empty request path) we say why.
"""

from __future__ import annotations

import json
from typing import Literal

from triggers.schedule import (
    ONE_YEAR_NS,
    NANOS_PER_MILLI,
    NANOS_PER_SECOND,
    Cron,
    CronError,
    DurationError,
    Every,
    format_duration,
    parse_cron,
    parse_duration,
)

TriggerKind = Literal["writes", "schedule", "request"]

EXPECTED_FORMS = (
    "expect one of the following forms: 'table:<TABLE_NAME>', 'all_tables', "
    "'cron:<CRON_EXPRESSION>', 'every:<DURATION>', or 'request:<PATH>'"
)


class TriggerSpecError(ValueError):
    """A trigger specification string is not in the grammar; the message says which part and why."""

    def __init__(self, spec: str, why: str):
        super().__init__(f"failed to parse trigger from {spec}: {why}")
        self.spec = spec
        self.why = why


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class TableSpec:
    """`table:NAME`: one call per WAL flush that wrote rows to table NAME."""

    kind: TriggerKind = "writes"

    def __init__(self, table_name: str):
        self.table_name = table_name

    def canonical(self) -> str:
        return f"table:{self.table_name}"

    def serde_json(self) -> str:
        return _json({"single_table_wal_write": {"table_name": self.table_name}})


class AllTablesSpec:
    """`all_tables`: one call per WAL flush that wrote rows to the trigger's database."""

    kind: TriggerKind = "writes"
    table_name = None

    def canonical(self) -> str:
        return "all_tables"

    def serde_json(self) -> str:
        return _json("all_tables_wal_write")


class CronSpec:
    """`cron:EXPR`: fires when the cron expression matches, in UTC."""

    kind: TriggerKind = "schedule"

    def __init__(self, expression: str, schedule: Cron):
        self.expression = expression
        self.schedule = schedule

    def canonical(self) -> str:
        return f"cron:{self.expression}"

    def serde_json(self) -> str:
        return _json({"schedule": {"schedule": self.expression}})


class EverySpec:
    """`every:DURATION`: fires on every multiple of the duration since the Unix epoch."""

    kind: TriggerKind = "schedule"

    def __init__(self, interval_ns: int):
        self.interval_ns = interval_ns
        self.schedule = Every(interval_ns)

    def canonical(self) -> str:
        return f"every:{format_duration(self.interval_ns)}"

    def serde_json(self) -> str:
        seconds, nanos = divmod(self.interval_ns, NANOS_PER_SECOND)
        return _json({"every": {"duration": {"secs": seconds, "nanos": nanos}}})


class RequestSpec:
    """`request:PATH`: serves GET and POST on /api/v3/engine/PATH."""

    kind: TriggerKind = "request"

    def __init__(self, path: str):
        self.path = path

    def canonical(self) -> str:
        return f"request:{self.path}"

    def serde_json(self) -> str:
        return _json({"request_path": {"path": self.path}})


TriggerSpec = TableSpec | AllTablesSpec | CronSpec | EverySpec | RequestSpec


def _after(prefix: str, text: str) -> str:
    # Rust's trim_start_matches strips the prefix as many times as it repeats.
    while text.startswith(prefix):
        text = text[len(prefix):]
    return text.strip()


def parse_trigger_spec(text: str) -> TriggerSpec:
    """Parse a `--trigger-spec` string. Raises TriggerSpecError; nothing else."""
    spec = text.strip()
    if spec.startswith("table:"):
        table_name = _after("table:", spec)
        if not table_name:
            raise TriggerSpecError(spec, "table name is empty")
        return TableSpec(table_name)
    if spec == "all_tables":
        return AllTablesSpec()
    if spec.startswith("cron:"):
        expression = _after("cron:", spec)
        if not expression:
            raise TriggerSpecError(spec, "cron expression is empty")
        try:
            return CronSpec(expression, parse_cron(expression))
        except CronError as error:
            raise TriggerSpecError(spec, f"invalid cron expression: {error}") from None
    if spec.startswith("every:"):
        try:
            interval_ns = parse_duration(_after("every:", spec))
        except DurationError as error:
            raise TriggerSpecError(spec, f"couldn't parse to duration: {error}") from None
        if interval_ns > ONE_YEAR_NS:
            raise TriggerSpecError(spec, "don't support every schedules of over 1 year")
        if interval_ns < NANOS_PER_MILLI:
            raise TriggerSpecError(spec, "don't support every schedules of under 1ms")
        return EverySpec(interval_ns)
    if spec.startswith("request:"):
        path = _after("request:", spec)
        if not path:
            raise TriggerSpecError(spec, "request path is empty")
        return RequestSpec(path)
    raise TriggerSpecError(spec, EXPECTED_FORMS)
