"""Arrow data laid out for the plugin side: a WAL flush in one shared segment, a query result in a payload.

`SharedFlush` is the one copy of a flush that every worker maps: each Arrow buffer (validity
bitmaps, offsets, values, dictionary indices and dictionary values, timestamps) is copied once,
64-byte aligned, into a sealed memfd, and described by a `FlushLayout`. Workers map the memfd
read-only and hand views of it to every trigger's interpreter, so no further copy happens.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import threading
from typing import Callable

import msgspec
import pyarrow as pa

from host.interface import WalFlush
from sandbox.protocol import ColumnLayout, FlushLayout, ResultLayout, Span, TableLayout

_ALIGNMENT = 64
_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE

_PRIMITIVE_NAMES = {
    pa.int8(): "int8", pa.int16(): "int16", pa.int32(): "int32", pa.int64(): "int64",
    pa.uint8(): "uint8", pa.uint16(): "uint16", pa.uint32(): "uint32", pa.uint64(): "uint64",
    pa.float32(): "float32", pa.float64(): "float64", pa.bool_(): "bool",
    pa.utf8(): "utf8", pa.large_utf8(): "large_utf8",
}
# What InfluxDB 3's query() converts; anything else raises ValueError("Unsupported data type: …").
_QUERY_TYPES = {"int64", "uint64", "float64", "bool", "utf8", "large_utf8", "timestamp", "dictionary"}
# DataFusion's names for the types a query may return, for InfluxDB 3's error text.
_DATAFUSION_NAMES = {
    "int8": "Int8", "int16": "Int16", "int32": "Int32", "uint8": "UInt8", "uint16": "UInt16",
    "uint32": "UInt32", "float32": "Float32",
}


class UnsupportedColumn(ValueError):
    """An Arrow type the plugin side cannot receive."""


def _datafusion_name(arrow_type: pa.DataType) -> str:
    return _DATAFUSION_NAMES.get(_PRIMITIVE_NAMES.get(arrow_type, ""), str(arrow_type))


class _Plan:
    """Where every buffer goes in the target segment; filled first, copied second."""

    def __init__(self) -> None:
        self.size = 0
        self.copies: list[tuple[int, pa.Buffer]] = []

    def place(self, buffer: pa.Buffer | None) -> Span | None:
        if buffer is None:
            return None
        offset = -(-self.size // _ALIGNMENT) * _ALIGNMENT
        self.copies.append((offset, buffer))
        self.size = offset + buffer.size
        return Span(offset, buffer.size)

    def copy_into(self, target: memoryview) -> None:
        for offset, buffer in self.copies:
            target[offset:offset + buffer.size] = memoryview(buffer).cast("B")


def _normalize(array: pa.Array) -> pa.Array:
    if pa.types.is_string_view(array.type):
        array = array.cast(pa.utf8())
    elif pa.types.is_dictionary(array.type) and pa.types.is_string_view(array.type.value_type):
        array = array.cast(pa.dictionary(array.type.index_type, pa.utf8()))
    elif pa.types.is_timestamp(array.type) and array.type.unit != "ns":
        array = array.cast(pa.timestamp("ns", array.type.tz))
    if array.offset and len(array):
        array = pa.concat_arrays([array])
    return array


def layout_column(name: str, array: pa.Array, plan: _Plan) -> ColumnLayout:
    """Plan `array`'s buffers into `plan` and describe them. Raises UnsupportedColumn."""
    array = _normalize(array)
    kind = array.type
    buffers = array.buffers()
    common = dict(name=name, length=len(array), offset=array.offset, null_count=array.null_count)
    validity = plan.place(buffers[0]) if array.null_count else None
    if pa.types.is_timestamp(kind):
        return ColumnLayout(type="timestamp", validity=validity, data=plan.place(buffers[1]), **common)
    if pa.types.is_dictionary(kind):
        index_type = _PRIMITIVE_NAMES.get(kind.index_type)
        if index_type is None:
            raise UnsupportedColumn(f"Unsupported data type: {kind}")
        dictionary = layout_column(name, array.dictionary, plan)
        return ColumnLayout(
            type="dictionary", validity=validity, data=plan.place(buffers[1]), index_type=index_type,
            dictionary=dictionary, **common,
        )
    type_name = _PRIMITIVE_NAMES.get(kind)
    if type_name is None:
        raise UnsupportedColumn(f"Unsupported data type: {_datafusion_name(kind)}")
    if type_name in ("utf8", "large_utf8"):
        return ColumnLayout(type=type_name, validity=validity, offsets=plan.place(buffers[1]), data=plan.place(buffers[2]), **common)
    return ColumnLayout(type=type_name, validity=validity, data=plan.place(buffers[1]), **common)


def _single_array(column: pa.ChunkedArray) -> pa.Array:
    if column.num_chunks == 1:
        return column.chunk(0)
    if column.num_chunks == 0:
        return pa.array([], type=column.type)
    return pa.concat_arrays(column.chunks)


def encode_result(table: pa.Table) -> tuple[ResultLayout, bytearray]:
    """Lay out a query result as (header, payload) for a services reply.

    Raises UnsupportedColumn (InfluxDB 3's ValueError) for a type query() does not convert.
    """
    plan = _Plan()
    columns = []
    for name, column in zip(table.column_names, table.columns):
        layout = layout_column(name, _single_array(column), plan)
        if layout.type not in _QUERY_TYPES or (layout.type == "dictionary" and layout.dictionary.type != "utf8"):
            raise UnsupportedColumn(f"Unsupported data type: {_datafusion_name(column.type)}")
        columns.append(layout)
    payload = bytearray(plan.size)
    plan.copy_into(memoryview(payload))
    return ResultLayout(num_rows=table.num_rows, columns=columns), payload


class SharedFlush:
    """One WAL flush in a sealed shared-memory segment, reference counted.

    `share` returns it with one reference, owned by the caller. `acquire()` adds one (e.g. per
    trigger run in flight), `release()` drops one; the last release closes the segment and tells
    every worker that mapped it to let go. Thread-safe.
    """

    def __init__(self, flush_id: int, sequence: int, layout: FlushLayout, fd: int,
                 on_last_release: Callable[[SharedFlush], None]) -> None:
        self.flush_id = flush_id
        self.sequence = sequence
        self.layout = layout
        self.layout_json = msgspec.json.encode(layout)
        self._fd = fd
        self._on_last_release = on_last_release
        self._lock = threading.Lock()
        self._references = 1
        self._mapped_in: set[object] = set()

    @property
    def size(self) -> int:
        return self.layout.size

    def acquire(self) -> SharedFlush:
        """Add a reference; raises ValueError once the segment is gone."""
        with self._lock:
            if self._references == 0:
                raise ValueError(f"shared flush {self.flush_id} was already released")
            self._references += 1
        return self

    def release(self) -> None:
        """Drop a reference; the last one frees the segment. Raises ValueError if none is left."""
        with self._lock:
            if self._references == 0:
                raise ValueError(f"shared flush {self.flush_id} was already released")
            self._references -= 1
            last = self._references == 0
            if last:
                os.close(self._fd)
                self._fd = -1
        if last:
            self._on_last_release(self)

    def fd_for(self, worker: object) -> int | None:
        """The memfd to send along when `worker` has not mapped this flush yet, else None."""
        with self._lock:
            if self._references == 0:
                raise ValueError(f"shared flush {self.flush_id} was already released")
            return None if worker in self._mapped_in else self._fd

    def mark_mapped(self, worker: object) -> None:
        with self._lock:
            self._mapped_in.add(worker)

    def mapped_in(self) -> set[object]:
        with self._lock:
            return set(self._mapped_in)


def share_flush(flush: WalFlush, flush_id: int, on_last_release: Callable[[SharedFlush], None]) -> SharedFlush:
    """Copy every buffer of `flush` once into a new sealed memfd; see SharedFlush."""
    plan = _Plan()
    tables = []
    for flushed in flush.tables:
        batch = flushed.batch
        columns = [layout_column(name, column, plan) for name, column in zip(batch.schema.names, batch.columns)]
        tables.append(TableLayout(database=flushed.database, table=flushed.table, num_rows=batch.num_rows, columns=columns))
    size = max(plan.size, _ALIGNMENT)
    fd = os.memfd_create(f"plughost-flush-{flush_id}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
        with mmap.mmap(fd, size) as segment:
            view = memoryview(segment)
            try:
                plan.copy_into(view)
            finally:
                view.release()
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    except BaseException:
        os.close(fd)
        raise
    layout = FlushLayout(flush_id=flush_id, size=size, tables=tables)
    return SharedFlush(flush_id, flush.sequence, layout, fd, on_last_release)
