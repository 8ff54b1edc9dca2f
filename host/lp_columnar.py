"""Columnar line-protocol parsing: the common lines of a write body, split and typed by Arrow.

Most line protocol has no escapes, no quotes and single spaces. `parse_columnar` recognises such
lines with one vectorized regex, groups them by *shape* (measurement, tag keys, field keys and
field types, exactly the key `host.database` groups rows by) and converts their values in
Arrow's C++ kernels. Every other line — escapes, string fields, comments, odd whitespace,
repeated keys, numbers that could overflow, anything the fast grammar does not cover — goes
through `host.lineprotocol.parse` unchanged, with its own line numbers, so the outcome is
exactly that of `parse` alone.

Lines left to `parse` are parsed in a copy of the body in which the fast lines are blank, so
line numbers hold. A fast line has no quote or backslash, so it always stands alone unless a
slow line before it continues onto it (a multi-line string value, an escaped newline); the copy
shows that as a line spanning a blanked one, and then the fast line is handed to the slow
lines and they are parsed again.

Arrow costs a fixed half millisecond or so per body, so `parse_body` leaves small bodies to
`parse` altogether.

Nothing here blocks or performs I/O.
"""

from __future__ import annotations

from typing import NamedTuple

import pyarrow as pa
import pyarrow.compute as pc

from host.lineprotocol import Line, ParseError, parse

__all__ = ["ColumnarBody", "FastGroup", "parse_body", "parse_columnar", "scale_timestamps"]

# The fast grammar. Names exclude every character that is a delimiter or escape anywhere in the
# grammar, so each line splits on its single spaces, commas and equals signs. Integers are
# limited to 18 digits and floats to 18 integer digits and a 2-digit exponent so no value can
# overflow; timestamps take up to 19 digits and are range-checked by the cast.
_NAME = r'[^ ,="\\\t\n\r\x00]+'
_VALUE = (
    r"(?:-?[0-9]{1,18}i|[0-9]{1,18}u|-?[0-9]{1,18}(?:\.[0-9]+)?(?:[eE][+-]?[0-9]{1,2})?"
    r"|[tTfF]|true|True|TRUE|false|False|FALSE)"
)
_FAST_LINE = (
    rf'^[^ ,="\\\t\n\r\x00#][^ ,="\\\t\n\r\x00]*(?:,{_NAME}={_NAME})*'
    rf" {_NAME}={_VALUE}(?:,{_NAME}={_VALUE})*(?: -?[0-9]{{1,19}})?$"
)
# Arrow costs about half a millisecond per body whatever its size, which parse spends on
# about a hundred lines.
_COLUMNAR_FROM_LINES = 128
# Below this many UTF-8 bytes a line cannot hold a name longer than 64 KiB.
_MAX_FAST_LINE_BYTES = 65536
_TRUE_TEXTS = pa.array(["t", "T", "true", "True", "TRUE"])
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_CASTS = {"f": pa.float64(), "i": pa.int64(), "u": pa.uint64()}


class FastGroup(NamedTuple):
    """Fast lines of one shape: `key` is (measurement, tag keys, field keys, type codes).

    `columns` are Python lists, one per tag then per field, in key order; `timestamps` is
    int64 with nulls where a line has none (not yet scaled by precision); `line_numbers` are
    1-based, ascending; `originals[i]` is the text of line `line_numbers[i]`.
    """

    key: tuple
    columns: list[list]
    timestamps: pa.Array
    line_numbers: list[int]
    originals: pa.Array

    @property
    def first_line(self) -> int:
        return self.line_numbers[0]


class ColumnarBody(NamedTuple):
    """A parsed body: `items` are Lines and FastGroups ordered by their (first) line number;
    `errors` are the refused lines, in body order."""

    items: list[Line | FastGroup]
    errors: list[ParseError]


def parse_body(text: str) -> ColumnarBody:
    """Parse a write body; the same lines, values and errors as `host.lineprotocol.parse`.

    Small bodies go to `parse` directly, larger ones to `parse_columnar`. Never raises for
    bad input.
    """
    if text.count("\n") < _COLUMNAR_FROM_LINES:
        lines, errors = parse(text)
        return ColumnarBody(lines, errors)
    return parse_columnar(text)


def parse_columnar(text: str) -> ColumnarBody:
    """`parse_body` with the fast path whatever the body's size. Never raises for bad input."""
    try:
        physical = pc.split_pattern(pa.array([text], pa.string()), "\n").flatten()
    except (UnicodeEncodeError, pa.ArrowCapacityError):  # lone surrogates, or a body over 2 GiB
        lines, errors = parse(text)
        return ColumnarBody(lines, errors)
    candidate = pc.and_(
        pc.match_substring_regex(physical, _FAST_LINE),
        pc.less_equal(pc.binary_length(physical), _MAX_FAST_LINE_BYTES),
    )
    fast = _Candidates(physical, candidate)
    slow_lines, errors, absorbed = _parse_slow_lines(physical, fast.kept)
    items: list[Line | FastGroup] = list(slow_lines)
    items.extend(fast.groups(absorbed))
    items.sort(key=_first_line)
    return ColumnarBody(items, errors)


def _first_line(item) -> int:
    return item.line_number if type(item) is Line else item.first_line


class _Candidates:
    """The lines matching the fast grammar, split into series, field keys, values and types."""

    def __init__(self, physical: pa.Array, candidate: pa.Array):
        self.physical = physical
        self.indices = pc.indices_nonzero(candidate)
        self.count = len(self.indices)
        self.kept = candidate
        if not self.count:
            return
        lines = physical.take(self.indices)
        parts = pc.split_pattern(lines, " ")
        series = pc.dictionary_encode(pc.list_element(parts, 0))
        field_sets = pc.split_pattern(pc.list_element(parts, 1), ",")
        pairs = pc.split_pattern(field_sets.flatten(), "=")
        values = pc.list_element(pairs, 1)
        codes = pc.if_else(
            pc.ends_with(values, "i"),
            "i",
            pc.if_else(pc.ends_with(values, "u"), "u", pc.if_else(pc.match_substring_regex(values, "^[tTfF]"), "b", "f")),
        )
        offsets = field_sets.offsets
        field_keys = pc.binary_join(pa.ListArray.from_arrays(offsets, pc.list_element(pairs, 0)), ",")
        type_codes = pc.binary_join(pa.ListArray.from_arrays(offsets, codes), "")
        self.values = pa.ListArray.from_arrays(offsets, values)
        self.series_indices = series.indices
        self.series = [_split_series(s) for s in series.dictionary.to_pylist()]
        series_shapes = pa.array([shape for shape, _ in self.series], pa.string()).take(series.indices)
        shapes = pc.dictionary_encode(pc.binary_join_element_wise(series_shapes, field_keys, type_codes, " "))
        self.shape_indices = shapes.indices
        self.shapes = [_shape_key(s) for s in shapes.dictionary.to_pylist()]
        timestamp_texts = pc.list_slice(parts, 2, 3, return_fixed_size_list=True).flatten()
        shape_ok = pa.array([key is not None for key in self.shapes], pa.bool_())
        demoted = pc.invert(pc.fill_null(pc.take(shape_ok, self.shape_indices), False))
        try:
            self.timestamps = pc.cast(timestamp_texts, pa.int64())
        except pa.ArrowInvalid:
            out_of_range = pa.array([
                text is not None and not _INT64_MIN <= int(text) <= _INT64_MAX
                for text in timestamp_texts.to_pylist()
            ])
            self.timestamps = pc.cast(pc.if_else(out_of_range, "0", timestamp_texts), pa.int64())
            demoted = pc.or_(demoted, out_of_range)
        self.demoted = demoted
        self.kept = pc.replace_with_mask(candidate, candidate, pc.invert(demoted))

    def groups(self, absorbed: set[int]) -> list[FastGroup]:
        """One FastGroup per shape of the kept lines, minus the `absorbed` physical indices."""
        if not self.count:
            return []
        keep = pc.invert(self.demoted)
        if absorbed:
            keep = pc.and_(keep, pc.invert(pc.is_in(self.indices, pa.array(sorted(absorbed), self.indices.type))))
        timestamps = self.timestamps
        groups = []
        shape_list = self.shape_indices
        for shape_index, key in enumerate(self.shapes):
            if key is None:
                continue
            chosen = pc.indices_nonzero(pc.and_(keep, pc.equal(shape_list, shape_index)))
            if not len(chosen):
                continue
            groups.append(self._group(key, chosen, timestamps))
        return groups

    def _group(self, key: tuple, chosen: pa.Array, timestamps: pa.Array) -> FastGroup:
        _, tag_keys, _, codes = key
        series = self.series
        columns = []
        if tag_keys:
            tag_values = [series[i][1] for i in self.series_indices.take(chosen).to_pylist()]
            columns.extend(map(list, zip(*tag_values)))
        values = self.values.take(chosen)
        for position, code in enumerate(codes):
            texts = pc.list_element(values, position)
            if code == "b":
                column = pc.is_in(texts, _TRUE_TEXTS)
            elif code == "f":
                column = pc.cast(texts, _CASTS[code])
            else:
                column = pc.cast(pc.utf8_slice_codeunits(texts, 0, -1), _CASTS[code])
            columns.append(column.to_pylist())
        physical = self.indices.take(chosen)
        line_numbers = pc.add(physical, 1).to_pylist()
        return FastGroup(key, columns, timestamps.take(chosen), line_numbers, self.physical.take(physical))


def _split_series(series: str) -> tuple[str | None, tuple[str, ...]]:
    """(shape text or None if the tag keys repeat, tag values) for a fast line's series text."""
    measurement, *tags = series.split(",")
    pairs = [tag.split("=") for tag in tags]
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        return None, ()
    return ",".join([measurement, *keys]), tuple(v for _, v in pairs)


def _shape_key(shape: str | None) -> tuple | None:
    """The grouping key for a shape text, or None when parse must explain the lines (a series
    with repeated tag keys, repeated field keys, or a name used as tag and field)."""
    if shape is None:
        return None
    series, field_keys, codes = shape.split(" ")
    measurement, *tag_keys = series.split(",")
    fields = field_keys.split(",")
    if len(set(fields)) != len(fields) or not set(tag_keys).isdisjoint(fields):
        return None
    return measurement, tuple(tag_keys), tuple(fields), tuple(codes)


def _parse_slow_lines(physical: pa.Array, kept: pa.Array) -> tuple[list[Line], list[ParseError], set[int]]:
    """Parse every line not `kept` for the fast path with `parse`, in place; returns its lines,
    its errors, and the kept lines a slow line turned out to continue onto (and so consumed)."""
    count = len(physical)
    slow = pc.indices_nonzero(pc.invert(kept)).to_pylist()
    texts: dict[int, str] = {}
    absorbed: set[int] = set()
    while True:
        needed = [i for i in slow if i not in texts]
        if needed:
            texts.update(zip(needed, physical.take(pa.array(needed, pa.int64())).to_pylist()))
        slow = [i for i in slow if texts[i]]  # an empty line is blank in the copy anyway
        if not slow:
            return [], [], absorbed
        first = slow[0]
        end = min(slow[-1] + 2, count)
        region = [""] * (end - first)
        for i in slow:
            region[i - first] = texts[i]
        lines, errors = parse("\n".join(region))
        newly = set()
        for item in (*lines, *errors):
            start = item.line_number - 1 + first
            original = item.original if type(item) is Line else item.original_line
            for covered in range(start + 1, start + 1 + original.count("\n")):
                if covered not in texts and kept[covered].as_py():
                    newly.add(covered)
        if not newly:
            break
        absorbed |= newly
        slow = sorted({*slow, *newly})
    if first:
        lines = [line._replace(line_number=line.line_number + first) for line in lines]
        errors = [error._replace(line_number=error.line_number + first) for error in errors]
    return lines, errors, absorbed


_AUTO_MULTIPLIERS = ((5_000_000_000, 1_000_000_000), (5_000_000_000_000, 1_000_000), (5_000_000_000_000_000, 1_000))
_NANOSECONDS = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}


def scale_timestamps(timestamps: pa.Array, precision: str, now: int) -> tuple[list[int], list[int]]:
    """Timestamps in nanoseconds as `host.database` scales a line's, and the positions whose
    scaled value leaves int64 (never with "auto" or "ns"). Missing timestamps become `now`.

    `precision` is canonical ("auto", "s", "ms", "us" or "ns").
    """
    out_of_range: list[int] = []
    if precision == "auto":
        multiplier = pa.scalar(1, pa.int64())
        for bound, factor in reversed(_AUTO_MULTIPLIERS):
            near_zero = pc.and_(pc.greater(timestamps, -bound), pc.less(timestamps, bound))
            multiplier = pc.if_else(near_zero, factor, multiplier)
        timestamps = pc.multiply(timestamps, multiplier)
    elif precision != "ns":
        factor = _NANOSECONDS[precision]
        outside = pc.fill_null(
            pc.or_(pc.less(timestamps, -(2**63 // factor)), pc.greater(timestamps, _INT64_MAX // factor)), False
        )
        if pc.any(outside).as_py():
            out_of_range = pc.indices_nonzero(outside).to_pylist()
            timestamps = pc.if_else(outside, 0, timestamps)
        timestamps = pc.multiply(timestamps, factor)
    return pc.fill_null(timestamps, now).to_pylist(), out_of_range
