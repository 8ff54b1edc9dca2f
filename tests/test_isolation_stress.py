"""Isolation under stress, through a real `plughost serve`: while healthy triggers fire and writes
flow, every kind of plugin fault costs at most the faulty trigger's own run (and maybe its
worker), and nothing acknowledged is lost.

One server for the whole module (tests/conftest.py, 50 ms WAL flush). In the background a writer
POSTs rows to `src` and remembers every acknowledged (204) one; two healthy writes triggers copy
`src` (one with queued writes in interpreter mode, one with write_sync in process mode), a
schedule trigger ticks and a request trigger answers. Each case adds one faulty trigger over
HTTP, makes it fault, and then checks: the fault is recorded (runs table, logs), the trigger's
error behavior applied, the trigger comes back by itself (unless disabled), and the server is
healthy — every acknowledged write queryable, both copies complete and exact, the ticker still
ticking, requests answered, no healthy event dropped. The last test stops the server while a
plugin's leaked threads still live. Every wait is a condition polled against a deadline.
"""

from __future__ import annotations

import re
import signal
import socket
import textwrap
import threading
import time

import httpx
import pytest
from conftest import wait_until as wait_for_condition

DB = "stress"
TRIGGER = "/api/v3/configure/processing_engine_trigger"

HEALTHY = {
    "copy.py": """
        def process_writes(influxdb3_local, table_batches, args=None):
            for batch in table_batches:
                for row in batch["rows"]:
                    influxdb3_local.write(LineBuilder("copy").tag("host", row["host"])
                                          .int64_field("v", row["v"]).time_ns(row["time"]))
    """,
    "mirror.py": """
        class Lines:
            def __init__(self, lines):
                self.lines = lines

            def build(self):
                return "\\n".join(line.build() for line in self.lines)

        def process_writes(influxdb3_local, table_batches, args=None):
            lines = [LineBuilder("mirror").tag("host", row["host"]).int64_field("v", row["v"]).time_ns(row["time"])
                     for batch in table_batches for row in batch["rows"]]
            influxdb3_local.write_sync_to_db("mirrordb", Lines(lines), no_sync=False)
    """,
    "ticker.py": """
        def process_scheduled_call(influxdb3_local, call_time, args=None):
            influxdb3_local.info("tick", call_time.isoformat())
    """,
    "echo.py": """
        def process_request(influxdb3_local, query_parameters, request_headers, request_body, args=None):
            return {"n": query_parameters.get("n")}
    """,
}

FAULTY = """
import ctypes, os, re, socket, sys, threading, time

def fault(kind, influxdb3_local, args):
    if kind == "infinite_loop":
        while True:
            pass
    if kind == "swallow":
        while True:
            try:
                while True:
                    pass
            except BaseException:
                pass
    if kind == "c_loop":
        sum(range(10 ** 13))
    if kind == "regex":
        re.match(r"(a+)+$", "a" * 64 + "b")
    if kind == "memory_list":
        hog = []
        while True:
            hog.append(bytes(1000))
    if kind == "memory_bytearray":
        bytearray(1 << 31)
    if kind == "recursion":
        def down(n):
            return down(n + 1) + 1
        down(0)
    if kind == "sys_exit":
        sys.exit(3)
    if kind == "os_exit":
        os._exit(7)
    if kind == "segfault":
        ctypes.string_at(0)
    if kind == "abort":
        os.abort()
    if kind == "leaked_threads":
        for _ in range(3):
            threading.Thread(target=time.sleep, args=(3600,), name="leaked").start()
        influxdb3_local.info("leaked", threading.active_count())
    if kind == "socket_block":
        connection = socket.create_connection(("127.0.0.1", int(args["port"])))
        connection.recv(1)
    if kind == "log_flood":
        for i in range(100_000):
            influxdb3_local.info("flood", i)
    if kind == "exception_storm":
        raise RuntimeError("storm " + "x" * 1_000_000)

def process_writes(influxdb3_local, table_batches, args=None):
    for batch in table_batches:
        for row in batch["rows"]:
            if row["mode"] == "fault":
                fault(args["fault"], influxdb3_local, args)
            else:
                influxdb3_local.write(LineBuilder("recovered").tag("trigger", args["name"]).int64_field("n", row["n"]))
"""


def wait_until(predicate, *, timeout: float = 20.0, message: str = "condition"):
    return wait_for_condition(predicate, timeout=timeout, message=message)


class Writer(threading.Thread):
    """POSTs 5 rows to `src` every 10 ms and remembers every acknowledged value."""

    def __init__(self, server):
        super().__init__(name="stress-writer", daemon=True)
        self.server = server
        self.acknowledged: set[int] = set()
        self.failures: list[str] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        n = 0
        base = time.time_ns()
        with self.server.client() as client:
            while not self.stop.wait(0.01):
                values = range(n, n + 5)
                lines = "\n".join(f"src,host=h{v % 3} v={v}i {base + v}" for v in values)
                try:
                    response = client.post("/api/v3/write_lp", params={"db": DB, "precision": "nanosecond"},
                                           content=lines)
                except httpx.HTTPError as error:
                    self.failures.append(repr(error))
                else:
                    if response.status_code == 204:
                        with self._lock:
                            self.acknowledged.update(values)
                    else:
                        self.failures.append(f"{response.status_code} {response.text}")
                n += 5

    def snapshot(self) -> set[int]:
        with self._lock:
            return set(self.acknowledged)


class Stack:
    """The server, its HTTP client, the writer, and the checks every case ends with."""

    def __init__(self, server):
        self.server = server
        self.client = server.client()
        for name, source in HEALTHY.items():
            (server.plugin_dir / name).write_text(textwrap.dedent(source))
        (server.plugin_dir / "faulty.py").write_text(FAULTY)
        assert self.write(DB, "src,host=h0 v=-1i 1").status_code == 204
        assert self.write("mirrordb", "mirror,host=h0 v=-1i 1").status_code == 204
        self.create("copy", "copy.py", "table:src")
        self.create("mirror", "mirror.py", "table:src", isolation="process")
        self.create("ticker", "ticker.py", "every:200ms")
        self.create("echo", "echo.py", "request:echo")
        self.writer = Writer(server)
        self.writer.start()
        self.requests = 0

    def write(self, db: str, lines: str) -> httpx.Response:
        return self.client.post("/api/v3/write_lp", params={"db": db, "precision": "nanosecond"}, content=lines)

    def create(self, name: str, plugin: str, spec: str, arguments: dict | None = None, **settings) -> None:
        response = self.client.post(TRIGGER, json={
            "db": DB, "plugin_filename": plugin, "trigger_name": name, "trigger_specification": spec,
            "trigger_arguments": arguments, "disabled": False,
            "trigger_settings": {"run_async": False, "error_behavior": "log", **settings}})
        assert response.status_code == 200, response.text

    def delete(self, name: str) -> None:
        response = self.client.request("DELETE", TRIGGER, params={"db": DB, "trigger_name": name, "force": "true"})
        assert response.status_code == 200, response.text

    def rows(self, sql: str, database: str = DB) -> list[dict]:
        """The query's rows; none while its table does not exist yet."""
        response = self.client.post("/api/v3/query_sql", json={"db": database, "q": sql, "format": "json"})
        if response.status_code != 200:
            assert "not found" in response.text, response.text
            return []
        return response.json()

    def runs(self, trigger: str) -> list[dict]:
        return self.rows("SELECT outcome, error, peak_memory, cpu_time FROM system.processing_engine_runs "
                         f"WHERE trigger_name = '{trigger}' ORDER BY started")

    def logs(self, trigger: str) -> list[str]:
        return [r["log_text"] for r in self.rows(
            "SELECT log_text FROM system.processing_engine_logs "
            f"WHERE trigger_name = '{trigger}' ORDER BY event_time")]

    def trigger_row(self, trigger: str) -> dict:
        return self.rows(f"SELECT * FROM system.processing_engine_triggers WHERE trigger_name = '{trigger}'")[0]

    def usage(self) -> dict[str, dict]:
        response = self.client.get("/api/v3/plugin_usage", params={"db": DB})
        assert response.status_code == 200, response.text
        return {entry["trigger_name"]: entry for entry in response.json()["triggers"]}

    def assert_healthy(self) -> None:
        """Server alive, acknowledged writes present, both copies complete and exact, ticker
        ticking, requests answered, no healthy event lost."""
        assert self.server.process.poll() is None, self.server.log()[-3000:]
        assert not self.writer.failures, self.writer.failures[:3]
        self.requests += 1
        answer = self.client.get("/api/v3/engine/echo", params={"n": str(self.requests)})
        assert (answer.status_code, answer.json()) == (200, {"n": str(self.requests)})
        acknowledged = self.writer.snapshot()
        assert len(acknowledged) > 0

        def stored(table: str, database: str = DB) -> set[tuple[int, int]]:
            return {(r["v"], r["time"]) for r in self.rows(f"SELECT v, CAST(time AS BIGINT) AS time FROM {table}", database)}

        def complete():
            copy, mirror = stored("copy"), stored("mirror", "mirrordb")
            source = stored("src")  # read last: every copied row is in it by then
            if not acknowledged <= {v for v, _ in source}:
                return None
            wanted = {row for row in source if row[0] in acknowledged}
            return (copy, mirror, source) if wanted <= copy and wanted <= mirror else None

        copy, mirror, source = wait_until(complete, message="every acknowledged row in src, copy and mirror")
        assert copy <= source and mirror <= source | {(-1, 1)}, "the copies hold only rows of src, unchanged"
        ticks = len([r for r in self.runs("ticker") if r["outcome"] == "ok"])
        wait_until(lambda: len([r for r in self.runs("ticker") if r["outcome"] == "ok"]) > ticks,
                   message="the ticker to tick again")
        assert not [r for r in self.runs("ticker") + self.runs("copy") + self.runs("mirror") if r["outcome"] != "ok"]
        for name in ("copy", "mirror"):
            assert self.trigger_row(name)["dropped_events"] == 0, [
                line for line in self.logs(name) if not line.startswith(("starting", "finished"))][-5:]


@pytest.fixture(scope="module")
def stack(start_module_server):
    stack = Stack(start_module_server(wal_flush_interval="50ms"))
    yield stack
    stack.writer.stop.set()
    stack.writer.join()
    stack.client.close()


@pytest.fixture(scope="module")
def silent_port():
    """A listening socket that accepts connections and never sends a byte."""
    listener = socket.create_server(("127.0.0.1", 0))
    yield listener.getsockname()[1]
    listener.close()


def test_modes_are_logged_and_listed(stack):
    (stack.server.plugin_dir / "uses_numpy.py").write_text(
        "import numpy\n\ndef process_scheduled_call(influxdb3_local, call_time, args=None):\n    pass\n")
    stack.create("numeric", "uses_numpy.py", "every:1h")
    assert {name: stack.trigger_row(name)["mode"] for name in ("copy", "mirror", "numeric")} == {
        "copy": "interpreter", "mirror": "process", "numeric": "process"}
    assert any(re.fullmatch(r"running trigger mirror in process mode \(isolation=process\): worker pid \d+", line)
               for line in stack.logs("mirror"))
    assert any(re.fullmatch(r"plugin uses_numpy.py imports numpy\S*, which does not support subinterpreters; "
                            r"running trigger numeric in process mode", line) for line in stack.logs("numeric"))
    stack.delete("numeric")


LIMIT_STOPPED = r"{limit} exceeded \(\d+(\.\d+)?m?s\)$"
KILLED = r"{limit} exceeded \([^)]+\); the plugin did not stop when interrupted, so its worker process was killed$"
MEMORY_STOPPED = r"^memory limit 64MiB exceeded \([\d.]+MiB\)"
MEMORY_REFUSED = r"^memory limit 64MiB exceeded \(an allocation that would have passed it was refused with MemoryError at [\d.]+MiB\)$"

CASES = [
    # (fault, settings, expected error of the faulty run)
    ("infinite_loop", {"max_run_time": "300ms"}, LIMIT_STOPPED.format(limit="run time limit 300ms")),
    ("infinite_loop", {"max_run_time": 0.3, "isolation": "process"}, LIMIT_STOPPED.format(limit="run time limit 300ms")),
    ("swallow", {"max_cpu_time": "300ms", "error_behavior": "disable"}, KILLED.format(limit="cpu time limit 300ms")),
    ("c_loop", {"max_run_time": "300ms"}, KILLED.format(limit="run time limit 300ms")),
    ("regex", {"max_cpu_time": "300ms"}, KILLED.format(limit="cpu time limit 300ms")),
    ("memory_list", {"max_memory": "64MiB"}, MEMORY_STOPPED),
    ("memory_bytearray", {"max_memory": 64 << 20}, MEMORY_STOPPED),
    ("memory_bytearray", {"max_memory": "64MiB", "isolation": "process"}, MEMORY_REFUSED),
    ("recursion", {}, r"^RecursionError: maximum recursion depth exceeded"),
    ("sys_exit", {"error_behavior": "retry"}, r"^SystemExit: 3$"),
    ("os_exit", {}, r"^plugin worker exited with code 7$"),
    ("segfault", {}, r"^plugin worker exited with signal SIGSEGV$"),
    ("segfault", {"isolation": "process"}, r"^plugin worker exited with signal SIGSEGV$"),
    ("abort", {}, r"^plugin worker exited with signal SIGABRT$"),
    ("socket_block", {"max_run_time": "1s"}, KILLED.format(limit="run time limit 1s")),
    ("exception_storm", {}, r"^RuntimeError: storm x+… \(\d+ more characters\)$"),
    ("log_flood", {}, None),
    ("leaked_threads", {}, None),
]


def _case_id(case) -> str:
    fault, settings, _ = case
    return fault + ("-process" if settings.get("isolation") == "process" else "")


@pytest.mark.parametrize("fault, settings, expected", CASES, ids=[_case_id(c) for c in CASES])
def test_a_fault_costs_only_the_faulty_trigger(stack, silent_port, plughost, fault, settings, expected):
    name = _case_id((fault, settings, expected)).replace("-", "_")
    table = f"fault_{name}"
    behavior = settings.get("error_behavior", "log")
    arguments = {"fault": fault, "name": name, "port": str(silent_port)}
    if name == "infinite_loop":  # this one through `plughost create trigger --max-run-time`
        created = plughost("create", "trigger", "--database", DB, "--path", "faulty.py", "--trigger-spec",
                           f"table:{table}", "--trigger-arguments", ",".join(f"{k}={v}" for k, v in arguments.items()),
                           "--max-run-time", settings["max_run_time"], "--host", stack.server.base_url,
                           "--token", stack.server.token, name)
        assert created.returncode == 0, created.stderr
    else:
        stack.create(name, "faulty.py", f"table:{table}", arguments, **settings)
    storm = 20 if fault == "exception_storm" else 1
    for n in range(storm):  # a storm is that many failing runs, one after the other
        assert stack.write(DB, f'{table} mode="fault",n={n}i').status_code == 204
        wait_until(lambda: len(stack.runs(name)) > n, timeout=30, message=f"run {n + 1} of {name}")

    attempts = 4 if behavior == "retry" else storm
    runs = wait_until(lambda: (r := stack.runs(name)) and len(r) >= attempts and r, timeout=30,
                      message=f"{attempts} recorded run(s) of {name}")
    if expected is None:
        assert [r["outcome"] for r in runs] == ["ok"]
    else:
        assert all(r["outcome"] == "error" for r in runs), runs
        for run in runs:
            assert re.search(expected, run["error"]), run["error"][:300]
            assert len(run["error"]) < 17_000

    logs = stack.logs(name)
    if behavior == "retry":
        assert any("giving up after 4 attempts" in line for line in logs), logs
    if fault == "log_flood":
        assert any("99000 more log lines of this run were dropped (a run keeps at most 1000)" in line for line in logs)
        assert len(logs) < 1100
    if fault in ("os_exit", "segfault", "abort") and settings.get("isolation") != "process":
        assert any("moves to a process of its own" in line for line in logs), logs
        wait_until(lambda: stack.trigger_row(name)["mode"] == "process", message=f"{name} in process mode")
    if "memory" in fault:
        assert runs[0]["peak_memory"] > 64 << 20 or "an allocation" in runs[0]["error"]

    if behavior == "disable":
        wait_until(lambda: stack.trigger_row(name)["disabled"], message=f"{name} disabled")
        assert name not in stack.usage()
    else:
        assert stack.write(DB, f'{table} mode="recover",n=42i').status_code == 204
        wait_until(lambda: stack.rows(f"SELECT n FROM recovered WHERE \"trigger\" = '{name}'"),
                   message=f"{name} to run again by itself")
        slot = stack.usage()[name]["slots"][0]
        assert slot["worker_pid"] is not None and slot["runs"] >= 1

    stack.assert_healthy()
    if fault != "leaked_threads":  # it stays, so stopping the server must cope with its threads
        started = time.monotonic()
        stack.delete(name)
        assert time.monotonic() - started < 5


def test_the_server_stops_promptly_despite_leaked_plugin_threads(stack):
    assert "leaked_threads" in stack.usage(), "the leaked-threads trigger is still running"
    stack.writer.stop.set()
    stack.writer.join()
    started = time.monotonic()
    assert stack.server.stop(signal.SIGTERM) == 0, stack.server.log()[-3000:]
    assert time.monotonic() - started < 15
