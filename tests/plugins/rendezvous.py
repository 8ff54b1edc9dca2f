"""Two triggers that can only both finish if they run at the same time (files as the meeting point)."""
import os
import time


def process_scheduled_call(influxdb3_local, call_time, args):
    mine, theirs = args["mine"], args["theirs"]
    open(mine, "w").close()
    deadline = time.monotonic() + 20
    while not os.path.exists(theirs):
        if time.monotonic() > deadline:
            raise TimeoutError("the other plugin never ran concurrently")
        time.sleep(0.001)
    influxdb3_local.info("met", os.getpid())
