import ctypes
import os


def process_scheduled_call(influxdb3_local, call_time, args):
    how = args["how"]
    if how == "exit":
        os._exit(7)
    if how == "segfault":
        ctypes.string_at(0)
    influxdb3_local.info("alive", os.getpid())
