"""Plugin caches that survive restarts: the global cache and trigger-local copies, written through to SQLite.

`PersistentPluginCache` is the host's `GlobalCache` plus a `cache.store.PluginCacheStore`
attached by `open(store)` (the server does that once the store exists, before any trigger
loads). From then on:

- the `global` namespace is kept in memory and every put/delete is also committed to the
  store before it returns; `open` loads it back with each entry's absolute expiry;
- trigger-local namespaces (`trigger_namespace(db, trigger)`) live as objects inside their
  trigger's interpreter; the interpreter sends each put's pickled copy here and it goes only
  to the store, to be handed back by `load` when the interpreter is next created (after a
  restart, a crash of its worker, or a reload);
- dry-run namespaces (`test:...`) stay in memory only, so a test run persists nothing.

A background thread deletes expired rows from the store every `sweep_interval` seconds;
reads never return an expired entry meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from cache.plugin_cache import GLOBAL, GlobalCache
from cache.store import PluginCacheStore

log = logging.getLogger("plughost.cache.plugin")

_TRIGGER_PREFIX = "trigger:"


class PersistentPluginCache(GlobalCache):
    """A GlobalCache whose `global` and trigger-local namespaces are written through to a store."""

    def __init__(self, clock: Callable[[], float] = time.time, sweep_interval: float = 10.0) -> None:
        super().__init__(clock)
        self._store: PluginCacheStore | None = None
        self._sweep_interval = sweep_interval
        self._stopping = threading.Event()
        self._sweeper: threading.Thread | None = None

    def open(self, store: PluginCacheStore) -> None:
        """Attach `store`, load the global namespace from it and start the expiry sweeper.

        Blocks for one read of the store. Raises sqlite3.Error if it cannot be read.
        """
        self.restore(GLOBAL, store.load(GLOBAL))
        self._store = store
        self.persistent = True
        self._sweeper = threading.Thread(target=self._sweep_store, name="plugin-cache-sweeper", daemon=True)
        self._sweeper.start()

    def close(self) -> None:
        """Stop the sweeper (waits for a purge in progress). The store stays open: its owner closes it."""
        self._stopping.set()
        if self._sweeper is not None:
            self._sweeper.join()
            self._sweeper = None

    def put(self, namespace: str, key: str, value: bytes, ttl: float | None = None) -> None:
        """As GlobalCache.put; a persisted namespace's put also blocks until the store committed it."""
        if self._persisted(namespace) and namespace != GLOBAL:
            self._check_ttl(ttl)
            self._store.put(namespace, key, value, None if ttl is None else self._clock() + ttl)
            return
        super().put(namespace, key, value, ttl)
        if self._persisted(namespace):
            self._store.put(namespace, key, value, None if ttl is None else self._clock() + ttl)

    def get(self, namespace: str, key: str) -> bytes | None:
        if self._persisted(namespace) and namespace != GLOBAL:
            return self._store.get(namespace, key)
        return super().get(namespace, key)

    def delete(self, namespace: str, key: str) -> bool:
        """As GlobalCache.delete; for a persisted namespace, blocks until the store committed it."""
        if not self._persisted(namespace):
            return super().delete(namespace, key)
        in_memory = namespace == GLOBAL and super().delete(namespace, key)
        return self._store.delete(namespace, key) or in_memory

    def drop_namespace(self, namespace: str) -> bool:
        """As GlobalCache.drop_namespace, and from the store too (blocks until committed)."""
        in_memory = super().drop_namespace(namespace)
        if self._persisted(namespace):
            return self._store.drop_namespace(namespace) or in_memory
        return in_memory

    def load(self, namespace: str) -> list[tuple[str, bytes, float | None]]:
        """The unexpired entries of a trigger-local namespace, as (key, pickled value, expires_at)."""
        if self._persisted(namespace) and namespace.startswith(_TRIGGER_PREFIX):
            return self._store.load(namespace)
        return []

    def _persisted(self, namespace: str) -> bool:
        return self._store is not None and (namespace == GLOBAL or namespace.startswith(_TRIGGER_PREFIX))

    def _sweep_store(self) -> None:
        while not self._stopping.wait(self._sweep_interval):
            try:
                purged = self._store.purge_expired()
            except Exception:
                log.exception("purging expired plugin cache entries failed")
                continue
            if purged:
                log.debug("purged %d expired plugin cache entries", purged)
