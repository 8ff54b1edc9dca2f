"""The host's plugin cache: namespaces of pickled values with optional expiry, shared by all plugins.

Plugins reach it through `influxdb3_local.cache` with `use_global=True` (namespace `global`) and,
in dry runs, through the two namespaces InfluxDB 3 gives a test run's `cache_name` (its
trigger-local and its global cache). Values are opaque bytes here: the plugin side pickles them,
because a live object cannot cross interpreters. Trigger-local caches of real triggers never come
here as live objects; they live inside the trigger's interpreter, and only their pickled copies
come here to be persisted (`trigger_namespace`). This class is in memory only; expiry uses
wall-clock seconds so that `cache.plugin_persistence.PersistentPluginCache` can keep it across
restarts. A namespace holds at most MAX_KEYS keys; a put of a new key past that raises CacheFull.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Callable

GLOBAL = "global"
TEST_DEFAULT_TTL = 30 * 60.0  # InfluxDB 3 keeps a test run's cache entries 30 minutes by default
_SWEEP_INTERVAL = 10.0
MAX_KEYS = 10_000  # keys per namespace: per trigger-local cache, and in the global cache


class CacheFull(ValueError):
    """A put of a new key into a namespace that already holds MAX_KEYS unexpired keys."""

    def __init__(self, namespace: str) -> None:
        super().__init__(f"plugin cache {namespace!r} is full: it holds the limit of {MAX_KEYS} keys "
                         f"(plugin cache MAX_KEYS); delete keys or give them a ttl")


def trigger_namespace(database: str, trigger_name: str) -> str:
    """The namespace where a trigger's trigger-local values are persisted."""
    return f"trigger:{database}:{trigger_name}"


def test_namespaces(cache_name: str) -> tuple[str, str]:
    """The (trigger-local, global) namespaces of a dry run named `cache_name`."""
    return f"test:{cache_name}:trigger", f"test:{cache_name}:global"


class GlobalCache:
    """Thread-safe namespaces of `key -> (value bytes, expiry)`; expired entries vanish on read."""

    persistent = False  # whether `load` can return anything (trigger-local write-through is wanted)

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._namespaces: dict[str, dict[str, tuple[bytes, float | None]]] = {}
        self._last_sweep = clock()

    def put(self, namespace: str, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store `value` under `key`; `ttl` seconds from now (None: until deleted).

        Raises ValueError for a negative, NaN or infinite ttl, CacheFull past MAX_KEYS.
        """
        self._check_ttl(ttl)
        now = self._clock()
        with self._lock:
            self._sweep(now)
            entries = self._namespaces.setdefault(namespace, {})
            if key not in entries and len(entries) >= MAX_KEYS:
                self._drop_expired(entries, now)
                if len(entries) >= MAX_KEYS:
                    raise CacheFull(namespace)
            entries[key] = (bytes(value), None if ttl is None else now + ttl)

    def restore(self, namespace: str, entries: list[tuple[str, bytes, float | None]]) -> None:
        """Put back entries read from a store, each with its absolute expiry (epoch seconds)."""
        with self._lock:
            self._namespaces.setdefault(namespace, {}).update(
                (key, (bytes(value), expires_at)) for key, value, expires_at in entries)

    def load(self, namespace: str) -> list[tuple[str, bytes, float | None]]:
        """Persisted entries of a trigger-local namespace; none, since this cache keeps nothing."""
        return []

    def get(self, namespace: str, key: str) -> bytes | None:
        """The value under `key`, or None when absent or expired (an expired entry is dropped)."""
        now = self._clock()
        with self._lock:
            entries = self._namespaces.get(namespace)
            if entries is None or key not in entries:
                return None
            value, expires = entries[key]
            if expires is not None and expires <= now:
                del entries[key]
                return None
            return value

    def delete(self, namespace: str, key: str) -> bool:
        """Remove `key`; True if it was present (expired or not)."""
        with self._lock:
            entries = self._namespaces.get(namespace)
            return entries is not None and entries.pop(key, None) is not None

    def drop_namespace(self, namespace: str) -> bool:
        """Forget a whole namespace (e.g. a finished test's); True if it existed."""
        with self._lock:
            return self._namespaces.pop(namespace, None) is not None

    def namespaces(self) -> list[str]:
        with self._lock:
            return sorted(self._namespaces)

    def _sweep(self, now: float) -> None:
        if now - self._last_sweep < _SWEEP_INTERVAL:
            return
        self._last_sweep = now
        for name in list(self._namespaces):
            entries = self._namespaces[name]
            self._drop_expired(entries, now)
            if not entries:
                del self._namespaces[name]

    @staticmethod
    def _check_ttl(ttl: float | None) -> None:
        if ttl is not None and (math.isnan(ttl) or ttl < 0 or math.isinf(ttl)):
            raise ValueError(f"invalid cache ttl {ttl!r}: must be a finite number of seconds >= 0")

    @staticmethod
    def _drop_expired(entries: dict[str, tuple[bytes, float | None]], now: float) -> None:
        for key in [k for k, (_, expires) in entries.items() if expires is not None and expires <= now]:
            del entries[key]
