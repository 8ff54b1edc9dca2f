"""The caches' persistent store: one SQLite file holding cache definitions, cache contents and plugin cache entries.

`CacheStore(path)` opens (or creates) `path` in WAL mode with `synchronous=NORMAL`. A commit
in that mode is a write into the `-wal` file without an fsync: it survives the process being
killed at any moment (the bytes are in the kernel), and a power loss can cost only the last
commits, never the file's consistency. The caches are derived data (the database's own WAL
is fsync'd), so that is the trade docs/caches.md explains.

All writes go through one writer thread that commits everything queued so far as one
transaction (group commit); each queued operation runs in its own savepoint, so one failing
operation fails alone. Calls that must be durable before they return (definitions, plugin
cache puts) wait for their commit; the flush path only queues (`append_state`), so ingest
never waits on the disk. Reads use their own connection and see every commit.

Cache contents are kept as a log of deltas plus at most one snapshot per cache:
`append_state` adds a delta, `replace_state` stores a snapshot and drops the deltas before it,
`load_state` returns the snapshot and the deltas after it, in order. Encoding callbacks run
on the writer thread, so serializing a large snapshot costs the caller nothing.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from pathlib import Path
from typing import NamedTuple, TypeVar

log = logging.getLogger("plughost.cache.store")

FILE_NAME = "caches.sqlite"

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cache_definitions (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    database TEXT NOT NULL,
    table_name TEXT NOT NULL,
    name TEXT NOT NULL,
    definition BLOB NOT NULL,
    UNIQUE (kind, database, table_name, name)
);
CREATE TABLE IF NOT EXISTS cache_snapshots (
    cache_id INTEGER PRIMARY KEY,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS cache_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    cache_id INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS cache_log_by_cache ON cache_log (cache_id, seq);
CREATE TABLE IF NOT EXISTS plugin_cache (
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    expires_at REAL,
    PRIMARY KEY (namespace, key)
) WITHOUT ROWID;
"""


class DefinitionExists(Exception):
    """A cache of that kind and name already exists on that table."""


class StoredDefinition(NamedTuple):
    id: int
    database: str
    table: str
    name: str
    definition: bytes


class CacheStore:
    """The store of one data directory. Thread-safe; `close()` when done.

    Raises sqlite3.Error from the constructor when the file cannot be opened or is not a
    SQLite database.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        writer = _connect(self.path)
        writer.executescript(_SCHEMA)
        self._reader = _connect(self.path)
        self._read_lock = threading.Lock()
        self._writer = _Writer(writer)
        self.plugin_cache = PluginCacheStore(self)

    @classmethod
    def in_directory(cls, data_dir: Path) -> CacheStore:
        """The store of a data directory (`<data_dir>/caches.sqlite`)."""
        return cls(Path(data_dir) / FILE_NAME)

    def close(self) -> None:
        """Commit everything queued, then close. Blocks for the last commit."""
        self._writer.close()
        with self._read_lock:
            self._reader.close()

    def sync(self) -> None:
        """Block until everything queued before this call is committed."""
        self._writer.submit(lambda connection: None).result()

    # -- definitions ------------------------------------------------------------------------

    def add_definition(self, kind: str, database: str, table: str, name: str, definition: bytes) -> int:
        """Store a cache definition; returns its id. Blocks until durable.

        Raises DefinitionExists when a `kind` cache named `name` exists on that table.
        """

        def insert(connection: sqlite3.Connection) -> int:
            try:
                cursor = connection.execute(
                    "INSERT INTO cache_definitions (kind, database, table_name, name, definition) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (kind, database, table, name, definition),
                )
            except sqlite3.IntegrityError:
                raise DefinitionExists(f"{kind} {name!r} already exists on table {database}.{table}") from None
            return cursor.lastrowid

        return self._writer.submit(insert).result()

    def remove_definitions(self, cache_ids: Iterable[int]) -> None:
        """Forget caches: definitions, snapshots and logs. Blocks until durable."""
        ids = [(cache_id,) for cache_id in cache_ids]

        def delete(connection: sqlite3.Connection) -> None:
            connection.executemany("DELETE FROM cache_definitions WHERE id = ?", ids)
            connection.executemany("DELETE FROM cache_snapshots WHERE cache_id = ?", ids)
            connection.executemany("DELETE FROM cache_log WHERE cache_id = ?", ids)

        self._writer.submit(delete).result()

    def definitions(self, kind: str) -> list[StoredDefinition]:
        """Every stored definition of `kind`, oldest first."""
        rows = self._read(
            "SELECT id, database, table_name, name, definition FROM cache_definitions WHERE kind = ? ORDER BY id",
            (kind,),
        )
        return [StoredDefinition(*row) for row in rows]

    # -- contents -----------------------------------------------------------------------------

    def append_state(self, cache_id: int, encode: Callable[[], bytes]) -> Future:
        """Queue a delta of a cache's contents; `encode()` runs on the writer thread. Does not block.

        The returned future completes when the delta is committed.
        """

        def append(connection: sqlite3.Connection) -> None:
            connection.execute("INSERT INTO cache_log (cache_id, data) VALUES (?, ?)", (cache_id, encode()))

        return self._writer.submit(append)

    def replace_state(self, cache_id: int, encode: Callable[[], bytes]) -> Future:
        """Queue a snapshot that replaces the cache's snapshot and every delta queued before it.

        `encode()` runs on the writer thread. Does not block; the future completes on commit.
        """

        def replace(connection: sqlite3.Connection) -> None:
            connection.execute(
                "INSERT OR REPLACE INTO cache_snapshots (cache_id, data) VALUES (?, ?)", (cache_id, encode())
            )
            connection.execute("DELETE FROM cache_log WHERE cache_id = ?", (cache_id,))

        return self._writer.submit(replace)

    def load_state(self, cache_id: int) -> tuple[bytes | None, list[bytes]]:
        """The cache's committed snapshot (None if it has none) and the deltas after it, in order."""
        with self._read_lock:
            self._reader.execute("BEGIN")
            try:
                snapshot = self._reader.execute(
                    "SELECT data FROM cache_snapshots WHERE cache_id = ?", (cache_id,)
                ).fetchone()
                deltas = self._reader.execute(
                    "SELECT data FROM cache_log WHERE cache_id = ? ORDER BY seq", (cache_id,)
                ).fetchall()
            finally:
                self._reader.execute("COMMIT")
        return (snapshot[0] if snapshot else None), [row[0] for row in deltas]

    # -- internals ----------------------------------------------------------------------------

    def _read(self, sql: str, parameters: tuple = ()) -> list[tuple]:
        with self._read_lock:
            return self._reader.execute(sql, parameters).fetchall()

    def _write(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        return self._writer.submit(operation).result()


class PluginCacheStore:
    """Plugin cache entries by namespace (`global`, `trigger:<db>:<name>`, ...): bytes with an expiry.

    `expires_at` is wall-clock seconds since the epoch (None: never). Writes block until
    durable; reads never return an expired entry.
    """

    def __init__(self, store: CacheStore, clock: Callable[[], float] = time.time):
        self._store = store
        self._clock = clock

    def put(self, namespace: str, key: str, value: bytes, expires_at: float | None) -> None:
        """Store `value` under `key`, replacing what was there. Blocks until durable."""
        row = (namespace, key, bytes(value), expires_at)
        self._store._write(
            lambda connection: connection.execute(
                "INSERT OR REPLACE INTO plugin_cache (namespace, key, value, expires_at) VALUES (?, ?, ?, ?)", row
            )
        )

    def get(self, namespace: str, key: str) -> bytes | None:
        """The value under `key`, or None when absent or expired."""
        rows = self._store._read(
            "SELECT value FROM plugin_cache WHERE namespace = ? AND key = ? AND (expires_at IS NULL OR expires_at > ?)",
            (namespace, key, self._clock()),
        )
        return rows[0][0] if rows else None

    def delete(self, namespace: str, key: str) -> bool:
        """Remove `key`; True if it was stored (expired or not). Blocks until durable."""
        return self._store._write(
            lambda connection: connection.execute(
                "DELETE FROM plugin_cache WHERE namespace = ? AND key = ?", (namespace, key)
            ).rowcount
            > 0
        )

    def drop_namespace(self, namespace: str) -> bool:
        """Remove every entry of `namespace`; True if it had any. Blocks until durable."""
        return self._store._write(
            lambda connection: connection.execute(
                "DELETE FROM plugin_cache WHERE namespace = ?", (namespace,)
            ).rowcount
            > 0
        )

    def load(self, namespace: str) -> list[tuple[str, bytes, float | None]]:
        """Every unexpired entry of `namespace` as (key, value, expires_at)."""
        return self._store._read(
            "SELECT key, value, expires_at FROM plugin_cache WHERE namespace = ? "
            "AND (expires_at IS NULL OR expires_at > ?) ORDER BY key",
            (namespace, self._clock()),
        )

    def namespaces(self) -> list[str]:
        """The namespaces holding at least one unexpired entry, sorted."""
        rows = self._store._read(
            "SELECT DISTINCT namespace FROM plugin_cache WHERE expires_at IS NULL OR expires_at > ? ORDER BY namespace",
            (self._clock(),),
        )
        return [row[0] for row in rows]

    def purge_expired(self) -> int:
        """Delete expired entries; returns how many. Blocks until durable."""
        now = self._clock()
        return self._store._write(
            lambda connection: connection.execute(
                "DELETE FROM plugin_cache WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,)
            ).rowcount
        )


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: transactions are explicit (the writer's BEGIN/COMMIT), never implicit
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("PRAGMA busy_timeout=10000")
    return connection


class _Writer:
    """One thread committing queued operations, all queued ones per transaction.

    `submit` never blocks; the future completes after the commit holding the operation, with
    its result or its exception.
    """

    def __init__(self, connection: sqlite3.Connection):
        self._connection = connection
        self._changed = threading.Condition()
        self._queue: list[tuple[Callable[[sqlite3.Connection], object], Future]] = []
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="plughost-cache-store", daemon=True)
        self._thread.start()

    def submit(self, operation: Callable[[sqlite3.Connection], T]) -> Future:
        done: Future = Future()
        with self._changed:
            if self._closing:
                raise RuntimeError("the cache store is closed")
            self._queue.append((operation, done))
            self._changed.notify()
        return done

    def close(self) -> None:
        with self._changed:
            self._closing = True
            self._changed.notify()
        self._thread.join()
        self._connection.close()

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._queue or self._closing)
                if not self._queue:
                    return
                batch, self._queue = self._queue, []
            self._commit(batch)

    def _commit(self, batch: list[tuple[Callable[[sqlite3.Connection], object], Future]]) -> None:
        connection = self._connection
        outcomes: list[tuple[Future, object, BaseException | None]] = []
        try:
            connection.execute("BEGIN IMMEDIATE")
            for operation, done in batch:
                connection.execute("SAVEPOINT operation")
                try:
                    result = operation(connection)
                except Exception as error:
                    connection.execute("ROLLBACK TO operation")
                    outcomes.append((done, None, error))
                else:
                    outcomes.append((done, result, None))
                connection.execute("RELEASE operation")
            connection.execute("COMMIT")
        except sqlite3.Error as error:
            log.exception("committing %d cache store operations failed", len(batch))
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            for _, done in batch:
                done.set_exception(error)
            return
        for done, result, error in outcomes:
            if error is None:
                done.set_result(result)
            else:
                done.set_exception(error)
