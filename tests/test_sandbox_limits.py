"""Limits and fault containment at the sandbox level: real workers, real subinterpreters.

What a limit breach reports, that an interrupted interpreter is replaced by a fresh one, who pays
when a worker has to die (the culprit moves to a process of its own, a bystander's run is
repeated), and that pool workers are replaced after too many discarded interpreters or when one
is stranded by its plugin's threads.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from inmemory_db import InMemoryDatabase  # noqa: E402

from sandbox.limits import RunLimits, format_bytes, format_seconds  # noqa: E402
from sandbox.runtime import PluginRuntime, PluginSpec  # noqa: E402
from triggers.catalog import SettingsError  # noqa: E402
from triggers.cli import add_serve_limit_arguments, serve_limits  # noqa: E402

CALL_TIME = datetime(2024, 1, 1)

PLUGIN = """
import ctypes, os, threading, time

runs = 0

def process_scheduled_call(influxdb3_local, call_time, args):
    global runs
    runs += 1
    how = args["how"]
    if how == "spin":
        while True:
            pass
    if how == "c_loop":
        sum(range(10 ** 13))
    if how == "hog":
        hog = []
        while True:
            hog.append(bytes(1000))
    if how == "sleep":
        time.sleep(float(args["seconds"]))
    if how == "segfault":
        ctypes.string_at(0)
    if how == "leak":
        threading.Thread(target=time.sleep, args=(3600,), name="leaked").start()
    influxdb3_local.info(os.getpid(), runs)
"""


@pytest.fixture
def runtime(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "limited.py").write_text(PLUGIN)
    runtimes = []

    def start(**options) -> PluginRuntime:
        options.setdefault("workers", 1)
        rt = PluginRuntime(InMemoryDatabase(), plugins, tmp_path / f"run{len(runtimes)}", **options)
        rt.start()
        runtimes.append(rt)
        return rt

    yield start
    for rt in runtimes:
        rt.close()


def load(rt: PluginRuntime, name: str, **options):
    return rt.load(PluginSpec(trigger_name=name, database="db", plugin_filename="limited.py", kind="schedule", **options))


def run(handle, how: str, **args):
    return handle.run_schedule(CALL_TIME, {"how": how, **args})


def pid_and_runs(result) -> tuple[int, int]:
    assert result.ok, result.error
    pid, runs = result.logs[-1].text.split()
    return int(pid), int(runs)


def test_figures_read_like_the_limits_they_break():
    assert [format_seconds(s) for s in (0.5, 0.0124, 2, 2.013, 90)] == ["500ms", "12ms", "2s", "2.01s", "90s"]
    assert [format_bytes(b) for b in (900, 2048, 256 << 20, int(262.4 * (1 << 20)), 1 << 30)] == [
        "900B", "2KiB", "256MiB", "262.4MiB", "1GiB"]
    assert RunLimits(max_cpu_time=1.0).over(RunLimits(max_run_time=5.0, max_cpu_time=9.0)) == RunLimits(
        max_run_time=5.0, max_cpu_time=1.0)


def test_server_defaults_come_from_serve_options_or_the_environment(monkeypatch):
    import argparse

    monkeypatch.setenv("PLUGHOST_PLUGIN_MAX_MEMORY", "512MiB")
    parser = argparse.ArgumentParser()
    add_serve_limit_arguments(parser)
    assert serve_limits(parser.parse_args(["--plugin-max-run-time", "500ms", "--plugin-max-cpu-time", "2s"])) == RunLimits(
        max_run_time=0.5, max_cpu_time=2.0, max_memory=512 << 20)
    with pytest.raises(SettingsError, match="--plugin-max-cpu-time: couldn't parse 'soon' as a duration"):
        serve_limits(parser.parse_args(["--plugin-max-cpu-time", "soon"]))


def test_an_interrupted_run_fails_with_its_figure_and_the_next_run_gets_a_fresh_interpreter(runtime):
    rt = runtime(limits=RunLimits(max_run_time=30.0))
    handle = load(rt, "spinner", limits=RunLimits(max_cpu_time=0.2))
    assert handle.limits == RunLimits(max_run_time=30.0, max_cpu_time=0.2)
    pid, runs = pid_and_runs(run(handle, "ok"))
    assert pid_and_runs(run(handle, "ok")) == (pid, runs + 1), "module state lives between runs"

    result = run(handle, "spin")
    assert not result.ok
    figure = float(re.fullmatch(r"cpu time limit 200ms exceeded \((\d+)ms\)", result.error).group(1))
    assert 200 < figure < 400 and result.cpu_time >= 0.2
    assert "while True" in result.traceback and "PluginLimitExceeded" in result.traceback

    assert pid_and_runs(run(handle, "ok")) == (pid, 1), "same worker, new interpreter: module state starts over"
    assert handle.mode == "interpreter" and handle.limit_breaches == 1


def test_a_run_that_ignores_the_interrupt_costs_its_worker_and_moves_to_a_process_of_its_own(runtime):
    rt = runtime()
    culprit = load(rt, "culprit", limits=RunLimits(max_run_time=0.3))
    bystander = load(rt, "bystander")
    shared_pid, _ = pid_and_runs(run(bystander, "ok"))
    assert pid_and_runs(run(culprit, "ok"))[0] == shared_pid

    during = {}
    sleeper = threading.Thread(target=lambda: during.setdefault("r", run(bystander, "sleep", seconds="0.8")))
    sleeper.start()
    time.sleep(0.1)  # the bystander's run is in flight when the culprit's worker is killed
    started = time.monotonic()
    result = run(culprit, "c_loop")
    stopped = time.monotonic() - started
    sleeper.join(30)

    assert re.fullmatch(r"run time limit 300ms exceeded \(\d+ms\); the plugin did not stop when interrupted, "
                        r"so its worker process was killed", result.error), result.error
    assert 0.3 < stopped < 2.0
    assert culprit.mode == "process" and "moves to process mode" in result.logs[0].text
    repeated = during["r"]
    assert repeated.ok, repeated.error
    assert "the run was repeated: its worker was killed to stop another trigger's run" in repeated.logs[0].text
    assert bystander.mode == "interpreter", "a known culprit leaves its bystanders where they are"
    bystander_pid, _ = pid_and_runs(run(bystander, "ok"))
    culprit_pid, _ = pid_and_runs(run(culprit, "ok"))
    assert len({shared_pid, bystander_pid, culprit_pid}) == 3


def test_a_crash_of_unknown_cause_moves_every_trigger_in_flight_to_its_own_process(runtime):
    rt = runtime()
    crasher, bystander, idle = load(rt, "crasher"), load(rt, "bystander"), load(rt, "idle")
    shared_pid, _ = pid_and_runs(run(idle, "ok"))
    during = {}
    sleeper = threading.Thread(target=lambda: during.setdefault("r", run(bystander, "sleep", seconds="0.8")))
    sleeper.start()
    time.sleep(0.1)
    crashed = run(crasher, "segfault")
    sleeper.join(30)

    assert crashed.error == "plugin worker exited with signal SIGSEGV"
    assert crasher.mode == "process" and "moves to a process of its own" in crashed.logs[0].text
    assert during["r"].ok and during["r"].mode == "process" and bystander.mode == "process"
    assert idle.mode == "interpreter"
    idle_pid, _ = pid_and_runs(run(idle, "ok"))
    assert idle_pid != shared_pid, "the idle trigger was reloaded in the respawned pool worker"
    again = run(crasher, "segfault")
    assert again.error == "plugin worker exited with signal SIGSEGV" and not again.logs, "now it only costs itself"
    assert pid_and_runs(run(idle, "ok"))[0] == idle_pid


def test_memory_limits_in_both_modes(runtime):
    rt = runtime()
    limit = 48 << 20
    shared = load(rt, "shared", limits=RunLimits(max_memory=limit))
    own = load(rt, "own", isolation="process", limits=RunLimits(max_memory=limit))
    for handle in (shared, own):
        result = run(handle, "hog")
        assert re.fullmatch(r"memory limit 48MiB exceeded \([\d.]+MiB\)", result.error), result.error
        assert limit < result.peak_memory < limit * 2
        after = run(handle, "ok")
        assert after.ok and after.peak_memory < limit


def test_usage_shows_a_run_in_flight_and_an_idle_interpreter(runtime):
    rt = runtime()
    handle = load(rt, "watched", limits=RunLimits(max_run_time=1.0))
    assert run(handle, "ok").ok
    idle = handle.usage()
    assert (idle.running, idle.mode, idle.runs) == (False, "interpreter", 1)
    assert idle.objects > 1000 and idle.object_bytes > 100_000 and idle.worker_rss > 10 << 20
    result = {}
    spinner = threading.Thread(target=lambda: result.setdefault("r", run(handle, "spin")))
    spinner.start()
    busy = None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        busy = handle.usage()
        if busy.running and busy.run_cpu_time and busy.run_cpu_time > 0.05:
            break
        time.sleep(0.01)
    assert busy.running and busy.run_time >= busy.run_cpu_time > 0.05 and busy.objects is None
    spinner.join(10)
    assert result["r"].error.startswith("run time limit 1s exceeded")
    assert handle.usage().limit_breaches == 1


def test_a_pool_worker_is_replaced_after_too_many_discarded_interpreters(runtime):
    rt = runtime(recycle_after=3)
    keeper = load(rt, "keeper")
    first_pid, _ = pid_and_runs(run(keeper, "ok"))
    for n in range(3):
        load(rt, f"passing-{n}").close()

    def replaced():
        pid, _ = pid_and_runs(run(keeper, "ok"))
        return pid if pid != first_pid else None

    deadline = time.monotonic() + 20
    while not replaced():
        assert time.monotonic() < deadline, "the pool worker was replaced"
        time.sleep(0.05)


def test_an_interpreter_stranded_by_its_threads_gets_its_worker_replaced(runtime):
    rt = runtime()
    keeper, leaker = load(rt, "keeper"), load(rt, "leaker")
    first_pid, _ = pid_and_runs(run(keeper, "ok"))
    assert run(leaker, "leak").ok
    leaker.close()  # its thread sleeps for an hour: the interpreter cannot be destroyed
    deadline = time.monotonic() + 30
    while pid_and_runs(run(keeper, "ok"))[0] == first_pid:
        assert time.monotonic() < deadline, "the worker holding the stranded interpreter was replaced"
        time.sleep(0.1)
