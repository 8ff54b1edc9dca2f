"""Query results as bytes, in InfluxDB 3's output formats: json, jsonl, csv, pretty and parquet.

Values are rendered the way InfluxDB 3's Arrow writers render them: timestamps as
`2024-01-01T00:00:00` with only as many fractional digits as needed (3, 6 or 9), floats in
shortest round-trip form with a `.0` on whole numbers, tags (dictionary columns) as plain
strings; JSON and JSON Lines omit null columns from a row, CSV and pretty show them empty.

`render` yields the body a piece at a time (one piece per record batch for json, jsonl and csv)
so a large result is never one giant string; it does the CPU work, so call it off the event loop.
"""

from __future__ import annotations

import csv
import enum
import io
import math
from collections.abc import Iterator

import msgspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

_BATCH_ROWS = 8192


class QueryFormat(enum.Enum):
    JSON = "json"
    JSONL = "jsonl"
    CSV = "csv"
    PRETTY = "pretty"
    PARQUET = "parquet"

    @property
    def content_type(self) -> str:
        return _CONTENT_TYPES[self]


_CONTENT_TYPES = {
    QueryFormat.JSON: "application/json",
    QueryFormat.JSONL: "application/jsonl",
    QueryFormat.CSV: "text/csv",
    QueryFormat.PRETTY: "text/plain; charset=utf-8",
    QueryFormat.PARQUET: "application/vnd.apache.parquet",
}
_FORMAT_NAMES = {"json": QueryFormat.JSON, "jsonl": QueryFormat.JSONL, "json_lines": QueryFormat.JSONL,
                 "csv": QueryFormat.CSV, "pretty": QueryFormat.PRETTY, "parquet": QueryFormat.PARQUET}
_ACCEPT_TYPES = {"application/vnd.apache.parquet": QueryFormat.PARQUET, "text/csv": QueryFormat.CSV,
                 "text/plain": QueryFormat.PRETTY, "application/json": QueryFormat.JSON,
                 "application/jsonl": QueryFormat.JSONL, "*/*": QueryFormat.JSON}


class UnknownFormat(ValueError):
    """A `format` parameter or `Accept` header that names no output format."""


def format_named(name: str) -> QueryFormat:
    """The format called `name` (`json`, `jsonl` or `json_lines`, `csv`, `pretty`, `parquet`)."""
    try:
        return _FORMAT_NAMES[name]
    except KeyError:
        raise UnknownFormat(
            f"unknown variant `{name}`, expected one of `parquet`, `csv`, `pretty`, `json`, `json_lines`, `jsonl`"
        ) from None


def format_from_accept(accept: str | None) -> QueryFormat:
    """The format an `Accept` header asks for; JSON when absent or when a browser asks for anything."""
    if accept is None:
        return QueryFormat.JSON
    accepted = _ACCEPT_TYPES.get(accept.strip())
    if accepted is not None:
        return accepted
    if "text/html" in accept or "*/*" in accept:
        return QueryFormat.JSON
    raise UnknownFormat(
        f"invalid mime type ({accept}), available types are application/vnd.apache.parquet, "
        "text/csv, text/plain, application/jsonl and application/json"
    )


def render(table: pa.Table, fmt: QueryFormat) -> Iterator[bytes]:
    """Yield `table` encoded as `fmt`, piece by piece. CPU-bound; never blocks on I/O."""
    if fmt is QueryFormat.JSON:
        return _json(table)
    if fmt is QueryFormat.JSONL:
        return _jsonl(table)
    if fmt is QueryFormat.CSV:
        return _csv(table)
    if fmt is QueryFormat.PRETTY:
        return iter([pretty(table).encode()])
    return iter([_parquet(table)])


def pretty(table: pa.Table) -> str:
    """`table` as an ASCII table like arrow's `pretty_format_batches` (no trailing newline)."""
    names = table.column_names
    if not names:
        return "++\n++"
    columns = [[_text(value) for value in _display(column.combine_chunks()).to_pylist()] for column in table.columns]
    widths = [max([len(name), *map(len, cells)]) for name, cells in zip(names, columns)]
    rule = "+" + "+".join("-" * (width + 2) for width in widths) + "+"

    def line(cells) -> str:
        return "|" + "|".join(f" {cell:<{width}} " for cell, width in zip(cells, widths)) + "|"

    lines = [rule, line(names), rule]
    lines.extend(line(row) for row in zip(*columns))
    lines.append(rule)
    return "\n".join(lines)


def _json(table: pa.Table) -> Iterator[bytes]:
    opened = False
    for batch in table.to_batches(max_chunksize=_BATCH_ROWS):
        if batch.num_rows == 0:
            continue
        rows = msgspec.json.encode(_json_rows(batch))[1:-1]
        yield (b"," if opened else b"[") + rows
        opened = True
    yield b"]" if opened else b"[]"


def _jsonl(table: pa.Table) -> Iterator[bytes]:
    encoder = msgspec.json.Encoder()
    for batch in table.to_batches(max_chunksize=_BATCH_ROWS):
        if batch.num_rows:
            buffer = bytearray()
            for row in _json_rows(batch):
                encoder.encode_into(row, buffer, len(buffer))
                buffer += b"\n"
            yield bytes(buffer)


def _json_rows(batch: pa.RecordBatch) -> list[dict]:
    names = batch.schema.names
    values = [_json_values(column) for column in batch.columns]
    return [{name: value for name, value in zip(names, row) if value is not None} for row in zip(*values)]


def _json_values(column: pa.Array) -> list:
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    if pa.types.is_timestamp(column.type) or pa.types.is_date(column.type) or pa.types.is_time(column.type):
        column = _display(column)
    return column.to_pylist()


def _csv(table: pa.Table) -> Iterator[bytes]:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header_written = False
    for batch in table.to_batches(max_chunksize=_BATCH_ROWS):
        if batch.num_rows == 0:
            continue
        if not header_written:
            writer.writerow(batch.schema.names)
            header_written = True
        columns = [[_text(value) for value in _display(column).to_pylist()] for column in batch.columns]
        writer.writerows(zip(*columns))
        yield out.getvalue().encode()
        out.seek(0)
        out.truncate()


def _parquet(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def _display(column: pa.Array) -> pa.Array:
    """`column` with timestamps, dates and times as strings and floats as Python floats."""
    kind = column.type
    if pa.types.is_dictionary(kind):
        return column.dictionary_decode()
    if pa.types.is_timestamp(kind):
        return _timestamps(column)
    if pa.types.is_date(kind) or pa.types.is_time(kind):
        return column.cast(pa.string())
    return column


def _timestamps(column: pa.Array) -> pa.Array:
    # pyarrow renders "2024-01-01 00:00:00.123000000" (and a "Z" when zoned); arrow-rs, which
    # InfluxDB 3 uses, renders "2024-01-01T00:00:00.123" and "+00:00".
    text = column.cast(pa.string())
    zoned = column.type.tz is not None
    if zoned:
        text = pc.replace_substring_regex(text, pattern="Z$", replacement="")
    text = pc.replace_substring(text, pattern=" ", replacement="T", max_replacements=1)
    text = pc.replace_substring_regex(text, pattern=r"\.0+$", replacement="")
    text = pc.replace_substring_regex(text, pattern=r"(\.\d{3})000000$", replacement=r"\1")
    text = pc.replace_substring_regex(text, pattern=r"(\.\d{6})000$", replacement=r"\1")
    if zoned:
        text = pc.binary_join_element_wise(text, pa.scalar("+00:00"), "")
    return text


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format_float(value)
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def format_float(value: float) -> str:
    """`value` as Rust's `ryu` writes it (arrow-rs's float display): `2.0`, `0.1`, `1e16`, `1e-7`."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    sign = "-" if math.copysign(1.0, value) < 0 else ""
    if value == 0:
        return sign + "0.0"
    # repr gives the shortest round-trip digits, as ryu does; only the layout differs.
    mantissa, _, exponent = repr(abs(value)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    significant = (whole + fraction).lstrip("0")
    leading_zeros = len(whole) + len(fraction) - len(significant)
    point = len(whole) - leading_zeros + int(exponent or 0)  # decimal point's place in `digits`
    digits = significant.rstrip("0")
    length = len(digits)
    if length <= point <= 16:
        return sign + digits + "0" * (point - length) + ".0"
    if 0 < point <= 16:
        return sign + digits[:point] + "." + digits[point:]
    if -5 < point <= 0:
        return sign + "0." + "0" * -point + digits
    scientific = digits[0] + ("." + digits[1:] if length > 1 else "")
    return f"{sign}{scientific}e{point - 1}"
