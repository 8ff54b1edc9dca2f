"""The sandbox's public API: load plugins into worker processes, run them, share flushes with them.

`PluginRuntime` owns the worker processes, the plugin services endpoint and the global cache;
`PluginHandle` is one loaded trigger. Interpreter mode (the default for pure-Python plugins)
puts a trigger in an isolated subinterpreter of a pool worker; process mode gives it a worker
of its own and runs it in that worker's main interpreter. A worker that dies fails the runs in
flight with a RunResult naming its exit status and is respawned with its triggers reloaded; no
plugin failure propagates into the caller as an exception.
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
from sandbox import protocol
from sandbox.guest import framing
from sandbox.plugin_files import PluginPathError, resolve_plugin_path
from sandbox.protocol import HttpResponse, LogLine
from sandbox.services import PluginServices
from sandbox.shared_flush import SharedFlush, share_flush
from sandbox.supervisor import WorkerError, WorkerProcess, worker_environment

__all__ = [
    "HttpResponse", "LogLine", "PluginHandle", "PluginLoadError", "PluginRuntime", "PluginSpec",
    "RunResult", "SharedFlush",
]

log = logging.getLogger("plughost.sandbox")

LOAD_TIMEOUT = 120.0  # seconds a plugin's module code may take to import
EXIT_STATUS_TIMEOUT = 5.0
CLOSE_DEADLINE = 5.0  # seconds plugin threads get at shutdown before their worker is killed
_MAX_SOCKET_PATH = 100  # AF_UNIX paths are limited to 108 bytes

_load_reply = msgspec.json.Decoder(protocol.LoadReply)
_run_reply = msgspec.json.Decoder(protocol.RunReply)
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


class RunResult(msgspec.Struct):
    """The outcome of one invocation."""

    ok: bool
    error: str | None  # "ValueError: bad thing" style one-liner
    traceback: str | None  # starts in the plugin's own file and line
    logs: list[LogLine]
    writes: dict[str, list[str]]  # queued lines per database (dry runs: the sync ones too)
    response: HttpResponse | None  # request triggers only
    cpu_time: float
    wall_time: float
    mode: Literal["interpreter", "process"]


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


class PluginHandle:
    """One loaded trigger. Runs are serialized per handle; every method is thread-safe."""

    def __init__(self, runtime: PluginRuntime, spec: PluginSpec, trigger_id: int, config: protocol.LoadConfig) -> None:
        self.spec = spec
        self.trigger_id = trigger_id
        self.mode: Literal["interpreter", "process"] = "process" if spec.isolation == "process" else "interpreter"
        self.load_logs: list[LogLine] = []  # notes from loading, e.g. the fall-back to process mode
        self._runtime = runtime
        self._config = config
        self._lock = threading.Lock()
        self._slot: int | None = None
        self._dedicated: WorkerProcess | None = None
        self._worker: WorkerProcess | None = None
        self._channel: socket.socket | None = None
        self._closed = False
        self._load_killed_worker = False

    # -- loading --------------------------------------------------------------------------

    def _open(self) -> protocol.LoadReply:
        """Load into the worker this handle belongs on; returns the LoadReply. Lock held."""
        worker = self._runtime._worker_for(self)
        channel = worker.open_trigger(self.trigger_id, self._config, self.mode == "process")
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
            self._worker, self._channel = worker, channel
        else:
            channel.close()
        return reply

    def _ensure_loaded(self) -> None:
        """(Re)load after a worker death. Lock held. Raises PluginLoadError."""
        if self._channel is not None and self._worker is not None and self._worker.alive:
            return
        self._drop_channel()
        reply = self._open()
        if not reply.ok:
            raise _load_error(reply)
        self._load_killed_worker = False

    def _drop_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
        self._channel = None
        self._worker = None

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

    def _failure(self, kind: str, error: str, started: float) -> RunResult:
        response = None
        if kind == "request":
            response = HttpResponse(500, {"Content-Type": "application/json"}, _encode({"error": error}))
        return RunResult(ok=False, error=error, traceback=None, logs=[], writes={}, response=response,
                         cpu_time=0.0, wall_time=time.perf_counter() - started, mode=self.mode)

    def _run(self, request: protocol.RunRequest, payload: bytes, flush: SharedFlush | None) -> RunResult:
        started = time.perf_counter()
        with self._lock:
            if self._closed:
                return self._failure(request.kind, "trigger is closed", started)
            try:
                self._ensure_loaded()
            except (PluginLoadError, WorkerError) as e:
                return self._failure(request.kind, f"plugin could not be loaded: {e}", started)
            worker, channel = self._worker, self._channel
            fds: list[int] = []
            if flush is not None:
                fd = flush.fd_for(worker)
                if fd is not None:
                    request = msgspec.structs.replace(request, attach=True)
                    payload = flush.layout_json
                    fds = [fd]
            try:
                framing.send(channel, _encode(request), payload, fds)
                header, body = framing.receive(channel)
            except (OSError, framing.ChannelClosed):
                return self._lost(worker, request.kind, started)
            try:
                reply = _run_reply.decode(header)
            except msgspec.DecodeError as e:
                return self._failure(request.kind, f"the plugin's reply could not be decoded: {e}", started)
            if fds:
                flush.mark_mapped(worker)
        response = None
        if reply.response is not None:
            response = HttpResponse(reply.response.status, reply.response.headers, bytes(body))
        if not reply.ok:
            log.info("trigger %s failed: %s", self.spec.trigger_name, reply.error)
        return RunResult(ok=reply.ok, error=reply.error, traceback=reply.traceback, logs=reply.logs,
                         writes=reply.writes, response=response, cpu_time=reply.cpu_time,
                         wall_time=time.perf_counter() - started, mode=self.mode)

    def _lost(self, worker: WorkerProcess, kind: str, started: float) -> RunResult:
        """The channel broke mid-run: the trigger was closed, or its worker died. Lock held."""
        self._drop_channel()
        if self._closed:
            return self._failure(kind, "trigger was closed during the run", started)
        reason = worker.exit_reason(EXIT_STATUS_TIMEOUT)
        log.warning("trigger %s: %s during a run", self.spec.trigger_name, reason)
        return self._failure(kind, reason, started)

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
    """Worker processes, plugin services and the global cache for one server (or embedding)."""

    def __init__(self, database: Database, plugin_dir: Path, run_dir: Path, *, workers: int | None = None,
                 global_cache: GlobalCache | None = None) -> None:
        self.database = database
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
        handle = PluginHandle(self, spec, next(self._trigger_ids), config)
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
        return WorkerProcess(label, self._env, self._worker_exited)

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
                if worker is not None and worker.alive:
                    return worker
                if not self._pool_changed.wait(max(0.0, deadline - time.monotonic())):
                    raise WorkerError("no plugin worker became available")

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
