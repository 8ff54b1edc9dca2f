"""Persistence: buffered batches become Parquet files, then the WAL behind them is dropped.

One cycle (`Persister.persist`) takes every flushed batch up to the buffer's last flushed
WAL sequence S, writes one Parquet file per table (`dbs/<db>/<table>/<first>-<last>.parquet`,
temp file + fsync + rename + directory fsync), records the files and S in the catalog
(durable), swaps the batches for the files in the queryable buffer (atomically for queries),
and finally truncates the WAL through S. A crash at any point leaves either orphan files
(removed at the next start, their rows still in the WAL) or a complete cycle.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from host.buffer import QueryableBuffer, widen
from host.catalog import Catalog, ParquetFile, fsync_directory

log = logging.getLogger("plughost.persist")

DATABASES_DIR = "dbs"
RETRY_SECONDS = 5.0


def table_directory(database: str, table: str) -> str:
    """The data-dir-relative directory of a table's Parquet files.

    Table names come from line protocol and may hold any character, so they are
    percent-encoded (and a leading dot too) to stay one safe path component.
    """
    encoded = quote(table, safe="")
    if encoded.startswith("."):
        encoded = "%2E" + encoded[1:]
    return f"{DATABASES_DIR}/{database}/{encoded}"


def database_directory(database: str) -> str:
    return f"{DATABASES_DIR}/{database}"


# Small enough row groups that min/max statistics let a tag filter skip most of a file.
ROW_GROUP_ROWS = 65_536


def sorted_by_series(table: pa.Table, tags: list[str]) -> pa.Table:
    """`table` sorted by its tags, then time, as InfluxDB 3 sorts persisted data."""
    # Arrow cannot sort dictionary columns, so sort on their values.
    keys = pa.table({name: table.column(name).cast(pa.string()) for name in tags} | {"time": table.column("time")})
    order = pc.sort_indices(keys, sort_keys=[(name, "ascending") for name in keys.column_names])
    return table.take(order)


def write_parquet(path: Path, table: pa.Table) -> int:
    """Write `table` to `path` atomically; blocks for the write and two fsyncs.

    Returns the file's size in bytes.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        pq.write_table(table, f, compression="zstd", row_group_size=ROW_GROUP_ROWS)
        f.flush()
        os.fsync(f.fileno())
        size = f.tell()
    os.replace(tmp, path)
    fsync_directory(path.parent)
    return size


def remove_orphans(data_dir: Path, catalog: Catalog) -> list[Path]:
    """Delete Parquet and temp files the catalog does not list (left by a crash).

    Returns the removed paths.
    """
    root = data_dir / DATABASES_DIR
    if not root.exists():
        return []
    known = {data_dir / f.path for _, _, f in catalog.iter_parquet_files()}
    removed = []
    for path in root.rglob("*"):
        if path.is_file() and path not in known:
            path.unlink()
            removed.append(path)
    return removed


def remove_directory(data_dir: Path, relative: str) -> None:
    shutil.rmtree(data_dir / relative, ignore_errors=True)


class Persister:
    """Runs persistence cycles on its own thread when the buffer passes its limit.

    `lock` is held for a whole cycle; callers that delete tables hold it too, so a cycle never
    writes into a directory being removed.
    """

    def __init__(
        self, data_dir: Path, catalog: Catalog, buffer: QueryableBuffer, wal, limit_bytes: int, lock: threading.Lock
    ):
        self._data_dir = data_dir
        self._catalog = catalog
        self._buffer = buffer
        self._wal = wal
        self._limit_bytes = limit_bytes
        self.lock = lock
        self._wanted = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="plughost-persist", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread; blocks until a running cycle finishes."""
        self._stopping = True
        self._wanted.set()
        if self._thread.is_alive():
            self._thread.join()

    def check(self) -> None:
        """Wake the thread if the buffer is over its limit. Never blocks."""
        if self._buffer.nbytes > self._limit_bytes:
            self._wanted.set()

    def persist(self) -> int:
        """Run one cycle now; blocks for the Parquet writes and fsyncs.

        Returns the WAL sequence persisted through (0 when nothing was buffered).
        """
        with self.lock:
            through, taken = self._buffer.persistable()
            if not taken:
                return 0
            written: dict[int, ParquetFile] = {}
            try:
                for table_id, entries in taken.items():
                    found = self._catalog.table_by_id(table_id)
                    if found is None:
                        continue
                    database, schema = found
                    written[table_id] = self._write(database.name, schema, entries)
            except BaseException:
                for f in written.values():
                    (self._data_dir / f.path).unlink(missing_ok=True)
                raise
            dropped = self._catalog.record_persist(through, written)
            for table_id in dropped:
                (self._data_dir / written.pop(table_id).path).unlink(missing_ok=True)
            self._buffer.commit_persisted(through, written)
            self._wal.truncate_through(through)
            log.info("persisted %d tables through WAL sequence %d", len(written), through)
            return through

    def _write(self, database: str, schema, entries) -> ParquetFile:
        arrow_schema = schema.arrow_schema
        table = pa.Table.from_batches([widen(e.batch, arrow_schema) for e in entries], arrow_schema)
        table = sorted_by_series(table, schema.tag_names)
        first = min(e.first_sequence for e in entries)
        last = max(e.last_sequence for e in entries)
        relative = f"{table_directory(database, schema.name)}/{first:020d}-{last:020d}.parquet"
        size = write_parquet(self._data_dir / relative, table)
        times = pc.min_max(table.column("time").cast(pa.int64()))
        return ParquetFile(
            path=relative,
            first_sequence=first,
            last_sequence=last,
            row_count=table.num_rows,
            size_bytes=size,
            min_time=times["min"].as_py() or 0,
            max_time=times["max"].as_py() or 0,
        )

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            if self._stopping:
                return
            try:
                self.persist()
            except Exception:
                log.exception("persisting the buffer failed; its rows stay in memory and the WAL")
                # A failing disk fails again at once; retry later, or when the next flush asks.
                self._wanted.wait(RETRY_SECONDS)
            self.check()
