"""The processing engine: triggers created, started, fed and stopped; their runs, logs and system tables.

`ProcessingEngine` composes the trigger catalog (`triggers.catalog`), one dispatcher per running
trigger (`triggers.dispatch`), the scheduler thread (`triggers.scheduler`) and the plugin runtime
(`sandbox.runtime`) over any `host.interface.Database`. The system tables appear in databases
that also offer `register_system_table(name, provider)`, as `host.database.LocalDatabase` does.

Threads: the database's flush thread only hands shared flushes to dispatcher queues; the
scheduler thread only hands ticks over; every plugin run happens on its trigger's own worker
threads. So a slow plugin delays nothing but its own trigger, and a plugin may write
(`write_sync`) or call the server's HTTP API (a request trigger) from inside a run.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import Future
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, NamedTuple

import msgspec
import pyarrow as pa

from host.buffer import build_batch
from host.catalog import INTERNAL_DATABASE, TAG, ColumnDef, TableSchema
from host.interface import DatabaseNotFound as InterfaceDatabaseNotFound
from host.interface import FlushedTable, WalFlush, WriteError
from cache.plugin_cache import trigger_namespace
from host.lineprotocol import parse, to_nanoseconds
from sandbox.plugin_files import PluginPathError, resolve_plugin_path
from sandbox.runtime import (
    HttpResponse, PluginHandle, PluginLoadError, PluginRuntime, PluginSpec, PluginUsage, RunResult, SharedFlush,
)
from triggers.catalog import (
    SettingsError,
    TriggerCatalog,
    TriggerDefinition,
    TriggerExists,
    TriggerNotFound,
    TriggerSettings,
)
from triggers.dispatch import DEFAULT_ASYNC_CONCURRENCY, DEFAULT_CAPACITY, Dispatcher
from triggers.schedule import CronError, format_duration, format_instant, format_rfc3339, parse_cron
from triggers.scheduler import Scheduler
from triggers.spec import RequestSpec, TriggerSpec, TriggerSpecError, parse_trigger_spec

__all__ = [
    "DatabaseNotFound",
    "EngineError",
    "InvalidTrigger",
    "PluginFileError",
    "ProcessingEngine",
    "RequestPathTaken",
    "SettingsError",
    "TriggerExists",
    "TriggerNotFound",
    "TriggerRunning",
    "TriggerSettings",
    "TriggerSpecError",
    "TriggerUsage",
]

log = logging.getLogger("plughost.engine")

LOG_CAPACITY = 10_000  # InfluxDB 3's sys-event ring buffer size for processing_engine_logs
RUN_HISTORY_CAPACITY = 10_000
RETRY_DELAYS = (0.25, 0.5, 1.0)  # error_behavior=retry: attempts after the first, and the wait before each
STOP_GRACE_SECONDS = 2.0  # how long disable/delete/close let a run in progress finish before closing its plugin
DRY_RUN_CACHE = "_shared_test"
_NOT_FOUND = HttpResponse(404, {}, b'{error: "not found"}')  # InfluxDB 3's body, verbatim (not JSON)
_FIELD_TYPES = {"f": "float64", "i": "int64", "u": "uint64", "b": "bool", "s": "utf8"}


class EngineError(Exception):
    """A trigger operation was refused; the message says why."""


class DatabaseNotFound(EngineError):
    """The trigger's database does not exist."""

    def __init__(self, database: str):
        super().__init__(f"the requested resource was not found: database {database!r}")


class PluginFileError(EngineError):
    """The plugin file is missing, outside the plugin directory, or not loadable."""


class InvalidTrigger(EngineError):
    """The trigger definition is inconsistent (bad name, arguments, or a schedule that never fires)."""


class RequestPathTaken(EngineError):
    """Another trigger already serves that request path."""


class TriggerRunning(EngineError):
    """An enabled trigger cannot be deleted without force (InfluxDB 3's ProcessingEngineTriggerRunning)."""

    def __init__(self, name: str):
        super().__init__(f"Cannot delete running plugin {name}. Disable it first or use --force.")


# --- events a trigger's dispatcher runs ------------------------------------------------------

# `queued_ns` is when the event reached the trigger: the flush was handed over, the tick fired,
# the request arrived. The runs table shows it, so queueing delay is visible per run.

class _Writes(NamedTuple):
    shared: SharedFlush  # one reference, owned by this event
    table: str | None
    queued_ns: int


class _Tick(NamedTuple):
    call_time_ns: int
    queued_ns: int


class _Request(NamedTuple):
    query_params: dict[str, str]
    headers: dict[str, str]
    body: bytes
    answer: Future
    queued_ns: int


class TriggerUsage(msgspec.Struct):
    """What one running trigger uses now: one entry per loaded interpreter of its plugin (a
    synchronous trigger has one; an asynchronous one up to its concurrency)."""

    database_name: str
    trigger_name: str
    mode: str
    slots: list[PluginUsage]


class _Trigger:
    """A started trigger: its definition, its loaded plugin interpreters and its dispatcher.

    A synchronous trigger has one interpreter. An asynchronous one loads another interpreter
    of the same plugin whenever all loaded ones are busy, up to the dispatcher's concurrency.
    """

    def __init__(self, definition: TriggerDefinition, spec: TriggerSpec, plugin: PluginSpec):
        self.definition = definition
        self.spec = spec
        self.plugin = plugin
        self.key = (definition.database_name, definition.trigger_name)
        self.dispatcher: Dispatcher | None = None
        self.stopping = threading.Event()
        self._handles: list[PluginHandle] = []
        self._idle: list[PluginHandle] = []
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.definition.trigger_name

    @property
    def mode(self) -> str:
        return self._handles[0].mode if self._handles else ""

    def adopt(self, handle: PluginHandle) -> None:
        with self._lock:
            self._handles.append(handle)
            self._idle.append(handle)

    def add_busy(self, handle: PluginHandle) -> None:
        """Count a newly loaded interpreter that is about to run (`give_back` makes it idle)."""
        with self._lock:
            self._handles.append(handle)

    def take(self) -> PluginHandle | None:
        """An idle interpreter, or None when all are busy."""
        with self._lock:
            return self._idle.pop() if self._idle else None

    def give_back(self, handle: PluginHandle) -> None:
        with self._lock:
            self._idle.append(handle)

    def usage(self) -> list[PluginUsage]:
        with self._lock:
            handles = list(self._handles)
        return [handle.usage() for handle in handles]

    def close_handles(self) -> None:
        with self._lock:
            handles, self._handles, self._idle = self._handles, [], []
        for handle in handles:
            try:
                handle.close()
            except Exception:
                log.exception("processing engine: closing the plugin of trigger %s failed", self.name)


class _Counters:
    """Events a trigger lost: in total (shown in the triggers table) and in the current streak."""

    def __init__(self):
        self.dropped = 0
        self.streak = 0


class ProcessingEngine:
    """Runs InfluxDB 3 triggers over `database` with plugins from `plugin_dir`.

    The caller starts `runtime` before `start()` and closes it after `close()`. Every public
    call is thread-safe; lifecycle calls (create/delete/enable/disable) serialise on one lock.
    """

    def __init__(self, database, plugin_dir: Path, data_dir: Path, *, runtime: PluginRuntime,
                 clock: Callable[[], int] = time.time_ns):
        self._database = database
        self._plugin_dir = Path(plugin_dir)
        self._runtime = runtime
        self._clock = clock
        self._catalog = TriggerCatalog(Path(data_dir) / "processing_engine" / "triggers.json")
        self._lock = threading.RLock()
        self._active: dict[tuple[str, str], _Trigger] = {}
        # Routing tables are replaced, never mutated, so the flush thread reads them lock-free.
        self._writes_by_database: dict[str, tuple[_Trigger, ...]] = {}
        self._requests_by_path: dict[str, _Trigger] = {}
        self._counters: dict[tuple[str, str], _Counters] = collections.defaultdict(_Counters)
        self._counters_lock = threading.Lock()
        self._logs: collections.deque = collections.deque(maxlen=LOG_CAPACITY)
        self._runs: collections.deque = collections.deque(maxlen=RUN_HISTORY_CAPACITY)
        self._scheduler = Scheduler(clock)
        self._unsubscribe: Callable[[], None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Register the system tables, start every enabled trigger, then take flushes and ticks.

        A trigger that fails to start is logged and left enabled but not running, as InfluxDB 3
        does ("degraded state"); `enable` retries it. Blocks while plugins load.
        """
        register = getattr(self._database, "register_system_table", None)
        if register is not None:
            for name, provider in (
                ("processing_engine_triggers", self.triggers_table),
                ("processing_engine_trigger_arguments", self.arguments_table),
                ("processing_engine_logs", self.logs_table),
                ("processing_engine_runs", self.runs_table),
            ):
                register(name, provider)
        with self._lock:
            for definition in self._catalog.all():
                if definition.disabled:
                    continue
                try:
                    self._start_trigger(definition)
                except Exception as error:  # one broken trigger must not stop the server starting
                    self._log(definition.trigger_name, "ERROR", f"error starting trigger: {error}")
            self._unsubscribe = self._database.subscribe(self._on_flush)
            self._scheduler.start()

    def close(self) -> None:
        """Stop taking flushes and ticks, then stop every trigger. Blocks up to one short grace
        period (all triggers stop at once) for runs in progress."""
        with self._lock:
            if self._unsubscribe is not None:
                self._unsubscribe()
                self._unsubscribe = None
            self._scheduler.close()
            triggers = list(self._active.values())
            for trigger in triggers:
                self._unroute(trigger)
                trigger.stopping.set()
            stoppers = [threading.Thread(target=self._finish_stop, args=(trigger,), name=f"stop:{trigger.name}")
                        for trigger in triggers]
            for stopper in stoppers:
                stopper.start()
            for stopper in stoppers:
                stopper.join()

    # -- trigger definitions -----------------------------------------------------------------

    def list_triggers(self) -> list[TriggerDefinition]:
        """Every trigger definition, in creation order."""
        return self._catalog.all()

    def create_trigger(
        self,
        database: str,
        name: str,
        plugin_filename: str,
        spec: str,
        arguments: dict[str, str] | None = None,
        settings: TriggerSettings = TriggerSettings(),
        disabled: bool = False,
    ) -> TriggerDefinition:
        """Validate everything, load the plugin (unless disabled), persist, then start.

        Blocks while the plugin loads and for the catalog's fsync. Raises TriggerSpecError,
        DatabaseNotFound, PluginFileError, InvalidTrigger, TriggerExists, RequestPathTaken;
        on any error nothing is left behind.
        """
        parsed = parse_trigger_spec(spec)
        if not name or not name.strip():
            raise InvalidTrigger("trigger name is empty")
        if arguments is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in arguments.items()):
            raise InvalidTrigger("trigger arguments must map strings to strings")
        self._plugin_path(plugin_filename)
        definition = TriggerDefinition(
            database_name=database, trigger_name=name, plugin_filename=plugin_filename,
            trigger_specification=parsed.canonical(), trigger_settings=settings,
            trigger_arguments=None if arguments is None else dict(arguments), disabled=disabled,
        )
        with self._lock:
            self._check_database(database)
            if self._catalog.find(database, name) is not None:
                raise TriggerExists(database, name)
            if isinstance(parsed, RequestSpec):
                self._check_request_path_free(parsed.path)
            if parsed.kind == "schedule" and parsed.schedule.next_after(self._clock()) is None:
                raise InvalidTrigger(f"the schedule {parsed.canonical()!r} has no firing left")
            trigger = None if disabled else self._load(definition, parsed)
            try:
                self._catalog.add(definition)
            except BaseException:
                if trigger is not None:
                    trigger.close_handles()
                raise
            if trigger is not None:
                self._route(trigger)
        log.info("processing engine: created trigger %s in database %s (%s)", name, database, parsed.canonical())
        return definition

    def drop_database(self, database: str) -> None:
        """Stop and delete every trigger of a database that was deleted, with their caches.

        InfluxDB 3 stops a deleted database's triggers too. Blocks as `delete_trigger` does.
        """
        for trigger in self.list_triggers():
            if trigger.database_name == database:
                self.delete_trigger(database, trigger.trigger_name, force=True)

    def delete_trigger(self, database: str, name: str, force: bool = False) -> None:
        """Delete a trigger; an enabled one needs `force` (then it is stopped first).

        Raises TriggerNotFound, TriggerRunning. Blocks for the catalog's fsync and up to a
        short grace period for a run in progress.
        """
        with self._lock:
            definition = self._catalog.get(database, name)
            if not definition.disabled and not force:
                raise TriggerRunning(name)
            self._catalog.remove(database, name)
            trigger = self._active.get((database, name))
            if trigger is not None:
                self._stop_trigger(trigger)
            self._counters.pop((database, name), None)
            self._runtime.global_cache.drop_namespace(trigger_namespace(database, name))

    def enable_trigger(self, database: str, name: str) -> None:
        """Start a disabled trigger and persist `disabled=false`. Enabling an enabled trigger
        succeeds; if it is enabled but not running (it failed to start), it is started again.

        Raises TriggerNotFound, PluginFileError.
        """
        with self._lock:
            definition = self._catalog.get(database, name)
            if (database, name) in self._active:
                return
            enabled = msgspec.structs.replace(definition, disabled=False)
            self._start_trigger(enabled)
            try:
                self._catalog.set_disabled(database, name, False)
            except BaseException:
                self._stop_trigger(self._active[(database, name)])
                raise
        log.info("processing engine: enabled trigger %s in database %s", name, database)

    def disable_trigger(self, database: str, name: str) -> None:
        """Stop a trigger and persist `disabled=true`; disabling a disabled trigger succeeds.

        Raises TriggerNotFound. Blocks up to a short grace period for a run in progress.
        """
        with self._lock:
            self._catalog.set_disabled(database, name, True)
            trigger = self._active.get((database, name))
            if trigger is not None:
                self._stop_trigger(trigger)
        log.info("processing engine: disabled trigger %s in database %s", name, database)

    # -- starting and stopping ----------------------------------------------------------------

    def _plugin_path(self, plugin_filename: str) -> Path:
        """The plugin's real path inside the plugin directory. Raises PluginFileError."""
        try:
            return resolve_plugin_path(self._plugin_dir, plugin_filename)
        except PluginPathError as error:
            raise PluginFileError(f"reading plugin file: {error}") from None

    def _check_database(self, database: str) -> None:
        """Raises DatabaseNotFound unless `database` exists (asked through the Database interface)."""
        try:
            self._database.query(database, "SELECT 1")
        except InterfaceDatabaseNotFound:
            raise DatabaseNotFound(database) from None

    def _check_request_path_free(self, path: str) -> None:
        for other in self._catalog.all():
            other_spec = parse_trigger_spec(other.trigger_specification)
            if isinstance(other_spec, RequestSpec) and other_spec.path == path:
                raise RequestPathTaken(
                    f"request path {path!r} is already served by trigger {other.trigger_name!r} "
                    f"in database {other.database_name!r}"
                )

    def _load(self, definition: TriggerDefinition, spec: TriggerSpec) -> _Trigger:
        """Load the plugin and build the trigger's dispatcher, without routing anything to it.

        Raises PluginFileError naming the file (and line) that failed."""
        self._plugin_path(definition.plugin_filename)
        settings = definition.trigger_settings
        trigger = _Trigger(definition, spec, PluginSpec(
            trigger_name=definition.trigger_name,
            database=definition.database_name,
            plugin_filename=definition.plugin_filename,
            kind=spec.kind,
            isolation=settings.isolation,
            limits=settings.limits(),
        ))
        try:
            handle = self._runtime.load(trigger.plugin)
        except PluginLoadError as error:
            raise PluginFileError(f"error loading plugin {definition.plugin_filename}: {error}") from None
        for line in handle.load_logs:
            self._log(trigger.name, line.level, line.text, line.time_ns)
        trigger.adopt(handle)
        trigger.dispatcher = Dispatcher(
            definition.trigger_name,
            lambda event: self._run(trigger, event),
            concurrency=DEFAULT_ASYNC_CONCURRENCY if settings.run_async else 1,
            capacity=DEFAULT_CAPACITY,
            discard=self._discard,
        )
        return trigger

    def _start_trigger(self, definition: TriggerDefinition) -> None:
        spec = parse_trigger_spec(definition.trigger_specification)
        self._route(self._load(definition, spec))

    def _route(self, trigger: _Trigger) -> None:
        """Make the trigger reachable: by flushes, by the scheduler, or by its request path."""
        self._active[trigger.key] = trigger
        database = trigger.definition.database_name
        if trigger.spec.kind == "writes":
            routes = dict(self._writes_by_database)
            routes[database] = (*routes.get(database, ()), trigger)
            self._writes_by_database = routes
        elif trigger.spec.kind == "request":
            self._requests_by_path = {**self._requests_by_path, trigger.spec.path: trigger}
        elif self._scheduler.add(
            trigger.key, trigger.spec.schedule,
            fire=lambda tick: self._fire(trigger, tick),
            missed=lambda key, count, message: self._dropped(trigger, count, message),
            ended=lambda key: self._log(trigger.name, "INFO", "the cron schedule has no further firings"),
        ) is None:
            self._log(trigger.name, "INFO", "the cron schedule has no further firings")

    def _unroute(self, trigger: _Trigger) -> None:
        self._active.pop(trigger.key, None)
        database = trigger.definition.database_name
        if trigger.spec.kind == "writes":
            routes = dict(self._writes_by_database)
            remaining = tuple(t for t in routes.get(database, ()) if t is not trigger)
            if remaining:
                routes[database] = remaining
            else:
                routes.pop(database, None)
            self._writes_by_database = routes
        elif trigger.spec.kind == "request":
            self._requests_by_path = {p: t for p, t in self._requests_by_path.items() if t is not trigger}
        else:
            self._scheduler.remove(trigger.key)

    def _stop_trigger(self, trigger: _Trigger) -> None:
        """Unroute, drop queued events, let a run in progress finish for a short grace period,
        then close the plugin (which ends a run still going). Safe to call from one of the
        trigger's own workers (error_behavior=disable)."""
        self._unroute(trigger)
        trigger.stopping.set()
        self._finish_stop(trigger)

    def _finish_stop(self, trigger: _Trigger) -> None:
        """Drop the stopped trigger's queued events, give a run in progress the grace period,
        then close its plugin."""
        if not trigger.dispatcher.stop(timeout=STOP_GRACE_SECONDS):
            self._log(trigger.name, "WARN", f"a run was still executing {STOP_GRACE_SECONDS:g}s after the "
                                            "trigger was stopped; it is abandoned")
        trigger.close_handles()

    # -- feeding triggers ---------------------------------------------------------------------

    def _on_flush(self, flush: WalFlush) -> None:
        """On the flush thread: hand the flush to every interested writes trigger. Never blocks."""
        routes = self._writes_by_database
        if not routes:
            return
        notified = self._clock()
        rows: dict[str, dict[str, int]] = {}
        for table in flush.tables:
            if table.batch.num_rows and table.database in routes:
                per_table = rows.setdefault(table.database, {})
                per_table[table.table] = per_table.get(table.table, 0) + table.batch.num_rows
        targets = [
            (trigger, trigger.spec.table_name)
            for database, tables in rows.items()
            for trigger in routes[database]
            if trigger.spec.table_name is None or trigger.spec.table_name in tables
        ]
        if not targets:
            return
        try:
            shared = self._runtime.share(flush)
        except Exception as error:
            for trigger, _ in targets:
                self._dropped(trigger, 1, f"dropped WAL flush {flush.sequence}: it could not be shared with plugins: {error}")
            return
        try:
            for trigger, table in targets:
                shared.acquire()
                if trigger.dispatcher.submit(_Writes(shared, table, notified)):
                    self._caught_up(trigger)
                    continue
                shared.release()
                if trigger.stopping.is_set():
                    continue
                tables = rows[trigger.definition.database_name]
                lost = tables[table] if table else sum(tables.values())
                self._dropped(trigger, 1, (
                    f"dropped WAL flush {flush.sequence} ({lost} rows): {trigger.dispatcher.pending} "
                    "flushes are already waiting for this trigger's plugin"))
        finally:
            shared.release()

    def _fire(self, trigger: _Trigger, tick: int) -> bool:
        """On the scheduler thread: start a run for `tick` if the trigger can start one now."""
        if trigger.dispatcher.submit_now(_Tick(tick, self._clock())):
            self._caught_up(trigger)
            return True
        return trigger.stopping.is_set()  # a stopped trigger misses nothing

    def submit_request(self, path: str, query_params: dict[str, str], headers: dict[str, str],
                       body: bytes) -> Future:
        """Queue a request for the trigger serving `/api/v3/engine/<path>`; never blocks.

        The future resolves to an `HttpResponse`: the plugin's, a 500 with `{"error": ...}` when
        it raised, a 404 with InfluxDB 3's `{error: "not found"}` body when no running trigger
        serves the path, or a 503 when the trigger's queue is full.
        """
        answer: Future = Future()
        trigger = self._requests_by_path.get(path)
        if trigger is None:
            answer.set_result(_NOT_FOUND)
        elif trigger.dispatcher.submit(_Request(query_params, headers, body, answer, self._clock())):
            self._caught_up(trigger)
        elif trigger.stopping.is_set():
            answer.set_result(_NOT_FOUND)
        else:
            message = f"trigger {trigger.name} is busy: {trigger.dispatcher.pending} requests are already waiting"
            self._dropped(trigger, 1, f"refused a request: {message}")
            answer.set_result(_json_response(503, {"error": message}))
        return answer

    def handle_request(self, path: str, method: str, query_params: dict[str, str],
                       headers: dict[str, str], body: bytes) -> HttpResponse:
        """Serve `/api/v3/engine/<path>`; blocks until the plugin answers (see `submit_request`)."""
        return self.submit_request(path, query_params, headers, body).result()

    def _discard(self, event) -> None:
        if isinstance(event, _Writes):
            event.shared.release()
        elif isinstance(event, _Request):
            event.answer.set_result(_NOT_FOUND)

    # -- running ------------------------------------------------------------------------------

    def _run(self, trigger: _Trigger, event) -> None:
        """On one of the trigger's workers: run the plugin for one event."""
        args = trigger.definition.trigger_arguments
        if isinstance(event, _Writes):
            try:
                self._run_with_policy(
                    trigger, event.queued_ns, "wal plugin", "starting execution of wal plugin.",
                    lambda handle: handle.run_writes(event.shared, event.table, args))
            finally:
                event.shared.release()
        elif isinstance(event, _Tick):
            call_time = datetime.fromtimestamp(event.call_time_ns / 1e9, timezone.utc)
            self._run_with_policy(
                trigger, event.queued_ns, "schedule plugin",
                f"starting execution with scheduled time {format_instant(event.call_time_ns)}",
                lambda handle: handle.run_schedule(call_time, args))
        else:
            self._run_request(trigger, event, args)

    def _attempt(self, trigger: _Trigger, queued: int, start_line: str,
                 call: Callable[[PluginHandle], RunResult]) -> RunResult:
        """One plugin call on an idle interpreter of the trigger, with its log lines and run record."""
        self._log(trigger.name, "INFO", start_line)
        started = self._clock()
        handle = trigger.take()
        if handle is None:
            try:
                handle = self._runtime.load(trigger.plugin)
            except PluginLoadError as error:
                return self._record(trigger, queued, started, _failed(f"plugin could not be loaded: {error}"))
            trigger.add_busy(handle)
        try:
            result = call(handle)
        finally:
            trigger.give_back(handle)
        return self._record(trigger, queued, started, result)

    def _record(self, trigger: _Trigger, queued: int, started: int, result: RunResult) -> RunResult:
        for line in result.logs:
            self._log(trigger.name, line.level, line.text, line.time_ns)
        self._runs.append((trigger.definition.database_name, trigger.name, started, result.wall_time,
                           result.cpu_time, "ok" if result.ok else "error", None if result.ok else result.error,
                           queued, result.peak_memory))
        if result.ok:
            self._log(trigger.name, "INFO", f"finished execution in {format_duration(int(result.wall_time * 1e9))}")
        return result

    def _run_with_policy(self, trigger: _Trigger, queued: int, context: str, start_line: str,
                         call: Callable[[PluginHandle], RunResult]) -> None:
        """Run, then apply the trigger's error_behavior: log; retry (bounded, with backoff); disable."""
        behavior = trigger.definition.trigger_settings.error_behavior
        delays = RETRY_DELAYS if behavior == "retry" else ()
        for attempt in range(len(delays) + 1):
            result = self._attempt(trigger, queued, start_line, call)
            if result.ok:
                self._write_back(trigger, result.writes, context)
                return
            if trigger.stopping.is_set():
                self._log(trigger.name, "WARN", f"{context} run ended by stopping the trigger: {result.error}")
                return
            if attempt == len(delays):
                break
            self._log(trigger.name, "WARN", f"error executing {context}: {result.error}; retrying in "
                                            f"{delays[attempt]:g}s (attempt {attempt + 2} of {len(delays) + 1})")
            if trigger.stopping.wait(delays[attempt]):
                return
        suffix = f"; giving up after {len(delays) + 1} attempts" if delays else ""
        self._log(trigger.name, "ERROR", f"error executing {context}: {result.error}{suffix}")
        if behavior == "disable":
            self._disable_after_error(trigger)

    def _disable_after_error(self, trigger: _Trigger) -> None:
        """error_behavior=disable: persist disabled=true (so it stays off after a restart) and stop."""
        database, name = trigger.key
        with self._lock:
            if self._active.get(trigger.key) is not trigger:
                return
            self._log(name, "WARN", f"disabling trigger {name} due to error (error_behavior=disable); "
                                    "`enable trigger` starts it again")
            try:
                self._catalog.set_disabled(database, name, True)
            except OSError as error:
                self._log(name, "ERROR", f"could not persist disabled=true ({error}): the trigger is stopped, "
                                         "but will start again after a restart")
            self._stop_trigger(trigger)

    def _run_request(self, trigger: _Trigger, request: _Request, args) -> None:
        result = self._attempt(
            trigger, request.queued_ns, "starting execution of request plugin.",
            lambda handle: handle.run_request(request.query_params, request.headers, request.body, args))
        if result.ok:
            self._write_back(trigger, result.writes, "request plugin")
        else:
            self._log(trigger.name, "ERROR", f"error running request plugin: {result.error}")
        request.answer.set_result(result.response or _json_response(500, {"error": result.error or "no response"}))

    def _write_back(self, trigger: _Trigger, writes: dict[str, list[str]], context: str) -> None:
        """Apply a run's queued writes, one all-or-nothing write per database; failures are logged."""
        for database, lines in writes.items():
            if not lines:
                continue
            try:
                self._database.write_lp(database, "\n".join(lines), precision="ns", accept_partial=False)
            except WriteError as error:
                details = "; ".join(f"line {e.line_number}: {e.error_message}" for e in error.errors)
                self._log(trigger.name, "ERROR", f"error running {context}: error writing back lines to "
                                                 f"{database}: {error}{': ' + details if details else ''}")
            except Exception as error:
                self._log(trigger.name, "ERROR", f"error running {context}: error writing back lines to {database}: {error}")

    # -- drops, logs ----------------------------------------------------------------------------

    def _dropped(self, trigger: _Trigger, count: int, message: str) -> None:
        """Count lost events; log the first of a streak (the rest are counted, then summarised)."""
        with self._counters_lock:
            counters = self._counters[trigger.key]
            counters.dropped += count
            first = counters.streak == 0
            counters.streak += count
        if first:
            self._log(trigger.name, "WARN", message + " (further losses are counted in "
                      "system.processing_engine_triggers.dropped_events until the trigger keeps up again)")

    def _caught_up(self, trigger: _Trigger) -> None:
        counters = self._counters.get(trigger.key)
        if counters is None or not counters.streak:
            return
        with self._counters_lock:
            streak, counters.streak = counters.streak, 0
        if streak:
            self._log(trigger.name, "WARN", f"trigger keeps up again after losing {streak} event(s)")

    def _log(self, trigger_name: str, level: str, text: str, time_ns: int | None = None) -> None:
        self._logs.append((time_ns or self._clock(), trigger_name, level, text))
        log.log(_LOG_LEVELS[level], "processing engine: %s: %s", trigger_name, text)

    # -- usage --------------------------------------------------------------------------------

    def usage(self, database: str | None = None) -> list[TriggerUsage]:
        """Current usage of every running trigger (of `database` only, unless None), sorted by
        database and name. Never waits for a run; reads /proc for each loaded interpreter."""
        active = [t for t in list(self._active.values())
                  if database is None or t.definition.database_name == database]
        active.sort(key=lambda t: t.key)
        return [TriggerUsage(database_name=t.definition.database_name, trigger_name=t.name, mode=t.mode,
                             slots=t.usage()) for t in active]

    # -- system tables --------------------------------------------------------------------------

    def _visible(self, database: str, owner: str) -> bool:
        return database == INTERNAL_DATABASE or owner == database

    def triggers_table(self, database: str) -> pa.Table:
        """`system.processing_engine_triggers` as seen from `database` (every trigger from `_internal`)."""
        rows = [d for d in self._catalog.all() if self._visible(database, d.database_name)]
        active = self._active
        return pa.table({
            "trigger_name": pa.array([d.trigger_name for d in rows], pa.string()),
            "plugin_filename": pa.array([d.plugin_filename for d in rows], pa.string()),
            "trigger_specification": pa.array(
                [parse_trigger_spec(d.trigger_specification).serde_json() for d in rows], pa.string()),
            "disabled": pa.array([d.disabled for d in rows], pa.bool_()),
            "error_behavior": pa.array([d.trigger_settings.error_behavior for d in rows], pa.string()),
            "database_name": pa.array([d.database_name for d in rows], pa.string()),
            "run_async": pa.array([d.trigger_settings.run_async for d in rows], pa.bool_()),
            "mode": pa.array([self._mode(d, active) for d in rows], pa.string()),
            "dropped_events": pa.array(
                [self._dropped_count(d) for d in rows], pa.uint64()),
        })

    @staticmethod
    def _mode(definition: TriggerDefinition, active) -> str:
        """The isolation in use ("interpreter"/"process"), or the configured one when not running."""
        trigger = active.get((definition.database_name, definition.trigger_name))
        return (trigger.mode if trigger is not None else "") or definition.trigger_settings.isolation

    def _dropped_count(self, definition: TriggerDefinition) -> int:
        counters = self._counters.get((definition.database_name, definition.trigger_name))
        return counters.dropped if counters is not None else 0

    def arguments_table(self, database: str) -> pa.Table:
        """`system.processing_engine_trigger_arguments` as seen from `database`."""
        rows = [
            (d.trigger_name, key, value)
            for d in self._catalog.all() if self._visible(database, d.database_name)
            for key, value in (d.trigger_arguments or {}).items()
        ]
        names = ("trigger_name", "argument_key", "argument_value")
        return pa.table({n: pa.array([r[i] for r in rows], pa.string()) for i, n in enumerate(names)})

    def logs_table(self, database: str) -> pa.Table:
        """`system.processing_engine_logs`: the last 10,000 lines of every trigger, whatever `database`."""
        rows = list(self._logs)
        return pa.table({
            "event_time": pa.array([r[0] for r in rows], pa.timestamp("ns")),
            "trigger_name": pa.array([r[1] for r in rows], pa.string()),
            "log_level": pa.array([r[2] for r in rows], pa.string()),
            "log_text": pa.array([r[3] for r in rows], pa.string()),
        })

    def runs_table(self, database: str) -> pa.Table:
        """`system.processing_engine_runs` as seen from `database`: the last 10,000 runs."""
        rows = [r for r in list(self._runs) if self._visible(database, r[0])]
        return pa.table({
            "trigger_name": pa.array([r[1] for r in rows], pa.string()),
            "started": pa.array([r[2] for r in rows], pa.timestamp("ns")),
            "duration": pa.array([r[3] for r in rows], pa.float64()),
            "cpu_time": pa.array([r[4] for r in rows], pa.float64()),
            "outcome": pa.array([r[5] for r in rows], pa.string()),
            "error": pa.array([r[6] for r in rows], pa.string()),
            "database_name": pa.array([r[0] for r in rows], pa.string()),
            "queued": pa.array([r[7] for r in rows], pa.timestamp("ns")),
            "peak_memory": pa.array([r[8] for r in rows], pa.uint64()),
        })

    # -- dry runs -------------------------------------------------------------------------------

    def test_wal(self, filename: str, database: str, input_lp: str,
                 input_arguments: dict[str, str] | None = None, cache_name: str | None = None) -> dict:
        """Run a writes plugin once on `input_lp` without storing anything (queries are real).

        Returns InfluxDB 3's `{"log_lines", "database_writes", "errors"}`. Raises PluginFileError.
        Blocks for the run.
        """
        self._plugin_path(filename)
        try:
            flush = self._dry_run_flush(database, input_lp)
        except ValueError as error:
            return {"log_lines": [], "database_writes": {}, "errors": [str(error)]}
        shared = self._runtime.share(flush)
        try:
            result = self._dry_run(filename, database, "writes", cache_name,
                                   lambda handle: handle.run_writes(shared, None, input_arguments))
        finally:
            shared.release()
        return self._dry_run_report(result, "starting execution of wal plugin.")

    def test_schedule(self, filename: str, database: str, schedule: str | None = None,
                      input_arguments: dict[str, str] | None = None, cache_name: str | None = None) -> dict:
        """Run a schedule plugin once, as at the schedule's next firing, without storing anything.

        `schedule` is a cron expression (default `* * * * * *`) or an `every:`/`cron:` spec.
        Returns `{"trigger_time", "log_lines", "database_writes", "errors"}`. Raises
        PluginFileError. Blocks for the run.
        """
        self._plugin_path(filename)
        expression = schedule if schedule is not None else "* * * * * *"
        try:
            if expression.strip().startswith(("every:", "cron:")):
                parsed = parse_trigger_spec(expression).schedule
            else:
                parsed = parse_cron(expression)
        except (TriggerSpecError, CronError, AttributeError) as error:
            return {"trigger_time": None, "log_lines": [], "database_writes": {},
                    "errors": [f"invalid cron syntax: {error}"]}
        tick = parsed.next_after(self._clock())
        if tick is None:
            return {"trigger_time": None, "log_lines": [], "database_writes": {},
                    "errors": [f"cron schedule never triggers: {expression}"]}
        try:
            self._check_database(database)
        except DatabaseNotFound:
            return {"trigger_time": None, "log_lines": [], "database_writes": {},
                    "errors": [f"couldn't find db: database {database!r} does not exist"]}
        call_time = datetime.fromtimestamp(tick / 1e9, timezone.utc)
        result = self._dry_run(filename, database, "schedule", cache_name,
                               lambda handle: handle.run_schedule(call_time, input_arguments))
        report = self._dry_run_report(result, f"starting execution with scheduled time {format_instant(tick)}")
        return {"trigger_time": format_rfc3339(tick), **report}

    def _dry_run(self, filename, database, kind, cache_name, call) -> RunResult:
        try:
            handle = self._runtime.load(PluginSpec(
                trigger_name=f"test:{filename}", database=database, plugin_filename=filename, kind=kind,
                dry_run=True, cache_name=cache_name or DRY_RUN_CACHE,
            ))
        except PluginLoadError as error:
            return _failed(str(error))
        try:
            return call(handle)
        finally:
            handle.close()

    def _dry_run_report(self, result: RunResult, start_line: str) -> dict:
        log_lines = [f"INFO: {start_line}", *(f"{line.level}: {line.text}" for line in result.logs)]
        errors = [] if result.ok else [result.error]
        if result.ok:
            log_lines.append(f"INFO: finished execution in {format_duration(int(result.wall_time * 1e9))}")
        for database, lines in result.writes.items():
            _, refused = parse("\n".join(lines))
            errors.extend(f"line protocol parse error on write to db {database}: line {e.line_number}: "
                          f"{e.message}: {e.original_line}" for e in refused)
        return {"log_lines": log_lines, "database_writes": result.writes, "errors": errors}

    def _dry_run_flush(self, database: str, input_lp: str) -> WalFlush:
        """`input_lp` as one flush of Arrow batches, built without touching the database.

        Lines without a timestamp get the current time; timestamps are nanoseconds, as in
        InfluxDB 3's dry run. Raises ValueError naming the first bad line or type conflict.
        """
        lines, refused = parse(input_lp)
        if refused:
            first = refused[0]
            raise ValueError(f"error parsing line {first.line_number}: {first.message}: {first.original_line}")
        now = self._clock()
        tables: dict[str, dict] = {}
        for line in lines:
            table = tables.setdefault(line.measurement, {"columns": {}, "groups": {}})
            columns = table["columns"]
            for key, _ in line.tags:
                if columns.setdefault(key, TAG) != TAG:
                    raise ValueError(f"line {line.line_number}: {key!r} is a field elsewhere in {line.measurement}")
            for key, code, _ in line.fields:
                kind = _FIELD_TYPES[code]
                if columns.setdefault(key, kind) != kind:
                    raise ValueError(f"line {line.line_number}: field {key!r} of {line.measurement} is "
                                     f"{columns[key]} elsewhere, {kind} here")
            group = (tuple(k for k, _ in line.tags), tuple(k for k, _, _ in line.fields))
            stamp = now if line.timestamp is None else to_nanoseconds(line.timestamp, "ns")
            table["groups"].setdefault(group, []).append(
                (*(v for _, v in line.tags), *(v for _, _, v in line.fields), stamp))
        flushed = []
        for name, table in tables.items():
            schema = TableSchema(0, name, [ColumnDef(c, t) for c, t in table["columns"].items()])
            flushed.append(FlushedTable(database, name, build_batch(schema, table["groups"])))
        return WalFlush(sequence=0, tables=flushed)


_LOG_LEVELS = {"INFO": logging.INFO, "WARN": logging.WARNING, "ERROR": logging.ERROR}


def _failed(error: str) -> RunResult:
    """A run that never reached the plugin."""
    return RunResult(ok=False, error=error, traceback=None, logs=[], writes={}, response=None,
                     cpu_time=0.0, wall_time=0.0, mode="interpreter")


def _json_response(status: int, content) -> HttpResponse:
    return HttpResponse(status, {"content-type": "application/json"}, msgspec.json.encode(content))
