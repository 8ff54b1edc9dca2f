"""`LineBuilder` and its exceptions, rendering line protocol exactly as InfluxDB 3's engine does.

Plugins find `LineBuilder` in `builtins`; the exceptions are reachable through `__main__`, as in
InfluxDB 3. Rendering rules (reference §3): tags and fields keep insertion order; measurement
escapes `,` and space; tag values and field keys escape `\\`, `,`, `=` and space; tag keys are
validated, not escaped; floats render `f"{int(v)}.0"` when integral, else `str(v)`; string
fields escape `\\` then `"`; newlines are never escaped.
"""

from collections import OrderedDict


class InfluxDBError(Exception):
    """Base exception for InfluxDB-related errors"""


class InvalidMeasurementError(InfluxDBError):
    """Raised when measurement name is invalid"""


class InvalidKeyError(InfluxDBError):
    """Raised when a tag or field key is invalid"""


class InvalidLineError(InfluxDBError):
    """Raised when a line protocol string is invalid"""


def _escape_measurement(value):
    return value.replace(",", "\\,").replace(" ", "\\ ")


def _escape_key_or_tag_value(value):
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _validate_key(key, key_type):
    if not key:
        raise InvalidKeyError(f"{key_type} key cannot be empty")
    if " " in key:
        raise InvalidKeyError(f"{key_type} key '{key}' cannot contain spaces")
    if "," in key:
        raise InvalidKeyError(f"{key_type} key '{key}' cannot contain commas")
    if "=" in key:
        raise InvalidKeyError(f"{key_type} key '{key}' cannot contain equals signs")


class LineBuilder:
    """Builds one line of line protocol; every setter returns the builder."""

    def __init__(self, measurement):
        if " " in measurement:
            raise InvalidMeasurementError("Measurement name cannot contain spaces")
        self.measurement = measurement
        self.tags = OrderedDict()
        self.fields = OrderedDict()
        self._timestamp_ns = None

    def tag(self, key, value):
        _validate_key(key, "tag")
        self.tags[key] = str(value)
        return self

    def uint64_field(self, key, value):
        _validate_key(key, "field")
        if value < 0:
            raise ValueError(f"uint64 field '{key}' cannot be negative")
        self.fields[key] = f"{value}u"
        return self

    def int64_field(self, key, value):
        _validate_key(key, "field")
        self.fields[key] = f"{value}i"
        return self

    def float64_field(self, key, value):
        _validate_key(key, "field")
        self.fields[key] = f"{int(value)}.0" if value % 1 == 0 else str(value)
        return self

    def string_field(self, key, value):
        _validate_key(key, "field")
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        self.fields[key] = f'"{escaped}"'
        return self

    def bool_field(self, key, value):
        _validate_key(key, "field")
        self.fields[key] = "t" if value else "f"
        return self

    def time_ns(self, timestamp_ns):
        self._timestamp_ns = timestamp_ns
        return self

    def build(self):
        line = _escape_measurement(self.measurement)
        if self.tags:
            line += "," + ",".join(
                f"{key}={_escape_key_or_tag_value(value)}" for key, value in self.tags.items()
            )
        if not self.fields:
            raise InvalidLineError(f"At least one field is required: {line}")
        line += " " + ",".join(
            f"{_escape_key_or_tag_value(key)}={value}" for key, value in self.fields.items()
        )
        if self._timestamp_ns is not None:
            line += f" {self._timestamp_ns}"
        return line


EXPORTS = {
    "LineBuilder": LineBuilder,
    "InfluxDBError": InfluxDBError,
    "InvalidMeasurementError": InvalidMeasurementError,
    "InvalidKeyError": InvalidKeyError,
    "InvalidLineError": InvalidLineError,
}
