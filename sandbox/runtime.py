"""The sandbox's public API: load plugins into worker processes, run them, share flushes with them.

`PluginRuntime` owns the worker processes, the plugin services endpoint and the global cache;
`PluginHandle` is one loaded trigger. Interpreter mode (the default for pure-Python plugins)
puts a trigger in an isolated subinterpreter of a pool worker; process mode gives it a worker
of its own and runs it in that worker's main interpreter. No plugin failure propagates into the
caller as an exception; every one becomes a failed RunResult.

Faults are contained to the trigger that caused them:

- **Limits** (`sandbox.limits`, enforced by `sandbox.watchdog`): a run past its limit is
  interrupted, or its worker killed when the interrupt does not stop it; the run fails with the
  limit and the figure that broke it. The interrupted interpreter is discarded (a kill in
  mid-import can leave half-imported modules behind) and the next run loads the plugin afresh.
  A trigger whose run could only be stopped by killing a shared worker moves to process mode.
- **Worker deaths**: a worker that dies is respawned and its triggers reloaded. A run in flight
  in it that was not the cause (the watchdog killed the worker for another trigger's run) is run
  again once. When the cause is unknown (a segfault, `os._exit`), every interpreter-mode trigger
  with a run in flight there moves to a process of its own and its run is repeated there, so the
  culprit, whichever it was, from then on can only take down itself.
- **Leaks**: CPython 3.13.0 leaks 1.7–6.4 MiB per interpreter destroyed (reference §7), so a pool
  worker is replaced after RECYCLE_AFTER discarded interpreters; its triggers move to the new one.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Literal

import msgspec

from cache.plugin_cache import GLOBAL, TEST_DEFAULT_TTL, GlobalCache, test_namespaces
from host.interface import Database, WalFlush
from sandbox import procfs, protocol
from sandbox.guest import framing
from sandbox.limits import RunLimits, memory_refusal
from sandbox.plugin_files import PluginPathError, resolve_plugin_path
from sandbox.protocol import HttpResponse, LogLine
from sandbox.services import PluginServices
from sandbox.shared_flush import SharedFlush, share_flush
from sandbox.supervisor import WorkerError, WorkerProcess, worker_environment
from sandbox.watchdog import RunWatch, Watchdog

__all__ = [
    "HttpResponse", "LogLine", "PluginHandle", "PluginLoadError", "PluginRuntime", "PluginSpec",
    "PluginUsage", "RunLimits", "RunResult", "SharedFlush",
]

log = logging.getLogger("plughost.sandbox")

LOAD_TIMEOUT = 120.0  # seconds a plugin's module code may take to import
EXIT_STATUS_TIMEOUT = 5.0
CLOSE_DEADLINE = 5.0  # seconds plugin threads get at shutdown before their worker is killed
MEASURE_TIMEOUT = 2.0  # seconds an idle interpreter gets to count its objects
RECYCLE_AFTER = 25  # interpreters discarded in a pool worker before it is replaced (3.13.0 leaks)
_MAX_SOCKET_PATH = 100  # AF_UNIX paths are limited to 108 bytes

_load_reply = msgspec.json.Decoder(protocol.LoadReply)
_run_reply = msgspec.json.Decoder(protocol.RunReply)
_objects_reply = msgspec.json.Decoder(protocol.ObjectsReply)
_encode = msgspec.json.Encoder().encode


class PluginSpec(msgspec.Struct, frozen=True):
    """What to load for one trigger, and how."""

    trigger_name: str
    database: str
    plugin_filename: str  # relative to plugin_dir: a .py file or a directory with __init__.py
    kind: Literal["writes", "schedule", "request"]
    isolation: Literal["auto", "interpreter", "process"] = "auto"
    reload: Literal["on_change", "every_call"] = "on_change"
    dry_run: bool = False  # all writes captured, nothing persisted; queries real
    cache_name: str | None = None  # dry runs: cache namespace name (default "_shared_test")
    limits: RunLimits = RunLimits()  # unset limits take the runtime's defaults


class RunResult(msgspec.Struct):
    """The outcome of one invocation."""

    ok: bool
    error: str | None  # "ValueError: bad thing" style one-liner; a limit: "cpu time limit 500ms exceeded (512ms)"
    traceback: str | None  # starts in the plugin's own file and line
    logs: list[LogLine]
    writes: dict[str, list[str]]  # queued lines per database (dry runs: the sync ones too)
    response: HttpResponse | None  # request triggers only
    cpu_time: float
    wall_time: float
    mode: Literal["interpreter", "process"]
    peak_memory: int = 0  # bytes charged to the run, the figure max_memory is checked against


class PluginUsage(msgspec.Struct):
    """What one loaded trigger uses right now (see `PluginHandle.usage`)."""

    mode: Literal["interpreter", "process"]
    worker_pid: int | None  # None while no worker holds the trigger (after a crash, before reload)
    running: bool
    run_time: float | None  # seconds the run in flight has taken so far
    run_cpu_time: float | None  # CPU seconds of the run in flight (measured when it has limits)
    memory: int | None  # bytes charged now, as max_memory would count them
    worker_rss: int | None  # the worker's resident size
    thread_cpu_time: float | None  # CPU seconds of the trigger's worker thread since it was loaded
    runs: int
    limit_breaches: int
    last_cpu_time: float | None
    last_peak_memory: int | None
    objects: int | None  # objects the garbage collector tracks in the trigger's interpreter (when idle)
    object_bytes: int | None  # their shallow size: a lower bound on the interpreter's own memory
    limits: RunLimits


class PluginLoadError(Exception):
    """A plugin could not be loaded. `file`/`line` locate the failure in the plugin's code;
    `module` names an extension module that refused a subinterpreter; `traceback` is the
    plugin-side traceback when there is one."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 module: str | None = None, traceback: str | None = None) -> None:
        super().__init__(message)
        self.file = file
        self.line = line
        self.module = module
        self.traceback = traceback


def _load_error(reply: protocol.LoadReply, remedy: str = "") -> PluginLoadError:
    where = reply.file or "plugin"
    if reply.line is not None:
        where += f":{reply.line}"
    return PluginLoadError(f"{where}: {reply.error}{remedy}", file=reply.file, line=reply.line,
                           module=reply.refused_module, traceback=reply.traceback)


def _note(text: str) -> LogLine:
    return LogLine(time.time_ns(), "WARN", text)


class _Lost:
    """A run whose worker died under it: fail it with `error`, unless `repeat` is the note to
    log when it is run again."""

    def __init__(self, error: str, repeat: str | None = None) -> None:
        self.error = error
        self.repeat = repeat


class PluginHandle:
    """One loaded trigger. Runs are serialized per handle; every method is thread-safe."""

    def __init__(self, runtime: PluginRuntime, spec: PluginSpec, trigger_id: int, config: protocol.LoadConfig,
                 limits: RunLimits) -> None:
        self.spec = spec
        self.trigger_id = trigger_id
        self.limits = limits  # in force: the spec's limits over the runtime's defaults
        self.mode: Literal["interpreter", "process"] = "process" if spec.isolation == "process" else "interpreter"
        self.load_logs: list[LogLine] = []  # notes from loading, e.g. the fall-back to process mode
        self.runs = 0
        self.limit_breaches = 0
        self._runtime = runtime
        self._config = config
        self._lock = threading.Lock()
        self._slot: int | None = None
        self._dedicated: WorkerProcess | None = None
        self._worker: WorkerProcess | None = None
        self._channel: socket.socket | None = None
        self._native_id: int | None = None
        self._thread_cpu: float | None = None  # the trigger thread's CPU seconds at its last run's end
        self._watch: RunWatch | None = None  # the run in flight
        self._last: RunResult | None = None
        self._closed = False
        self._load_killed_worker = False

    # -- loading --------------------------------------------------------------------------

    def _open(self) -> protocol.LoadReply:
        """Load into the worker this handle belongs on; returns the LoadReply. Lock held."""
        worker = self._runtime._worker_for(self)
        process = self.mode == "process"
        channel = worker.open_trigger(self.trigger_id, self._config, process,
                                      self.limits.max_memory if process else None)
        channel.settimeout(LOAD_TIMEOUT)
        try:
            header, _ = framing.receive(channel)
        except (OSError, framing.ChannelClosed):
            channel.close()
            reason = worker.exit_reason(EXIT_STATUS_TIMEOUT)
            self._load_killed_worker = True
            return protocol.LoadReply(ok=False, error=f"{reason} while loading the plugin", file=self.spec.plugin_filename)
        channel.settimeout(None)
        reply = _load_reply.decode(header)
        if reply.ok:
            self._worker, self._channel, self._native_id = worker, channel, reply.native_id
        else:
            channel.close()
        return reply

    def _ensure_loaded(self) -> None:
        """(Re)load after a worker death, a discarded interpreter or a recycled worker. Lock
        held. Raises PluginLoadError, WorkerError."""
        worker = self._worker
        if self._channel is not None and worker is not None and worker.alive and not worker.retired:
            return
        self._drop_channel()
        reply = self._open()
        if not reply.ok:
            raise _load_error(reply)
        self._load_killed_worker = False

    def _drop_channel(self) -> None:
        """Close the trigger's channel: its worker then destroys the trigger's interpreter. Lock held."""
        if self._channel is not None:
            self._channel.close()
            if self.mode == "interpreter" and self._worker is not None:
                self._runtime._interpreter_discarded(self._worker)
        self._channel = None
        self._worker = None
        self._native_id = None
        self._thread_cpu = None

    def _discard_interpreter(self) -> None:
        """After an interrupt: the plugin's interpreter may hold half-run code (reference §6a), so
        the next run gets a fresh one. In process mode that means a fresh worker. Lock held."""
        self._drop_channel()
        if self.mode == "process" and self._dedicated is not None:
            self._runtime._stop_later(self._dedicated)
            self._dedicated = None

    def _move_to_process(self) -> None:
        """Give the trigger a worker of its own from the next load on. Lock held."""
        self._drop_channel()
        self.mode = "process"
        self._slot = None

    def reload_after_crash(self) -> None:
        """Reload eagerly after the worker died; a failure waits for the next run to retry."""
        with self._lock:
            if self._closed or self._load_killed_worker:
                return
            try:
                self._ensure_loaded()
            except (PluginLoadError, WorkerError) as e:
                log.warning("trigger %s could not be reloaded: %s", self.spec.trigger_name, e)

    # -- running --------------------------------------------------------------------------

    def run_writes(self, flush: SharedFlush, table: str | None, args: dict[str, str] | None) -> RunResult:
        """Call process_writes with the flush's tables of this trigger's database (`table` only,
        unless None = all tables). Blocks until the run ends. The caller keeps its reference to
        `flush` for the duration of the call."""
        request = protocol.RunRequest(kind="writes", flush_id=flush.flush_id, table=table, args=args)
        return self._run(request, b"", flush)

    def run_schedule(self, call_time: datetime, args: dict[str, str] | None) -> RunResult:
        """Call process_scheduled_call with `call_time` as a naive local datetime in whole seconds."""
        request = protocol.RunRequest(kind="schedule", call_time=int(call_time.timestamp()), args=args)
        return self._run(request, b"", None)

    def run_request(self, query_params: dict[str, str], headers: dict[str, str], body: bytes,
                    args: dict[str, str] | None) -> RunResult:
        """Call process_request; header names are lower-cased and Authorization is dropped.
        RunResult.response holds the converted response (500 + {"error": …} on failure)."""
        lowered = {k.lower(): v for k, v in headers.items() if k.lower() != "authorization"}
        request = protocol.RunRequest(kind="request", query_params=dict(query_params), headers=lowered, args=args)
        return self._run(request, bytes(body), None)

    def _failure(self, kind: str, error: str, started: float, *, notes: list[LogLine] = (),
                 traceback: str | None = None, logs: list[LogLine] = (), cpu_time: float = 0.0,
                 peak_memory: int = 0) -> RunResult:
        response = None
        if kind == "request":
            response = HttpResponse(500, {"Content-Type": "application/json"}, _encode({"error": error}))
        return RunResult(ok=False, error=error, traceback=traceback, logs=[*notes, *logs], writes={},
                         response=response, cpu_time=cpu_time, wall_time=time.perf_counter() - started,
                         mode=self.mode, peak_memory=peak_memory)

    def _run(self, request: protocol.RunRequest, payload: bytes, flush: SharedFlush | None) -> RunResult:
        started = time.perf_counter()
        notes: list[LogLine] = []
        with self._lock:
            for attempt in range(2):
                if self._closed:
                    return self._failure(request.kind, "trigger is closed", started, notes=notes)
                try:
                    self._ensure_loaded()
                except (PluginLoadError, WorkerError) as e:
                    return self._failure(request.kind, f"plugin could not be loaded: {e}", started, notes=notes)
                result = self._exchange(request, payload, flush, started, notes, last_attempt=attempt == 1)
                if result is not None:
                    self.runs += 1
                    self._last = result
                    return result
        raise AssertionError("unreachable: the second attempt always returns")

    def _exchange(self, request: protocol.RunRequest, payload: bytes, flush: SharedFlush | None,
                  started: float, notes: list[LogLine], last_attempt: bool) -> RunResult | None:
        """Send one run to the loaded plugin and read its reply, under the watchdog. Returns the
        result, or None when the run is to be repeated. Lock held."""
        worker, channel, mode = self._worker, self._channel, self.mode
        fds: list[int] = []
        if flush is not None:
            fd = flush.fd_for(worker)
            if fd is not None:
                request = msgspec.structs.replace(request, attach=True)
                payload = flush.layout_json
                fds = [fd]
        watch = self._runtime._watchdog.begin(self._new_watch(worker))
        self._watch = watch
        try:
            framing.send(channel, _encode(request), payload, fds)
            header, body = framing.receive(channel)
        except (OSError, framing.ChannelClosed):
            header = body = None
        finally:
            self._runtime._watchdog.end(watch)
            self._watch = None
        if header is None:
            lost = self._lost(worker, watch, notes)
            if lost.repeat is not None and not last_attempt:
                notes.append(_note(lost.repeat))
                return None
            return self._failure(request.kind, lost.error, started, notes=notes,
                                 cpu_time=watch.cpu, peak_memory=self._peak_memory(watch, mode, worker, None))
        if fds:
            flush.mark_mapped(worker)
        try:
            reply = _run_reply.decode(header)
        except msgspec.DecodeError as e:
            self._discard_interpreter()
            return self._failure(request.kind, f"the plugin's reply could not be decoded: {e}", started, notes=notes)
        self._thread_cpu = reply.thread_cpu
        peak_memory = self._peak_memory(watch, mode, worker, reply)
        if watch.breach is None and self._refused_by_cap(mode, reply):
            watch.breach = memory_refusal(self.limits.max_memory, peak_memory)
        if watch.breach is not None:
            self.limit_breaches += 1
            self._discard_interpreter()
            log.info("trigger %s: %s", self.spec.trigger_name, watch.breach)
            return self._failure(request.kind, watch.breach, started, notes=notes, traceback=reply.traceback,
                                 logs=reply.logs, cpu_time=max(reply.cpu_time, watch.cpu), peak_memory=peak_memory)
        response = None
        if reply.response is not None:
            response = HttpResponse(reply.response.status, reply.response.headers, bytes(body))
        if not reply.ok:
            log.info("trigger %s failed: %s", self.spec.trigger_name, reply.error)
        return RunResult(ok=reply.ok, error=reply.error, traceback=reply.traceback, logs=[*notes, *reply.logs],
                         writes=reply.writes, response=response, cpu_time=reply.cpu_time,
                         wall_time=time.perf_counter() - started, mode=mode, peak_memory=peak_memory)

    def _refused_by_cap(self, mode: str, reply: protocol.RunReply) -> bool:
        """A process-mode run that died of MemoryError under its worker's address-space cap."""
        return (mode == "process" and self.limits.max_memory is not None and not reply.ok
                and (reply.error or "").startswith("MemoryError"))

    def _new_watch(self, worker: WorkerProcess) -> RunWatch:
        """The run's watch. The CPU baseline is the thread's total at the previous run's end (it
        does next to nothing between runs), so a run with limits costs a /proc read only for
        its memory baseline, and only in interpreter mode with max_memory."""
        if self.mode == "process":
            base = worker.base_rss
        else:
            base = procfs.resident_bytes(worker.pid) if self.limits.max_memory is not None else None
        return RunWatch(worker, self.trigger_id, self._native_id, self.limits, base, self._thread_cpu)

    @staticmethod
    def _peak_memory(watch: RunWatch, mode: str, worker: WorkerProcess, reply: protocol.RunReply | None) -> int:
        """The bytes charged to the run: the worker's peak resident size seen during it, less the
        bare worker (process mode) or the worker at the run's start (interpreter mode)."""
        peak = watch.peak_rss
        base = watch.memory_base
        if reply is not None:
            peak = max(peak, reply.rss_start, reply.rss_end)
            if base is None:
                base = reply.rss_start
        if base is None:
            return 0
        return max(0, peak - (worker.base_rss if mode == "process" else base))

    def _lost(self, worker: WorkerProcess, watch: RunWatch, notes: list[LogLine]) -> _Lost:
        """The channel broke mid-run: the trigger was closed, or its worker died. Lock held."""
        mode = self.mode
        self._drop_channel()
        if self._closed:
            return _Lost("trigger was closed during the run")
        reason = worker.exit_reason(EXIT_STATUS_TIMEOUT)
        name = self.spec.trigger_name
        if watch.breach is not None:
            self.limit_breaches += 1
            log.warning("trigger %s: %s; the plugin did not stop when interrupted, its worker was killed", name, watch.breach)
            if mode == "interpreter":
                self._move_to_process()
                notes.append(_note(f"trigger {name} moves to process mode: stopping its run took killing a "
                                   "shared worker, so from now on it has a worker of its own"))
            return _Lost(f"{watch.breach}; the plugin did not stop when interrupted, so its worker process was killed")
        if worker.killed_for is not None:
            return _Lost(f"{reason}: the worker was killed to stop another trigger's run",
                         repeat=f"the run was repeated: its worker was killed to stop another trigger's run ({reason})")
        log.warning("trigger %s: %s during a run", name, reason)
        if mode == "interpreter":
            self._move_to_process()
            return _Lost(reason, repeat=(
                f"{reason} while this run was in flight; the cause cannot be told apart from the other runs in "
                f"that worker, so trigger {name} moves to a process of its own and the run is repeated there"))
        return _Lost(reason)

    # -- measuring ------------------------------------------------------------------------

    def _count_objects(self) -> protocol.ObjectsReply | None:
        """Ask an idle interpreter to count its objects (milliseconds per 100k objects); None
        when a run is in progress or the answer does not come within MEASURE_TIMEOUT."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            channel = self._channel
            if channel is None:
                return None
            channel.settimeout(MEASURE_TIMEOUT)
            self._thread_cpu = None  # counting uses the trigger's thread: the next run reads its baseline afresh
            try:
                framing.send(channel, _encode(protocol.RunRequest(kind="measure")))
                header, _ = framing.receive(channel)
                return _objects_reply.decode(header)
            except (OSError, framing.ChannelClosed, msgspec.DecodeError):
                self._discard_interpreter()  # a half-read answer leaves the channel out of step
                return None
            finally:
                if self._channel is not None:
                    self._channel.settimeout(None)
        finally:
            self._lock.release()

    def usage(self) -> PluginUsage:
        """What the trigger uses now. Never waits for a run in progress: reads /proc, and counts
        the interpreter's objects when it is idle (see `PluginUsage`)."""
        objects = self._count_objects()
        worker, watch, native_id, mode, last = self._worker, self._watch, self._native_id, self.mode, self._last
        pid = worker.pid if worker is not None and worker.alive else None
        rss = procfs.resident_bytes(pid) if pid is not None else None
        thread_cpu = procfs.thread_cpu_time(pid, native_id) if pid is not None and native_id is not None else None
        memory = None
        if rss is not None:
            if mode == "process":
                memory = max(0, rss - worker.base_rss)
            elif watch is not None and watch.memory_base is not None:
                memory = watch.charge(rss)
        run_cpu = None
        if watch is not None and watch.cpu_start is not None and thread_cpu is not None:
            run_cpu = thread_cpu - watch.cpu_start
        return PluginUsage(
            mode=mode, worker_pid=pid, running=watch is not None,
            run_time=time.monotonic() - watch.started if watch is not None else None,
            run_cpu_time=run_cpu, memory=memory, worker_rss=rss, thread_cpu_time=thread_cpu,
            runs=self.runs, limit_breaches=self.limit_breaches,
            last_cpu_time=last.cpu_time if last is not None else None,
            last_peak_memory=last.peak_memory if last is not None else None,
            objects=objects.objects if objects is not None else None,
            object_bytes=objects.object_bytes if objects is not None else None,
            limits=self.limits,
        )

    # -- closing --------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the trigger: its interpreter is destroyed once its own threads end (within a
        few seconds; otherwise it is abandoned until its worker exits). Never blocks on a run in
        progress: that run returns a 'trigger was closed' failure."""
        self._closed = True
        channel = self._channel
        if channel is not None:
            try:
                channel.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        with self._lock:
            self._drop_channel()
            dedicated, self._dedicated = self._dedicated, None
        self._runtime._forget(self)
        if dedicated is not None:
            dedicated.stop(CLOSE_DEADLINE)


class PluginRuntime:
    """Worker processes, plugin services, the global cache and the limits watchdog for one
    server (or embedding). `limits` are the defaults for every trigger's unset limits."""

    def __init__(self, database: Database, plugin_dir: Path, run_dir: Path, *, workers: int | None = None,
                 global_cache: GlobalCache | None = None, limits: RunLimits = RunLimits(),
                 recycle_after: int = RECYCLE_AFTER) -> None:
        self.database = database
        self.limits = limits
        self.recycle_after = recycle_after
        self.plugin_dir = Path(plugin_dir).resolve()
        self.run_dir = Path(run_dir)
        self.global_cache = global_cache if global_cache is not None else GlobalCache()
        self.workers = workers or os.cpu_count() or 1
        self._env = worker_environment(self.plugin_dir)
        self._pool: list[WorkerProcess | None] = []
        self._pool_changed = threading.Condition()
        self._handles: set[PluginHandle] = set()
        self._handles_lock = threading.Lock()
        self._trigger_ids = itertools.count(1)
        self._flush_ids = itertools.count(1)
        self._closing = False
        self._services: PluginServices | None = None
        self._socket_dir: str | None = None
        self._watchdog = Watchdog()

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the services endpoint and the worker pool. Blocks until every worker is ready
        (a fraction of a second each). Raises WorkerError if a worker cannot start."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        socket_path = self.run_dir / "plugin-services.sock"
        if len(str(socket_path)) > _MAX_SOCKET_PATH:
            self._socket_dir = tempfile.mkdtemp(prefix="plughost-")
            socket_path = Path(self._socket_dir) / "services.sock"
        self._services = PluginServices(self.database, self.global_cache, socket_path)
        self._services.start()
        self._watchdog.start()
        workers = [self._new_worker(f"pool-{i}") for i in range(self.workers)]
        threads = [threading.Thread(target=w.start) for w in workers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for worker in workers:
            if not worker.pid:
                self.close()
                raise WorkerError(f"plugin worker {worker.label} did not start")
        with self._pool_changed:
            self._pool = list(workers)

    def close(self) -> None:
        """Close every trigger and stop every worker. Plugin threads get a few seconds; workers
        still running then are killed, so this never hangs."""
        self._closing = True
        with self._handles_lock:
            handles = list(self._handles)
        for handle in handles:
            handle.close()
        with self._pool_changed:
            pool, self._pool = [w for w in self._pool if w is not None], []
            self._pool_changed.notify_all()
        for worker in pool:
            worker.begin_stop(CLOSE_DEADLINE)
        until = time.monotonic() + CLOSE_DEADLINE + 1.0
        for worker in pool:
            worker.finish_stop(until)
        self._watchdog.close()
        if self._services is not None:
            self._services.close()
        if self._socket_dir is not None:
            os.rmdir(self._socket_dir)
            self._socket_dir = None

    def __enter__(self) -> PluginRuntime:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- flushes --------------------------------------------------------------------------

    def share(self, flush: WalFlush) -> SharedFlush:
        """Copy the flush's Arrow buffers once into one shared segment; returns it with one
        reference owned by the caller (release it when every run using it has returned).
        Raises ValueError for a column type the plugin side cannot read."""
        return share_flush(flush, next(self._flush_ids), self._flush_released)

    def _flush_released(self, flush: SharedFlush) -> None:
        for worker in flush.mapped_in():
            worker.release_flush(flush.flush_id)

    # -- loading --------------------------------------------------------------------------

    def load(self, spec: PluginSpec) -> PluginHandle:
        """Import the plugin in its interpreter and return its handle. Blocks until imported.

        Raises PluginLoadError naming the file and line of a failure. An extension module that
        refuses subinterpreters is named with the remedy; with isolation="auto" the trigger
        instead falls back to process mode (noted in handle.load_logs and the log).
        """
        if self._closing:
            raise PluginLoadError("the plugin runtime is closed")
        try:
            path = resolve_plugin_path(self.plugin_dir, spec.plugin_filename)
        except PluginPathError as e:
            raise PluginLoadError(str(e), file=spec.plugin_filename) from None
        if spec.dry_run:
            local_ns, global_ns = test_namespaces(spec.cache_name or "_shared_test")
            default_ttl = TEST_DEFAULT_TTL
        else:
            local_ns, global_ns, default_ttl = None, GLOBAL, None
        config = protocol.LoadConfig(
            trigger_name=spec.trigger_name, database=spec.database, plugin_path=str(path),
            plugin_dir=str(self.plugin_dir), kind=spec.kind, reload=spec.reload, dry_run=spec.dry_run,
            cache_local_namespace=local_ns, cache_global_namespace=global_ns, cache_default_ttl=default_ttl,
            services_path=str(self._services.path),
        )
        handle = PluginHandle(self, spec, next(self._trigger_ids), config, spec.limits.over(self.limits))
        with self._handles_lock:
            self._handles.add(handle)
        try:
            self._first_load(handle)
        except WorkerError as e:
            handle.close()
            raise PluginLoadError(f"{spec.plugin_filename}: {e}", file=spec.plugin_filename) from e
        except BaseException:
            handle.close()
            raise
        return handle

    def _first_load(self, handle: PluginHandle) -> None:
        with handle._lock:
            if handle.mode == "interpreter":
                handle._slot = self._least_loaded_slot()
            reply = handle._open()
            if reply.ok:
                if handle.mode == "process":
                    handle.load_logs.append(LogLine(time.time_ns(), "INFO", (
                        f"running trigger {handle.spec.trigger_name} in process mode (isolation=process): "
                        f"worker pid {handle._worker.pid}")))
                return
            if handle.mode == "process" or reply.refused_module is None:
                raise _load_error(reply)
            remedy = (f" (module {reply.refused_module} does not support subinterpreters; "
                      f"load this trigger with isolation='process')")
            if handle.spec.isolation == "interpreter":
                raise _load_error(reply, remedy)
            note = (f"plugin {handle.spec.plugin_filename} imports {reply.refused_module}, which does not "
                    f"support subinterpreters; running trigger {handle.spec.trigger_name} in process mode")
            log.warning(note)
            handle.load_logs.append(LogLine(time.time_ns(), "WARN", note))
            handle.mode = "process"
            handle._slot = None
            reply = handle._open()
            if not reply.ok:
                raise _load_error(reply)

    def _least_loaded_slot(self) -> int:
        with self._handles_lock:
            counts = [0] * self.workers
            for handle in self._handles:
                if handle._slot is not None:
                    counts[handle._slot] += 1
        return counts.index(min(counts))

    def _new_worker(self, label: str) -> WorkerProcess:
        return WorkerProcess(label, self._env, self._worker_exited, self._interpreter_abandoned)

    def _worker_for(self, handle: PluginHandle) -> WorkerProcess:
        """A live worker for `handle` (its pool slot's, or its own), spawning one if needed."""
        if handle.mode == "process":
            if handle._dedicated is None or not handle._dedicated.alive:
                worker = self._new_worker(f"trigger-{handle.trigger_id}")
                worker.start()
                handle._dedicated = worker
            return handle._dedicated
        deadline = time.monotonic() + LOAD_TIMEOUT
        with self._pool_changed:
            while True:
                if self._closing:
                    raise WorkerError("the plugin runtime is closed")
                worker = self._pool[handle._slot] if handle._slot < len(self._pool) else None
                if worker is not None and worker.alive and not worker.retired:
                    return worker
                if not self._pool_changed.wait(max(0.0, deadline - time.monotonic())):
                    raise WorkerError("no plugin worker became available")

    def _stop_later(self, worker: WorkerProcess) -> None:
        """Stop a worker on a thread of its own (its plugin threads get CLOSE_DEADLINE)."""
        threading.Thread(target=worker.stop, args=(CLOSE_DEADLINE,), name=f"stop-{worker.label}", daemon=True).start()

    def _interpreter_discarded(self, worker: WorkerProcess) -> None:
        """Count an interpreter closed in a live pool worker; at `recycle_after`, replace the
        worker (3.13.0 never gives back the 1.7–6.4 MiB each one leaks)."""
        if not worker.alive or worker.retired:
            return
        worker.interpreters_discarded += 1
        if worker.interpreters_discarded >= self.recycle_after:
            log.info("plugin worker %s (pid %s): %d interpreters were discarded in it (CPython 3.13.0 leaks "
                     "memory for each); replacing the worker", worker.label, worker.pid, worker.interpreters_discarded)
            self._retire(worker)

    def _interpreter_abandoned(self, worker: WorkerProcess, report: protocol.Abandoned) -> None:
        """On the worker's watch thread: an interpreter stays behind with the plugin's threads
        (they may spin forever), so the pool worker is replaced and they end with it."""
        log.warning("plugin worker %s (pid %s) keeps a closed trigger's interpreter (%s); replacing the worker",
                    worker.label, worker.pid, report.reason)
        self._retire(worker)

    def _retire(self, worker: WorkerProcess) -> None:
        """Replace a pool worker on a thread of its own (`_recycle`); idempotent."""
        with self._pool_changed:
            if worker not in self._pool or worker.retired or self._closing:
                return
            worker.retired = True
        threading.Thread(target=self._recycle, args=(worker,), name=f"recycle-{worker.label}", daemon=True).start()

    def _recycle(self, old: WorkerProcess) -> None:
        """Start a replacement, put it in the old worker's slot, move the slot's triggers over
        (each after its run in progress), then stop the old worker."""
        replacement = self._new_worker(old.label)
        try:
            replacement.start()
        except WorkerError as e:
            log.error("could not start a replacement for plugin worker %s: %s", old.label, e)
            with self._pool_changed:
                old.retired = False
                old.interpreters_discarded = 0
                self._pool_changed.notify_all()
            return
        with self._pool_changed:
            if self._closing or old not in self._pool:
                replacement.stop(0.0)
                return
            slot = self._pool.index(old)
            self._pool[slot] = replacement
            self._pool_changed.notify_all()
        with self._handles_lock:
            handles = [h for h in self._handles if h._slot == slot]
        for handle in handles:
            handle.reload_after_crash()
        old.stop(CLOSE_DEADLINE)

    def _worker_exited(self, worker: WorkerProcess) -> None:
        """Called on the worker's watch thread when a worker died on its own."""
        if self._closing:
            return
        log.warning("plugin worker %s (pid %s): %s", worker.label, worker.pid, worker.exit_reason(0))
        threading.Thread(target=self._replace, args=(worker,), name=f"respawn-{worker.label}", daemon=True).start()

    def _replace(self, dead: WorkerProcess) -> None:
        with self._pool_changed:
            slot = self._pool.index(dead) if dead in self._pool else None
        if slot is not None:
            replacement = self._new_worker(dead.label)
            try:
                replacement.start()
            except WorkerError as e:
                log.error("could not respawn plugin worker %s: %s", dead.label, e)
                return
            with self._pool_changed:
                if self._closing:
                    replacement.stop(0.0)
                    return
                self._pool[slot] = replacement
                self._pool_changed.notify_all()
        with self._handles_lock:
            handles = [h for h in self._handles if (slot is not None and h._slot == slot) or h._dedicated is dead]
        for handle in handles:
            handle.reload_after_crash()

    def _forget(self, handle: PluginHandle) -> None:
        with self._handles_lock:
            self._handles.discard(handle)
