"""`influxdb3_local` and its cache: the object every entry point gets as its first argument.

Behaviour follows InfluxDB 3's `PyPluginCallApi` (reference §2): logging joins `str()` of every
argument with spaces; `query` returns a list of dicts; `write`/`write_to_db` queue lines that
the engine applies after the run; `write_sync`/`write_sync_to_db` write now through the host;
`cache` keeps trigger-local values by reference and global values by value (pickled) on the host.

Trigger-local values are also written through, pickled, to the host's store when the host
persists (`persist_namespace`), and restored with their remaining ttl when this interpreter is
next created. The persisted copy is the value as it was at put(): mutating the live object
afterwards changes what this interpreter sees, not what a restart restores (put it again to
persist the change). A value pickle refuses (a lock, socket, generator...) stays in memory only,
and the run's log says so once per key.
"""

import json
import marshal
import math
import pickle
import socket
import threading
import time

from sandbox.guest import arrowlite, framing

INTERNAL_DB = "_internal"
_MAX_TTL = 18446744073709551615.0  # u64::MAX seconds, the largest Rust Duration InfluxDB 3 accepts
_CACHE_SWEEP_INTERVAL = 10.0
MAX_KEYS = 10_000  # keys per trigger-local cache; the host's cache.plugin_cache.MAX_KEYS, for the global one


class QueryError(Exception):
    """A query failed (bad database name, SQL, planning or execution); InfluxDB 3's class name."""


class ServicesClient:
    """A connection from this interpreter to the host's plugin services; thread-safe, lazy."""

    def __init__(self, path):
        self._path = path
        self._sock = None
        self._lock = threading.Lock()

    def call(self, request, payload=b""):
        """Send one request dict, block for the reply; return (reply dict, payload view).

        A reply with ok=False raises the exception it names (QueryError, ValueError, TypeError,
        else Exception) with the host's message.
        """
        header = json.dumps(request, ensure_ascii=False).encode("utf-8", "replace")
        with self._lock:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.connect(self._path)
                self._sock = sock
            try:
                framing.send(self._sock, header, payload)
                head, body = framing.receive(self._sock)
            except OSError:
                self._sock.close()
                self._sock = None
                raise
        reply = json.loads(head)
        if not reply["ok"]:
            raise _ERRORS.get(reply.get("error_type"), Exception)(reply.get("error"))
        return reply, body

    def close(self):
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


_ERRORS = {"QueryError": QueryError, "ValueError": ValueError, "TypeError": TypeError}


def _line_of(line_builder):
    line = line_builder.build()
    if not isinstance(line, str):
        raise TypeError(f"build() must return str, not {type(line).__name__}")
    return line


def _require_str(value, what):
    if not isinstance(value, str):
        raise TypeError(f"argument '{what}': '{type(value).__name__}' object cannot be converted to 'PyString'")


def _require_bool(value, what):
    if not isinstance(value, bool):
        raise TypeError(f"argument '{what}': '{type(value).__name__}' object cannot be converted to 'PyBool'")


def _reject_internal(database):
    if database == INTERNAL_DB:
        raise Exception("Python plugins cannot write to the _internal database")


def _expiry(ttl, default_ttl):
    """Absolute expiry (time.time seconds) for a ttl in seconds; validates like InfluxDB 3."""
    if ttl is None:
        return None if default_ttl is None else time.time() + default_ttl
    seconds = float(ttl)
    if seconds < 0:
        raise ValueError("cannot convert float seconds to Duration: value is negative")
    if math.isnan(seconds) or seconds > _MAX_TTL:
        raise ValueError("cannot convert float seconds to Duration: value is either too big or NaN")
    return time.time() + seconds


class PluginCache:
    """`influxdb3_local.cache`: get/put/delete with optional ttl and use_global.

    The trigger-local namespace holds live objects by reference inside this interpreter, unless
    `local_namespace` names a host namespace (dry runs, which must share state across separate
    test runs). With `persist_namespace`, the first local access restores what the host kept of
    it, and, if the host persists, each local put/delete is written through (blocking until
    committed). `use_global=True` values go to the host's cache by value (pickled), so they must
    be picklable. A trigger-local cache holds at most MAX_KEYS keys.
    """

    def __init__(self, services, local_namespace, global_namespace, default_ttl, persist_namespace=None):
        self._services = services
        self._local_namespace = local_namespace
        self._global_namespace = global_namespace
        self._default_ttl = default_ttl
        self._persist_namespace = persist_namespace
        self._entries = {}
        self._last_sweep = time.time()
        self._restored = persist_namespace is None
        self._writes_through = False
        self._persisted = set()  # keys the host's store holds a copy of
        self._warned = set()  # keys whose unpicklable value was already reported
        self._warn = None

    def bind_log(self, warn):
        """Report this cache's warnings through `warn` (the current run's log)."""
        self._warn = warn

    def _restore(self):
        if self._restored:
            return
        reply, blob = self._services.call({"op": "cache_load", "namespace": self._persist_namespace})
        self._restored = True
        self._writes_through = bool(reply.get("found"))
        for key, value, expires in marshal.loads(blob):
            self._persisted.add(key)
            if key in self._entries:
                continue
            try:
                self._entries[key] = (pickle.loads(value), expires)
            except Exception as e:
                self._report(key, f"cache key {key!r}: its persisted value could not be restored ({type(e).__name__}: {e})")

    def _report(self, key, text):
        if key not in self._warned and self._warn is not None:
            self._warned.add(key)
            self._warn(text)

    def _write_through(self, key, value, expires):
        try:
            blob = pickle.dumps(value)
        except Exception as e:
            self._report(key, f"cache key {key!r}: a {type(value).__name__} cannot be pickled ({e}); it is kept "
                              "in memory only and will not survive a restart")
            if key in self._persisted:
                self._services.call({"op": "cache_delete", "namespace": self._persist_namespace, "key": key})
                self._persisted.discard(key)
            return
        remaining = None if expires is None else max(expires - time.time(), 0.0)
        self._services.call({"op": "cache_put", "namespace": self._persist_namespace, "key": key, "ttl": remaining}, blob)
        self._persisted.add(key)

    def _host_namespace(self, use_global):
        if use_global is not None:
            _require_bool(use_global, "use_global")
        return self._global_namespace if use_global else self._local_namespace

    def sweep(self):
        """Drop expired trigger-local entries, at most once per 10 s (as InfluxDB 3 does)."""
        now = time.time()
        if now - self._last_sweep < _CACHE_SWEEP_INTERVAL:
            return
        self._last_sweep = now
        for key in [k for k, (_, expires) in self._entries.items() if expires is not None and expires <= now]:
            del self._entries[key]

    def put(self, key, value, ttl=None, use_global=None):
        _require_str(key, "key")
        namespace = self._host_namespace(use_global)
        expires = _expiry(ttl, self._default_ttl)
        if namespace is None:
            self._restore()
            if key not in self._entries and len(self._entries) >= MAX_KEYS:
                now = time.time()
                for stale in [k for k, (_, at) in self._entries.items() if at is not None and at <= now]:
                    del self._entries[stale]
                if len(self._entries) >= MAX_KEYS:
                    raise ValueError(f"trigger cache is full: it holds the limit of {MAX_KEYS} keys "
                                     f"(plugin cache MAX_KEYS); delete keys or give them a ttl")
            self._entries[key] = (value, expires)
            if self._writes_through:
                self._write_through(key, value, expires)
            return None
        try:
            blob = pickle.dumps(value)
        except Exception as e:
            raise TypeError(f"cache value for key {key!r} cannot be stored by value: {e}") from e
        remaining = None if expires is None else max(expires - time.time(), 0.0)
        self._services.call({"op": "cache_put", "namespace": namespace, "key": key, "ttl": remaining}, blob)
        return None

    def get(self, key, default=None, use_global=None):
        _require_str(key, "key")
        namespace = self._host_namespace(use_global)
        if namespace is None:
            self._restore()
            entry = self._entries.get(key)
            if entry is None:
                return default
            value, expires = entry
            if expires is not None and expires <= time.time():
                del self._entries[key]
                return default
            return value
        reply, blob = self._services.call({"op": "cache_get", "namespace": namespace, "key": key})
        return pickle.loads(blob) if reply.get("found") else default

    def delete(self, key, use_global=None):
        _require_str(key, "key")
        namespace = self._host_namespace(use_global)
        if namespace is None:
            self._restore()
            found = self._entries.pop(key, None) is not None
            if key in self._persisted:
                self._persisted.discard(key)
                self._services.call({"op": "cache_delete", "namespace": self._persist_namespace, "key": key})
            return found
        reply, _ = self._services.call({"op": "cache_delete", "namespace": namespace, "key": key})
        return bool(reply.get("found"))


class InfluxDB3Local:
    """The API object handed to a plugin for one invocation (a fresh one per call)."""

    def __init__(self, database, services, cache, logs, writes, dry_run):
        self._database = database
        self._services = services
        self._cache = cache
        self._logs = logs
        self._writes = writes
        self._dry_run = dry_run

    def _log(self, level, args):
        self._logs.append({"time_ns": time.time_ns(), "level": level, "text": " ".join(str(a) for a in args)})

    def info(self, *args):
        self._log("INFO", args)

    def warn(self, *args):
        self._log("WARN", args)

    def error(self, *args):
        self._log("ERROR", args)

    def write(self, line_builder):
        self.write_to_db(self._database, line_builder)

    def write_to_db(self, db_name, line_builder):
        _require_str(db_name, "db_name")
        _reject_internal(db_name)
        self._writes.setdefault(db_name, []).append(_line_of(line_builder))

    def write_sync(self, line_builder, no_sync):
        self.write_sync_to_db(self._database, line_builder, no_sync)

    def write_sync_to_db(self, db_name, line_builder, no_sync):
        _require_str(db_name, "db_name")
        _require_bool(no_sync, "no_sync")
        _reject_internal(db_name)
        line = _line_of(line_builder)
        if self._dry_run:
            self._writes.setdefault(db_name, []).append(line)
            return
        self._services.call({"op": "write", "database": db_name, "lines": line, "no_sync": no_sync})

    def query(self, query, args=None, database=None):
        _require_str(query, "query")
        if database is not None:
            _require_str(database, "database")
        if args is not None:
            if not isinstance(args, dict):
                raise TypeError(f"argument 'args': '{type(args).__name__}' object cannot be converted to 'PyDict'")
            for key, value in args.items():
                _require_str(key, "args")
                _require_str(value, "args")
        reply, payload = self._services.call(
            {"op": "query", "database": self._database if database is None else database, "sql": query, "params": args}
        )
        return decode_rows(reply["result"], payload)

    @property
    def cache(self):
        self._cache.bind_log(self.warn)
        self._cache.sweep()
        return self._cache


def decode_rows(result, payload):
    """Turn a ResultLayout and its payload into InfluxDB 3's list of row dicts."""
    if result["num_rows"] == 0:
        return []
    mem = memoryview(payload).toreadonly()
    names = [column["name"] for column in result["columns"]]
    columns = [arrowlite.values(mem, column) for column in result["columns"]]
    return [dict(zip(names, row)) for row in zip(*columns)]
