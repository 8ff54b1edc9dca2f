"""The columnar fast path gives exactly what `host.lineprotocol.parse` gives, alone and after validation."""

from __future__ import annotations

import time

import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from host.catalog import TAG, Catalog, ColumnDef
from host.database import LocalDatabase, _validate
from host.lineprotocol import Line, parse
from host.lp_columnar import FastGroup, parse_body, parse_columnar, scale_timestamps

T0 = 1704067200 * 10**9


def expand(items) -> list[Line]:
    """The Lines a parse_body result stands for, in line order."""
    lines = []
    for item in items:
        if type(item) is Line:
            lines.append(item)
            continue
        measurement, tag_keys, field_keys, codes = item.key
        tag_columns = item.columns[: len(tag_keys)]
        field_columns = item.columns[len(tag_keys) :]
        originals = item.originals.to_pylist()
        for i, (timestamp, line_number) in enumerate(zip(item.timestamps.to_pylist(), item.line_numbers)):
            tags = tuple((key, column[i]) for key, column in zip(tag_keys, tag_columns))
            fields = tuple((key, code, column[i]) for key, code, column in zip(field_keys, codes, field_columns))
            lines.append(Line(measurement, tags, fields, timestamp, line_number, originals[i]))
    return sorted(lines, key=lambda line: line.line_number)


def assert_same_as_parse(body: str) -> None:
    items, errors = parse_columnar(body)
    expected_lines, expected_errors = parse(body)
    assert [line.line_number for line in expand(items)] == [line.line_number for line in expected_lines]
    # repr tells -0.0 from 0.0 and True from 1, which == does not
    assert repr(expand(items)) == repr(expected_lines)
    assert errors == expected_errors
    first_lines = [item.line_number if type(item) is Line else item.first_line for item in items]
    assert first_lines == sorted(first_lines)


# Mostly plain names, now and then a character that only the careful parser may handle.
plain_name = st.text("abcxyz_-.09é日", min_size=1, max_size=6)
odd_name = st.sampled_from(["a b", "a,b", "a=b", "a\\ b", 'q"t', "#h", "é", "a\\", "t\tb", "x\r", "n\x00"])
name = st.one_of(plain_name, plain_name, plain_name, odd_name)
float_text = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.integers(-(10**20), 10**20).map(str),
    st.sampled_from(["1.", ".5", "+1", "NaN", "inf", "-0", "-0.0", "00.5", "1e400", "1E+05", "2e-308", "1e99",
                     "123456789012345678.9e99", "0.00000000000000000000000001", "1.7976931348623157e308"]),
)
integer_text = st.one_of(st.integers(-(2**64), 2**64).map(lambda n: f"{n}i"), st.sampled_from(["-0i", "007i", "i", "1.5i"]))
unsigned_text = st.one_of(st.integers(-5, 2**65).map(lambda n: f"{n}u"), st.sampled_from(["-0u", "0u"]))
boolean_text = st.sampled_from(["t", "T", "true", "True", "TRUE", "f", "F", "false", "False", "FALSE", "tRue", "yes"])
string_text = st.sampled_from(['"a"', '""', '"a\\"b"', '"multi\nline"', '"open', '"x\\\\"', '"a,b c=d"'])
field_value = st.one_of(float_text, float_text, integer_text, unsigned_text, boolean_text, string_text)
timestamp_text = st.one_of(
    st.just(""),
    st.integers(-(2**64), 2**64).map(lambda n: f" {n}"),
    st.integers(0, 10**6).map(lambda n: f" {T0 + n}"),
    st.sampled_from([" -9223372036854775808", " 9223372036854775807", " 9223372036854775808", " 12a", "  5", " 5 ",
                     " 1704067200", " 1704067200000"]),
)


valid_value = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.integers(-(10**18), 10**18).map(str),
    st.integers(-(2**63), 2**63 - 1).map(lambda n: f"{n}i"),
    st.integers(0, 2**64 - 1).map(lambda n: f"{n}u"),
    boolean_text,
)


@st.composite
def plain_line(draw) -> str:
    """A valid line with common names; its tag values are sometimes escaped (same shape, slow path)."""
    measurement = draw(st.sampled_from(["cpu", "mem"]))
    tag_keys = draw(st.sampled_from([(), ("host",), ("host", "region")]))
    tag_value = st.sampled_from(["a", "b", "a\\ b", "x\\,y"]) if draw(st.booleans()) else plain_name
    tags = "".join(f",{key}={draw(tag_value)}" for key in tag_keys)
    field_keys = draw(st.sampled_from([("f1",), ("f1", "f2"), ("f2", "f1", "f3")]))
    fields = ",".join(f"{key}={draw(valid_value)}" for key in field_keys)
    return f"{measurement}{tags} {fields}{draw(timestamp_text)}"


@st.composite
def wild_line(draw) -> str:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.sampled_from(["", "# comment", "  ", "\tm f=1", " m f=1", "garbage", "m f=1\r", "m,t=\\", "m f=1\\"]))
    measurement = draw(st.sampled_from(["cpu", "mem"]) if draw(st.booleans()) else name)
    tags = draw(st.lists(st.tuples(st.sampled_from(["host", "region", "f1"]) | name, name), max_size=3))
    fields = draw(st.lists(st.tuples(st.sampled_from(["f1", "f2", "f3"]) | name, field_value), min_size=1, max_size=4))
    series = ",".join([measurement, *(f"{k}={v}" for k, v in tags)])
    field_set = ",".join(f"{k}={v}" for k, v in fields)
    return f"{series} {field_set}{draw(timestamp_text)}"


line_text = st.one_of(plain_line(), plain_line(), wild_line())


body_text = st.builds(
    lambda lines, trailing: "\n".join(lines) + ("\n" if trailing else ""),
    st.lists(line_text, max_size=25),
    st.booleans(),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body_text)
def test_fast_path_and_fallback_equal_parse(body):
    assert_same_as_parse(body)


def test_plain_lines_take_the_fast_path():
    body = "cpu,host=a,region=w usage=1.5,count=3i,ok=t,big=7u 1704067200000000000\ncpu,host=b,region=w usage=2,count=-4i,ok=FALSE,big=0u\n"
    items, errors = parse_columnar(body)
    assert errors == []
    assert [type(item) for item in items] == [FastGroup]
    assert items[0].key == ("cpu", ("host", "region"), ("usage", "count", "ok", "big"), ("f", "i", "b", "u"))
    assert items[0].columns == [["a", "b"], ["w", "w"], [1.5, 2.0], [3, -4], [True, False], [7, 0]]
    assert items[0].timestamps.to_pylist() == [1704067200000000000, None]
    assert_same_as_parse(body)


def test_a_string_spanning_physical_lines_takes_them_from_the_fast_path():
    body = 'm f="open\nm g=1\nm g=2\n" 5\nm g=3\n'
    items, errors = parse_columnar(body)
    assert errors == []
    lines = expand(items)
    assert [line.line_number for line in lines] == [1, 5]
    assert lines[0].fields == (("f", "s", "open\nm g=1\nm g=2\n"),)
    assert_same_as_parse(body)


def test_an_escaped_newline_takes_the_next_line_from_the_fast_path():
    body = "m,t=a\\\nb f=1\nm f=2\nm g=1 1\\\nm g=2\n"
    assert_same_as_parse(body)


def test_each_refused_line_keeps_its_number():
    body = "cpu v=1\ncpu v=1,v=2\ncpu,a=1,a=2 v=1\ncpu,v=1 v=2\ncpu v=1 99999999999999999999\ncpu v=NaN\ncpu v=2\n"
    items, errors = parse_columnar(body)
    assert [e.line_number for e in errors] == [2, 3, 4, 5, 6]
    assert [line.line_number for line in expand(items)] == [1, 7]
    assert_same_as_parse(body)


def test_lone_surrogates_fall_back_to_parse():
    assert_same_as_parse("m f=1\nm\udc80 f=2\n")


AUTO_BOUNDARIES = [sign * (5 * 10**exponent + offset) for sign in (1, -1) for exponent in (9, 12, 15, 18) for offset in (-1, 0, 1)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), st.integers(-(10**16), 10**16),
                          st.sampled_from(AUTO_BOUNDARIES)), max_size=20),
       st.sampled_from(["auto", "s", "ms", "us", "ns"]))
def test_timestamps_scale_like_per_line_validation(timestamps, precision):
    now = time.time_ns()
    body = "".join(f"m f=1{'' if t is None else f' {t}'}\n" for t in timestamps)
    fast = _validate(None, parse_columnar(body).items, precision, now)
    slow = _validate(None, parse(body)[0], precision, now)
    assert fast.groups == slow.groups
    assert fast.errors == slow.errors
    scaled, out_of_range = scale_timestamps(pa.array(timestamps, pa.int64()), precision, now)
    assert len(scaled) == len(timestamps)
    assert len(out_of_range) == len(slow.errors)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body_text, st.sampled_from(["auto", "s", "ns"]), st.booleans())
def test_validation_of_fast_groups_equals_validation_of_lines(tmp_path_factory, body, precision, existing_table):
    db = None
    if existing_table:
        catalog = Catalog(tmp_path_factory.mktemp("catalog"))
        # columns whose types conflict with some generated lines, so verdicts depend on line order
        catalog.create_database("db")
        catalog.create_table("db", "cpu", [ColumnDef("host", TAG), ColumnDef("f1", "int64"), ColumnDef("f2", "utf8")])
        db = catalog.database("db")
    now = time.time_ns()
    fast = _validate(db, parse_columnar(body).items, precision, now)
    slow = _validate(db, parse(body)[0], precision, now)
    assert list(fast.groups) == list(slow.groups)
    assert repr(fast.groups) == repr(slow.groups)
    assert fast.errors == slow.errors
    assert fast.additions == slow.additions
    assert fast.accepted == slow.accepted


def test_rows_of_one_shape_keep_line_order_across_both_paths():
    body = "cpu,host=a f1=1 1\ncpu,host=a\\ b f1=2 2\ncpu,host=c f1=3 3\ncpu,host=d\\,e f1=4 4\ncpu,host=f f1=5 5\n"
    items = parse_columnar(body).items
    assert [type(item) for item in items] == [FastGroup, Line, Line]
    validated = _validate(None, items, "ns", 0)
    assert validated.groups == {("cpu", ("host",), ("f1",), ("f",)): [
        ("a", 1.0, 1), ("a b", 2.0, 2), ("c", 3.0, 3), ("d,e", 4.0, 4), ("f", 5.0, 5)
    ]}


def test_small_bodies_skip_arrow_and_large_ones_use_it():
    small = "cpu v=1\n" * 10
    assert all(type(item) is Line for item in parse_body(small).items)
    large = "cpu v=1\n" * 1000
    assert [type(item) for item in parse_body(large).items] == [FastGroup]
    assert expand(parse_body(large).items) == parse(large)[0]


def test_a_body_mixing_fast_and_slow_lines_is_stored_whole(tmp_path):
    count = 400
    body = "".join(
        f"cpu,host=h{i % 3} usage={i}.5,n={i}i {T0 + i}\n" if i % 4 else f"cpu,host=h\\ {i % 3} usage={i}.5,n={i}i {T0 + i}\n"
        for i in range(count)
    ) + "cpu,host=x usage=oops\ncpu,host=y usage=1i\n"
    assert FastGroup in {type(item) for item in parse_body(body).items}
    with LocalDatabase(tmp_path / "data") as database:
        result = database.write_lp("db", body)
        assert result.lines_written == count
        assert [(e.line_number, e.original_line) for e in result.errors] == [
            (count + 1, "cpu,host=x usage=oops"), (count + 2, "cpu,host=y usage=1i")
        ]
        database.flush_now()
        table = database.query("db", "SELECT host, usage, n, time FROM cpu ORDER BY time")
    assert table.column("n").to_pylist() == list(range(count))
    assert table.column("usage").to_pylist() == [i + 0.5 for i in range(count)]
    assert table.column("host").to_pylist() == [f"h {i % 3}" if i % 4 == 0 else f"h{i % 3}" for i in range(count)]
    assert table.column("time").cast(pa.int64()).to_pylist() == [T0 + i for i in range(count)]
