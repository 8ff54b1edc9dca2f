"""InfluxDB line protocol: parsing a write body into lines, timestamp precision, canonical formatting.

The grammar is InfluxDB 3's (its Rust ``influxdb_line_protocol`` crate, itself a port of the Go
parser), element by element:

``measurement[,tag_key=tag_value...] field_key=field_value[,field_key=field_value...] [timestamp]``

- Elements are separated by one or more spaces; leading spaces and tabs are ignored, and so are
  spaces after the last element (InfluxDB 3 refuses them after a field set with no timestamp; v1
  and v2 accept them, and so do we). A tab anywhere else makes the line invalid.
- Blank lines are skipped, and so are lines whose first non-blank character is ``#``.
- Escapes in names: a measurement takes ``\\,`` ``\\ `` and ``\\\\``; tag keys, tag values and
  field keys take ``\\,`` ``\\=`` ``\\ `` and ``\\\\``. A backslash before any other character is a
  literal backslash and keeps that character, whatever it is. An unescaped ``=`` is literal in a
  measurement and in a tag value, and an unescaped ``,`` is literal inside a tag key or field key
  (InfluxDB accepts both; :func:`format_line` escapes them anyway). No name may be empty or end
  with a backslash, and a measurement may not contain NUL.
- Field values: float ``-?D+[.D+][(e|E)[+|-]D+]`` (so ``1.`` ``.5`` ``+1`` ``NaN`` and ``inf`` are
  invalid), integer ``-?D+i`` within int64, unsigned ``D+u`` within uint64, boolean
  ``t T true True TRUE f F false False FALSE``, and string ``"..."`` in which ``\\"`` is a quote,
  ``\\\\`` a backslash and any other backslash is literal. A float that overflows to infinity is
  refused (InfluxDB 3 itself would store ``inf``; Go InfluxDB refuses it, and so do we).
- Names and string values are limited to 64 KiB of UTF-8 each, as in InfluxDB.
- The timestamp is an optional int64 (``-?D+``), scaled later by :func:`to_nanoseconds`.
- InfluxDB 3 refuses a line that repeats a tag key or a field key; so do we. We also refuse a line
  whose tag and field share a name, since one table cannot hold both columns.

Where a line ends: at the first newline that is neither inside a quoted string field value nor
escaped by a backslash (both, as in InfluxDB, continue the line onto the next physical line, so a
string field may hold newlines). Two deliberate differences from InfluxDB's line splitter, which
only change the fate of lines that are already invalid: a comment ends at its own newline even when
it contains a quote, and a bad line that opened a string it never closed ends at the newline after
that quote instead of swallowing the rest of the body. A carriage return is an ordinary character,
as in InfluxDB, so CRLF bodies are refused (the error says so).

Line numbers are 1-based physical line numbers within the body; a line spanning several physical
lines is numbered by the first.

Nothing here blocks or performs I/O.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
from typing import NamedTuple

__all__ = [
    "Line",
    "ParseError",
    "format_line",
    "normalize_precision",
    "parse",
    "to_nanoseconds",
]


class Line(NamedTuple):
    """One parsed line of line protocol; names unescaped, values typed."""

    measurement: str
    tags: tuple[tuple[str, str], ...]  # in line order
    fields: tuple[tuple[str, str, object], ...]  # (key, type_code, value); type_code in "fibsu"
    timestamp: int | None  # as written, not yet scaled by precision
    line_number: int  # 1-based line number within the body
    original: str  # the raw line text


class ParseError(NamedTuple):
    """One refused line: where it was, what it said, and why it was refused."""

    line_number: int
    original_line: str
    message: str


_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_UINT64_MAX = 2**64 - 1
_MAX_ELEMENT_BYTES = 65536
# Below this many characters a string cannot exceed _MAX_ELEMENT_BYTES of UTF-8.
_ELEMENT_CHARS_ALWAYS_SHORT = _MAX_ELEMENT_BYTES // 4

_BOOLEANS = {
    "t": True, "T": True, "true": True, "True": True, "TRUE": True,
    "f": False, "F": False, "false": False, "False": False, "FALSE": False,
}

_FLOAT_TEXT = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_INTEGER_TEXT = re.compile(r"-?[0-9]+")
_UNSIGNED_TEXT = re.compile(r"[0-9]+")

# The simple path: one physical line whose elements hold no spaces, tabs or NUL except through
# escapes. One regex checks the whole line; the series (measurement and tags) is parsed once per
# distinct text in a body and cached. Digit counts are bounded so that no value it accepts can
# overflow: at most 18 integer digits keep integers in int64 and uint64, and with at most a
# two-digit exponent a float stays below 1e117. Longer numbers are still valid; they just take the
# careful path, like everything else this regex refuses. It accepts "-1u" and field keys ending in
# an escaped backslash, which the simple path hands on to the careful parser for its error
# message. A backslash before a newline continues the line, so that is left to the careful path.
_SIMPLE_VALUE = (
    r'(?:"(?:[^"\\\n]++|\\[^\n])*+"'
    r"|-?[0-9]{1,18}+(?:[iu]|(?:\.[0-9]++)?(?:[eE][+-]?[0-9]{1,2}+)?)"
    r"|[tT](?:rue)?|TRUE|[fF](?:alse)?|FALSE)"
)
_SIMPLE_FIELD = rf'(?:[^ ,="\\\t\n\x00]++|\\[^\n])++={_SIMPLE_VALUE}'
_SIMPLE_LINE = re.compile(
    rf"((?:[^ #\\\t\n\x00]|\\[^\n])(?:[^ \\\t\n\x00]++|\\[^\n])*+)"
    rf" ++({_SIMPLE_FIELD}(?:,{_SIMPLE_FIELD})*+)(?: ++(-?[0-9]++))? *+"
).fullmatch
_SIMPLE_FIELD_PAIRS = re.compile(
    r'((?:[^,=\\]++|\\.)++)=(?:"((?:[^"\\]++|\\.)*+)"|([^,]++))'
).findall
_STRING_UNESCAPE = functools.partial(re.compile(r'\\(["\\])').sub, r"\1")
_NOT_SIMPLE = object()
_NO_STRINGS = itertools.repeat("")

# One name per element: a run of ordinary characters and backslash pairs. As in InfluxDB, a
# backslash always takes the next character with it, whatever it is (even a newline); only some
# pairs are escapes, the rest stand for themselves.
_MEASUREMENT_TOKEN = re.compile(r"(?:[^ \t\n\x00,\\]++|\\.)*+", re.DOTALL)
_KEY_TOKEN = re.compile(r"(?:[^ \t\n=\\]++|\\.)*+", re.DOTALL)
_TAG_VALUE_TOKEN = re.compile(r"(?:[^ \t\n,\\]++|\\.)*+", re.DOTALL)
_MEASUREMENT_UNESCAPE = functools.partial(re.compile(r"\\([, \\])").sub, r"\1")
_KEY_UNESCAPE = functools.partial(re.compile(r"\\([,= \\])").sub, r"\1")
_STRING_RUN = re.compile(r'[^"\\]+')
_UNQUOTED_TOKEN = re.compile(r"[^ ,\n]*")
_TIMESTAMP_TOKEN = re.compile(r"[^ \n]*")

_MEASUREMENT_ESCAPES = ", \\"
_KEY_ESCAPES = ",= \\"
_MEASUREMENT = (_MEASUREMENT_TOKEN, _MEASUREMENT_UNESCAPE, "measurement")
_TAG_KEY = (_KEY_TOKEN, _KEY_UNESCAPE, "tag key")
_TAG_VALUE = (_TAG_VALUE_TOKEN, _KEY_UNESCAPE, "tag value")
_FIELD_KEY = (_KEY_TOKEN, _KEY_UNESCAPE, "field key")


def parse(text: str) -> tuple[list[Line], list[ParseError]]:
    """Parse a write body into its good lines and one ParseError per bad line, both in body order.

    Never raises for bad input; blank and comment lines produce nothing.
    """
    lines: list[Line] = []
    errors: list[ParseError] = []
    physical = text.split("\n")
    series_cache: dict[str, list | object] = {}
    # Text offset of physical[offset_index], advanced lazily: only the careful parser needs it.
    offset = 0
    offset_index = 0
    resume_index = 0
    for index, raw in enumerate(physical):
        if index < resume_index:
            continue
        line = _parse_simple_line(raw, index + 1, series_cache)
        if line is not None:
            lines.append(line)
            continue
        content = raw.lstrip(" \t")
        if not content or content[0] == "#":
            continue
        while offset_index < index:
            offset += len(physical[offset_index]) + 1
            offset_index += 1
        end, outcome = _parse_line_carefully(text, offset + len(raw) - len(content))
        original = text[offset:end]
        if type(outcome) is str:
            errors.append(ParseError(index + 1, original, outcome))
        else:
            lines.append(Line(*outcome, index + 1, original))
        resume_index = index + 1 + text.count("\n", offset, end)
    return lines, errors


def _parse_simple_line(raw, line_number, series_cache):
    """Parse a line of the simple shape quickly, or return None to leave it to the careful parser.

    None also for every invalid line: the careful parser is the authority on error messages.
    `series_cache` maps series text to [measurement, tags, tag key set, last field keys checked
    distinct], or to _NOT_SIMPLE.
    """
    if len(raw) > _ELEMENT_CHARS_ALWAYS_SHORT:
        return None  # a shorter line cannot hold a name or string over 64 KiB, so none is checked
    match = _SIMPLE_LINE(raw)
    if match is None:
        return None
    series_text, field_set, timestamp_text = match.groups()
    series = series_cache.get(series_text)
    if series is None:
        series = series_cache[series_text] = _parse_simple_series(series_text)
    if series is _NOT_SIMPLE:
        return None
    if '"' in field_set or "\\" in field_set:
        found = _SIMPLE_FIELD_PAIRS(field_set)
        if "\\" in field_set:
            found = [(_unescape_simple_key(key), string, number) for key, string, number in found]
            if any(key is None for key, _, _ in found):
                return None
        keys = [pair[0] for pair in found]
    else:
        # Splitting is several times cheaper than findall, and exact without quotes or escapes.
        parts = field_set.replace("=", ",").split(",")
        keys = parts[::2]
        found = zip(keys, _NO_STRINGS, parts[1::2])
    fields = []
    for key, string, number in found:
        if not number:
            fields.append((key, "s", _STRING_UNESCAPE(string) if "\\" in string else string))
            continue
        last = number[-1]
        if last <= "9":
            fields.append((key, "f", float(number)))
        elif last == "i":
            fields.append((key, "i", int(number[:-1])))
        elif last == "u":
            if number[0] == "-":
                return None
            fields.append((key, "u", int(number[:-1])))
        else:
            fields.append((key, "b", _BOOLEANS[number]))
    if keys != series[3]:
        distinct = set(keys)
        if len(distinct) != len(keys) or not series[2].isdisjoint(distinct):
            return None
        series[3] = keys
    if timestamp_text:
        timestamp = int(timestamp_text)
        if timestamp < _INT64_MIN or timestamp > _INT64_MAX:
            return None
    else:
        timestamp = None
    return tuple.__new__(Line, (series[0], series[1], tuple(fields), timestamp, line_number, raw))


def _unescape_simple_key(key):
    """A field key unescaped, or None if it ends in a backslash (the careful parser explains)."""
    if "\\" not in key:
        return key
    key = _KEY_UNESCAPE(key)
    return None if key.endswith("\\") else key


def _parse_simple_series(series_text):
    """[measurement, tags, tag key set, None] for a simple line's series text, or _NOT_SIMPLE.

    Runs once per distinct series in a body, so it can afford the careful parser.
    """
    cursor = _Cursor(series_text, 0)
    try:
        measurement, tags, tag_keys = cursor.series()
    except _Refused:
        return _NOT_SIMPLE
    if cursor.pos != len(series_text):
        return _NOT_SIMPLE
    return [measurement, tags, tag_keys, None]


class _Refused(Exception):
    """Internal: the careful parser refuses the line; `end` is where the bad line stops."""

    def __init__(self, message: str, end: int):
        self.message = message
        self.end = end


def _parse_line_carefully(text: str, start: int):
    """Parse the line starting at text[start] (its first non-blank character), escapes and all.

    Returns (end, outcome): `end` indexes the newline ending the line (or is len(text)), and
    `outcome` is (measurement, tags, fields, timestamp) or the error message.
    """
    cursor = _Cursor(text, start)
    try:
        outcome = cursor.line()
    except _Refused as refused:
        return refused.end, refused.message
    return cursor.pos, outcome


class _Cursor:
    """A position in a write body, advanced element by element through one line."""

    __slots__ = ("text", "pos")

    def __init__(self, text: str, pos: int):
        self.text = text
        self.pos = pos

    def refuse(self, message: str, at: int | None = None) -> _Refused:
        at = self.pos if at is None else at
        end = self.text.find("\n", at)
        return _Refused(message, len(self.text) if end < 0 else end)

    def at_line_end(self) -> bool:
        return self.pos >= len(self.text) or self.text[self.pos] == "\n"

    def describe_here(self) -> str:
        if self.at_line_end():
            return "end of line"
        end = self.text.find("\n", self.pos)
        found = self.text[self.pos : len(self.text) if end < 0 else end]
        if found == "\r":
            return "a carriage return (lines must end with \\n alone)"
        return repr(found if len(found) <= 20 else found[:20] + "...")

    def line(self):
        text = self.text
        measurement, tags, tag_keys = self.series()
        if not text.startswith(" ", self.pos):
            if self.at_line_end():
                raise self.refuse("no fields: a line needs at least one field after a space")
            raise self.refuse(
                f"expected a space after {'the tag set' if tags else 'the measurement'}, "
                f"found {self.describe_here()}"
            )
        self.skip_spaces()
        if self.at_line_end():
            raise self.refuse("no fields: a line needs at least one field after a space")
        fields = [self.field()]
        while text.startswith(",", self.pos):
            self.pos += 1
            fields.append(self.field())
        keys = [key for key, _, _ in fields]
        if len(set(keys)) != len(keys):
            repeated = next(key for key in keys if keys.count(key) > 1)
            raise self.refuse(f"multiple instances of {repeated!r} field found")
        shared = tag_keys.intersection(keys)
        if shared:
            raise self.refuse(f"{min(shared)!r} is used both as a tag and as a field")
        timestamp = None
        if not self.at_line_end():
            if not text.startswith(" ", self.pos):
                raise self.refuse(
                    f"expected ',' or a space after the value of field {keys[-1]!r}, "
                    f"found {self.describe_here()}"
                )
            self.skip_spaces()
            if not self.at_line_end():
                timestamp = self.timestamp()
                self.skip_spaces()
                if not self.at_line_end():
                    raise self.refuse(f"unexpected {self.describe_here()} after the timestamp")
        return measurement, tags, tuple(fields), timestamp

    def series(self):
        """Read the measurement and tag set: (measurement, tags, set of tag keys)."""
        text = self.text
        measurement = self.name(_MEASUREMENT)
        if not measurement:
            raise self.refuse(f"missing measurement name, found {self.describe_here()}")
        tags = []
        tag_keys = set()
        while text.startswith(",", self.pos):
            self.pos += 1
            key = self.name(_TAG_KEY)
            if not key:
                raise self.refuse(f"missing tag key after ',', found {self.describe_here()}")
            if not text.startswith("=", self.pos):
                raise self.refuse(f"missing '=' after tag key {key!r}, found {self.describe_here()}")
            self.pos += 1
            value = self.name(_TAG_VALUE)
            if not value:
                raise self.refuse(f"missing value for tag {key!r}, found {self.describe_here()}")
            if key in tag_keys:
                raise self.refuse(f"multiple instances of {key!r} tag found")
            tag_keys.add(key)
            tags.append((key, value))
        return measurement, tuple(tags), tag_keys

    def skip_spaces(self) -> None:
        text = self.text
        pos = self.pos
        while text.startswith(" ", pos):
            pos += 1
        self.pos = pos

    def name(self, element) -> str:
        """Read one name of `element` (_MEASUREMENT, _TAG_KEY ...), unescaped; "" when none is here."""
        token, unescape, what = element
        text = self.text
        start = self.pos
        self.pos = end = token.match(text, start).end()
        name = text[start:end]
        if "\\" in name or text.startswith("\\", end):
            name = unescape(name)
            if name.endswith("\\") or text.startswith("\\", end):
                raise self.refuse(
                    f"{what} {name + text[end:]!r} ends with a backslash, which InfluxDB refuses", start
                )
        if len(name) > _ELEMENT_CHARS_ALWAYS_SHORT and len(name.encode()) > _MAX_ELEMENT_BYTES:
            raise self.refuse(f"{what} is longer than 64 KiB", start)
        return name

    def field(self) -> tuple[str, str, object]:
        text = self.text
        key = self.name(_FIELD_KEY)
        if not key:
            raise self.refuse(f"missing field key, found {self.describe_here()}")
        if not text.startswith("=", self.pos):
            raise self.refuse(f"missing '=' after field key {key!r}, found {self.describe_here()}")
        self.pos += 1
        if text.startswith('"', self.pos):
            return key, "s", self.string(key)
        token = _UNQUOTED_TOKEN.match(text, self.pos).group()
        if not token:
            raise self.refuse(f"missing value for field {key!r}")
        value = _typed_value(token)
        if value is None:
            hint = " (lines must end with \\n alone)" if token.endswith("\r") else ""
            raise self.refuse(f"invalid field value {token!r} for field {key!r}{hint}")
        if type(value) is str:
            raise self.refuse(f"invalid field value {token!r} for field {key!r}: {value}")
        self.pos += len(token)
        return (key, *value)

    def string(self, key: str) -> str:
        text = self.text
        quote = self.pos
        pos = quote + 1
        parts = []
        while True:
            found = _STRING_RUN.match(text, pos)
            if found is not None:
                parts.append(found.group())
                pos = found.end()
            if pos >= len(text):
                raise self.refuse(f"unterminated string value for field {key!r}", quote)
            if text[pos] == '"':
                break
            escaped = text[pos + 1 : pos + 2]
            if escaped == '"' or escaped == "\\":
                parts.append(escaped)
                pos += 2
            else:
                parts.append("\\")
                pos += 1
        self.pos = pos + 1
        value = "".join(parts)
        if len(value) > _ELEMENT_CHARS_ALWAYS_SHORT and len(value.encode()) > _MAX_ELEMENT_BYTES:
            raise self.refuse(f"string value for field {key!r} is longer than 64 KiB", quote)
        return value

    def timestamp(self) -> int:
        token = _TIMESTAMP_TOKEN.match(self.text, self.pos).group()
        if not _INTEGER_TEXT.fullmatch(token):
            hint = " (lines must end with \\n alone)" if token.endswith("\r") else ""
            raise self.refuse(f"invalid timestamp {token!r}: expected an integer{hint}")
        value = int(token)
        if value < _INT64_MIN or value > _INT64_MAX:
            raise self.refuse(f"timestamp {token} is out of range for int64")
        self.pos += len(token)
        return value


def _typed_value(token: str):
    """(type_code, value) for an unquoted field value, a str saying why its number is out of
    range, or None when it is no value at all."""
    boolean = _BOOLEANS.get(token)
    if boolean is not None:
        return "b", boolean
    last = token[-1]
    if last == "i":
        if not _INTEGER_TEXT.fullmatch(token, 0, len(token) - 1):
            return None
        value = int(token[:-1])
        if value < _INT64_MIN or value > _INT64_MAX:
            return "out of range for int64"
        return "i", value
    if last == "u":
        if not _UNSIGNED_TEXT.fullmatch(token, 0, len(token) - 1):
            return None
        value = int(token[:-1])
        if value > _UINT64_MAX:
            return "out of range for uint64"
        return "u", value
    if not _FLOAT_TEXT.fullmatch(token):
        return None
    value = float(token)
    if math.isinf(value):
        return "out of range for a 64-bit float"
    return "f", value


_PRECISIONS = {
    "auto": "auto",
    "s": "s", "second": "s",
    "ms": "ms", "millisecond": "ms",
    "us": "us", "u": "us", "microsecond": "us",
    "ns": "ns", "n": "ns", "nanosecond": "ns",
}
_NANOSECONDS_PER_UNIT = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}


def normalize_precision(name: str) -> str:
    """The canonical precision name ("auto", "s", "ms", "us" or "ns") for `name` or an alias.

    Raises ValueError naming the unrecognized precision.
    """
    try:
        return _PRECISIONS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unrecognized precision unit: {name!r} (expected auto, s, ms, us, ns, second, "
            "millisecond, microsecond, u, nanosecond or n)"
        ) from None


def to_nanoseconds(timestamp: int, precision: str) -> int:
    """Scale a line's timestamp to nanoseconds since the epoch.

    "auto" guesses the unit by magnitude exactly as InfluxDB 3 does: with
    ``v = abs(timestamp) // 10**9``, v < 5 means seconds, v < 5_000 milliseconds, v < 5_000_000
    microseconds, and anything larger nanoseconds. Raises ValueError for an unknown precision or a
    result outside int64.
    """
    unit = _PRECISIONS.get(precision) if type(precision) is str else None
    if unit is None:
        normalize_precision(precision)
    if unit == "auto":
        magnitude = abs(timestamp) // 1_000_000_000
        if magnitude < 5:
            unit = "s"
        elif magnitude < 5_000:
            unit = "ms"
        elif magnitude < 5_000_000:
            unit = "us"
        else:
            unit = "ns"
    nanoseconds = timestamp * _NANOSECONDS_PER_UNIT[unit]
    if nanoseconds < _INT64_MIN or nanoseconds > _INT64_MAX:
        raise ValueError(f"timestamp, {timestamp}, out of range for precision: {precision}")
    return nanoseconds


def format_line(line: Line) -> str:
    """Canonical line protocol for `line` (without newline); parse() reads back the same line.

    Only measurement, tags, fields and timestamp are used. Raises ValueError for a line that line
    protocol cannot express: no fields, an empty name, a name ending in a backslash or holding a
    tab or newline not preceded by a backslash (or NUL, in a measurement), a measurement starting
    with '#', a repeated key, a non-finite float, an out-of-range integer or timestamp, an unknown
    type code, or a name or string longer than 64 KiB.
    """
    measurement = _escape_name(line.measurement, _MEASUREMENT_ESCAPES, "\t\n\x00", "measurement")
    if measurement.startswith("#"):
        raise ValueError(f"measurement {line.measurement!r} starts with '#', which makes a comment")
    parts = [measurement]
    tag_keys = set()
    for key, value in line.tags:
        if key in tag_keys:
            raise ValueError(f"tag {key!r} appears more than once")
        tag_keys.add(key)
        parts.append(",")
        parts.append(_escape_name(key, _KEY_ESCAPES, "\t\n", "tag key"))
        parts.append("=")
        parts.append(_escape_name(value, _KEY_ESCAPES, "\t\n", "tag value"))
    if not line.fields:
        raise ValueError("a line needs at least one field")
    separator = " "
    field_keys = set()
    for key, type_code, value in line.fields:
        if key in field_keys or key in tag_keys:
            raise ValueError(f"field {key!r} repeats a tag or field name")
        field_keys.add(key)
        parts.append(separator)
        separator = ","
        parts.append(_escape_name(key, _KEY_ESCAPES, "\t\n", "field key"))
        parts.append("=")
        parts.append(_format_value(key, type_code, value))
    if line.timestamp is not None:
        if not _INT64_MIN <= line.timestamp <= _INT64_MAX:
            raise ValueError(f"timestamp {line.timestamp} is out of range for int64")
        parts.append(" ")
        parts.append(str(int(line.timestamp)))
    return "".join(parts)


def _format_value(key: str, type_code: str, value: object) -> str:
    if type_code == "f":
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"field {key!r}: line protocol has no {number!r} float")
        return repr(number)
    if type_code == "i":
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"field {key!r}: {value} is out of range for int64")
        return f"{int(value)}i"
    if type_code == "u":
        if not 0 <= value <= _UINT64_MAX:
            raise ValueError(f"field {key!r}: {value} is out of range for uint64")
        return f"{int(value)}u"
    if type_code == "b":
        return "true" if value else "false"
    if type_code == "s":
        if len(value) > _ELEMENT_CHARS_ALWAYS_SHORT and len(value.encode()) > _MAX_ELEMENT_BYTES:
            raise ValueError(f"field {key!r}: string value is longer than 64 KiB")
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise ValueError(f"field {key!r}: unknown type code {type_code!r}")


def _escape_name(name: str, escapes: str, never_bare: str, what: str) -> str:
    """Escape a name so the parser reads it back exactly; ValueError if no escaping can."""
    if not name:
        raise ValueError(f"{what} is empty")
    if name.endswith("\\"):
        raise ValueError(f"{what} {name!r} ends with a backslash")
    if len(name) > _ELEMENT_CHARS_ALWAYS_SHORT and len(name.encode()) > _MAX_ELEMENT_BYTES:
        raise ValueError(f"{what} is longer than 64 KiB")
    delimiters = escapes[:-1]  # every escapable character except the backslash itself
    if "\\" not in name and not any(c in name for c in never_bare):
        for delimiter in delimiters:
            if delimiter in name:
                name = name.replace(delimiter, "\\" + delimiter)
        return name
    out = []
    index = 0
    while index < len(name):
        char = name[index]
        if char == "\\":
            following = name[index + 1]
            if following in escapes:
                out.append("\\\\")
                index += 1
            else:
                # Written bare, the pair reads back as itself: InfluxDB keeps unknown escapes.
                out.append(char + following)
                index += 2
            continue
        if char in delimiters:
            out.append("\\" + char)
        elif char in never_bare:
            raise ValueError(f"{what} {name!r} holds {char!r} not preceded by a backslash")
        else:
            out.append(char)
        index += 1
    return "".join(out)
