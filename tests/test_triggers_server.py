"""Triggers end to end through a real `plughost serve`: HTTP API, CLI, storage, restarts.

Every test waits on conditions with deadlines (data shows up after a WAL flush, 10 ms here).
"""

from __future__ import annotations

import contextlib
import io
import json
import textwrap
import threading
import time

import httpx
import pytest

from conftest import wait_until
from host.cli import build_parser
from host.cli import register as register_host_nouns
from triggers.cli import register as register_trigger_nouns

TRIGGER = "/api/v3/configure/processing_engine_trigger"
SETTINGS = {"run_async": False, "error_behavior": "log"}

PLUGINS = {
    "copy.py": """
        def process_writes(influxdb3_local, table_batches, args=None):
            for batch in table_batches:
                for row in batch["rows"]:
                    influxdb3_local.write(LineBuilder(args["to"]).tag("src", batch["table_name"]).float64_field("v", row["v"]))
    """,
    "stamp.py": """
        from datetime import timezone
        def process_scheduled_call(influxdb3_local, call_time, args=None):
            influxdb3_local.write(LineBuilder(args["to"]).int64_field("call_time", int(call_time.replace(tzinfo=timezone.utc).timestamp())))
    """,
    "flask.py": """
        def process_request(influxdb3_local, query_parameters, request_headers, request_body, args=None):
            shape = query_parameters.get("shape")
            if shape == "tuple":
                return "created", 201, {"X-Plugin": "yes"}
            if shape == "text":
                return "<b>hi</b>"
            if shape == "raise":
                raise ValueError("asked to fail")
            return {"params": query_parameters, "auth_seen": "authorization" in request_headers,
                    "body": request_body.decode()}
    """,
    "failing.py": """
        def process_writes(influxdb3_local, table_batches, args=None):
            raise RuntimeError("plugin exploded")
    """,
    "slow.py": """
        import time
        def process_writes(influxdb3_local, table_batches, args=None):
            time.sleep(float(args["seconds"]))
    """,
    "caller.py": """
        import json, urllib.request
        def process_writes(influxdb3_local, table_batches, args=None):
            request = urllib.request.Request(args["url"], data=b"ping", method="POST",
                                             headers={"Authorization": "Bearer " + args["token"]})
            with urllib.request.urlopen(request, timeout=20) as response:
                answer = json.loads(response.read())
            influxdb3_local.write_sync(LineBuilder("answers").string_field("pong", answer["pong"]), no_sync=False)
            influxdb3_local.write(LineBuilder("answers_queued").int64_field("n", 1))
    """,
    "pong.py": """
        def process_request(influxdb3_local, query_parameters, request_headers, request_body, args=None):
            return {"pong": request_body.decode() + "-pong"}
    """,
    "describe.py": """
        def process_writes(influxdb3_local, table_batches, args=None):
            for batch in table_batches:
                influxdb3_local.info("table", batch["table_name"], len(batch["rows"]))
            influxdb3_local.write_to_db("elsewhere", LineBuilder("derived").int64_field("n", 1))
            influxdb3_local.write_sync(LineBuilder("synced").int64_field("n", 2), no_sync=True)

        def process_scheduled_call(influxdb3_local, call_time, args=None):
            influxdb3_local.info("scheduled", call_time.isoformat(), args)
            influxdb3_local.write(LineBuilder("tick").int64_field("n", 1))
    """,
}


def install_plugins(server) -> None:
    server.plugin_dir.mkdir(parents=True, exist_ok=True)
    for name, source in PLUGINS.items():
        (server.plugin_dir / name).write_text(textwrap.dedent(source))


@pytest.fixture(scope="module")
def engine_server(server):
    install_plugins(server)
    with server.client() as client:
        probe = client.post("/api/v3/configure/processing_engine_trigger/enable")
    if probe.status_code == 404 and probe.text == "not found":
        pytest.fail("`plughost serve` does not serve the processing engine's routes: wire "
                    "host.plugin_manager.ProcessingEngine and host.api.engine.routes into host/server.py")
    return server


def create(server, db, name, plugin, spec, *, arguments=None, settings=SETTINGS, disabled=False, expect=200):
    with server.client() as client:
        client.post("/api/v3/configure/database", json={"db": db})
        response = client.post(TRIGGER, json={
            "db": db, "plugin_filename": plugin, "trigger_name": name, "trigger_specification": spec,
            "trigger_arguments": arguments, "trigger_settings": settings, "disabled": disabled})
    assert response.status_code == expect, response.text
    return response


def rows(server, db, sql):
    response = server.query(db, sql)
    return response.json() if response.status_code == 200 else None


def log_texts(server, trigger):
    found = rows(server, "_internal", "SELECT log_level, log_text FROM system.processing_engine_logs "
                                      f"WHERE trigger_name = '{trigger}' ORDER BY event_time")
    return [(r["log_level"], r["log_text"]) for r in found or []]


def trigger_row(server, db, name):
    found = rows(server, db, f"SELECT * FROM system.processing_engine_triggers WHERE trigger_name = '{name}'")
    return found[0] if found else None


# --- creating and running ------------------------------------------------------------------------

def test_a_writes_trigger_created_over_http_copies_rows(engine_server):
    server = engine_server
    create(server, "copydb", "copier", "copy.py", "table:cpu", arguments={"to": "out"})
    assert server.write("copydb", "cpu,host=a v=1.5\nmem v=3").status_code == 204
    found = server.rows_when("copydb", "SELECT src, v FROM out", lambda r: len(r) == 1)
    assert found == [{"src": "cpu", "v": 1.5}]
    row = trigger_row(server, "copydb", "copier")
    assert {k: row[k] for k in ("plugin_filename", "trigger_specification", "disabled", "error_behavior",
                                "database_name", "run_async", "dropped_events")} == {
        "plugin_filename": "copy.py", "trigger_specification": '{"single_table_wal_write":{"table_name":"cpu"}}',
        "disabled": False, "error_behavior": "log", "database_name": "copydb", "run_async": False,
        "dropped_events": 0}
    assert rows(server, "copydb", "SELECT * FROM system.processing_engine_trigger_arguments") == [
        {"trigger_name": "copier", "argument_key": "to", "argument_value": "out"}]
    texts = [t for _, t in log_texts(server, "copier")]
    assert texts[0] == "starting execution of wal plugin." and texts[1].startswith("finished execution in ")


def test_refusals_say_what_is_wrong(engine_server):
    server = engine_server
    create(server, "refusedb", "taken", "copy.py", "table:cpu", arguments={"to": "o"})
    body = {"db": "refusedb", "plugin_filename": "copy.py", "trigger_name": "t", "trigger_specification": "table:x",
            "trigger_settings": SETTINGS, "disabled": False}
    cases = [
        ({k: v for k, v in body.items() if k != "trigger_settings"}, 400, "trigger_settings"),
        ({**body, "trigger_settings": {"run_async": False}}, 400, "error_behavior"),
        ({**body, "trigger_settings": {**SETTINGS, "priority": 1}}, 400, "priority"),
        ({**body, "trigger_settings": {**SETTINGS, "max_memory": "lots"}}, 400, "max_memory"),
        ({**body, "trigger_specification": "cron:0 6 * *"}, 400, "failed to parse trigger from cron:0 6 * *"),
        ({**body, "plugin_filename": "nope.py"}, 400, "not found"),
        ({**body, "plugin_filename": "../copy.py"}, 400, "Path traversal detected"),
        ({**body, "db": "missingdb"}, 404, "missingdb"),
        ({**body, "trigger_name": "taken"}, 409, "already exists"),
    ]
    with server.client() as client:
        for request, status, fragment in cases:
            response = client.post(TRIGGER, json=request)
            assert (response.status_code, fragment in response.text) == (status, True), (request, response.text)
        assert client.post(TRIGGER, content=json.dumps(body), headers={"Content-Type": "text/plain"}).status_code == 415
        running = client.request("DELETE", TRIGGER, json={"db": "refusedb", "trigger_name": "taken"})
        assert (running.status_code, running.text) == (
            409, "Cannot delete running plugin taken. Disable it first or use --force.")
        unknown = client.post(f"{TRIGGER}/enable", params={"db": "refusedb", "trigger_name": "ghost"})
        assert unknown.status_code == 404
        assert client.post(f"{TRIGGER}/enable", params={"db": "refusedb"}).status_code == 400
    assert [r["trigger_name"] for r in rows(server, "refusedb", "SELECT trigger_name FROM "
                                                               "system.processing_engine_triggers")] == ["taken"]


def test_create_and_delete_accept_the_query_string_form(engine_server):
    server = engine_server
    with server.client() as client:
        client.post("/api/v3/configure/database", json={"db": "querydb"})
        created = client.post(TRIGGER, params={
            "db": "querydb", "plugin_filename": "copy.py", "trigger_name": "by_query", "trigger_specification": "all_tables",
            "trigger_settings": json.dumps(SETTINGS), "trigger_arguments": json.dumps({"to": "o"}), "disabled": "true"})
        assert created.status_code == 200, created.text
        assert trigger_row(server, "querydb", "by_query")["disabled"] is True
        deleted = client.request("DELETE", TRIGGER, params={"db": "querydb", "trigger_name": "by_query"})
        assert deleted.status_code == 200, deleted.text


def test_limit_settings_are_accepted_and_stored(engine_server):
    create(engine_server, "limitdb", "limited", "copy.py", "table:cpu", arguments={"to": "o"},
           settings={**SETTINGS, "max_run_time": "30s", "max_cpu_time": 5, "max_memory": "256MiB",
                     "isolation": "interpreter"})
    assert trigger_row(engine_server, "limitdb", "limited")["mode"] == "interpreter"


def test_request_triggers_answer_flask_style(engine_server):
    server = engine_server
    create(server, "reqdb", "flask", "flask.py", "request:shapes/flask")
    with server.client() as client:
        plain = client.post("/api/v3/engine/shapes/flask", params={"a": "1", "b": "x y"}, content=b"payload")
        assert plain.status_code == 200 and plain.headers["content-type"] == "application/json"
        assert plain.json() == {"params": {"a": "1", "b": "x y"}, "auth_seen": False, "body": "payload"}
        made = client.get("/api/v3/engine/shapes/flask", params={"shape": "tuple"})
        assert (made.status_code, made.text, made.headers["x-plugin"]) == (201, "created", "yes")
        text = client.get("/api/v3/engine/shapes/flask", params={"shape": "text"})
        assert (text.text, text.headers["content-type"].split(";")[0]) == ("<b>hi</b>", "text/html")
        failed = client.get("/api/v3/engine/shapes/flask", params={"shape": "raise"})
        assert failed.status_code == 500 and "asked to fail" in failed.json()["error"]
        missing = client.get("/api/v3/engine/no/such/path")
        assert (missing.status_code, missing.text) == (404, '{error: "not found"}')
    assert httpx.get(f"{server.base_url}/api/v3/engine/shapes/flask").status_code == 401


def test_a_schedule_trigger_fires_with_call_time_on_the_aligned_tick(engine_server):
    server = engine_server
    create(server, "scheddb", "stamper", "stamp.py", "every:1s", arguments={"to": "ticks"})
    found = server.rows_when("scheddb", "SELECT call_time, CAST(time AS BIGINT) AS written FROM ticks ORDER BY time",
                             lambda r: len(r) >= 2, timeout=15)
    assert found[1]["call_time"] - found[0]["call_time"] == 1
    # The queued row is written just after the run, which starts just after its tick.
    assert all(0 <= row["written"] - row["call_time"] * 10**9 < 10**9 for row in found)
    starts = [t for _, t in log_texts(server, "stamper") if t.startswith("starting execution with scheduled time")]
    assert starts[0].endswith(" UTC")
    with server.client() as client:
        client.post(f"{TRIGGER}/disable", params={"db": "scheddb", "trigger_name": "stamper"})


def test_error_behaviors(engine_server):
    server = engine_server
    create(server, "errdb", "logs_it", "failing.py", "table:a")
    create(server, "errdb", "retries", "failing.py", "table:b", settings={**SETTINGS, "error_behavior": "retry"})
    create(server, "errdb", "disables", "failing.py", "table:c", settings={**SETTINGS, "error_behavior": "disable"})
    server.write("errdb", "a v=1\nb v=1\nc v=1")
    wait_until(lambda: any("giving up" in t for _, t in log_texts(server, "retries")), timeout=15,
               message="retry to give up")
    assert [t for level, t in log_texts(server, "logs_it") if level == "ERROR"] == [
        "error executing wal plugin: RuntimeError: plugin exploded"]
    assert [t for _, t in log_texts(server, "retries")].count("starting execution of wal plugin.") == 4
    wait_until(lambda: trigger_row(server, "errdb", "disables")["disabled"], message="the trigger to disable itself")
    runs = rows(server, "errdb", "SELECT trigger_name, outcome, error FROM system.processing_engine_runs "
                                 "WHERE trigger_name = 'logs_it'")
    assert runs == [{"trigger_name": "logs_it", "outcome": "error", "error": "RuntimeError: plugin exploded"}]


def test_enable_disable_delete_over_http(engine_server):
    server = engine_server
    create(server, "lifedb", "life", "copy.py", "table:cpu", arguments={"to": "out"})
    with server.client() as client:
        params = {"db": "lifedb", "trigger_name": "life"}
        assert client.post(f"{TRIGGER}/disable", params=params).status_code == 200
        assert client.post(f"{TRIGGER}/disable", params=params).status_code == 200
        server.write("lifedb", "cpu v=1")
        server.rows_when("lifedb", "SELECT count(*) AS n FROM cpu", lambda r: r[0]["n"] == 1)
        assert trigger_row(server, "lifedb", "life")["disabled"] is True
        assert client.post(f"{TRIGGER}/enable", params=params).status_code == 200
        server.write("lifedb", "cpu v=2")
        assert server.rows_when("lifedb", "SELECT v FROM out", lambda r: len(r) == 1) == [{"v": 2.0}]
        assert client.request("DELETE", TRIGGER, params={**params, "force": "true"}).status_code == 200
        assert trigger_row(server, "lifedb", "life") is None


def test_deleting_a_database_stops_and_deletes_its_triggers(engine_server):
    server = engine_server
    create(server, "gonedb", "gone", "copy.py", "table:cpu", arguments={"to": "out"})
    create(server, "keptdb", "kept", "copy.py", "table:cpu", arguments={"to": "out"})
    with server.client() as client:
        assert client.request("DELETE", "/api/v3/configure/database", params={"db": "gonedb"}).status_code == 200
    assert trigger_row(server, "keptdb", "gone") is None
    assert trigger_row(server, "keptdb", "kept") is not None
    server.write("keptdb", "cpu v=7")
    assert server.rows_when("keptdb", "SELECT v FROM out", lambda r: len(r) == 1) == [{"v": 7.0}]
    # a new database of the same name starts without the old trigger
    server.write("gonedb", "cpu v=1")
    server.rows_when("gonedb", "SELECT count(*) AS n FROM cpu", lambda r: r[0]["n"] == 1)
    assert rows(server, "gonedb", "SELECT count(*) AS n FROM information_schema.tables WHERE table_name = 'out'") == [{"n": 0}]


def test_dry_runs_report_and_store_nothing(engine_server):
    server = engine_server
    with server.client() as client:
        client.post("/api/v3/configure/database", json={"db": "drydb"})
        wal = client.post("/api/v3/plugin_test/wal", json={
            "filename": "describe.py", "database": "drydb", "input_lp": "cpu,host=a v=1 10\ncpu v=2 20"}).json()
        schedule = client.post("/api/v3/plugin_test/schedule", json={
            "filename": "describe.py", "database": "drydb", "schedule": "0 0 * * * *",
            "input_arguments": {"k": "v"}}).json()
        missing = client.post("/api/v3/plugin_test/wal", json={
            "filename": "absent.py", "database": "drydb", "input_lp": "cpu v=1"})
    assert wal["errors"] == [] and "INFO: table cpu 2" in wal["log_lines"]
    assert wal["database_writes"] == {"elsewhere": ["derived n=1i"], "drydb": ["synced n=2i"]}
    assert schedule["trigger_time"].endswith(":00:00Z") and schedule["errors"] == []
    assert schedule["database_writes"] == {"drydb": ["tick n=1i"]}
    assert missing.status_code == 400
    time.sleep(0.1)  # several flush intervals: anything written would be visible now
    assert server.query("drydb", "SELECT * FROM cpu").status_code != 200
    assert server.query("elsewhere", "SELECT * FROM derived").status_code != 200


def test_a_writes_trigger_can_call_a_request_trigger_and_write_sync(engine_server):
    server = engine_server
    create(server, "calldb", "pong", "pong.py", "request:pong")
    create(server, "calldb", "caller", "caller.py", "table:ping",
           arguments={"url": f"{server.base_url}/api/v3/engine/pong", "token": server.token})
    server.write("calldb", "ping v=1")
    assert server.rows_when("calldb", "SELECT pong FROM answers", lambda r: len(r) == 1, timeout=20) == [
        {"pong": "ping-pong"}]
    server.rows_when("calldb", "SELECT n FROM answers_queued", lambda r: len(r) == 1)


def test_a_slow_plugin_does_not_slow_ingest_or_other_triggers(engine_server):
    server = engine_server
    create(server, "slowdb", "sleeper", "slow.py", "table:slow", arguments={"seconds": "3"})
    create(server, "slowdb", "quick", "copy.py", "table:fast", arguments={"to": "copied"})
    latencies = []
    with server.client() as client:
        for i in range(90):
            started = time.perf_counter()
            assert client.post("/api/v3/write_lp", params={"db": "slowdb"}, content=f"slow v={i}").status_code == 204
            latencies.append(time.perf_counter() - started)
            time.sleep(0.015)  # each write lands in its own 10 ms flush
        client.post("/api/v3/write_lp", params={"db": "slowdb"}, content="fast v=1")
    server.rows_when("slowdb", "SELECT v FROM copied", lambda r: len(r) == 1, timeout=5)
    assert max(latencies) < 1.0, f"slowest write took {max(latencies):.3f}s"
    assert wait_until(lambda: trigger_row(server, "slowdb", "sleeper")["dropped_events"] > 0)
    assert any("dropped WAL flush" in t for level, t in log_texts(server, "sleeper") if level == "WARN")


# --- restarts ------------------------------------------------------------------------------------

def test_restart_resumes_triggers_and_keeps_disabled_ones_off(start_server):
    server = start_server()
    install_plugins(server)
    create(server, "restartdb", "copier", "copy.py", "table:cpu", arguments={"to": "out"})
    create(server, "restartdb", "stamper", "stamp.py", "every:1s", arguments={"to": "ticks"})
    create(server, "restartdb", "disables", "failing.py", "table:boom", settings={**SETTINGS, "error_behavior": "disable"})
    server.write("restartdb", "boom v=1")
    wait_until(lambda: trigger_row(server, "restartdb", "disables")["disabled"], message="the error to disable it")
    server.rows_when("restartdb", "SELECT * FROM ticks", lambda r: len(r) >= 1, timeout=10)

    server.restart()
    restarted_at = time.time()
    assert trigger_row(server, "restartdb", "disables")["disabled"] is True
    server.write("restartdb", "cpu v=7\nboom v=2")
    server.rows_when("restartdb", "SELECT v FROM out", lambda r: [row["v"] for row in r] == [7.0])
    server.rows_when("restartdb", "SELECT call_time FROM ticks",
                     lambda r: any(row["call_time"] > restarted_at for row in r), timeout=10)
    assert not any(t == "starting execution of wal plugin." for _, t in log_texts(server, "disables"))


# --- CLI -----------------------------------------------------------------------------------------

def cli(server, *argv) -> tuple[int, str]:
    """Run `plughost ARGV` in-process (host's and the triggers' nouns) against `server`."""
    args = build_parser([register_host_nouns, register_trigger_nouns]).parse_args(
        [*argv, "--host", server.base_url, "--token", server.token])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = args.handler(args)
    return code, out.getvalue()


def test_the_cli_manages_and_tests_triggers(engine_server):
    server = engine_server
    with server.client() as client:
        client.post("/api/v3/configure/database", json={"db": "clidb"})
    assert cli(server, "create", "trigger", "--database", "clidb", "--path", "copy.py", "--trigger-spec", "table:cpu",
               "--trigger-arguments", "to=viacli,unused=a=b", "--error-behavior", "retry", "cli_copier") == (
        0, "Trigger cli_copier created successfully\n")
    server.write("clidb", "cpu v=4")
    server.rows_when("clidb", "SELECT v FROM viacli", lambda r: len(r) == 1)
    code, listing = cli(server, "show", "triggers", "--database", "clidb", "--format", "json")
    assert code == 0
    shown = json.loads(listing)
    assert [(r["trigger_name"], r["error_behavior"]) for r in shown] == [("cli_copier", "retry")]
    assert rows(server, "clidb", "SELECT argument_value FROM system.processing_engine_trigger_arguments "
                                 "WHERE argument_key = 'unused'") == [{"argument_value": "a=b"}]
    assert cli(server, "disable", "trigger", "--database", "clidb", "cli_copier")[0] == 0
    assert trigger_row(server, "clidb", "cli_copier")["disabled"] is True
    assert cli(server, "enable", "trigger", "--database", "clidb", "cli_copier")[0] == 0
    assert cli(server, "delete", "trigger", "--database", "clidb", "--force", "cli_copier") == (
        0, "Trigger cli_copier deleted successfully\n")
    code, report = cli(server, "test", "wal_plugin", "--database", "clidb", "--lp", "cpu v=1 1", "describe.py")
    assert code == 0 and "INFO: table cpu 1" in json.loads(report)["log_lines"]
    code, report = cli(server, "test", "schedule_plugin", "--database", "clidb", "--schedule", "0 0 * * * *",
                       "--input-arguments", "a=1", "describe.py")
    assert code == 0 and json.loads(report)["trigger_time"].endswith(":00:00Z")


def test_the_cli_checks_the_spec_before_sending(engine_server, capsys):
    with pytest.raises(SystemExit):
        build_parser([register_host_nouns, register_trigger_nouns]).parse_args(
            ["create", "trigger", "--database", "x", "--path", "p.py", "--trigger-spec", "every:5x", "t"])
    assert "failed to parse trigger from every:5x: couldn't parse to duration" in capsys.readouterr().err


def test_concurrent_requests_to_a_request_trigger_all_get_answers(engine_server):
    server = engine_server
    create(server, "concdb", "pong", "pong.py", "request:conc/pong")
    answers = []

    def call(i):
        with server.client() as client:
            answers.append(client.post("/api/v3/engine/conc/pong", content=str(i).encode()).json()["pong"])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(answers) == sorted(f"{i}-pong" for i in range(10))
