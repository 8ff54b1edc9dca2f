"""The trigger-spec grammar: every form, its canonical string, its serde JSON, and every refusal."""

import json

import pytest

from triggers.spec import (
    AllTablesSpec,
    CronSpec,
    EverySpec,
    RequestSpec,
    TableSpec,
    TriggerSpecError,
    parse_trigger_spec,
)


@pytest.mark.parametrize(
    "text, kind, canonical, serde",
    [
        ("table:cpu", TableSpec, "table:cpu", {"single_table_wal_write": {"table_name": "cpu"}}),
        ("  table:  cpu  ", TableSpec, "table:cpu", {"single_table_wal_write": {"table_name": "cpu"}}),
        ("table:table:cpu", TableSpec, "table:cpu", {"single_table_wal_write": {"table_name": "cpu"}}),
        ("all_tables", AllTablesSpec, "all_tables", "all_tables_wal_write"),
        ("cron:0 0 * * * *", CronSpec, "cron:0 0 * * * *", {"schedule": {"schedule": "0 0 * * * *"}}),
        ("cron: 0 6 * * * ", CronSpec, "cron:0 6 * * *", {"schedule": {"schedule": "0 6 * * *"}}),
        ("every:1m", EverySpec, "every:1m", {"every": {"duration": {"secs": 60, "nanos": 0}}}),
        ("every:1h 30m", EverySpec, "every:1h 30m", {"every": {"duration": {"secs": 5400, "nanos": 0}}}),
        ("every:90min", EverySpec, "every:1h 30m", {"every": {"duration": {"secs": 5400, "nanos": 0}}}),
        ("every:2days", EverySpec, "every:2days", {"every": {"duration": {"secs": 172800, "nanos": 0}}}),
        ("every:1w", EverySpec, "every:7days", {"every": {"duration": {"secs": 604800, "nanos": 0}}}),
        ("every:1500ms", EverySpec, "every:1s 500ms", {"every": {"duration": {"secs": 1, "nanos": 500_000_000}}}),
        ("request:my/path", RequestSpec, "request:my/path", {"request_path": {"path": "my/path"}}),
    ],
)
def test_valid_specs_round_trip(text, kind, canonical, serde):
    spec = parse_trigger_spec(text)
    assert isinstance(spec, kind)
    assert spec.canonical() == canonical
    assert json.loads(spec.serde_json()) == serde
    assert parse_trigger_spec(spec.canonical()).canonical() == canonical


def test_serde_json_is_compact_like_serde_json():
    assert parse_trigger_spec("table:cpu").serde_json() == '{"single_table_wal_write":{"table_name":"cpu"}}'
    assert parse_trigger_spec("all_tables").serde_json() == '"all_tables_wal_write"'


def test_kinds():
    assert [parse_trigger_spec(s).kind for s in ("table:a", "all_tables", "every:1s", "cron:* * * * * *", "request:x")] == [
        "writes", "writes", "schedule", "schedule", "request"]


FORMS = ("expect one of the following forms: 'table:<TABLE_NAME>', 'all_tables', "
         "'cron:<CRON_EXPRESSION>', 'every:<DURATION>', or 'request:<PATH>'")


@pytest.mark.parametrize(
    "text, message",
    [
        ("table:", "failed to parse trigger from table:: table name is empty"),
        ("table:   ", "failed to parse trigger from table:: table name is empty"),
        ("all_table", f"failed to parse trigger from all_table: {FORMS}"),
        ("", f"failed to parse trigger from : {FORMS}"),
        ("schedule:* * * * * *", f"failed to parse trigger from schedule:* * * * * *: {FORMS}"),
        ("cron:", "failed to parse trigger from cron:: cron expression is empty"),
        ("cron:* * * *", "failed to parse trigger from cron:* * * *: invalid cron expression: expression has 4 fields; "
                         "expected 6 or 7 (sec min hour day-of-month month day-of-week [year]) or 5 (crontab: min hour "
                         "day-of-month month day-of-week)"),
        ("cron:60 * * * * *", "failed to parse trigger from cron:60 * * * * *: invalid cron expression: "
                              "seconds field: 60 is out of range 0-59"),
        ("cron:* * * * * 0", "failed to parse trigger from cron:* * * * * 0: invalid cron expression: "
                             "days of week field: 0 is out of range 1-7"),
        ("cron:0 0 0 30 2 *", "failed to parse trigger from cron:0 0 0 30 2 *: invalid cron expression: "
                              "the schedule never fires (no date matches every field)"),
        ("every:", "failed to parse trigger from every:: couldn't parse to duration: value was empty"),
        ("every:10", "failed to parse trigger from every:10: couldn't parse to duration: "
                     "time unit needed, for example 10sec or 10ms"),
        ("every:5 parsecs", "failed to parse trigger from every:5 parsecs: couldn't parse to duration: "
                            "unknown time unit 'parsecs', supported units: ns, us, ms, sec, min, hours, days, "
                            "weeks, months, years (and few variations)"),
        ("every:1.5h", "failed to parse trigger from every:1.5h: couldn't parse to duration: invalid character at 1"),
        ("every:2years", "failed to parse trigger from every:2years: don't support every schedules of over 1 year"),
        ("every:0s", "failed to parse trigger from every:0s: don't support every schedules of under 1ms"),
        ("every:999us", "failed to parse trigger from every:999us: don't support every schedules of under 1ms"),
        ("request:", "failed to parse trigger from request:: request path is empty"),
    ],
)
def test_bad_specs_say_why(text, message):
    with pytest.raises(TriggerSpecError) as caught:
        parse_trigger_spec(text)
    assert str(caught.value) == message


def test_one_year_exactly_is_allowed():
    assert parse_trigger_spec("every:1y").interval_ns == 31_557_600 * 10**9
    assert parse_trigger_spec("every:1ms").interval_ns == 10**6
