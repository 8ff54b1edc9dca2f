"""The plugin-side building blocks on their own: LineBuilder's exact rendering, the Arrow reader
against pyarrow, shared-flush layouts, and the host's global cache."""

from __future__ import annotations

import math
import mmap
import os

import msgspec
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cache.plugin_cache import GlobalCache
from host.interface import FlushedTable, WalFlush
from sandbox.guest import arrowlite
from sandbox.guest.line_builder import (
    InfluxDBError, InvalidKeyError, InvalidLineError, InvalidMeasurementError, LineBuilder,
)
from sandbox.shared_flush import UnsupportedColumn, encode_result, share_flush

# -- LineBuilder (reference §3 of influxdb3-processing-engine.md, §2.9 of plugin-contract.md) -----


def test_line_builder_renders_every_type_in_insertion_order():
    line = (LineBuilder("cpu").tag("z", "last").tag("a", 5).int64_field("i", -3).uint64_field("u", 7)
            .float64_field("f", 3.0).float64_field("g", 0.1).string_field("s", 'say "hi" \\ now')
            .bool_field("t", 1).bool_field("b", 0).time_ns(123))
    assert line.build() == 'cpu,z=last,a=5 i=-3i,u=7u,f=3.0,g=0.1,s="say \\"hi\\" \\\\ now",t=t,b=f 123'
    assert list(line.tags) == ["z", "a"] and line.fields["f"] == "3.0" and line.measurement == "cpu"


def test_line_builder_float_rendering():
    render = lambda v: LineBuilder("m").float64_field("f", v).fields["f"]  # noqa: E731
    assert [render(v) for v in (2, 2.0, -4.0, 1e20, 0.5, 1e-7, float("inf"), float("nan"))] == [
        "2.0", "2.0", "-4.0", "100000000000000000000.0", "0.5", "1e-07", "inf", "nan"]


def test_line_builder_escaping():
    # tag and field keys are validated (no space, comma or '='), so only a backslash is left to escape there
    line = LineBuilder("my,meas").tag("host", "a b,c=d\\e").float64_field("back\\slash", 1.5)
    assert line.build() == "my\\,meas,host=a\\ b\\,c\\=d\\\\e back\\\\slash=1.5"
    assert LineBuilder("m,m2").tag("k\\", "v").int64_field("f", 1).build() == "m\\,m2,k\\=v f=1i"
    assert LineBuilder("m").string_field("s", "line\nbreak").build() == 'm s="line\nbreak"'


def test_line_builder_errors():
    with pytest.raises(InvalidMeasurementError, match="^Measurement name cannot contain spaces$"):
        LineBuilder("has space")
    for key, why in [("", "tag key cannot be empty"), ("a b", "tag key 'a b' cannot contain spaces"),
                     ("a,b", "tag key 'a,b' cannot contain commas"), ("a=b", "tag key 'a=b' cannot contain equals signs")]:
        with pytest.raises(InvalidKeyError) as caught:
            LineBuilder("m").tag(key, "v")
        assert str(caught.value) == why
    with pytest.raises(InvalidKeyError, match="^field key 'x y' cannot contain spaces$"):
        LineBuilder("m").int64_field("x y", 1)
    with pytest.raises(ValueError, match="^uint64 field 'u' cannot be negative$"):
        LineBuilder("m").uint64_field("u", -1)
    with pytest.raises(InvalidLineError, match="^At least one field is required: m,t=v$"):
        LineBuilder("m").tag("t", "v").build()
    assert issubclass(InvalidLineError, InfluxDBError) and issubclass(InfluxDBError, Exception)
    assert LineBuilder("m").int64_field("n", 1).build() == "m n=1i", "no timestamp unless set"


# -- Arrow reader vs pyarrow ----------------------------------------------------------------------

COLUMN_TYPES = {
    "int64": st.integers(-(2**63), 2**63 - 1),
    "uint64": st.integers(0, 2**64 - 1),
    "float64": st.floats(allow_nan=False),
    "bool": st.booleans(),
    "utf8": st.text(max_size=8),
    "tag": st.sampled_from(["a", "b", "γδ", ""]),
    "time": st.integers(0, 2**62),
}


def _arrow(kind, values):
    if kind == "tag":
        return pa.array(values, pa.utf8()).dictionary_encode()
    if kind == "time":
        return pa.array(values, pa.timestamp("ns"))
    return pa.array(values, {"int64": pa.int64(), "uint64": pa.uint64(), "float64": pa.float64(),
                             "bool": pa.bool_(), "utf8": pa.utf8()}[kind])


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_reader_decodes_what_pyarrow_holds(data):
    kind = data.draw(st.sampled_from(sorted(COLUMN_TYPES)))
    values = data.draw(st.lists(st.one_of(st.none(), COLUMN_TYPES[kind]), max_size=40))
    start = data.draw(st.integers(0, len(values)))
    array = _arrow(kind, values).slice(start)
    layout, payload = encode_result(pa.table({"c": array}))
    column = msgspec.to_builtins(layout.columns[0])
    assert arrowlite.values(memoryview(bytes(payload)), column) == values[start:]


def test_shared_flush_layout_maps_back_to_the_same_values():
    batch = pa.RecordBatch.from_arrays(
        [pa.array(["x", None, "y"]).dictionary_encode(), pa.array([1.5, None, 3.0]), pa.array([True, False, None]),
         pa.array(["s", "", None]), pa.array([1, 2, 3], pa.timestamp("ns"))],
        ["tag", "f", "b", "s", "time"])
    released = []
    flush = share_flush(WalFlush(7, [FlushedTable("db", "t", batch)]), 1, released.append)
    fd = os.dup(flush.fd_for(object()))
    try:
        with mmap.mmap(fd, flush.size, prot=mmap.PROT_READ) as segment:
            view = memoryview(segment).toreadonly()
            layout = msgspec.to_builtins(flush.layout)
            columns = {c["name"]: arrowlite.values(view, c) for c in layout["tables"][0]["columns"]}
            view.release()
        assert columns == {"tag": ["x", None, "y"], "f": [1.5, None, 3.0], "b": [True, False, None],
                           "s": ["s", "", None], "time": [1, 2, 3]}
        assert all(span[0] % 64 == 0 for c in layout["tables"][0]["columns"]
                   for span in (c.get("data"), c.get("validity"), c.get("offsets")) if span)
    finally:
        os.close(fd)
    with pytest.raises(PermissionError):
        mmap.mmap(flush.fd_for(object()), flush.size)  # sealed: nobody can write into it
    flush.acquire()
    flush.release()
    assert released == []
    flush.release()
    assert released == [flush]
    with pytest.raises(ValueError):
        flush.acquire()


def test_query_results_refuse_types_influxdb3_refuses():
    with pytest.raises(UnsupportedColumn, match="^Unsupported data type: Int32$"):
        encode_result(pa.table({"x": pa.array([1], pa.int32())}))
    layout, _ = encode_result(pa.table({"t": pa.array([1000], pa.timestamp("us", "UTC"))}))
    assert layout.columns[0].type == "timestamp"


# -- GlobalCache ----------------------------------------------------------------------------------


def test_global_cache_ttl_and_namespaces():
    now = [1000.0]
    cache = GlobalCache(clock=lambda: now[0])
    cache.put("global", "k", b"v", ttl=5)
    cache.put("test:x:global", "k", b"other")
    assert cache.get("global", "k") == b"v" and cache.get("test:x:global", "k") == b"other"
    now[0] += 5
    assert cache.get("global", "k") is None, "expires at exactly its ttl"
    assert cache.delete("test:x:global", "k") and not cache.delete("test:x:global", "k")
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError):
            cache.put("global", "k", b"v", ttl=bad)
    cache.put("gone", "k", b"v")
    assert cache.drop_namespace("gone") and cache.get("gone", "k") is None


# -- the interpreters layer -----------------------------------------------------------------------


def test_interpreter_exec_reports_failures_including_lost_memory_errors():
    from sandbox.interpreters import ExecutionFailed, Interpreter

    interpreter = Interpreter()
    try:
        interpreter.exec("import _interpreters\nvalue = 41")
        with pytest.raises(ExecutionFailed) as caught:
            interpreter.exec("raise ValueError(f'bad {value + 1}')")
        assert (caught.value.type_name, caught.value.message) == ("ValueError", "bad 42")
        assert "Traceback" in caught.value.details
        with pytest.raises(ExecutionFailed) as caught:
            interpreter.exec("bytearray(2 ** 60)")  # 3.13.0 loses this exception's details (type None)
        assert caught.value.type_name == "MemoryError"
        interpreter.exec("assert shared.tobytes() == b'abc' and shared.readonly", {"shared": memoryview(b"abc")})
    finally:
        interpreter.close()
