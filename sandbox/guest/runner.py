"""The plugin side of one trigger: install the API, load the plugin, serve runs, report results.

The worker calls `install` once, `run` once per request (with the request as a tuple of
shareable values, its payload — the marshalled flush layout for writes, the body for requests —
and, for writes, a read-only memoryview of the flush's shared segment), and `shutdown` at the
end. Replies go straight onto the trigger's channel as JSON-header frames whose schema is
`sandbox.protocol.LoadReply` / `RunReply`. One trigger lives in one interpreter, so this
module's globals are that trigger's state.

A reply stays bounded whatever the plugin does: a run keeps at most MAX_LOG_LINES log lines of
at most MAX_TEXT characters (the rest are counted in one closing WARN line), and error texts and
tracebacks are cut to MAX_TEXT and MAX_TRACEBACK characters.
"""

import builtins
import datetime
import gc
import json
import marshal
import os
import re
import socket
import sys
import threading
import time
import traceback

import __main__
from sandbox.guest import batches, flask, framing, interrupt
from sandbox.guest.line_builder import EXPORTS as LINE_BUILDER_EXPORTS
from sandbox.guest.local import InfluxDB3Local, PluginCache, ServicesClient
from sandbox.guest.plugin import MissingEntryPoint, PluginCode

GUEST_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_REFUSAL = re.compile(
    r"does not support loading in subinterpreters|sub-?interpreter|Interpreter change detected"
    r"|more than once per process",
    re.IGNORECASE,
)
_REFUSED_MODULE = re.compile(r"module '?([\w.]+)'? does not support")
MAX_LOG_LINES = 1000
MAX_TEXT = 16 * 1024
MAX_TRACEBACK = 64 * 1024

_config = None
_reply = None
_code = None
_services = None
_cache = None
_statm = None  # /proc/self/statm, kept open: the worker's resident size at the start and end of runs
_page_size = os.sysconf("SC_PAGE_SIZE")


def _resident_bytes():
    return int(os.pread(_statm, 64, 0).split()[1]) * _page_size


def _clip(text, limit):
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


def _send(header, payload=b""):
    # "replace": a lone surrogate in a plugin's log text must not make the reply undecodable.
    framing.send(_reply, json.dumps(header, ensure_ascii=False).encode("utf-8", "replace"), payload)


def _one_line(error):
    if isinstance(error, MissingEntryPoint):
        return str(error)
    try:
        text = str(error)
    except Exception as failure:  # a plugin's exception whose __str__ itself raises
        text = f"<str() of the exception raised {type(failure).__name__}>"
    return _clip(f"{type(error).__name__}: {text}" if text else type(error).__name__, MAX_TEXT)


def _format_traceback(error):
    """The traceback without this runtime's leading frames, so it starts in the plugin."""
    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(GUEST_DIR):
        tb = tb.tb_next
    try:
        text = "".join(traceback.format_exception(type(error), error, tb))
    except Exception as failure:
        text = f"(the traceback could not be formatted: {type(failure).__name__})"
    return _clip(text, MAX_TRACEBACK)


def _plugin_location(error):
    """(file relative to plugin_dir, line) where the plugin's code failed, as well as known."""
    if isinstance(error, SyntaxError) and error.filename:
        return _relative(error.filename), error.lineno
    plugin_files = set(_code.files()) if _code is not None else set()
    location = (_relative(_config["plugin_path"]), None)
    for frame, line in traceback.walk_tb(error.__traceback__):
        if frame.f_code.co_filename in plugin_files:
            location = (_relative(frame.f_code.co_filename), line)
    return location


def _relative(path):
    return os.path.relpath(path, _config["plugin_dir"])


def _refused_module(error):
    """The extension module that refused this subinterpreter, if that is why the import failed."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, ImportError) and not isinstance(error, ModuleNotFoundError):
            text = str(error)
            if _REFUSAL.search(text):
                match = _REFUSED_MODULE.search(text)
                return match.group(1) if match else (error.name or "an extension module")
        error = error.__cause__ or error.__context__
    return None


def install(config_json, reply_fd, interrupt_fd, in_subinterpreter):
    """Set up this interpreter for one trigger and load its plugin; sends a LoadReply.

    `interrupt_fd` is the read end of the pipe the worker writes to when a run must be stopped
    (see `sandbox.guest.interrupt`); this interpreter owns it from now on.
    """
    global _config, _reply, _code, _services, _cache, _statm
    _config = json.loads(config_json)
    _reply = socket.socket(fileno=reply_fd)
    _statm = os.open("/proc/self/statm", os.O_RDONLY)
    interrupt.start(interrupt_fd)
    builtins.LineBuilder = LINE_BUILDER_EXPORTS["LineBuilder"]
    for name, value in LINE_BUILDER_EXPORTS.items():
        setattr(__main__, name, value)
    _services = ServicesClient(_config["services_path"])
    _cache = PluginCache(
        _services,
        _config["cache_local_namespace"],
        _config["cache_global_namespace"],
        _config["cache_default_ttl"],
        persist_namespace=None if _config["dry_run"] else f"trigger:{_config['database']}:{_config['trigger_name']}",
    )
    _code = PluginCode(_config["plugin_path"], _config["reload"])
    try:
        _code.load()
    except BaseException as error:
        file, line = _plugin_location(error)
        _send({
            "ok": False,
            "error": _one_line(error),
            "traceback": _format_traceback(error),
            "file": file,
            "line": line,
            "refused_module": _refused_module(error) if in_subinterpreter else None,
        })
        return
    _send({"ok": True, "native_id": threading.get_native_id()})


class RunLog:
    """The log lines of one run: the first MAX_LOG_LINES, each cut to MAX_TEXT characters."""

    def __init__(self):
        self.lines = []
        self.dropped = 0

    def append(self, line):
        if len(self.lines) >= MAX_LOG_LINES:
            self.dropped += 1
            return
        line["text"] = _clip(line["text"], MAX_TEXT)
        self.lines.append(line)

    def finished(self):
        """The lines to report, closed by a WARN line counting the dropped ones."""
        if self.dropped:
            self.lines.append({"time_ns": time.time_ns(), "level": "WARN",
                               "text": f"{self.dropped} more log lines of this run were dropped "
                                       f"(a run keeps at most {MAX_LOG_LINES})"})
        return self.lines


class _PrintCapture:
    """sys.stdout during a run: every printed line becomes an INFO log line."""

    def __init__(self, logs):
        self._logs = logs
        self._pending = ""

    def write(self, text):
        self._pending += text
        if len(self._pending) > MAX_TEXT and "\n" not in text:
            self._pending += "\n"
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._logs.append({"time_ns": time.time_ns(), "level": "INFO", "text": line})
        return len(text)

    def flush(self):
        if self._pending:
            self.write("\n")


def _call(call, payload, flush_view, local, views):
    kind, table, args, call_time, query_params, headers = call
    _code.refresh()
    function = _code.entry_point(kind)
    args = None if args is None else dict(args)
    if kind == "writes":
        table_batches = batches.build(marshal.loads(payload), flush_view, _config["database"], table, views)
        function(local, table_batches, args)
        return None
    if kind == "schedule":
        function(local, datetime.datetime.fromtimestamp(call_time), args)
        return None
    result = function(local, dict(query_params), dict(headers), bytes(payload), args)
    return flask.convert(result)


def run(call, payload, flush_view):
    """Run one invocation and send its RunReply; never raises for a plugin's failure.

    `call` is (kind, table, args items or None, call_time epoch seconds, query parameter items,
    header items), as the worker built it from a validated RunRequest.
    """
    logs = RunLog()
    writes = {}
    views = []
    local = InfluxDB3Local(_config["database"], _services, _cache, logs, writes, _config["dry_run"])
    rss_start = _resident_bytes()
    started = time.thread_time()
    stdout = sys.stdout
    sys.stdout = _PrintCapture(logs)
    error = None
    response = None
    try:
        interrupt.entering(threading.get_ident())
        response = _call(call, payload, flush_view, local, views)
    except BaseException as caught:
        error = caught
    finally:
        while True:
            try:
                interrupt.leaving()
                break
            except interrupt.PluginLimitExceeded as caught:  # the interrupt landed as the plugin returned
                error = caught
        sys.stdout.flush()
        sys.stdout = stdout
        for view in views:
            try:
                view.release()
            except BufferError:
                pass
        if flush_view is not None:
            flush_view.release()
    thread_cpu = time.thread_time()
    reply = {
        "ok": error is None,
        "error": None,
        "traceback": None,
        "logs": logs.finished(),
        "writes": writes if error is None or _config["dry_run"] else {},
        "response": None,
        "cpu_time": thread_cpu - started,
        "rss_start": rss_start,
        "rss_end": _resident_bytes(),
        "thread_cpu": thread_cpu,
    }
    body = b""
    if error is not None:
        reply["error"] = _one_line(error)
        reply["traceback"] = _format_traceback(error)
        if call[0] == "request":
            reply["response"] = {"status": 500, "headers": {"Content-Type": "application/json"}}
            body = json.dumps({"error": reply["error"]}).encode()
    elif response is not None:
        status, headers, text = response
        reply["response"] = {"status": status, "headers": headers}
        body = text.encode("utf-8")
    del error
    _send(reply, body)


def measure():
    """Send an ObjectsReply: the objects the garbage collector tracks in this interpreter and the
    shallow size of those of built-in types (a plugin's own `__sizeof__` is never called)."""
    objects = gc.get_objects()
    size = sum(sys.getsizeof(o) for o in objects if type(o).__module__ == "builtins")
    count = len(objects)
    del objects
    _send({"objects": count, "object_bytes": size})


def shutdown(deadline):
    """Give the plugin's own threads until `deadline` seconds to end, then close the channels.

    Raises RuntimeError naming the threads still alive: the interpreter must then not be
    destroyed (3.13.0 would block forever), and its worker has to be ended instead.
    """
    end = time.monotonic() + deadline
    current = threading.current_thread()
    for thread in threading.enumerate():
        if thread is not current and thread is not threading.main_thread():
            thread.join(max(0.0, end - time.monotonic()))
    if _services is not None:
        _services.close()
    if _reply is not None:
        _reply.close()
    if _statm is not None:
        os.close(_statm)
    alive = [t.name for t in threading.enumerate() if t is not current and t is not threading.main_thread() and t.is_alive()]
    if alive:
        raise RuntimeError(f"plugin threads still running: {', '.join(alive)}")
