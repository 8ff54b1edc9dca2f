"""LineBuilder as plugins reach it: a builtin, through builtins, and its errors through __main__."""
import builtins

import __main__


def process_scheduled_call(influxdb3_local, call_time, args=None):
    influxdb3_local.info(LineBuilder is getattr(builtins, "LineBuilder"))
    try:
        from influxdb3_pe import LineBuilder as _  # noqa: F401
        influxdb3_local.info("influxdb3_pe importable")
    except ImportError:
        influxdb3_local.info("influxdb3_pe ImportError")
    for bad in (lambda: LineBuilder("has space"), lambda: LineBuilder("m").tag("a=b", "v"),
                lambda: LineBuilder("m").build()):
        try:
            bad()
        except __main__.InfluxDBError as e:
            influxdb3_local.info(type(e).__name__, e)
    influxdb3_local.info(LineBuilder("m").tag("t", "a b").float64_field("f", 2.0).build())
