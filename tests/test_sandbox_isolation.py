"""What isolation buys: crashes contained to one worker, C extensions in process mode, parallel
plugins, one zero-copy flush mapping shared by every trigger, and a shutdown that never hangs."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from inmemory_db import InMemoryDatabase  # noqa: E402

from sandbox.runtime import PluginLoadError, PluginRuntime, PluginSpec  # noqa: E402

PLUGINS = Path(__file__).resolve().parent / "plugins"
CALL_TIME = datetime(2024, 1, 1)


@pytest.fixture
def plugin_dir(tmp_path):
    target = tmp_path / "plugins"
    shutil.copytree(PLUGINS, target)
    return target


def make_runtime(plugin_dir: Path, tmp_path: Path, workers: int) -> PluginRuntime:
    runtime = PluginRuntime(InMemoryDatabase(), plugin_dir, tmp_path / "run", workers=workers)
    runtime.start()
    return runtime


def spec(filename: str, name: str, kind: str = "schedule", **options) -> PluginSpec:
    return PluginSpec(trigger_name=name, database="db", plugin_filename=filename, kind=kind, **options)


def test_numpy_plugin_falls_back_to_process_mode(plugin_dir, tmp_path):
    assert importlib.util.find_spec("numpy"), "numpy is a test dependency (pip install numpy)"
    runtime = make_runtime(plugin_dir, tmp_path, workers=1)
    try:
        with pytest.raises(PluginLoadError) as caught:
            runtime.load(spec("uses_numpy.py", "strict", isolation="interpreter"))
        assert caught.value.module == "numpy._core._multiarray_umath"
        assert caught.value.file == "uses_numpy.py" and caught.value.line == 1
        assert "does not support subinterpreters" in str(caught.value) and "isolation='process'" in str(caught.value)

        handle = runtime.load(spec("uses_numpy.py", "auto"))
        assert handle.mode == "process"
        assert "running trigger auto in process mode" in handle.load_logs[0].text
        result = handle.run_schedule(CALL_TIME, None)
        assert result.ok, result.traceback
        assert result.mode == "process" and [line.text for line in result.logs] == ["numpy 10"]

        forced = runtime.load(spec("import.py", "forced", isolation="process"))
        assert forced.run_schedule(CALL_TIME, None).mode == "process"
    finally:
        runtime.close()


@pytest.mark.parametrize("how, reason", [("exit", "plugin worker exited with code 7"),
                                          ("segfault", "plugin worker exited with signal SIGSEGV")])
def test_a_dying_plugin_takes_only_its_worker(plugin_dir, tmp_path, how, reason):
    runtime = make_runtime(plugin_dir, tmp_path, workers=2)
    try:
        crasher = runtime.load(spec("crasher.py", "crasher"))
        bystander = runtime.load(spec("crasher.py", "bystander"))
        before = bystander.run_schedule(CALL_TIME, {"how": "ok"})
        first_pid = crasher.run_schedule(CALL_TIME, {"how": "ok"}).logs[0].text
        assert before.logs[0].text != first_pid, "the two triggers live in different workers"

        crashed = crasher.run_schedule(CALL_TIME, {"how": how})
        assert not crashed.ok and crashed.error == reason

        assert bystander.run_schedule(CALL_TIME, {"how": "ok"}).logs[0].text == before.logs[0].text
        after = crasher.run_schedule(CALL_TIME, {"how": "ok"})
        assert after.ok, after.error
        assert after.logs[0].text != first_pid, "the trigger was reloaded in a respawned worker"
    finally:
        runtime.close()


def test_two_plugins_run_in_parallel(plugin_dir, tmp_path):
    runtime = make_runtime(plugin_dir, tmp_path, workers=1)
    try:
        a, b = runtime.load(spec("rendezvous.py", "a")), runtime.load(spec("rendezvous.py", "b"))
        marks = {"a": str(tmp_path / "a.mark"), "b": str(tmp_path / "b.mark")}
        results = {}
        threads = [
            threading.Thread(target=lambda: results.__setitem__("a", a.run_schedule(CALL_TIME, {"mine": marks["a"], "theirs": marks["b"]}))),
            threading.Thread(target=lambda: results.__setitem__("b", b.run_schedule(CALL_TIME, {"mine": marks["b"], "theirs": marks["a"]}))),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert results["a"].ok and results["b"].ok, (results["a"].error, results["b"].error)
        assert results["a"].logs[0].text == results["b"].logs[0].text, "both ran in the same worker, concurrently"
    finally:
        runtime.close()


def _mapping_start(pid: int, flush_id: int) -> int:
    pattern = re.compile(rf"^([0-9a-f]+)-[0-9a-f]+ r--s .*/memfd:plughost-flush-{flush_id} \(deleted\)$")
    with open(f"/proc/{pid}/maps") as maps:
        starts = [int(m.group(1), 16) for m in map(pattern.match, maps.read().splitlines()) if m]
    assert len(starts) == 1, f"the worker maps flush {flush_id} exactly once, found {starts}"
    return starts[0]


def test_flush_buffers_reach_plugins_without_copies(plugin_dir, tmp_path):
    runtime = make_runtime(plugin_dir, tmp_path, workers=1)
    db = runtime.database
    try:
        first, second = runtime.load(spec("zero_copy.py", "one", "writes")), runtime.load(spec("zero_copy.py", "two", "writes"))
        db.write_lp("db", "\n".join(f"cpu,host=h{i % 3} usage={i}.25 {i}" for i in range(1000)))
        flush = runtime.share(db.flush())
        try:
            reports = [handle.run_writes(flush, "cpu", None) for handle in (first, second)]
            usage = next(c for c in flush.layout.tables[0].columns if c.name == "usage")
            pids = set()
            for result in reports:
                assert result.ok, result.traceback
                pid, address, readonly, fmt, total = result.logs[0].text.split()
                pids.add(int(pid))
                expected = _mapping_start(int(pid), flush.flush_id) + usage.data.offset
                assert int(address) == expected
                assert (readonly, fmt, float(total)) == ("1", "d", sum(i + 0.25 for i in range(1000)))
                assert result.logs[1].text == "write refused: cannot modify read-only memory"
            assert len(pids) == 1
        finally:
            flush.release()
        pid = pids.pop()
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{pid}") and f"plughost-flush-{flush.flush_id}" in open(f"/proc/{pid}/maps").read():
            assert time.monotonic() < deadline, "the worker unmaps a released flush"
            time.sleep(0.01)
    finally:
        runtime.close()


def test_columnar_api_agrees_with_rows(plugin_dir, tmp_path):
    runtime = make_runtime(plugin_dir, tmp_path, workers=1)
    db = runtime.database
    try:
        handle = runtime.load(spec("columnar.py", "columnar", "writes"))
        lines = [f"cpu,host=h{i % 2} usage={i}.5 {i}" if i % 5 else f"cpu,host=h{i % 2} other=1i {i}" for i in range(20)]
        db.write_lp("db", "\n".join(lines))
        flush = runtime.share(db.flush())
        try:
            result = handle.run_writes(flush, None, None)
        finally:
            flush.release()
        assert result.ok, result.traceback
        expected = sum(i + 0.5 for i in range(20) if i % 5)
        assert result.logs[0].text == f"cpu 20 4 {expected} {expected} [None, 1.5, 2.5] ['h0', 'h1', 'h0']"
    finally:
        runtime.close()


LINGERING = """
import threading, time
def process_scheduled_call(influxdb3_local, call_time, args):
    threading.Thread(target=time.sleep, args=(3600,), name="forever").start()
    if args and args.get("spin"):
        while True:
            pass
"""


def test_close_never_hangs_on_plugin_threads_or_runaway_runs(plugin_dir, tmp_path):
    (plugin_dir / "lingering.py").write_text(LINGERING)
    runtime = make_runtime(plugin_dir, tmp_path, workers=1)
    lingering = runtime.load(spec("lingering.py", "lingering"))
    assert lingering.run_schedule(CALL_TIME, None).ok
    runaway = runtime.load(spec("lingering.py", "runaway"))
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("r", runaway.run_schedule(CALL_TIME, {"spin": "1"})))
    thread.start()
    time.sleep(0.2)  # let the runaway run start spinning; nothing below waits on it
    started = time.monotonic()
    runaway.close()
    thread.join(10)
    assert result["r"].error == "trigger was closed during the run"
    runtime.close()
    assert time.monotonic() - started < 15
