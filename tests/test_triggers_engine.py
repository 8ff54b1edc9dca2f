"""ProcessingEngine over the in-memory Database and the real plugin runtime (worker processes,
subinterpreters, shared flushes): routing, queues, error behaviors, lifecycle, dry runs.

The database flushes only when a test calls `flush()`, so every flush a trigger sees is one the
test made. Server-level behaviour (HTTP, CLI, restarts of `plughost serve`) is in
tests/test_triggers_server.py.
"""

from __future__ import annotations

import json
import sys
import textwrap
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from inmemory_db import InMemoryDatabase  # noqa: E402

from host.plugin_manager import (  # noqa: E402
    RETRY_DELAYS,
    DatabaseNotFound,
    InvalidTrigger,
    PluginFileError,
    ProcessingEngine,
    RequestPathTaken,
    TriggerExists,
    TriggerNotFound,
    TriggerRunning,
    TriggerSettings,
    TriggerSpecError,
)
from sandbox.runtime import PluginRuntime  # noqa: E402
from triggers.dispatch import DEFAULT_CAPACITY  # noqa: E402
from conftest import wait_until

PLUGINS = {
    "copy.py": """
        def process_writes(influxdb3_local, table_batches, args=None):
            for batch in table_batches:
                influxdb3_local.info("saw", batch["table_name"], len(batch["rows"]))
                for row in batch["rows"]:
                    influxdb3_local.write(LineBuilder("out").tag("src", batch["table_name"]).float64_field("v", row["v"]))
    """,
    "slow.py": """
        import time
        def process_writes(influxdb3_local, table_batches, args=None):
            time.sleep(float(args["seconds"]))
            influxdb3_local.info("slept")
    """,
    "failing.py": """
        def process_writes(influxdb3_local, table_batches, args=None):
            raise ValueError("bad batch")

        def process_scheduled_call(influxdb3_local, call_time, args=None):
            raise ValueError("bad tick")
    """,
    "flaky.py": """
        def process_writes(influxdb3_local, table_batches, args=None):
            failures = influxdb3_local.cache.get("failures", 0)
            if failures < int(args["fail_times"]):
                influxdb3_local.cache.put("failures", failures + 1)
                raise RuntimeError(f"failure {failures + 1}")
            influxdb3_local.write(LineBuilder("recovered").int64_field("after", failures))
    """,
    "ticker.py": """
        def process_scheduled_call(influxdb3_local, call_time, args=None):
            influxdb3_local.info("tick", call_time.isoformat())
    """,
    "echo.py": """
        def process_request(influxdb3_local, query_parameters, request_headers, request_body, args=None):
            return {"query": query_parameters, "agent": request_headers.get("user-agent"),
                    "has_auth": "authorization" in request_headers, "body": request_body.decode()}
    """,
    "raises_request.py": """
        def process_request(influxdb3_local, query_parameters, request_headers, request_body, args=None):
            raise KeyError("missing")
    """,
    "overlap.py": """
        import os, time
        def process_writes(influxdb3_local, table_batches, args=None):
            marker = os.path.join(args["dir"], str(os.getpid()) + "-" + str(id(influxdb3_local)))
            open(marker, "w").close()
            deadline = time.monotonic() + 10
            while len(os.listdir(args["dir"])) < 2:
                if time.monotonic() > deadline:
                    raise TimeoutError("no other run overlapped")
                time.sleep(0.005)
            influxdb3_local.info("overlapped")
    """,
    "syntax_error.py": "def process_writes(:\n",
}


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("plugins")
    for name, source in PLUGINS.items():
        (directory / name).write_text(textwrap.dedent(source))
    return directory


@pytest.fixture(scope="module")
def db():
    database = InMemoryDatabase()
    for name in ("db", "other"):
        database.write_lp(name, "seed v=0 1")
    database.flush()
    return database


@pytest.fixture(scope="module")
def runtime(db, plugin_dir, tmp_path_factory):
    with PluginRuntime(db, plugin_dir, tmp_path_factory.mktemp("run"), workers=2) as rt:
        yield rt


@pytest.fixture
def engine_factory(db, plugin_dir, runtime, tmp_path):
    engines = []

    def make():
        engine = ProcessingEngine(db, plugin_dir, tmp_path / "data", runtime=runtime)
        engine.start()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


@pytest.fixture
def engine(engine_factory):
    return engine_factory()


def wait_for(predicate, timeout=15.0, message="condition"):
    return wait_until(predicate, timeout=timeout, interval=0.01, message=message)


def logs(engine, trigger):
    return [(r["log_level"], r["log_text"]) for r in engine.logs_table("db").drop_columns(["event_time"]).to_pylist() if r["trigger_name"] == trigger]


def texts(engine, trigger):
    return [text for _, text in logs(engine, trigger)]


def written(db, since, table):
    return [w for w in db.writes[since:] if w[1].startswith(table)]


def triggers(engine, database="db"):
    return {r["trigger_name"]: r for r in engine.triggers_table(database).to_pylist()}


# --- routing ------------------------------------------------------------------------------------

def test_table_trigger_runs_only_for_its_table_and_writes_back(engine, db):
    engine.create_trigger("db", "copy_cpu", "copy.py", "table:cpu")
    before = len(db.writes)
    db.write_lp("db", "mem,host=a v=9 1")
    db.flush()
    db.write_lp("db", "cpu,host=a v=1.5 1\ncpu,host=b v=2.5 2")
    db.flush()
    wait_for(lambda: written(db, before, "out"), message="the write-back")
    assert texts(engine, "copy_cpu")[:2] == ["starting execution of wal plugin.", "saw cpu 2"]
    assert texts(engine, "copy_cpu")[2].startswith("finished execution in ")
    database, lines, no_sync = written(db, before, "out")[0]
    assert (database, no_sync) == ("db", False)
    assert lines.splitlines() == ["out,src=cpu v=1.5", "out,src=cpu v=2.5"]
    runs = [r for r in engine.runs_table("db").drop_columns(["started", "queued"]).to_pylist() if r["trigger_name"] == "copy_cpu"]
    assert [r["outcome"] for r in runs] == ["ok"] and runs[0]["duration"] > 0


def test_all_tables_sees_every_table_of_its_database_only(engine, db):
    db.flush()  # whatever earlier tests left pending
    engine.create_trigger("db", "copy_all", "copy.py", "all_tables")
    db.write_lp("other", "elsewhere v=5 1")
    db.write_lp("db", "alla v=1 1\nallb v=2 1")
    db.flush()
    wait_for(lambda: any(t.startswith("finished") for t in texts(engine, "copy_all")))
    seen = [t for t in texts(engine, "copy_all") if t.startswith("saw")]
    assert sorted(seen[:2]) == ["saw alla 1", "saw allb 1"]
    assert not any("elsewhere" in t for t in seen)


def test_flushes_without_rows_for_the_table_do_not_run_the_trigger(engine, db):
    engine.create_trigger("db", "copy_disk", "copy.py", "table:disk")
    db.write_lp("db", "cpu v=1 1")
    db.flush()
    db.write_lp("db", "disk v=1 1")
    db.flush()
    wait_for(lambda: any(t.startswith("finished") for t in texts(engine, "copy_disk")))
    assert texts(engine, "copy_disk").count("starting execution of wal plugin.") == 1


# --- queues -------------------------------------------------------------------------------------

def test_a_slow_plugin_never_holds_up_the_flush_and_its_losses_are_counted(engine, db):
    engine.create_trigger("db", "slow", "slow.py", "table:slowtable", arguments={"seconds": "1"})
    engine.create_trigger("db", "quick", "copy.py", "table:quicktable")
    longest = 0.0
    for i in range(DEFAULT_CAPACITY + 10):
        db.write_lp("db", f"slowtable v={i} 1")
        started = time.perf_counter()
        db.flush()
        longest = max(longest, time.perf_counter() - started)
    assert longest < 0.1, f"a flush waited {longest:.3f}s on the plugin"
    before = len(db.writes)
    db.write_lp("db", "quicktable v=7 1")
    db.flush()
    wait_for(lambda: written(db, before, "out"), timeout=5, message="the other trigger to keep running")
    dropped = triggers(engine)["slow"]["dropped_events"]
    assert dropped >= 9, dropped
    warnings = [t for level, t in logs(engine, "slow") if level == "WARN"]
    assert len(warnings) == 1 and "flushes are already waiting" in warnings[0]


def test_async_runs_overlap(engine, db, tmp_path):
    meeting = tmp_path / "meeting"
    meeting.mkdir()
    engine.create_trigger("db", "overlap", "overlap.py", "table:overlaptable", arguments={"dir": str(meeting)},
                          settings=TriggerSettings(run_async=True))
    for i in range(2):
        db.write_lp("db", f"overlaptable v={i} 1")
        db.flush()
    wait_for(lambda: texts(engine, "overlap").count("overlapped") == 2, message="two overlapping runs")
    assert [level for level, _ in logs(engine, "overlap")].count("ERROR") == 0


# --- error behaviors ----------------------------------------------------------------------------

def test_log_behavior_logs_and_carries_on(engine, db):
    engine.create_trigger("db", "failing_log", "failing.py", "table:faillog")
    for _ in range(2):
        db.write_lp("db", "faillog v=1 1")
        db.flush()
    wait_for(lambda: [l for l in logs(engine, "failing_log") if l[0] == "ERROR"][1:], message="two errors")
    errors = [t for level, t in logs(engine, "failing_log") if level == "ERROR"]
    assert errors[0].startswith("error executing wal plugin: ValueError: bad batch")
    assert not engine._catalog.get("db", "failing_log").disabled


def test_retry_behavior_reruns_the_same_input_until_it_succeeds(engine, db):
    engine.create_trigger("db", "flaky", "flaky.py", "table:flakytable", arguments={"fail_times": "2"},
                          settings=TriggerSettings(error_behavior="retry"))
    before = len(db.writes)
    db.write_lp("db", "flakytable v=1 1")
    db.flush()
    wait_for(lambda: written(db, before, "recovered"), message="the third attempt's write-back")
    assert written(db, before, "recovered")[0][1] == "recovered after=2i"
    retries = [t for level, t in logs(engine, "flaky") if level == "WARN"]
    assert [t.split(";")[1].strip() for t in retries] == [
        f"retrying in {RETRY_DELAYS[0]:g}s (attempt 2 of 4)", f"retrying in {RETRY_DELAYS[1]:g}s (attempt 3 of 4)"]


def test_retry_behavior_is_bounded(engine, db):
    engine.create_trigger("db", "always_fails", "failing.py", "table:retrytable",
                          settings=TriggerSettings(error_behavior="retry"))
    db.write_lp("db", "retrytable v=1 1")
    db.flush()
    wait_for(lambda: any("giving up" in t for t in texts(engine, "always_fails")), timeout=10)
    assert texts(engine, "always_fails").count("starting execution of wal plugin.") == len(RETRY_DELAYS) + 1
    assert [t for level, t in logs(engine, "always_fails") if level == "ERROR"] == [
        "error executing wal plugin: ValueError: bad batch; giving up after 4 attempts"]


def test_disable_behavior_persists_disabled(engine_factory, db):
    engine = engine_factory()
    engine.create_trigger("db", "disables", "failing.py", "table:disabletable",
                          settings=TriggerSettings(error_behavior="disable"))
    db.write_lp("db", "disabletable v=1 1")
    db.flush()
    wait_for(lambda: triggers(engine)["disables"]["disabled"], message="the trigger to disable itself")
    assert any("disabling trigger disables due to error" in t for t in texts(engine, "disables"))
    db.write_lp("db", "disabletable v=2 1")
    db.flush()
    time.sleep(0.1)
    assert texts(engine, "disables").count("starting execution of wal plugin.") == 1
    engine.close()
    reopened = engine_factory()
    assert triggers(reopened)["disables"]["disabled"] is True
    reopened.enable_trigger("db", "disables")
    assert triggers(reopened)["disables"]["disabled"] is False


# --- lifecycle ----------------------------------------------------------------------------------

def test_create_refuses_bad_definitions_and_leaves_nothing(engine, plugin_dir):
    with pytest.raises(TriggerSpecError, match="failed to parse trigger from tabel:cpu"):
        engine.create_trigger("db", "t", "copy.py", "tabel:cpu")
    with pytest.raises(DatabaseNotFound, match="nodb"):
        engine.create_trigger("nodb", "t", "copy.py", "table:cpu")
    with pytest.raises(PluginFileError, match="not found"):
        engine.create_trigger("db", "t", "missing.py", "table:cpu")
    with pytest.raises(PluginFileError, match="Path traversal detected"):
        engine.create_trigger("db", "t", "../copy.py", "table:cpu")
    with pytest.raises(PluginFileError, match=r"syntax_error.py:1"):
        engine.create_trigger("db", "t", "syntax_error.py", "table:cpu")
    with pytest.raises(InvalidTrigger, match="no firing left"):
        engine.create_trigger("db", "t", "ticker.py", "cron:0 0 0 1 1 * 2020")
    assert engine.list_triggers() == []
    engine.create_trigger("db", "t", "copy.py", "table:cpu")
    with pytest.raises(TriggerExists):
        engine.create_trigger("db", "t", "copy.py", "table:cpu")
    engine.create_trigger("db", "serves", "echo.py", "request:shared/path")
    with pytest.raises(RequestPathTaken, match="already served by trigger 'serves'"):
        engine.create_trigger("other", "serves_too", "echo.py", "request:shared/path")
    assert [d.trigger_name for d in engine.list_triggers()] == ["t", "serves"]


def test_a_disabled_trigger_is_created_without_loading_and_can_be_deleted(engine, db):
    engine.create_trigger("db", "off", "copy.py", "table:offtable", disabled=True)
    db.write_lp("db", "offtable v=1 1")
    db.flush()
    time.sleep(0.1)
    assert texts(engine, "off") == []
    engine.delete_trigger("db", "off")
    with pytest.raises(TriggerNotFound):
        engine.delete_trigger("db", "off")


def test_enable_disable_delete(engine, db):
    engine.create_trigger("db", "life", "copy.py", "table:lifetable")
    with pytest.raises(TriggerRunning, match="Cannot delete running plugin life. Disable it first or use --force."):
        engine.delete_trigger("db", "life")
    engine.disable_trigger("db", "life")
    engine.disable_trigger("db", "life")  # idempotent
    db.write_lp("db", "lifetable v=1 1")
    db.flush()
    time.sleep(0.1)
    assert "starting execution of wal plugin." not in texts(engine, "life")
    engine.enable_trigger("db", "life")
    engine.enable_trigger("db", "life")
    db.write_lp("db", "lifetable v=2 1")
    db.flush()
    wait_for(lambda: "starting execution of wal plugin." in texts(engine, "life"))
    engine.delete_trigger("db", "life", force=True)
    assert engine.list_triggers() == []


def test_restart_resumes_enabled_triggers(engine_factory, db):
    first = engine_factory()
    first.create_trigger("db", "resumes", "copy.py", "table:resumetable", arguments={"a": "b=c"})
    first.create_trigger("db", "stays_off", "copy.py", "table:resumetable", disabled=True)
    first.close()
    second = engine_factory()
    before = len(db.writes)
    db.write_lp("db", "resumetable v=4 1")
    db.flush()
    wait_for(lambda: written(db, before, "out"))
    assert texts(second, "stays_off") == []
    assert second.arguments_table("db").to_pylist() == [
        {"trigger_name": "resumes", "argument_key": "a", "argument_value": "b=c"}]


# --- schedules, requests ------------------------------------------------------------------------

def test_every_trigger_fires_on_aligned_ticks_with_call_time_the_tick(engine):
    engine.create_trigger("db", "ticker", "ticker.py", "every:1s")
    wait_for(lambda: [t for t in texts(engine, "ticker") if t.startswith("tick")][1:], timeout=5)
    starts = [t for t in texts(engine, "ticker") if t.startswith("starting execution with scheduled time ")]
    ticks = [t.split()[1] for t in texts(engine, "ticker") if t.startswith("tick")]
    assert starts[0].endswith(" UTC") and "." not in starts[0]
    first, second = (time.mktime(time.strptime(t, "%Y-%m-%dT%H:%M:%S")) for t in ticks[:2])
    assert second - first == 1.0


def test_failing_schedule_logs_with_its_context(engine):
    engine.create_trigger("db", "bad_ticker", "failing.py", "every:1s")
    wait_for(lambda: any(l[0] == "ERROR" for l in logs(engine, "bad_ticker")), timeout=5)
    assert "error executing schedule plugin: ValueError: bad tick" in texts(engine, "bad_ticker")


def test_request_triggers_answer_and_unknown_paths_are_404(engine):
    engine.create_trigger("db", "echo", "echo.py", "request:echo")
    response = engine.handle_request("echo", "POST", {"a": "1"}, {"user-agent": "t", "authorization": "x"}, b"hi")
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/json"
    assert json.loads(response.body) == {"query": {"a": "1"}, "agent": "t", "has_auth": False, "body": "hi"}
    missing = engine.handle_request("nope", "GET", {}, {}, b"")
    assert (missing.status, missing.body) == (404, b'{error: "not found"}')


def test_a_raising_request_plugin_answers_500_with_the_error(engine):
    engine.create_trigger("db", "raises", "raises_request.py", "request:raises")
    response = engine.handle_request("raises", "GET", {}, {}, b"")
    assert response.status == 500
    assert b"KeyError" in response.body
    assert any(t.startswith("error running request plugin: KeyError") for t in texts(engine, "raises"))


# --- dry runs -----------------------------------------------------------------------------------

def test_wal_dry_run_reports_and_stores_nothing(engine, db):
    before = len(db.writes)
    report = engine.test_wal("copy.py", "db", "cpu,host=a v=1.5 100\nmem v=2 200", None, None)
    assert report["errors"] == []
    assert report["log_lines"][0] == "INFO: starting execution of wal plugin."
    assert sorted(l for l in report["log_lines"] if "saw" in l) == ["INFO: saw cpu 1", "INFO: saw mem 1"]
    assert report["log_lines"][-1].startswith("INFO: finished execution in ")
    assert sorted(report["database_writes"]["db"]) == ["out,src=cpu v=1.5", "out,src=mem v=2.0"]
    assert db.writes[before:] == []


def test_wal_dry_run_reports_bad_input_and_plugin_errors(engine):
    assert engine.test_wal("copy.py", "db", "not line protocol", None, None)["errors"][0].startswith("error parsing line 1")
    report = engine.test_wal("failing.py", "db", "cpu v=1 1", None, None)
    assert report["errors"] == ["ValueError: bad batch"]
    with pytest.raises(PluginFileError):
        engine.test_wal("missing.py", "db", "cpu v=1 1", None, None)


def test_schedule_dry_run_reports_the_trigger_time(engine):
    report = engine.test_schedule("ticker.py", "db", "0 0 * * * *", None, None)
    assert report["errors"] == []
    assert report["trigger_time"].endswith(":00:00Z")
    assert report["log_lines"][0].startswith("INFO: starting execution with scheduled time ")
    assert report["log_lines"][1].startswith("INFO: tick ")
    assert engine.test_schedule("ticker.py", "nodb", None, None, None)["errors"][0].startswith("couldn't find db")
    assert engine.test_schedule("ticker.py", "db", "bogus", None, None)["errors"][0].startswith("invalid cron syntax")


def test_stopping_a_trigger_does_not_wait_forever_for_a_stuck_run(engine, db):
    # Longer than the stop grace period, short enough not to hold up the runtime's own shutdown.
    engine.create_trigger("db", "stuck", "slow.py", "table:stucktable", arguments={"seconds": "4"})
    db.write_lp("db", "stucktable v=1 1")
    db.flush()
    wait_for(lambda: "starting execution of wal plugin." in texts(engine, "stuck"))
    started = time.monotonic()
    engine.disable_trigger("db", "stuck")
    assert time.monotonic() - started < 3.5
    assert any("abandoned" in t or "ended by stopping" in t for t in texts(engine, "stuck"))
