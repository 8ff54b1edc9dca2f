"""Owns the enforcement of limits: measures every run in flight and stops the ones that break their limits.

One thread per `PluginRuntime`. It wakes every TICK seconds (MEMORY_TICK while a run with a
memory limit is in flight) and reads, from /proc, each worker's resident size and the CPU time of
the worker thread running each run in flight. After IDLE_AFTER seconds without a run it sleeps
until one starts, so an idle runtime costs nothing; while runs keep coming it keeps ticking
rather than being woken by each of them (a wake-up per run would cost every run a thread switch,
and a run shorter than a tick never needs the watchdog anyway).

A run that has used more than DEMOTE_AFTER seconds of CPU is demoted: its worker thread's nice
value is raised to DEMOTED_NICE, so the kernel runs short runs of other triggers and the server
itself first whenever the cores are busy (on two cores, one spinning plugin otherwise adds a
scheduler time slice, milliseconds, to everyone's latency). An unprivileged process cannot lower
a nice value again, so the demotion lasts as long as that thread: until the trigger's
interpreter is next loaded.

A run that passes a limit is stopped in two steps:

1. **Interrupt**: the worker is told to raise `PluginLimitExceeded` in the plugin (a
   BaseException subclass, so `except Exception` does not swallow it). Pure-Python code stops
   within a few milliseconds; the run's reply then comes back as a failure.
2. **Kill**: if the run has not ended INTERRUPT_GRACE seconds later (the plugin swallows
   BaseException, sits in a C loop or a blocking syscall), the worker process holding it is
   killed with SIGKILL; its supervisor respawns it and reloads its triggers.

Either way `RunWatch.breach` names the limit and the figure that broke it, and the run's
caller records the run as failed with that text. What cannot be measured here: CPU of threads a
plugin starts itself, and which interpreter of a shared worker owns which resident page (so in
interpreter mode a run is charged with everything its worker grew while the run was in flight).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Protocol

from sandbox import procfs
from sandbox.limits import RunLimits, cpu_time_breach, memory_breach, run_time_breach

TICK = 0.01  # seconds between measurements while runs are in flight
MEMORY_TICK = 0.002  # the same while a run with max_memory is in flight (memory grows fast)
IDLE_AFTER = 1.0  # seconds without runs after which the watchdog sleeps until the next one
INTERRUPT_GRACE = 0.05  # seconds a run gets to stop after the interrupt before its worker is killed
DEMOTE_AFTER = 0.05  # CPU seconds of one run after which its thread gets a lower CPU priority
DEMOTED_NICE = 10


class Stoppable(Protocol):
    """What the watchdog needs of a worker (sandbox.supervisor.WorkerProcess)."""

    pid: int

    def interrupt(self, trigger_id: int) -> None: ...

    def kill_for(self, trigger_id: int) -> None: ...


class RunWatch:
    """One run in flight. The watchdog writes the figures; the run's own thread reads them once
    `Watchdog.end` has returned, after which nothing changes any more."""

    def __init__(self, worker: Stoppable, trigger_id: int, native_id: int | None, limits: RunLimits,
                 memory_base: int | None, cpu_start: float | None) -> None:
        """`memory_base`: the resident size charges are measured from (process mode: the bare
        worker's; interpreter mode: the worker's at the run's start, or None when unknown).
        `cpu_start`: the thread's CPU seconds when the run started; None reads it now from
        /proc when the run has limits."""
        self.worker = worker
        self.trigger_id = trigger_id
        self.native_id = native_id
        self.limits = limits
        self.memory_base = memory_base
        self.started = time.monotonic()
        self.cpu_start = cpu_start if cpu_start is not None or not limits.any else self._thread_cpu()
        self.cpu = 0.0  # seconds of CPU the run used, as of the last measurement
        self.peak_rss = 0  # the worker's largest resident size seen during the run
        self.breach: str | None = None
        self.interrupted_at = 0.0
        self.killed = False
        self.demoted = False

    def _thread_cpu(self) -> float | None:
        if self.native_id is None:
            return None
        return procfs.thread_cpu_time(self.worker.pid, self.native_id)

    def charge(self, rss: int) -> int:
        """The memory charged to the run when its worker's resident size is `rss`."""
        return max(0, rss - self.memory_base) if self.memory_base is not None else 0

    def measure(self, rss: int | None) -> None:
        """Take one sample (watchdog thread): the worker's resident size and the run's CPU.
        A run without a CPU baseline gets one at its first sample (missing at most a tick)."""
        if rss is not None:
            self.peak_rss = max(self.peak_rss, rss)
        cpu = self._thread_cpu()
        if cpu is None:
            return
        if self.cpu_start is None:
            self.cpu_start = cpu
        self.cpu = cpu - self.cpu_start

    def demote(self) -> None:
        """Lower the CPU priority of the run's thread (once); a thread already gone is ignored."""
        self.demoted = True
        try:
            os.setpriority(os.PRIO_PROCESS, self.native_id,
                           max(DEMOTED_NICE, os.getpriority(os.PRIO_PROCESS, self.native_id)))
        except OSError:
            pass

    def verdict(self, now: float) -> str | None:
        """The breach, if a limit is now passed."""
        limits = self.limits
        elapsed = now - self.started
        if limits.max_run_time is not None and elapsed > limits.max_run_time:
            return run_time_breach(limits.max_run_time, elapsed)
        if limits.max_cpu_time is not None and self.cpu > limits.max_cpu_time:
            return cpu_time_breach(limits.max_cpu_time, self.cpu)
        if limits.max_memory is not None and self.charge(self.peak_rss) > limits.max_memory:
            return memory_breach(limits.max_memory, self.charge(self.peak_rss))
        return None


class Watchdog:
    """Watches runs between `begin` and `end`; thread-safe."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._runs: set[RunWatch] = set()
        self._closed = False
        self._sleeping = False
        self._last_begin = 0.0
        self._thread = threading.Thread(target=self._loop, name="plughost-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop watching (runs still in flight are no longer limited). Returns at once."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def begin(self, watch: RunWatch) -> RunWatch:
        """Start watching `watch`'s run; returns it."""
        with self._changed:
            self._runs.add(watch)
            self._last_begin = watch.started
            if self._sleeping:
                self._changed.notify_all()
        return watch

    def end(self, watch: RunWatch) -> None:
        """Stop watching; once this returns the watchdog neither measures nor acts on `watch`."""
        with self._changed:
            self._runs.discard(watch)

    def _loop(self) -> None:
        while True:
            with self._changed:
                if not self._runs and time.monotonic() - self._last_begin > IDLE_AFTER:
                    self._sleeping = True
                    while not self._runs and not self._closed:
                        self._changed.wait()
                    self._sleeping = False
                if self._closed:
                    return
                runs = list(self._runs)
            resident: dict[int, int | None] = {}
            for watch in runs:  # /proc reads happen outside the lock
                pid = watch.worker.pid
                if pid not in resident:
                    resident[pid] = procfs.resident_bytes(pid)
                watch.measure(resident[pid])
            now = time.monotonic()
            with self._changed:
                for watch in runs:
                    if watch in self._runs:
                        self._enforce(watch, now)
                self._changed.wait(MEMORY_TICK if any(w.limits.max_memory is not None for w in runs) else TICK)

    @staticmethod
    def _enforce(watch: RunWatch, now: float) -> None:
        """Demote a CPU-heavy run; interrupt at the breach; kill the worker if the run outlives
        the grace period. Lock held."""
        if not watch.demoted and watch.cpu > DEMOTE_AFTER and watch.native_id is not None:
            watch.demote()
        if watch.breach is None:
            watch.breach = watch.verdict(now)
            if watch.breach is not None:
                watch.interrupted_at = now
                watch.worker.interrupt(watch.trigger_id)
        elif not watch.killed and now - watch.interrupted_at > INTERRUPT_GRACE:
            watch.killed = True
            watch.worker.kill_for(watch.trigger_id)
