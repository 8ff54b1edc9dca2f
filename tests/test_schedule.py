"""Next-fire computation: `every:` epoch alignment, cron as the `cron` crate and crontab read it, UTC."""

from datetime import datetime, timezone

import pytest
from croniter import croniter
from croniter.croniter import CroniterBadDateError
from hypothesis import given, settings
from hypothesis import strategies as st

from triggers.schedule import (
    CronError,
    DurationError,
    Every,
    format_duration,
    format_instant,
    format_rfc3339,
    parse_cron,
    parse_duration,
)

S = 10**9


def at(*fields) -> int:
    """UTC wall-clock fields to ns since the epoch."""
    return int(datetime(*fields, tzinfo=timezone.utc).timestamp()) * S


def fires(expression: str, start: int, count: int) -> list[datetime]:
    schedule, out, t = parse_cron(expression), [], start
    for _ in range(count):
        t = schedule.next_after(t)
        out.append(datetime.fromtimestamp(t / S, timezone.utc).replace(tzinfo=None))
    return out


# --- every: -----------------------------------------------------------------------------------

def test_every_aligns_to_multiples_since_the_epoch():
    hourly = Every(3600 * S)
    assert hourly.next_after(at(2025, 5, 14, 16, 31, 10)) == at(2025, 5, 14, 17, 0, 0)
    assert hourly.next_after(at(2025, 5, 14, 17, 0, 0)) == at(2025, 5, 14, 18, 0, 0)  # strictly after
    assert Every(7 * S).next_after(0) == 7 * S
    assert Every(7 * S).next_after(13 * S + 1) == 14 * S
    assert Every(1500 * 10**6).next_after(2 * S) == 3 * S
    assert Every(3600 * S).last_at_or_before(at(2025, 5, 14, 17, 0, 0)) == at(2025, 5, 14, 17, 0, 0)


@given(st.integers(min_value=10**6, max_value=31_557_600 * S), st.integers(min_value=0, max_value=4 * 10**18))
def test_every_next_is_the_first_multiple_after(interval, now):
    tick = Every(interval).next_after(now)
    assert tick % interval == 0 and now < tick <= now + interval


# --- durations ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [
    ("10s", 10), ("1m", 60), ("5min", 300), ("1h 30m", 5400), ("1h30m", 5400), ("2days", 172800),
    ("1w", 604800), ("1 week", 604800), ("3hrs", 10800), (" 10 s ", 10), ("1M", 2_630_016), ("1y", 31_557_600),
])
def test_humantime_durations(text, seconds):
    assert parse_duration(text) == seconds * S


def test_humantime_sub_second_units():
    assert parse_duration("250ms") == 250 * 10**6
    assert parse_duration("3us") == 3000
    assert parse_duration("1s 2ms 3ns") == S + 2 * 10**6 + 3


@pytest.mark.parametrize("text", ["", "10", "ms", "5x", "1.5s", "-1s", "10s!"])
def test_humantime_refusals(text):
    with pytest.raises(DurationError):
        parse_duration(text)


@pytest.mark.parametrize("nanos, text", [
    (0, "0s"), (60 * S, "1m"), (5400 * S, "1h 30m"), (86400 * S, "1day"), (172800 * S, "2days"),
    (31_449_193, "31ms 449us 193ns"), (S + 500 * 10**6, "1s 500ms"), (31_557_600 * S, "1year"),
])
def test_humantime_format(nanos, text):
    assert format_duration(nanos) == text


def test_instant_formats_match_chrono():
    assert format_instant(at(2025, 5, 14, 16, 31, 10)) == "2025-05-14 16:31:10 UTC"
    assert format_instant(at(2025, 5, 14, 16, 31, 10) + 5 * 10**8) == "2025-05-14 16:31:10.500 UTC"
    assert format_rfc3339(at(2025, 5, 14, 16, 31, 10)) == "2025-05-14T16:31:10Z"


# --- cron, 6/7 fields, the `cron` crate's reading ----------------------------------------------

def test_cron_seconds_first_in_utc():
    assert fires("*/15 * * * * *", at(2025, 1, 1, 0, 0, 7), 3) == [
        datetime(2025, 1, 1, 0, 0, 15), datetime(2025, 1, 1, 0, 0, 30), datetime(2025, 1, 1, 0, 0, 45)]
    assert fires("0 0 8 * * *", at(2025, 1, 1, 9), 1) == [datetime(2025, 1, 2, 8)]


def test_cron_next_is_strictly_after_and_whole_seconds():
    assert fires("* * * * * *", at(2025, 1, 1) + S // 2, 1) == [datetime(2025, 1, 1, 0, 0, 1)]
    assert fires("* * * * * *", at(2025, 1, 1), 1) == [datetime(2025, 1, 1, 0, 0, 1)]


def test_cron_sunday_is_one():
    # 2025-01-05 is a Sunday, 2025-01-06 a Monday.
    assert fires("0 0 12 * * 1", at(2025, 1, 1), 1) == [datetime(2025, 1, 5, 12)]
    assert fires("0 0 12 * * Sun", at(2025, 1, 1), 1) == [datetime(2025, 1, 5, 12)]
    assert fires("0 0 12 * * 2", at(2025, 1, 1), 1) == [datetime(2025, 1, 6, 12)]
    assert fires("0 0 12 * * 7", at(2025, 1, 1), 1) == [datetime(2025, 1, 4, 12)]  # Saturday
    assert fires("0 0 0 * * Mon-Fri", at(2025, 1, 3, 1), 2) == [datetime(2025, 1, 6), datetime(2025, 1, 7)]
    assert fires("0 0 0 * * tues,THURSDAY", at(2025, 1, 1), 2) == [datetime(2025, 1, 2), datetime(2025, 1, 7)]


def test_cron_day_of_month_and_week_must_both_match():
    # Friday the 13th: 2025-06-13 is the first after 2025-01-01.
    assert fires("0 0 0 13 * Fri", at(2025, 1, 1), 1) == [datetime(2025, 6, 13)]
    assert fires("0 0 0 13 * ?", at(2025, 1, 1), 1) == [datetime(2025, 1, 13)]
    assert fires("0 0 0 ? * 6", at(2025, 1, 1), 1) == [datetime(2025, 1, 3)]


def test_cron_year_field_and_end():
    schedule = parse_cron("0 0 0 1 1 * 2030-2031")
    assert schedule.next_after(at(2025, 1, 1)) == at(2030, 1, 1)
    assert schedule.next_after(at(2030, 1, 1)) == at(2031, 1, 1)
    assert schedule.next_after(at(2031, 1, 1)) is None
    assert parse_cron("0 0 0 1 1 * 2020").next_after(at(2025, 1, 1)) is None


def test_cron_names_steps_ranges_lists():
    assert fires("0 30 9-17/4 * Jan,Jul *", at(2025, 1, 1), 3) == [
        datetime(2025, 1, 1, 9, 30), datetime(2025, 1, 1, 13, 30), datetime(2025, 1, 1, 17, 30)]
    assert fires("10/20 * * * * *", at(2025, 1, 1), 3) == [
        datetime(2025, 1, 1, 0, 0, 10), datetime(2025, 1, 1, 0, 0, 30), datetime(2025, 1, 1, 0, 0, 50)]
    assert fires("0 0 0 29 Feb *", at(2025, 1, 1), 1) == [datetime(2028, 2, 29)]


def test_cron_shorthands():
    assert fires("@hourly", at(2025, 1, 1, 5, 10), 1) == [datetime(2025, 1, 1, 6)]
    assert fires("@daily", at(2025, 1, 1, 5), 1) == [datetime(2025, 1, 2)]
    assert fires("@weekly", at(2025, 1, 1), 1) == [datetime(2025, 1, 5)]  # Sunday
    assert fires("@monthly", at(2025, 1, 2), 1) == [datetime(2025, 2, 1)]
    assert fires("@yearly", at(2025, 1, 2), 1) == [datetime(2026, 1, 1)]


@pytest.mark.parametrize("expression, why", [
    ("* * * * *  * * *", "8 fields"),
    ("? * * * * *", "'?' is only allowed in the day fields"),
    ("* * * * ? *", "'?' is only allowed in the day fields"),
    ("* * 24 * * *", "hours field: 24 is out of range 0-23"),
    ("* * * 0 * *", "days of month field: 0 is out of range 1-31"),
    ("* * * * 13 *", "months field: 13 is out of range 1-12"),
    ("* * * * * 8", "days of week field: 8 is out of range 1-7"),
    ("* * * * * Funday", "'Funday' is not a valid name"),
    ("*/0 * * * * *", "step '0' must be a positive number"),
    ("5-1 * * * * *", "range '5-1' runs backwards"),
    ("Mon/2 * * * * *", "a step needs"),
    ("1,,2 * * * * *", "empty list item"),
    ("* * * * * * 1969", "years field: 1969 is out of range"),
    ("0 0 0 31 4,6,9,11 *", "never fires"),
])
def test_cron_refusals_name_the_field(expression, why):
    with pytest.raises(CronError, match=why.replace("?", r"\?").replace("*", r"\*")):
        parse_cron(expression)


# --- cron, 5 fields: crontab(5) ---------------------------------------------------------------

def test_five_fields_are_minutes_first_at_second_zero():
    assert fires("0 6 * * *", at(2025, 1, 1, 7), 2) == [datetime(2025, 1, 2, 6), datetime(2025, 1, 3, 6)]
    assert fires("*/20 * * * *", at(2025, 1, 1), 3) == [
        datetime(2025, 1, 1, 0, 20), datetime(2025, 1, 1, 0, 40), datetime(2025, 1, 1, 1, 0)]


def test_five_fields_use_crontab_weekdays():
    # crontab: 0 and 7 are Sunday, 1-5 Monday to Friday.
    assert fires("0 9 * * 1-5", at(2025, 1, 3, 10), 2) == [datetime(2025, 1, 6, 9), datetime(2025, 1, 7, 9)]
    assert fires("0 0 * * 0", at(2025, 1, 1), 1) == [datetime(2025, 1, 5)]
    assert fires("0 0 * * 7", at(2025, 1, 1), 1) == [datetime(2025, 1, 5)]


def test_five_fields_either_day_matches_when_both_restricted():
    # The 10th of the month OR any Monday (crontab(5)); 2025-01-06 is a Monday.
    assert fires("0 0 10 * 1", at(2025, 1, 1), 3) == [datetime(2025, 1, 6), datetime(2025, 1, 10), datetime(2025, 1, 13)]
    # A day field led by '*' is unrestricted in crontab's sense, so both must match: the 1st,
    # 11th, 21st or 31st that is a Monday.
    assert fires("0 0 */10 * 1", at(2025, 1, 1), 2) == [datetime(2025, 3, 31), datetime(2025, 4, 21)]


minute = st.sampled_from(["*", "0", "*/5", "15,45", "10-20/3", "59"])
hour = st.sampled_from(["*", "0", "*/6", "9-17", "23"])
dom = st.sampled_from(["*", "1", "15", "1-7", "*/10", "31"])
month = st.sampled_from(["*", "1", "2", "*/3", "6-8", "12"])
dow = st.sampled_from(["*", "0", "1-5", "6", "0,3"])


@settings(max_examples=150, deadline=None)
@given(minute, hour, dom, month, dow, st.integers(min_value=at(2024, 1, 1), max_value=at(2030, 1, 1)))
def test_five_fields_agree_with_croniter(mi, h, d, mo, w, now):
    """croniter implements crontab(5) natively: our expansion must fire exactly when it does."""
    expression = f"{mi} {h} {d} {mo} {w}"
    start = datetime.fromtimestamp(now // S, timezone.utc)
    # implement_cron_bug: crontab's "a day field led by '*' is unrestricted" rule.
    theirs = croniter(expression, start, implement_cron_bug=True)
    try:
        ours = parse_cron(expression).next_after(now)
    except CronError:  # e.g. the 31st of February: croniter finds no date either
        with pytest.raises(CroniterBadDateError):
            theirs.get_next(datetime)
        return
    assert ours == int(theirs.get_next(datetime).timestamp()) * S, expression
