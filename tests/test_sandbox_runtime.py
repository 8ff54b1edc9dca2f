"""The plugin runtime end to end: real worker processes, real subinterpreters, real Arrow flushes.

The database is `tests.inmemory_db.InMemoryDatabase`, so these tests double as the proof that the
engine embeds in any server that implements `host.interface.Database`.
"""

from __future__ import annotations

import json
import shutil
import sys
from datetime import datetime
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from inmemory_db import InMemoryDatabase  # noqa: E402

from sandbox.runtime import PluginLoadError, PluginRuntime, PluginSpec  # noqa: E402

PLUGINS = Path(__file__).resolve().parent / "plugins"
CALL_TIME = datetime(2024, 5, 6, 7, 8, 9)


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
    target = tmp_path_factory.mktemp("plugins")
    shutil.copytree(PLUGINS, target, dirs_exist_ok=True)
    return target


@pytest.fixture(scope="module")
def db():
    database = InMemoryDatabase()
    database.write_lp("db", "cpu,host=a,region=eu usage=1.5,count=3i,ok=true,note=\"x\" 1000\n"
                            "cpu,host=b usage=2.5 2000\nmem,host=a free=10u 3000")
    database.flush()
    return database


@pytest.fixture(scope="module")
def runtime(db, plugin_dir, tmp_path_factory):
    with PluginRuntime(db, plugin_dir, tmp_path_factory.mktemp("run"), workers=2) as rt:
        yield rt


@pytest.fixture
def load(runtime):
    handles = []

    def _load(filename, kind="schedule", **options):
        handle = runtime.load(PluginSpec(trigger_name=f"t{len(handles)}-{filename}", database="db",
                                         plugin_filename=filename, kind=kind, **options))
        handles.append(handle)
        return handle

    yield _load
    for handle in handles:
        handle.close()


def texts(result):
    return [line.text for line in result.logs]


def flush_of(db, runtime, lines):
    db.write_lp("db", lines)
    return runtime.share(db.flush())


# -- entry points ---------------------------------------------------------------------------------


def test_process_writes_gets_influxdb3_shaped_batches_and_fresh_inputs(db, runtime, load):
    handle = load("entry_points.py", kind="writes")
    flush = flush_of(db, runtime, "cpu,host=c usage=9.5 5000\nmem,host=z free=1u 6000\ncpu,host=d,region=us count=4i 7000")
    try:
        args = {"k": "v=w"}
        first = handle.run_writes(flush, None, args)
        second = handle.run_writes(flush, "cpu", args)
        none_args = handle.run_writes(flush, "nosuch", None)
    finally:
        flush.release()
    assert first.ok, first.traceback
    assert args == {"k": "v=w"}, "the caller's args must not be mutated through the plugin"
    assert texts(first)[0] == "args dict:{'k': 'v=w'}"
    batches = json.loads(texts(first)[1].removeprefix("batches "))
    assert [b["table_name"] for b in batches] == ["cpu", "mem"]
    assert texts(first)[2] == "deepcopy True ['dict', 'dict']", "copies of batches are plain dicts"
    cpu_rows = batches[0]["rows"]
    # every schema column in every row, None where the line did not write it, time as int ns
    assert cpu_rows == [
        {"host": "c", "region": None, "count": None, "note": None, "ok": None, "usage": 9.5, "time": 5000},
        {"host": "d", "region": "us", "count": 4, "note": None, "ok": None, "usage": None, "time": 7000},
    ]
    assert batches[1]["rows"] == [{"host": "z", "free": 1, "time": 6000}]
    assert texts(first)[3:] == ["after-mutation 3 True", "after-mutation 2 True"]
    assert second.ok and texts(second)[0] == "args dict:{'k': 'v=w'}", "args are fresh on every call"
    second_batches = json.loads(texts(second)[1].removeprefix("batches "))
    assert [b["table_name"] for b in second_batches] == ["cpu"]
    assert "mutated" not in second_batches[0]["rows"][0], "rows are fresh on every call"
    assert none_args.ok and texts(none_args) == ["args NoneType:None", "batches []", "deepcopy True []"]


def test_process_scheduled_call_gets_naive_whole_second_datetime(load):
    handle = load("entry_points.py")
    result = handle.run_schedule(datetime(2024, 5, 6, 7, 8, 9, 654321), {"a": "1"})
    assert result.ok, result.traceback
    assert texts(result) == [
        "call_time datetime:datetime.datetime(2024, 5, 6, 7, 8, 9) None 0",
        "args dict:{'a': '1'}",
    ]
    assert result.mode == "interpreter" and result.wall_time >= result.cpu_time >= 0
    odd = handle.run_schedule(CALL_TIME, {"undecodable": ""})
    assert odd.ok and texts(odd)[1] == "caf?", "a lone surrogate in a log line is replaced, not fatal"


def test_process_request_gets_params_lowercased_headers_and_bytes(load):
    handle = load("entry_points.py", kind="request")
    result = handle.run_request({"q": "1"}, {"X-Token": "abc", "Authorization": "Bearer secret"}, b"payload", None)
    assert result.ok, result.traceback
    assert result.response.status == 200
    assert result.response.headers == {"Content-Type": "application/json"}
    assert json.loads(result.response.body) == {
        "query": {"q": "1"}, "headers": {"x-token": "abc"}, "body_type": "bytes", "body": "payload", "args": None,
    }


def test_missing_entry_point_reports_influxdb3_text(load):
    writes = load("sms-alert.py", kind="writes").run_schedule(CALL_TIME, None)
    assert writes.ok, "a file may define only the entry point its trigger kind uses"
    result = load("sms-alert.py", kind="request").run_request({}, {}, b"", None)
    assert not result.ok
    assert result.error == (
        "the process_request function is not present in the plugin. Should be defined as: "
        "process_request(influxdb3_local, query_parameters, request_headers, request_body, args=None) "
        "-> Tuple[str, Optional[Dict[str, str]]]"
    )
    assert result.response.status == 500 and json.loads(result.response.body) == {"error": result.error}


def test_odd_file_names_and_packages_load(load):
    assert texts(load("import.py").run_schedule(CALL_TIME, None)) == ["import.py ran plugin_import"]
    assert texts(load("sms-alert.py").run_schedule(CALL_TIME, None)) == ["sms-alert.py ran"]
    assert texts(load("multifile").run_schedule(CALL_TIME, None)) == ["hello from a package multifile"]


# -- request responses ----------------------------------------------------------------------------

FLASK_CASES = {
    "str": (200, {"Content-Type": "text/html"}, "<p>hi</p>"),
    "dict": (200, {"Content-Type": "application/json"}, '{"b": 1, "a": [1, 2]}'),
    "list": (200, {"Content-Type": "application/json"}, '[1, "x"]'),
    "tuple_body": (200, {"Content-Type": "text/html"}, "only body"),
    "tuple_status": (404, {"Content-Type": "application/json"}, '{"error": "nope"}'),
    "tuple_headers": (200, {"Content-Type": "text/html", "X-A": "1"}, "text"),
    "tuple_status_headers": (202, {"Content-Type": "text/csv", "X-B": "2"}, "text"),
    "tuple_bad_status": (500, {"Content-Type": "text/html"}, "text"),
    "tuple_other_body": (200, {"Content-Type": "text/plain"}, "12.5"),
    "flask": (201, {"X-Kind": "flask"}, "from flask-like"),
    "generator": (200, {"Content-Type": "text/html"}, "abc"),
    "long_tuple": (200, {"Content-Type": "text/html"}, "abcd"),
    "bytes": (200, {"Content-Type": "text/html"}, ""),
}


def test_flask_style_responses_follow_each_rule(load):
    handle = load("flask_responses.py", kind="request")
    for case, (status, headers, body) in FLASK_CASES.items():
        result = handle.run_request({"case": case}, {}, b"", None)
        assert result.ok, (case, result.error)
        assert (result.response.status, result.response.headers, result.response.body.decode()) == (status, headers, body), case
    for case, error in [("tuple_third_not_dict", "UnsupportedResponse: expected a dictionary in header item"),
                        ("none", "UnsupportedResponse: Unsupported return type from Python function"),
                        ("int", "UnsupportedResponse: Unsupported return type from Python function"),
                        ("raise", "ZeroDivisionError: division by zero")]:
        result = handle.run_request({"case": case}, {}, b"", None)
        assert not result.ok and result.error == error, case
        assert result.response.status == 500
        assert json.loads(result.response.body) == {"error": error}


# -- query ----------------------------------------------------------------------------------------


def test_query_converts_like_influxdb3(load):
    handle = load("queries.py")
    result = handle.run_schedule(CALL_TIME, {"sql": "SELECT host, region, usage, count, ok, note, time FROM cpu ORDER BY time LIMIT 2"})
    assert result.ok, result.traceback
    rows, types = texts(result)
    assert rows == repr([
        {"host": "a", "region": "eu", "usage": 1.5, "count": 3, "ok": True, "note": "x", "time": 1000},
        {"host": "b", "region": None, "usage": 2.5, "count": None, "ok": None, "note": None, "time": 2000},
    ])
    assert types == repr([
        {"host": "str", "region": "str", "usage": "float", "count": "int", "ok": "bool", "note": "str", "time": "int"},
        {"host": "str", "region": "NoneType", "usage": "float", "count": "NoneType", "ok": "NoneType", "note": "NoneType", "time": "int"},
    ])
    params = handle.run_schedule(CALL_TIME, {"sql": "SELECT free FROM mem WHERE host = $h", "params": '{"h": "a"}'})
    assert texts(params)[0] == "[{'free': 10}]"
    empty = handle.run_schedule(CALL_TIME, {"sql": "SELECT * FROM cpu WHERE host = 'nobody'"})
    assert texts(empty)[0] == "[]"


def test_query_errors_and_parameter_types(load):
    handle = load("queries.py")
    cases = {
        "SELECT * FROM no_such_table": "QueryError",
        "SELECT CAST(1 AS INT) AS small": "ValueError",
    }
    for sql, error in cases.items():
        result = handle.run_schedule(CALL_TIME, {"sql": sql})
        assert result.ok and result.logs[0].level == "ERROR"
        assert texts(result)[0].split(" ")[0] == error, sql
    assert texts(handle.run_schedule(CALL_TIME, {"sql": "SELECT CAST(1 AS INT) AS small"}))[0] == "ValueError Unsupported data type: Int32"
    wrong_param = handle.run_schedule(CALL_TIME, {"sql": "SELECT 1", "params": '{"n": 5}'})
    assert texts(wrong_param)[0].startswith("TypeError")
    other_db = handle.run_schedule(CALL_TIME, {"sql": "SELECT 1 AS one", "database": "missing_db"})
    assert texts(other_db)[0].startswith("QueryError")


# -- writes ---------------------------------------------------------------------------------------


def test_queued_writes_come_back_in_the_result(load, db):
    handle = load("writes.py")
    result = handle.run_schedule(CALL_TIME, {"mode": "queued"})
    assert result.ok
    assert result.writes == {"db": ["queued n=1i 1000"], "other": ["many,k=a v=1i 1\nmany,k=b v=2i 2"]}
    lost = handle.run_schedule(CALL_TIME, {"mode": "then_raise"})
    assert not lost.ok and lost.writes == {}, "a failing run's queued writes are dropped"


def test_sync_writes_go_through_the_host_during_the_run(load, db):
    handle = load("writes.py")
    before = len(db.writes)
    result = handle.run_schedule(CALL_TIME, {"mode": "both"})
    assert result.ok, result.traceback
    assert result.writes == {"db": ["queued2 ok=t 3"]}
    assert db.writes[before:] == [("syncdb", 's t="x" 4', False)]
    internal = handle.run_schedule(CALL_TIME, {"mode": "internal"})
    assert texts(internal) == ["Exception Python plugins cannot write to the _internal database"] * 2
    bad = handle.run_schedule(CALL_TIME, {"mode": "bad_sync"})
    assert texts(bad)[0].startswith("Exception error writing line protocol to db:")
    assert texts(bad)[1].startswith("TypeError")


def test_dry_run_captures_every_write(load, db):
    handle = load("writes.py", dry_run=True)
    before = len(db.writes)
    result = handle.run_schedule(CALL_TIME, {"mode": "both"})
    assert result.ok
    assert result.writes == {"db": ["queued2 ok=t 3"], "syncdb": ['s t="x" 4']}
    assert len(db.writes) == before, "a dry run persists nothing"


# -- cache ----------------------------------------------------------------------------------------


def test_cache_local_by_reference_global_by_value(load, runtime):
    first = load("cache_user.py")
    first.run_schedule(CALL_TIME, {"step": "put_local"})
    assert texts(first.run_schedule(CALL_TIME, {"step": "get_local"})) == ["local 6 lock dflt"]
    assert texts(first.run_schedule(CALL_TIME, {"step": "get_local"})) == ["local 7 lock dflt"]
    first.run_schedule(CALL_TIME, {"step": "put_global"})
    other = load("cache_user.py")
    assert texts(other.run_schedule(CALL_TIME, {"step": "get_global"})) == ["global {'items': [1, 2]} None"]
    ttl = texts(other.run_schedule(CALL_TIME, {"step": "ttl"}))
    assert ttl[0] == "ttl None v True False"
    assert ttl[1:] == ["ValueError cannot convert float seconds to Duration: value is negative",
                       "ValueError cannot convert float seconds to Duration: value is either too big or NaN"]
    assert texts(other.run_schedule(CALL_TIME, {"step": "unpicklable_global"})) == ["TypeError True"]
    first.close()
    reloaded = load("cache_user.py")
    result = reloaded.run_schedule(CALL_TIME, {"step": "get_local"})
    assert not result.ok and "AttributeError" in result.error, "the local cache dies with its trigger"


def test_dry_run_cache_is_named_and_survives_between_runs(load, runtime):
    writer = load("cache_user.py", dry_run=True, cache_name="suite")
    writer.run_schedule(CALL_TIME, {"step": "put_global"})
    reader = load("cache_user.py", dry_run=True, cache_name="suite")
    assert texts(reader.run_schedule(CALL_TIME, {"step": "get_global"})) == ["global {'items': [1, 2]} None"]
    stranger = load("cache_user.py", dry_run=True, cache_name="other")
    assert texts(stranger.run_schedule(CALL_TIME, {"step": "get_global"})) == ["global None None"]
    assert "test:suite:global" in runtime.global_cache.namespaces()


# -- errors ---------------------------------------------------------------------------------------


def test_plugin_exception_names_the_plugin_file_and_line(load, plugin_dir):
    handle = load("failing.py")
    result = handle.run_schedule(CALL_TIME, None)
    assert not result.ok
    assert result.error == "ValueError: bad thing scheduled"
    assert texts(result) == ["about to fail"]
    assert result.traceback.startswith("Traceback (most recent call last):\n")
    assert f'File "{plugin_dir / "failing.py"}", line 11, in process_scheduled_call' in result.traceback
    assert f'File "{plugin_dir / "failing.py"}", line 2, in helper' in result.traceback
    assert "sandbox" not in result.traceback, "the runtime's own frames are not shown"
    assert handle.run_schedule(CALL_TIME, None).error == "ValueError: bad thing scheduled", "the trigger stays usable"


def test_load_errors_name_file_and_line(runtime):
    cases = {"bad_syntax.py": ("bad_syntax.py", 2, "SyntaxError"), "module_error.py": ("module_error.py", 3, "RuntimeError")}
    for filename, (file, line, kind) in cases.items():
        with pytest.raises(PluginLoadError) as caught:
            runtime.load(PluginSpec("bad", "db", filename, "writes"))
        assert (caught.value.file, caught.value.line) == (file, line)
        assert str(caught.value).startswith(f"{file}:{line}: {kind}")


def test_plugin_paths_may_not_escape_the_plugin_dir(runtime, plugin_dir, tmp_path):
    outside = tmp_path / "outside.py"
    outside.write_text("def process_writes(a, b, c): pass\n")
    (plugin_dir / "escape.py").symlink_to(outside)
    for name in ("../outside.py", str(outside), "escape.py", "C:\\x.py", "nope.py"):
        with pytest.raises(PluginLoadError) as caught:
            runtime.load(PluginSpec("esc", "db", name, "writes"))
        expected = "not found" if name == "nope.py" else "Path traversal detected"
        assert expected in str(caught.value), name


def test_line_builder_is_a_builtin_with_influxdb3_errors(load):
    result = load("line_builders.py").run_schedule(CALL_TIME, None)
    assert texts(result) == [
        "True",
        "influxdb3_pe ImportError",
        "InvalidMeasurementError Measurement name cannot contain spaces",
        "InvalidKeyError tag key 'a=b' cannot contain equals signs",
        "InvalidLineError At least one field is required: m",
        "m,t=a\\ b f=2.0",
    ]


# -- reload ---------------------------------------------------------------------------------------


def test_reload_on_change_keeps_module_state_until_the_file_changes(runtime, plugin_dir):
    source = "state = []\ndef process_scheduled_call(local, call_time, args):\n    state.append(1)\n    local.info('{tag}', len(state))\n"
    path = plugin_dir / "reloading.py"
    path.write_text(source.format(tag="v1"))
    handle = runtime.load(PluginSpec("reload", "db", "reloading.py", "schedule"))
    try:
        assert [texts(handle.run_schedule(CALL_TIME, None)) for _ in range(2)] == [["v1 1"], ["v1 2"]]
        path.write_text(source.format(tag="version2"))
        assert texts(handle.run_schedule(CALL_TIME, None)) == ["version2 1"]
        path.write_text("def process_scheduled_call(local, call_time, args)\n")
        broken = handle.run_schedule(CALL_TIME, None)
        assert not broken.ok and broken.error.startswith("SyntaxError")
        assert handle.run_schedule(CALL_TIME, None).error.startswith("SyntaxError"), "stays broken until fixed"
        path.write_text(source.format(tag="fixed"))
        assert texts(handle.run_schedule(CALL_TIME, None)) == ["fixed 1"]
    finally:
        handle.close()


def test_every_call_reexecutes_the_module(runtime, plugin_dir):
    (plugin_dir / "fresh.py").write_text(
        "state = []\ndef process_scheduled_call(local, call_time, args):\n    state.append(1)\n    local.info(len(state))\n")
    handle = runtime.load(PluginSpec("fresh", "db", "fresh.py", "schedule", reload="every_call"))
    try:
        assert [texts(handle.run_schedule(CALL_TIME, None)) for _ in range(3)] == [["1"]] * 3
    finally:
        handle.close()


# -- embedding ------------------------------------------------------------------------------------

COPY_PLUGIN = """
def process_writes(influxdb3_local, table_batches, args):
    seen = influxdb3_local.query("SELECT count(*) AS n FROM cpu")[0]["n"]
    for batch in table_batches:
        for row in batch["rows"]:
            influxdb3_local.write(LineBuilder("cpu_copy").tag("host", row["host"])
                                  .float64_field("doubled", row["usage"] * 2).int64_field("seen", seen)
                                  .time_ns(row["time"]))
"""


def test_embedding_with_an_in_memory_database(tmp_path):
    """An embedder wires subscribe → share → run_writes → write_lp; plugins see its data and write back."""
    db = InMemoryDatabase()
    plugin_dir = tmp_path / "plugins"
    plugin_dir.mkdir()
    (plugin_dir / "copy.py").write_text(COPY_PLUGIN)
    with PluginRuntime(db, plugin_dir, tmp_path / "run", workers=1) as runtime:
        handle = runtime.load(PluginSpec("copy", "db", "copy.py", "writes"))
        results = []

        def on_flush(flush):
            shared = runtime.share(flush)
            try:
                results.append(handle.run_writes(shared, "cpu", None))
            finally:
                shared.release()

        unsubscribe = db.subscribe(on_flush)
        db.write_lp("db", "cpu,host=a usage=1.5 1\ncpu,host=b usage=2 2")
        db.flush()
        unsubscribe()
        assert len(results) == 1 and results[0].ok, results[0].traceback
        for database, lines in results[0].writes.items():
            db.write_lp(database, "\n".join(lines), precision="ns", accept_partial=False)
        db.flush()
    rows = db.query("db", "SELECT host, doubled, seen FROM cpu_copy ORDER BY host").to_pylist()
    assert rows == [{"host": "a", "doubled": 3.0, "seen": 2}, {"host": "b", "doubled": 4.0, "seen": 2}]


def test_example_plugins_run(tmp_path):
    examples = Path(__file__).resolve().parent.parent / "examples"
    db = InMemoryDatabase()
    db.write_lp("db", "cpu,host=a usage=95.5 1\ncpu,host=b usage=12 2\ncpu,host=c other=1i 3")
    flush = db.flush()
    with PluginRuntime(db, examples, tmp_path / "run", workers=1) as runtime:
        shared = runtime.share(flush)
        try:
            stats = runtime.load(PluginSpec("stats", "db", "columnar_stats.py", "writes")).run_writes(shared, None, None)
            alert = runtime.load(PluginSpec("alert", "db", "threshold_alert.py", "writes")).run_writes(shared, "cpu", {"threshold": "50"})
        finally:
            shared.release()
        hello = runtime.load(PluginSpec("hello", "db", "hello_request.py", "request"))
        answered = hello.run_request({"name": "ada"}, {}, b"", None)
        refused = hello.run_request({}, {}, b"", None)
    assert stats.ok and stats.writes == {"db": ["cpu_stats,field=usage count=2i,sum=107.5,min=12.0,max=95.5"]}
    assert alert.ok and alert.writes == {"db": ["alerts,table=cpu,host=a usage=95.5 1"]}
    assert [line.level for line in alert.logs] == ["WARN"]
    assert json.loads(answered.response.body) == {"hello": "ada", "tables": ["cpu"]}
    assert refused.response.status == 400


CALLBACK_PLUGIN = """
import urllib.request


def process_writes(influxdb3_local, table_batches, args):
    influxdb3_local.write_sync(LineBuilder("from_writes").int64_field("n", 1).time_ns(1), no_sync=True)
    with urllib.request.urlopen(args["url"] + "?case=dict", timeout=20) as response:
        influxdb3_local.info(response.status, response.read().decode())
"""


def test_writes_trigger_may_write_sync_and_call_the_server_over_http(db, runtime, plugin_dir, load):
    """Neither a synchronous write nor an HTTP request into another trigger deadlocks a writes trigger."""
    import http.server
    import threading

    (plugin_dir / "callback.py").write_text(CALLBACK_PLUGIN)
    responder = load("flask_responses.py", kind="request")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            query = dict(pair.split("=") for pair in self.path.split("?", 1)[1].split("&"))
            result = responder.run_request(query, dict(self.headers), b"", None)
            self.send_response(result.response.status)
            self.end_headers()
            self.wfile.write(result.response.body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        handle = load("callback.py", kind="writes")
        flush = flush_of(db, runtime, "cpu,host=q usage=1 9000")
        try:
            result = handle.run_writes(flush, None, {"url": f"http://127.0.0.1:{server.server_port}/api/v3/engine/x"})
        finally:
            flush.release()
    finally:
        server.shutdown()
        server.server_close()
    assert result.ok, result.traceback
    assert texts(result) == ['200 {"b": 1, "a": [1, 2]}']
    assert ("db", "from_writes n=1i 1", True) in db.writes
