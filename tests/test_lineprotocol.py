"""host.lineprotocol: InfluxDB line protocol parsing, precision scaling and canonical formatting."""

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from host import lineprotocol
from host.lineprotocol import Line, ParseError, format_line, normalize_precision, parse, to_nanoseconds


def only_line(text):
    lines, errors = parse(text)
    assert errors == [], errors
    assert len(lines) == 1, lines
    return lines[0]


def only_error(text):
    lines, errors = parse(text)
    assert lines == [], lines
    assert len(errors) == 1, errors
    return errors[0].message


def field(text, key):
    return next((code, value) for name, code, value in only_line(text).fields if name == key)


# --- shape of a line ---------------------------------------------------------------------------


def test_full_line_parses_into_typed_parts():
    line = only_line(
        "cpu,host=server01,region=us-west usage_idle=93.5,usage_user=3.2,count=7i 1700000000000000000"
    )
    assert line == Line(
        "cpu",
        (("host", "server01"), ("region", "us-west")),
        (("usage_idle", "f", 93.5), ("usage_user", "f", 3.2), ("count", "i", 7)),
        1700000000000000000,
        1,
        "cpu,host=server01,region=us-west usage_idle=93.5,usage_user=3.2,count=7i 1700000000000000000",
    )


def test_tags_and_timestamp_are_optional():
    assert only_line("cpu value=1") == Line("cpu", (), (("value", "f", 1.0),), None, 1, "cpu value=1")


def test_tags_and_fields_keep_line_order():
    line = only_line("m,z=1,a=2,m=3 y=1,b=2,x=3")
    assert [key for key, _ in line.tags] == ["z", "a", "m"]
    assert [key for key, _, _ in line.fields] == ["y", "b", "x"]


def test_extra_spaces_between_elements_and_around_the_line_are_ignored():
    line = only_line("  measurement  a=1i  123  ")
    assert (line.measurement, line.fields, line.timestamp) == ("measurement", (("a", "i", 1),), 123)
    assert only_line("\tcpu f=1").measurement == "cpu"


def test_negative_timestamp():
    assert only_line("cpu f=1 -123").timestamp == -123


def test_blank_and_comment_lines_are_skipped_but_still_counted():
    lines, errors = parse("\n# a comment\n   \n  # indented comment\ncpu f=1\n\n")
    assert errors == []
    assert [(line.line_number, line.original) for line in lines] == [(5, "cpu f=1")]


def test_empty_body():
    assert parse("") == ([], [])


# --- field types -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, value",
    [("1", 1.0), ("-1.5", -1.5), ("1e3", 1000.0), ("1E3", 1000.0), ("-1.234456e+06", -1234456.0),
     ("1.5E-3", 0.0015), ("1e-0", 1.0), ("0", 0.0), ("007.50", 7.5), ("1" * 30, float("1" * 30)),
     ("1.5e100", 1.5e100)],
)
def test_floats(text, value):
    assert field(f"m f={text}", "f") == ("f", value)


@pytest.mark.parametrize("text", ["1.", ".5", "-.5", "+1", "1.e5", "1e", "1e+", "--1", "1_000",
                                  "0x10", "1.5.5", "NaN", "nan", "inf", "-Inf", "Infinity", "١٢"])
def test_malformed_floats_are_refused(text):
    assert only_error(f"m f={text}") == f"invalid field value {text!r} for field 'f'"


def test_floats_that_overflow_are_refused():
    assert only_error("m f=1e999") == (
        "invalid field value '1e999' for field 'f': out of range for a 64-bit float"
    )
    assert "out of range" in only_error(f"m f=-{'9' * 400}")


def test_integers():
    assert field("m f=7i", "f") == ("i", 7)
    assert field("m f=-7i", "f") == ("i", -7)
    assert field("m f=9223372036854775807i", "f") == ("i", 2**63 - 1)
    assert field("m f=-9223372036854775808i", "f") == ("i", -(2**63))


@pytest.mark.parametrize("text", ["9223372036854775808i", "-9223372036854775809i", "9" * 40 + "i"])
def test_integers_outside_int64_are_refused(text):
    assert only_error(f"m f={text}") == (
        f"invalid field value {text!r} for field 'f': out of range for int64"
    )


def test_unsigned_integers():
    assert field("m f=0u", "f") == ("u", 0)
    assert field("m f=18446744073709551615u", "f") == ("u", 2**64 - 1)


@pytest.mark.parametrize("text", ["-1u", "1.5u", "u", "1iu", "1.5i", "i"])
def test_malformed_integers_are_refused(text):
    assert only_error(f"m f={text}") == f"invalid field value {text!r} for field 'f'"


def test_unsigned_integers_outside_uint64_are_refused():
    assert only_error("m f=18446744073709551616u") == (
        "invalid field value '18446744073709551616u' for field 'f': out of range for uint64"
    )


@pytest.mark.parametrize("text", ["t", "T", "true", "True", "TRUE"])
def test_true(text):
    assert field(f"m f={text}", "f") == ("b", True)


@pytest.mark.parametrize("text", ["f", "F", "false", "False", "FALSE"])
def test_false(text):
    assert field(f"m f={text}", "f") == ("b", False)


@pytest.mark.parametrize("text", ["tRUE", "yes", "tru", "fals", "on", "1b"])
def test_other_words_are_not_booleans(text):
    assert only_error(f"m f={text}") == f"invalid field value {text!r} for field 'f'"


def test_strings():
    assert field('m f="hello world, a=b"', "f") == ("s", "hello world, a=b")
    assert field('m f=""', "f") == ("s", "")
    assert field('m f="ünïcødé 😀"', "f") == ("s", "ünïcødé 😀")


# --- escaping, element by element --------------------------------------------------------------


@pytest.mark.parametrize(
    "written, measurement",
    [(r"wea\,ther", "wea,ther"), (r"wea\ ther", "wea ther"), (r"\\wea\\ther", r"\wea\ther"),
     (r"\wea\ther", r"\wea\ther"), (r"wea\=ther", r"wea\=ther"), ("wea=ther", "wea=ther"),
     ('wea"ther', 'wea"ther')],
)
def test_measurement_escapes_comma_space_and_backslash_only(written, measurement):
    assert only_line(f"{written} f=1").measurement == measurement


@pytest.mark.parametrize(
    "written, key",
    [(r"a\,b", "a,b"), (r"a\=b", "a=b"), (r"a\ b", "a b"), (r"a\\b", "a\\b"), (r"a\xb", r"a\xb"),
     ("a,b", "a,b")],
)
def test_tag_key_escapes(written, key):
    assert only_line(f"m,{written}=v f=1").tags == ((key, "v"),)


@pytest.mark.parametrize(
    "written, value",
    [(r"a\,b", "a,b"), (r"a\=b", "a=b"), (r"a\ b", "a b"), (r"a\\b", "a\\b"), (r"a\xb", r"a\xb"),
     ("a=b", "a=b")],
)
def test_tag_value_escapes(written, value):
    assert only_line(f"m,k={written} f=1").tags == (("k", value),)


@pytest.mark.parametrize(
    "written, key",
    [(r"a\,b", "a,b"), (r"a\=b", "a=b"), (r"a\ b", "a b"), (r"a\\b", "a\\b"), (r"a\xb", r"a\xb"),
     ("a,b", "a,b")],
)
def test_field_key_escapes(written, key):
    assert only_line(f"m {written}=1").fields == ((key, "f", 1.0),)


@pytest.mark.parametrize(
    "written, value",
    [(r'"a\"b"', 'a"b'), (r'"a\\b"', "a\\b"), (r'"a\b"', r"a\b"), (r'"a\,b\=c\ d"', r"a\,b\=c\ d"),
     (r'"too hot\\\cold"', r"too hot\\cold"), (r'"end\\"', "end\\"), (r'"\\"', "\\")],
)
def test_string_value_escapes_quote_and_backslash_only(written, value):
    assert field(f"m f={written}", "f") == ("s", value)


@pytest.mark.parametrize(
    "text, what",
    [(r"cpu\\ f=1", "measurement"), (r"m,k\\=v f=1", "tag key"), (r"m,k=v\\ f=1", "tag value"),
     (r"m k\\=1", "field key"), ("cpu\\", "measurement")],
)
def test_a_name_ending_in_a_backslash_is_refused(text, what):
    assert only_error(text).startswith(f"{what} ")
    assert only_error(text).endswith("ends with a backslash, which InfluxDB refuses")


def test_escaped_newline_continues_a_name_onto_the_next_line():
    lines, errors = parse("m,a\\\nb=1 f=1\nm f=2")
    assert errors == []
    assert lines[0].tags == (("a\\\nb", "1"),)
    assert [line.line_number for line in lines] == [1, 3]


def test_string_values_may_span_lines_and_later_lines_keep_their_numbers():
    lines, errors = parse('m s="first\nsecond\nthird",n=1i 5\nm f=2\nbad')
    assert [(line.line_number, line.fields[0][2]) for line in lines] == [
        (1, "first\nsecond\nthird"),
        (4, 2.0),
    ]
    assert lines[0].original == 'm s="first\nsecond\nthird",n=1i 5'
    assert [(error.line_number, error.original_line) for error in errors] == [(5, "bad")]


def test_unescaped_newline_ends_a_name():
    lines, errors = parse("m,a\nb=1 f=1")
    assert [error.line_number for error in errors] == [1]
    assert [(line.line_number, line.measurement) for line in lines] == [(2, "b=1")]


def test_tab_between_elements_is_refused():
    assert only_error("cpu\tf=1") == "expected a space after the measurement, found '\\tf=1'"


# --- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, message",
    [
        ("cpu", "no fields: a line needs at least one field after a space"),
        ("cpu,host=a", "no fields: a line needs at least one field after a space"),
        ("cpu ", "no fields: a line needs at least one field after a space"),
        (",t=1 f=1", "missing measurement name, found ',t=1 f=1'"),
        ("cpu, f=1", "missing tag key after ',', found ' f=1'"),
        ("cpu,host f=1", "missing '=' after tag key 'host', found ' f=1'"),
        ("cpu,host= f=1", "missing value for tag 'host', found ' f=1'"),
        ("cpu =1", "missing field key, found '=1'"),
        ("cpu f=1,=2", "missing field key, found '=2'"),
        ("cpu f=1,", "missing field key, found end of line"),
        ("cpu f", "missing '=' after field key 'f', found end of line"),
        ("cpu f=", "missing value for field 'f'"),
        ("cpu f=abc", "invalid field value 'abc' for field 'f'"),
        ('cpu f="abc', "unterminated string value for field 'f'"),
        ('cpu f="abc"x', "expected ',' or a space after the value of field 'f', found 'x'"),
        ("cpu f=1,f=2", "multiple instances of 'f' field found"),
        ("cpu,a=1,a=2 f=1", "multiple instances of 'a' tag found"),
        ("cpu,a=1 a=2", "'a' is used both as a tag and as a field"),
        ("cpu f=1 1.5", "invalid timestamp '1.5': expected an integer"),
        ("cpu f=1 12a", "invalid timestamp '12a': expected an integer"),
        ("cpu f=1 2024-01-01", "invalid timestamp '2024-01-01': expected an integer"),
        ("cpu f=1 9223372036854775808", "timestamp 9223372036854775808 is out of range for int64"),
        ("cpu f=1 1 2", "unexpected '2' after the timestamp"),
        ("\x00 f=1", "missing measurement name, found '\\x00 f=1'"),
    ],
)
def test_refusals_say_what_is_wrong(text, message):
    assert only_error(text) == message


def test_carriage_returns_are_refused_with_a_hint():
    assert only_error("cpu f=1\r") == (
        "invalid field value '1\\r' for field 'f' (lines must end with \\n alone)"
    )
    assert only_error("cpu f=1 5\r").endswith("(lines must end with \\n alone)")


def test_names_and_strings_longer_than_64_kib_are_refused():
    assert "longer than 64 KiB" in only_error(f"m f=\"{'a' * 65537}\"")
    assert "longer than 64 KiB" in only_error(f"{'m' * 65537} f=1")
    assert field(f"m f=\"{'é' * 32768}\"", "f") == ("s", "é" * 32768)  # exactly 64 KiB of UTF-8


def test_good_lines_survive_bad_ones_and_each_bad_line_is_reported_where_it_is():
    body = "\n".join([
        "cpu,host=a usage=1 1",  # 1
        "cpu,host=a usage=oops 2",  # 2 bad
        "",  # 3
        "# comment",  # 4
        "cpu,host=b usage=2 3",  # 5
        'log msg="never closed',  # 6 bad: unterminated string
        "cpu,host=c usage=3 4",  # 7
        "cpu,host=d usage=4 five",  # 8 bad
        "cpu,host=e usage=5i,usage=6i",  # 9 bad
        r"cpu,host=f\,g usage=6",  # 10
    ])
    lines, errors = parse(body)
    assert [(line.line_number, line.fields[0][2]) for line in lines] == [
        (1, 1.0), (5, 2.0), (7, 3.0), (10, 6.0)
    ]
    assert lines[-1].tags == (("host", "f,g"),)
    assert [(error.line_number, error.original_line) for error in errors] == [
        (2, "cpu,host=a usage=oops 2"),
        (6, 'log msg="never closed'),
        (8, "cpu,host=d usage=4 five"),
        (9, "cpu,host=e usage=5i,usage=6i"),
    ]
    assert all(isinstance(error, ParseError) and error.message for error in errors)


# --- precision ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, canonical",
    [("auto", "auto"), ("s", "s"), ("second", "s"), ("ms", "ms"), ("millisecond", "ms"),
     ("us", "us"), ("u", "us"), ("microsecond", "us"), ("ns", "ns"), ("n", "ns"),
     ("nanosecond", "ns")],
)
def test_precision_names_and_aliases(name, canonical):
    assert normalize_precision(name) == canonical


@pytest.mark.parametrize("name", ["invalid", "sec", "milliseconds", "micro", "nano", "h", "S", ""])
def test_unknown_precision_is_refused_by_name(name):
    with pytest.raises(ValueError, match=f"unrecognized precision unit: {name!r}"):
        normalize_precision(name)
    with pytest.raises(ValueError, match=f"unrecognized precision unit: {name!r}"):
        to_nanoseconds(1, name)


def test_explicit_precisions_scale():
    assert to_nanoseconds(1_761_048_000, "s") == 1_761_048_000_000_000_000
    assert to_nanoseconds(1_761_048_000_123, "millisecond") == 1_761_048_000_123_000_000
    assert to_nanoseconds(1_761_048_000_123_456, "u") == 1_761_048_000_123_456_000
    assert to_nanoseconds(1_761_048_000_123_456_789, "n") == 1_761_048_000_123_456_789
    assert to_nanoseconds(-5, "s") == -5_000_000_000


@pytest.mark.parametrize(
    "timestamp, unit",
    [(0, "s"), (1, "s"), (4_999_999_999, "s"), (5_000_000_000, "ms"), (1_761_048_000, "s"),
     (1_761_048_000_000, "ms"), (4_999_999_999_999, "ms"), (5_000_000_000_000, "us"),
     (1_761_048_000_000_000, "us"), (4_999_999_999_999_999, "us"),
     (5_000_000_000_000_000, "ns"), (1_761_048_000_000_000_000, "ns"), (-1, "s"),
     (-4_999_999_999, "s"), (-5_000_000_000, "ms"), (-1_761_048_000_000_000, "us")],
)
def test_auto_precision_guesses_the_unit_by_magnitude_like_influxdb3(timestamp, unit):
    scale = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}[unit]
    assert to_nanoseconds(timestamp, "auto") == timestamp * scale


def test_scaled_timestamps_must_fit_int64():
    assert to_nanoseconds((2**63 - 1) // 10**9, "s") == ((2**63 - 1) // 10**9) * 10**9
    with pytest.raises(ValueError, match="out of range for precision"):
        to_nanoseconds(2**63 - 1, "s")
    with pytest.raises(ValueError, match="out of range for precision"):
        to_nanoseconds(-(2**63), "ms")


# --- formatting --------------------------------------------------------------------------------


def test_format_line_escapes_every_element():
    line = Line(
        "m,easure ment=x",
        (("tag key,=", "a\\ b,=c"),),
        (("field key,= \\x", "s", 'say "hi" \\ bye\n'), ("n", "i", -3), ("u", "u", 4),
         ("b", "b", True), ("f", "f", 1e-05)),
        1700000000000000000,
        0,
        "",
    )
    text = format_line(line)
    assert text == (
        r"m\,easure\ ment=x,tag\ key\,\==a\\\ b\,\=c field\ key\,\=\ \x="
        + '"say \\"hi\\" \\\\ bye\n",n=-3i,u=4u,b=true,f=1e-05 1700000000000000000'
    )
    assert only_line(text)[:4] == line[:4]


@pytest.mark.parametrize(
    "line, message",
    [
        (Line("m", (), (), None, 0, ""), "at least one field"),
        (Line("", (), (("f", "f", 1.0),), None, 0, ""), "measurement is empty"),
        (Line("m\\", (), (("f", "f", 1.0),), None, 0, ""), "ends with a backslash"),
        (Line("#m", (), (("f", "f", 1.0),), None, 0, ""), "starts with '#'"),
        (Line("m\tx", (), (("f", "f", 1.0),), None, 0, ""), "not preceded by a backslash"),
        (Line("m", (("k", "a\nb"),), (("f", "f", 1.0),), None, 0, ""), "not preceded by a backslash"),
        (Line("m", (("k", "v"), ("k", "w")), (("f", "f", 1.0),), None, 0, ""), "more than once"),
        (Line("m", (("k", "v"),), (("k", "f", 1.0),), None, 0, ""), "repeats a tag or field"),
        (Line("m", (), (("f", "f", math.nan),), None, 0, ""), "no nan float"),
        (Line("m", (), (("f", "f", math.inf),), None, 0, ""), "no inf float"),
        (Line("m", (), (("f", "i", 2**63),), None, 0, ""), "out of range for int64"),
        (Line("m", (), (("f", "u", -1),), None, 0, ""), "out of range for uint64"),
        (Line("m", (), (("f", "x", 1),), None, 0, ""), "unknown type code"),
        (Line("m", (), (("f", "f", 1.0),), 2**63, 0, ""), "timestamp"),
    ],
)
def test_format_line_refuses_what_line_protocol_cannot_say(line, message):
    with pytest.raises(ValueError, match=message):
        format_line(line)


# --- properties --------------------------------------------------------------------------------

_NAME_CHARS = st.sampled_from(list("abcxyz_-.:/#\"'\r é😀汉,= \\"))
_BACKSLASH_PAIRS = st.sampled_from(["\\\t", "\\\n", "\\\x00"])


def _names(*, measurement=False):
    atoms = st.one_of(_NAME_CHARS, _BACKSLASH_PAIRS)
    if not measurement:
        atoms = st.one_of(atoms, st.just("\x00"))
    names = st.lists(atoms, min_size=1, max_size=12).map("".join)
    names = names.filter(lambda name: not name.endswith("\\"))
    if measurement:
        names = names.filter(lambda name: not name.startswith("#"))
    return names


_FIELD_VALUES = st.one_of(
    st.tuples(st.just("f"), st.floats(allow_nan=False, allow_infinity=False)),
    st.tuples(st.just("i"), st.integers(-(2**63), 2**63 - 1)),
    st.tuples(st.just("u"), st.integers(0, 2**64 - 1)),
    st.tuples(st.just("b"), st.booleans()),
    st.tuples(st.just("s"), st.text(max_size=20)),
    st.tuples(st.just("s"), st.text(alphabet='\\"\n ,=x', max_size=10)),
)


@st.composite
def lines(draw):
    keys = draw(st.lists(_names(), min_size=1, max_size=8, unique=True))
    split = draw(st.integers(0, len(keys) - 1))
    tag_keys, field_keys = keys[:split], keys[split:]
    tags = tuple((key, draw(_names())) for key in tag_keys)
    fields = tuple((key, *draw(_FIELD_VALUES)) for key in field_keys)
    timestamp = draw(st.none() | st.integers(-(2**63), 2**63 - 1))
    return Line(draw(_names(measurement=True)), tags, fields, timestamp, 1, "")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines())
def test_format_line_round_trips_through_parse(line):
    text = format_line(line)
    parsed = only_line(text)
    assert parsed[:4] == line[:4]
    assert parsed.original == text
    assert [math.copysign(1, v) for _, c, v in parsed.fields if c == "f"] == [
        math.copysign(1, v) for _, c, v in line.fields if c == "f"
    ]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(lines(), min_size=1, max_size=6))
def test_a_body_of_formatted_lines_parses_line_by_line(originals):
    texts = [format_line(line) for line in originals]
    parsed, errors = parse("\n".join(texts))
    assert errors == []
    assert [line[:4] for line in parsed] == [line[:4] for line in originals]
    numbers = [1]
    for text in texts[:-1]:
        numbers.append(numbers[-1] + text.count("\n") + 1)
    assert [line.line_number for line in parsed] == numbers


_MUTATIONS = st.sampled_from(list(' ,="\\\t\n\r#\x00ietfu.-+e0123456789x'))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines(), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 2), _MUTATIONS), max_size=4))
def test_the_simple_path_agrees_with_the_careful_parser(line, mutations):
    # The simple path is an optimisation: whatever it accepts, the careful parser must read the
    # same way. Mutating canonical lines reaches the corners both paths have to agree on.
    text = format_line(line)
    for position, kind, char in mutations:
        position %= len(text) + 1
        if kind == 0:
            text = text[:position] + char + text[position:]
        elif kind == 1:
            text = text[:position] + text[position + 1 :]
        else:
            text = text[:position] + char + text[position + 1 :]
    simple = lineprotocol._parse_simple_line(text, 1, {})
    if simple is not None:
        end, careful = lineprotocol._parse_line_carefully(text, 0)
        assert end == len(text)
        assert careful == simple[:4]
        assert simple.original == text


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list(' ,="\\\t\n\r#\x00abc=ietfu.-e019é')), max_size=60))
def test_parse_never_raises_and_accounts_for_every_line(text):
    lines, errors = parse(text)
    numbers = [line.line_number for line in lines] + [error.line_number for error in errors]
    assert len(set(numbers)) == len(numbers)
    assert all(1 <= number <= text.count("\n") + 1 for number in numbers)


_LOOSE_NAMES = st.one_of(
    st.sampled_from(["a", "b", "ab", "é"]),
    st.text(alphabet=st.sampled_from(list('ab#"=,\\\t\x00\r é')), min_size=0, max_size=4),
)
_LOOSE_VALUES = st.sampled_from([
    "1", "-1", "1.5", "-0.0", "1e5", "1E+05", "1e-99", "1e100", "1.e5", ".5", "1.", "+1", "1_0", "nan",
    "inf", "1" * 18, "1" * 19, "5i", "-5i", "1" * 18 + "i", "1" * 19 + "i", "5u", "-5u", "t", "TRUE",
    "tRUE", "false", '""', '"a b"', '"a,b=c"', '"a\\"b"', '"x', '"\t\x00"', "", "1i1",
])
_LOOSE_PAIRS = st.tuples(_LOOSE_NAMES, st.sampled_from(["="] * 6 + ["", "=="]), _LOOSE_VALUES).map(
    "".join
)


@settings(max_examples=1000, deadline=None)
@given(
    _LOOSE_NAMES,
    st.lists(st.tuples(_LOOSE_NAMES, _LOOSE_NAMES).map("=".join), max_size=3),
    st.lists(_LOOSE_PAIRS, min_size=1, max_size=4),
    st.sampled_from(["", " ", " 12", " -5 ", "  7", " x", " 9223372036854775808", "\r"]),
)
def test_the_simple_path_agrees_with_the_careful_parser_on_loose_text(measurement, tags, fields, tail):
    text = ",".join([f"m{measurement}", *tags]) + " " + ",".join(fields) + tail
    simple = lineprotocol._parse_simple_line(text, 1, {})
    if simple is not None:
        assert lineprotocol._parse_line_carefully(text, 0) == (len(text), simple[:4])
