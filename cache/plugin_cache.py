"""The host's plugin cache: namespaces of pickled values with optional expiry, shared by all plugins.

Plugins reach it through `influxdb3_local.cache` with `use_global=True` (namespace `global`) and,
in dry runs, through the two namespaces InfluxDB 3 gives a test run's `cache_name` (its
trigger-local and its global cache). Values are opaque bytes here: the plugin side pickles them,
because a live object cannot cross interpreters. Trigger-local caches of real triggers never come
here; they live inside the trigger's interpreter. Everything is in memory (lost on restart, as in
InfluxDB 3); expiry uses wall-clock seconds so a later persistence layer can keep it.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Callable

GLOBAL = "global"
TEST_DEFAULT_TTL = 30 * 60.0  # InfluxDB 3 keeps a test run's cache entries 30 minutes by default
_SWEEP_INTERVAL = 10.0


def test_namespaces(cache_name: str) -> tuple[str, str]:
    """The (trigger-local, global) namespaces of a dry run named `cache_name`."""
    return f"test:{cache_name}:trigger", f"test:{cache_name}:global"


class GlobalCache:
    """Thread-safe namespaces of `key -> (value bytes, expiry)`; expired entries vanish on read."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._namespaces: dict[str, dict[str, tuple[bytes, float | None]]] = {}
        self._last_sweep = clock()

    def put(self, namespace: str, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store `value` under `key`; `ttl` seconds from now (None: until deleted).

        Raises ValueError for a negative, NaN or infinite ttl.
        """
        if ttl is not None and (math.isnan(ttl) or ttl < 0 or math.isinf(ttl)):
            raise ValueError(f"invalid cache ttl {ttl!r}: must be a finite number of seconds >= 0")
        now = self._clock()
        with self._lock:
            self._sweep(now)
            self._namespaces.setdefault(namespace, {})[key] = (bytes(value), None if ttl is None else now + ttl)

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
            for key in [k for k, (_, expires) in entries.items() if expires is not None and expires <= now]:
                del entries[key]
            if not entries:
                del self._namespaces[name]
