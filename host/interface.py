"""The database interface the plugin engine needs: write, query to Arrow, subscribe to WAL flushes.

plughost's own storage (`host.database.LocalDatabase`) implements it, and so can any other
server that wants to embed the engine: implement these three calls, hand the object to
`host.plugin_manager.ProcessingEngine`, and plugins run against your data.

Everything here is a description, not an implementation; nothing in this module blocks.
"""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

import msgspec
import pyarrow as pa


class LineError(msgspec.Struct, frozen=True):
    """One rejected line of a line-protocol write, in InfluxDB 3's wire names."""

    original_line: str
    line_number: int  # 1-based, counted over the request body's lines
    error_message: str


class WriteResult(msgspec.Struct, frozen=True):
    """What a write stored, and what it refused."""

    lines_written: int
    errors: list[LineError] = []


class WriteError(Exception):
    """A write was refused as a whole (bad database name, nothing valid with accept_partial=False).

    `errors` lists the offending lines when lines were the reason; nothing of the request was stored.
    """

    def __init__(self, message: str, errors: list[LineError] | None = None):
        super().__init__(message)
        self.errors = errors or []


class QueryError(Exception):
    """A query failed: unknown database, or the SQL engine's own message (DataFusion's text)."""


class DatabaseNotFound(QueryError):
    """The named database does not exist."""


class FlushedTable(msgspec.Struct, frozen=True):
    """The rows one WAL flush added to one table, as a single Arrow record batch.

    The batch carries every column of the table's schema at flush time, in schema order (tags as
    `dictionary<int32, utf8>`, fields, then `time` as `timestamp[ns]`); columns a row did not
    write are null.
    """

    database: str
    table: str
    batch: pa.RecordBatch


class WalFlush(msgspec.Struct, frozen=True):
    """Everything that became visible to queries in one flush, in write order per table."""

    sequence: int
    tables: list[FlushedTable]

    def databases(self) -> set[str]:
        return {t.database for t in self.tables}


FlushListener = Callable[[WalFlush], None]


@runtime_checkable
class Database(Protocol):
    """The three calls an engine makes into a database."""

    def write_lp(
        self,
        database: str,
        lines: str,
        *,
        precision: str = "auto",
        accept_partial: bool = True,
        no_sync: bool = False,
    ) -> WriteResult:
        """Store line protocol; create the database, tables and columns as needed.

        Blocks until the accepted lines are durable (fsync'd to the WAL), or only until they
        are queued when `no_sync` is true. They become visible to queries at the next flush.
        Raises WriteError when nothing can be stored.
        """
        ...

    def query(self, database: str, sql: str, params: dict[str, str] | None = None) -> pa.Table:
        """Run SQL against a database; `$name` placeholders take `params`.

        Blocks for the query's duration. Raises DatabaseNotFound or QueryError.
        """
        ...

    def subscribe(self, listener: FlushListener) -> Callable[[], None]:
        """Call `listener` once per WAL flush, on the flush thread, after the rows are queryable.

        The listener must not block (queue the work). Returns a function that unsubscribes.
        """
        ...
