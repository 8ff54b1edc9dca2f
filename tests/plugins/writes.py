"""Queued and synchronous writes, in the order a plugin would make them."""


class Batch:
    def __init__(self, lines):
        self.lines = lines

    def build(self):
        return "\n".join(self.lines)


def process_scheduled_call(influxdb3_local, call_time, args):
    mode = args["mode"]
    if mode == "queued":
        influxdb3_local.write(LineBuilder("queued").int64_field("n", 1).time_ns(1000))
        influxdb3_local.write_to_db("other", Batch(["many,k=a v=1i 1", "many,k=b v=2i 2"]))
    elif mode == "sync":
        influxdb3_local.write_sync(LineBuilder("synced").float64_field("x", 2).time_ns(2000), no_sync=True)
        rows = influxdb3_local.query("SELECT count(*) AS n FROM synced")
        influxdb3_local.info("visible-before-return", rows)
    elif mode == "both":
        influxdb3_local.write(LineBuilder("queued2").bool_field("ok", True).time_ns(3))
        influxdb3_local.write_sync_to_db("syncdb", LineBuilder("s").string_field("t", "x").time_ns(4), no_sync=False)
    elif mode == "then_raise":
        influxdb3_local.write(LineBuilder("lost").int64_field("n", 1))
        raise RuntimeError("after queueing")
    elif mode == "internal":
        for call in (lambda: influxdb3_local.write_to_db("_internal", LineBuilder("m").int64_field("n", 1)),
                     lambda: influxdb3_local.write_sync_to_db("_internal", LineBuilder("m").int64_field("n", 1), no_sync=True)):
            try:
                call()
            except Exception as e:
                influxdb3_local.error(type(e).__name__, str(e))
    elif mode == "bad_sync":
        try:
            influxdb3_local.write_sync_to_db("db", Batch(["bad line with no fields"]), no_sync=True)
        except Exception as e:
            influxdb3_local.error(type(e).__name__, str(e))
        try:
            influxdb3_local.write_sync(LineBuilder("m").int64_field("n", 1), 1)
        except TypeError as e:
            influxdb3_local.error("TypeError", str(e))
