"""Rendering of query results (host.formats) as InfluxDB 3's arrow-rs writers render them, value by value."""

from __future__ import annotations

import pyarrow as pa
import pytest

from host.formats import QueryFormat, UnknownFormat, format_float, format_from_accept, format_named, pretty, render


@pytest.mark.parametrize("value, text", [
    (2.0, "2.0"), (0.1, "0.1"), (-3.25, "-3.25"), (100.0, "100.0"), (0.0, "0.0"), (-0.0, "-0.0"),
    (1e15, "1000000000000000.0"), (1e16, "1e16"), (1.5e16, "1.5e16"), (1e20, "1e20"),
    (0.0001, "0.0001"), (1e-5, "0.00001"), (1e-6, "1e-6"), (1.25e-7, "1.25e-7"),
    (123456789.125, "123456789.125"), (5e-324, "5e-324"), (1.7976931348623157e308, "1.7976931348623157e308"),
    (float("nan"), "NaN"), (float("inf"), "inf"), (float("-inf"), "-inf"),
])
def test_floats_are_laid_out_like_ryu(value, text):
    assert format_float(value) == text


@pytest.mark.parametrize("unit, value, text", [
    ("ns", 0, "1970-01-01T00:00:00"), ("ns", 155, "1970-01-01T00:00:00.000000155"),
    ("ns", 1_500_000_000, "1970-01-01T00:00:01.500"), ("ns", 1_000_001_000, "1970-01-01T00:00:01.000001"),
    ("ms", 1_704_067_200_123, "2024-01-01T00:00:00.123"), ("s", 1_704_067_200, "2024-01-01T00:00:00"),
    ("us", -1, "1969-12-31T23:59:59.999999"),
])
def test_timestamps_use_only_the_fraction_they_need(unit, value, text):
    table = pa.table({"time": pa.array([value], pa.timestamp(unit))})
    assert b"".join(render(table, QueryFormat.JSON)) == f'[{{"time":"{text}"}}]'.encode()
    assert b"".join(render(table, QueryFormat.CSV)) == f"time\n{text}\n".encode()


def test_zoned_timestamps_carry_their_offset():
    table = pa.table({"time": pa.array([0], pa.timestamp("ns", tz="UTC"))})
    assert b"".join(render(table, QueryFormat.JSONL)) == b'{"time":"1970-01-01T00:00:00+00:00"}\n'


def test_dictionary_tags_render_as_strings_and_nulls_vanish_from_json():
    table = pa.table({"tag": pa.array(["x", None]).dictionary_encode(), "v": pa.array([None, 1], pa.int64())})
    assert b"".join(render(table, QueryFormat.JSON)) == b'[{"tag":"x"},{"v":1}]'
    assert b"".join(render(table, QueryFormat.CSV)) == b"tag,v\nx,\n,1\n"


def test_csv_quotes_only_when_needed():
    table = pa.table({"s": ["plain", "a,b", 'say "hi"', "two\nlines"]})
    assert b"".join(render(table, QueryFormat.CSV)) == b's\nplain\n"a,b"\n"say ""hi"""\n"two\nlines"\n'


def test_pretty_edge_cases():
    assert pretty(pa.table({})) == "++\n++"
    assert pretty(pa.table({"only": pa.array([], pa.int64())})) == "+------+\n| only |\n+------+\n+------+"
    assert pretty(pa.table({"b": [True, False, None]})) == (
        "+-------+\n| b     |\n+-------+\n| true  |\n| false |\n|       |\n+-------+")


def test_json_spans_batches_as_one_array():
    table = pa.concat_tables([pa.table({"n": list(range(10_000))})] * 3)
    body = b"".join(render(table, QueryFormat.JSON))
    import json
    assert [row["n"] for row in json.loads(body)] == list(range(10_000)) * 3


def test_format_names_and_accept_headers():
    assert format_named("json_lines") is QueryFormat.JSONL
    assert format_from_accept(None) is QueryFormat.JSON
    assert format_from_accept("text/csv") is QueryFormat.CSV
    with pytest.raises(UnknownFormat, match="xml"):
        format_named("xml")
    with pytest.raises(UnknownFormat, match="image/png"):
        format_from_accept("image/png")
