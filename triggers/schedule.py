"""When schedule triggers fire: `every:` ticks on multiples of the interval since the Unix epoch,
`cron:` expressions read the way InfluxDB 3's Rust `cron` crate reads them (or crontab, for five
fields), and the humantime duration grammar both `every:` and the CLI use.

All instants are integer nanoseconds since the Unix epoch, in UTC. Nothing here blocks.

Cron dialects:

- 6 or 7 fields (`sec min hour day-of-month month day-of-week [year]`): the `cron` crate 0.15
  that InfluxDB 3 uses. Day-of-week is 1-7 with Sunday = 1 (names `Sun`..`Sat` too); a day
  must match both the day-of-month and the day-of-week field; `?` means `*` in the two day
  fields; `@yearly`, `@monthly`, `@weekly`, `@daily` and `@hourly` are accepted.
- 5 fields (`min hour day-of-month month day-of-week`): plain crontab(5), which InfluxDB 3
  refuses (issue #26503) and we accept. It fires at second 0; day-of-week is 0-7 with
  Sunday = 0 or 7; when neither day field starts with `*`, a day matching either fires.

Each field is expanded here to the exact set of values it allows; croniter then walks the
calendar over those explicit sets, so croniter's own dialect never decides a value.
"""

from __future__ import annotations

from datetime import datetime, timezone

from croniter import croniter
from croniter.croniter import CroniterBadDateError

NANOS_PER_SECOND = 1_000_000_000
NANOS_PER_MILLI = 1_000_000

# humantime's unit table (humantime 2.x `parse_duration`), in nanoseconds.
_DURATION_UNITS: dict[str, int] = {}
for _names, _nanos in (
    (("nanos", "nsec", "ns"), 1),
    (("usec", "us", "µs"), 1_000),
    (("millis", "msec", "ms"), NANOS_PER_MILLI),
    (("seconds", "second", "secs", "sec", "s"), NANOS_PER_SECOND),
    (("minutes", "minute", "min", "mins", "m"), 60 * NANOS_PER_SECOND),
    (("hours", "hour", "hr", "hrs", "h"), 3_600 * NANOS_PER_SECOND),
    (("days", "day", "d"), 86_400 * NANOS_PER_SECOND),
    (("weeks", "week", "w"), 7 * 86_400 * NANOS_PER_SECOND),
    (("months", "month", "M"), 2_630_016 * NANOS_PER_SECOND),
    (("years", "year", "y"), 31_557_600 * NANOS_PER_SECOND),
):
    for _name in _names:
        _DURATION_UNITS[_name] = _nanos

ONE_YEAR_NS = _DURATION_UNITS["year"]


class DurationError(ValueError):
    """A duration string is not in humantime's grammar (`10s`, `1h 30m`, `5min`, `2days`)."""


class CronError(ValueError):
    """A cron expression is malformed or can never fire; the message names the field and why."""


def parse_duration(text: str) -> int:
    """Parse a humantime duration (`1h 30m`, `5min`, `2days`, `250ms`) into nanoseconds.

    Numbers are whole; each needs a unit; spaces between parts are optional. Raises
    DurationError with humantime's own wording.
    """
    pos = 0
    length = len(text)
    total = 0
    saw_any = False
    while True:
        while pos < length and text[pos].isspace():
            pos += 1
        if pos >= length:
            break
        if not text[pos].isdigit():
            raise DurationError(f"expected number at {pos}")
        number = 0
        while pos < length and (text[pos].isdigit() or text[pos].isspace()):
            if text[pos].isdigit():
                number = number * 10 + int(text[pos])
            pos += 1
        start = pos
        while pos < length and text[pos].isalpha():
            pos += 1
        unit = text[start:pos]
        if pos < length and not text[pos].isspace() and not text[pos].isdigit():
            raise DurationError(f"invalid character at {pos}")
        if not unit:
            raise DurationError(f"time unit needed, for example {number}sec or {number}ms")
        if unit not in _DURATION_UNITS:
            raise DurationError(
                f"unknown time unit {unit!r}, supported units: ns, us, ms, sec, min, hours, "
                "days, weeks, months, years (and few variations)"
            )
        total += number * _DURATION_UNITS[unit]
        saw_any = True
    if not saw_any:
        raise DurationError("value was empty")
    return total


def format_duration(nanos: int) -> str:
    """Render nanoseconds the way humantime's `format_duration` does (`1h 30m`, `31ms 449us 193ns`)."""
    if nanos <= 0:
        return "0s"
    seconds, subsec = divmod(nanos, NANOS_PER_SECOND)
    years, rest = divmod(seconds, 31_557_600)
    months, rest = divmod(rest, 2_630_016)
    days, rest = divmod(rest, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    parts = []
    for value, name, plural in (
        (years, "year", True),
        (months, "month", True),
        (days, "day", True),
        (hours, "h", False),
        (minutes, "m", False),
        (secs, "s", False),
        (subsec // NANOS_PER_MILLI, "ms", False),
        (subsec // 1_000 % 1_000, "us", False),
        (subsec % 1_000, "ns", False),
    ):
        if value:
            parts.append(f"{value}{name}{'s' if plural and value > 1 else ''}")
    return " ".join(parts)


def format_instant(instant_ns: int) -> str:
    """Render an instant as chrono's `DateTime<Utc>` Display does: `2025-05-14 16:31:10 UTC`."""
    seconds, nanos = divmod(instant_ns, NANOS_PER_SECOND)
    text = datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    if nanos % NANOS_PER_MILLI == 0 and nanos:
        text += f".{nanos // NANOS_PER_MILLI:03d}"
    elif nanos % 1_000 == 0 and nanos:
        text += f".{nanos // 1_000:06d}"
    elif nanos:
        text += f".{nanos:09d}"
    return text + " UTC"


def format_rfc3339(instant_ns: int) -> str:
    """Render an instant as chrono's `to_rfc3339_opts(AutoSi, true)`: `2025-05-14T16:31:10Z`."""
    return format_instant(instant_ns).replace(" UTC", "Z").replace(" ", "T")


class Every:
    """Fires on every multiple of `interval_ns` since the Unix epoch (`every:1h` = top of each hour)."""

    def __init__(self, interval_ns: int):
        if interval_ns <= 0:
            raise ValueError("interval must be positive")
        self.interval_ns = interval_ns

    def next_after(self, instant_ns: int) -> int:
        """The first tick strictly after `instant_ns`."""
        return (instant_ns // self.interval_ns + 1) * self.interval_ns

    def last_at_or_before(self, instant_ns: int) -> int:
        """The latest tick at or before `instant_ns`."""
        return instant_ns // self.interval_ns * self.interval_ns

    def __repr__(self) -> str:
        return f"Every({format_duration(self.interval_ns)})"


class _Field:
    """One cron field's legal range and names."""

    def __init__(self, name: str, low: int, high: int, names: dict[str, int] | None = None,
                 allows_any: bool = False):
        self.name = name
        self.low = low
        self.high = high
        self.names = names or {}
        self.allows_any = allows_any


_MONTH_NAMES = {}
for _number, _spellings in enumerate(
    (("jan", "january"), ("feb", "february"), ("mar", "march"), ("apr", "april"), ("may",),
     ("jun", "june"), ("jul", "july"), ("aug", "august"), ("sep", "sept", "september"),
     ("oct", "october"), ("nov", "november"), ("dec", "december")),
    start=1,
):
    for _spelling in _spellings:
        _MONTH_NAMES[_spelling] = _number

_WEEKDAY_SPELLINGS = (
    ("sun", "sunday"), ("mon", "monday"), ("tue", "tues", "tuesday"), ("wed", "wednesday"),
    ("thu", "thurs", "thursday"), ("fri", "friday"), ("sat", "saturday"),
)
# The cron crate numbers days 1-7 from Sunday; crontab numbers them 0-6 from Sunday (7 = Sunday).
_CRATE_WEEKDAYS = {s: n for n, spellings in enumerate(_WEEKDAY_SPELLINGS, 1) for s in spellings}
_CRONTAB_WEEKDAYS = {s: n for n, spellings in enumerate(_WEEKDAY_SPELLINGS) for s in spellings}

_CRATE_FIELDS = (
    _Field("seconds", 0, 59),
    _Field("minutes", 0, 59),
    _Field("hours", 0, 23),
    _Field("days of month", 1, 31, allows_any=True),
    _Field("months", 1, 12, _MONTH_NAMES),
    _Field("days of week", 1, 7, _CRATE_WEEKDAYS, allows_any=True),
    # The crate allows 2100 too; croniter's calendar stops at 2099.
    _Field("years", 1970, 2099),
)
_CRONTAB_FIELDS = (
    _Field("minutes", 0, 59),
    _Field("hours", 0, 23),
    _Field("days of month", 1, 31, allows_any=True),
    _Field("months", 1, 12, _MONTH_NAMES),
    _Field("days of week", 0, 7, _CRONTAB_WEEKDAYS, allows_any=True),
)
_SHORTHANDS = {
    "@yearly": "0 0 0 1 1 *",
    "@monthly": "0 0 0 1 * *",
    "@weekly": "0 0 0 * * 1",
    "@daily": "0 0 0 * * *",
    "@hourly": "0 0 * * * *",
}


def _value(token: str, field: _Field) -> int:
    if token.isdigit():
        number = int(token)
    elif token.isalpha() and token.lower() in field.names:
        number = field.names[token.lower()]
    elif token.isalpha() and field.names:
        raise CronError(f"{field.name} field: {token!r} is not a valid name")
    else:
        raise CronError(f"{field.name} field: {token!r} is not a number")
    if not field.low <= number <= field.high:
        raise CronError(
            f"{field.name} field: {number} is out of range {field.low}-{field.high}"
        )
    return number


def _expand(text: str, field: _Field) -> set[int]:
    """The set of values a field allows; raises CronError naming the field."""
    values: set[int] = set()
    for item in text.split(","):
        if not item:
            raise CronError(f"{field.name} field: empty list item in {text!r}")
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError(f"{field.name} field: step {step_text!r} must be a positive number")
            step = int(step_text)
        if base in ("*", "?"):
            if base == "?" and not field.allows_any:
                raise CronError(f"{field.name} field: '?' is only allowed in the day fields")
            low, high = field.low, field.high
        elif "-" in base:
            start, _, end = base.partition("-")
            low, high = _value(start, field), _value(end, field)
            if low > high:
                raise CronError(f"{field.name} field: range {base!r} runs backwards")
        else:
            if slash and not base.isdigit():
                raise CronError(f"{field.name} field: a step needs '*', a number or a range, not {base!r}")
            low = _value(base, field)
            high = field.high if slash else low
        values.update(range(low, high + 1, step))
    return values


class Cron:
    """A cron schedule; `next_after` gives the first firing strictly after an instant, at whole seconds."""

    def __init__(self, expression: str):
        self.expression = expression
        fields = expression.split()
        if len(fields) == 1 and fields[0] in _SHORTHANDS:
            fields = _SHORTHANDS[fields[0]].split()
        if len(fields) == 5:
            self._from_crontab(fields)
        elif len(fields) in (6, 7):
            self._from_cron_crate(fields)
        else:
            raise CronError(
                f"expression has {len(fields)} fields; expected 6 or 7 "
                "(sec min hour day-of-month month day-of-week [year]) or 5 (crontab: min hour "
                "day-of-month month day-of-week)"
            )
        if self._next_after(self._first_possible_ns - NANOS_PER_SECOND) is None:
            raise CronError("the schedule never fires (no date matches every field)")

    def _from_cron_crate(self, fields: list[str]) -> None:
        sets = [_expand(text, field) for text, field in zip(fields, _CRATE_FIELDS)]
        seconds, minutes, hours, days, months, weekdays = sets[:6]
        years = sets[6] if len(sets) == 7 else None
        self._compile(seconds, minutes, hours, days, months, {d - 1 for d in weekdays}, years,
                      either_day=False)

    def _from_crontab(self, fields: list[str]) -> None:
        minutes, hours, days, months, weekdays = (
            _expand(text, field) for text, field in zip(fields, _CRONTAB_FIELDS)
        )
        # crontab(5): "If both fields are restricted (i.e., don't start with *), the command
        # will be run when either field matches the current time."
        either_day = not fields[2].startswith(("*", "?")) and not fields[4].startswith(("*", "?"))
        self._compile({0}, minutes, hours, days, months, {d % 7 for d in weekdays}, None,
                      either_day=either_day)

    def _compile(self, seconds, minutes, hours, days, months, weekdays, years, *, either_day):
        def listed(values: set[int], low: int, high: int, keep_explicit: bool = False) -> str:
            if not keep_explicit and values == set(range(low, high + 1)):
                return "*"
            return ",".join(str(v) for v in sorted(values))

        parts = [
            listed(seconds, 0, 59),
            listed(minutes, 0, 59),
            listed(hours, 0, 23),
            listed(days, 1, 31, keep_explicit=either_day),
            listed(months, 1, 12),
            listed(weekdays, 0, 6, keep_explicit=either_day),
            "*" if years is None else listed(years, 1970, 2099),
        ]
        self._croniter_expression = " ".join(parts)
        self._either_day = either_day
        self._last_year = None if years is None else max(years)
        first_year = 1970 if years is None else min(years)
        self._first_possible_ns = (
            int(datetime(first_year, 1, 1, tzinfo=timezone.utc).timestamp()) * NANOS_PER_SECOND
        )

    def _walker(self, start_second: int) -> croniter:
        return croniter(
            self._croniter_expression,
            datetime.fromtimestamp(start_second, timezone.utc),
            day_or=self._either_day,
            second_at_beginning=True,
            max_years_between_matches=_YEARS_SEARCHED,
        )

    def _next_after(self, instant_ns: int) -> int | None:
        start_second = instant_ns // NANOS_PER_SECOND
        if self._last_year is not None and datetime.fromtimestamp(start_second, timezone.utc).year > self._last_year:
            return None
        try:
            fire = self._walker(start_second).get_next(datetime)
        except CroniterBadDateError:
            return None
        return int(fire.timestamp()) * NANOS_PER_SECOND

    def last_at_or_before(self, instant_ns: int) -> int | None:
        """The latest firing at or before `instant_ns`, or None if there is none."""
        try:
            fire = self._walker(instant_ns // NANOS_PER_SECOND + 1).get_prev(datetime)
        except CroniterBadDateError:
            return None
        return int(fire.timestamp()) * NANOS_PER_SECOND

    def next_after(self, instant_ns: int) -> int | None:
        """The first firing strictly after `instant_ns`, or None when the schedule has ended."""
        return self._next_after(instant_ns)

    def __repr__(self) -> str:
        return f"Cron({self.expression!r})"


# Far enough to reach the last year a cron expression can name from 1970, so "never fires" is
# only said of schedules that really have no date left.
_YEARS_SEARCHED = 2099 - 1970 + 1


def parse_cron(expression: str) -> Cron:
    """Parse a cron expression (6/7 fields as InfluxDB 3, or 5-field crontab). Raises CronError."""
    return Cron(expression.strip())
