"""A pure-Python reader of Arrow arrays laid out by `sandbox.protocol.ColumnLayout`.

It reads straight from a memoryview of the shared segment (or a services payload): numbers
through `memoryview.cast`, bit-packed booleans and validity bitmaps through a 256-entry table,
strings through their offsets, dictionary-encoded tags through their indices. Nothing is copied
until values are turned into Python objects.
"""

from itertools import chain

NUMBER_FORMATS = {
    "int8": "b", "int16": "h", "int32": "i", "int64": "q",
    "uint8": "B", "uint16": "H", "uint32": "I", "uint64": "Q",
    "float32": "f", "float64": "d", "timestamp": "q",
}
_OFFSET_FORMATS = {"utf8": "i", "large_utf8": "q"}
_ITEMSIZES = {"b": 1, "B": 1, "h": 2, "H": 2, "i": 4, "I": 4, "q": 8, "Q": 8, "f": 4, "d": 8}

# _BITS[byte] = the 8 bits of `byte`, least significant first (Arrow's bit order).
_BITS = tuple(tuple(bool(byte >> bit & 1) for bit in range(8)) for byte in range(256))


class UnsupportedType(ValueError):
    """A column type this reader does not decode."""


def span(mem, layout_span):
    """Return the read-only view of `[offset, offset + length)` in `mem`; no copy."""
    offset, length = layout_span
    return mem[offset:offset + length]


def bits(mem, layout_span, offset, length):
    """Decode `length` bits starting at bit `offset` of a bitmap into a list of bools."""
    first = offset >> 3
    last = (offset + length + 7) >> 3
    raw = span(mem, layout_span)[first:last]
    skip = offset & 7
    return list(chain.from_iterable(map(_BITS.__getitem__, raw)))[skip:skip + length]


def typed(mem, layout_span, fmt):
    """View a buffer as an array of `fmt` items (trailing padding bytes ignored); no copy."""
    raw = span(mem, layout_span)
    itemsize = _ITEMSIZES[fmt]
    return raw[:len(raw) - len(raw) % itemsize].cast(fmt)


def numbers(mem, column):
    """The typed memoryview of a numeric (or timestamp) column's values, sliced to its rows."""
    offset = column.get("offset", 0)
    return typed(mem, column["data"], NUMBER_FORMATS[column["type"]])[offset:offset + column["length"]]


def validity(mem, column):
    """The column's validity as a list of bools, or None when it has no nulls."""
    if not column.get("null_count") or column.get("validity") is None:
        return None
    return bits(mem, column["validity"], column.get("offset", 0), column["length"])


def strings(mem, column):
    """The column's string values as a list of str (nulls decode to their empty slot, '')."""
    offset = column.get("offset", 0)
    length = column["length"]
    if length == 0:
        return []
    ends = typed(mem, column["offsets"], _OFFSET_FORMATS[column["type"]])[offset:offset + length + 1].tolist()
    base, stop = ends[0], ends[-1]
    data = bytes(span(mem, column["data"])[base:stop])
    if data.isascii():
        text = data.decode("ascii")
        return [text[a - base:b - base] for a, b in zip(ends, ends[1:])]
    return [data[a - base:b - base].decode("utf-8") for a, b in zip(ends, ends[1:])]


def values(mem, column):
    """Decode a whole column into a list of Python values, None where null.

    Types: integers and floats → int / float, bool → bool, utf8 → str, timestamp → int ns,
    dictionary → the dictionary's values. Raises UnsupportedType for anything else.
    """
    kind = column["type"]
    valid = validity(mem, column)
    if kind == "dictionary":
        lookup = values(mem, column["dictionary"])
        indices = numbers(mem, dict(column, type=column["index_type"])).tolist()
        if valid is None:
            return [lookup[i] for i in indices]
        return [lookup[i] if ok else None for i, ok in zip(indices, valid)]
    if kind in NUMBER_FORMATS:
        decoded = numbers(mem, column).tolist()
    elif kind == "bool":
        decoded = bits(mem, column["data"], column.get("offset", 0), column["length"])
    elif kind in _OFFSET_FORMATS:
        decoded = strings(mem, column)
    else:
        raise UnsupportedType(f"Unsupported data type: {kind}")
    if valid is not None:
        decoded = [value if ok else None for value, ok in zip(decoded, valid)]
    return decoded
