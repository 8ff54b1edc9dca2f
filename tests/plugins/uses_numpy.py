import numpy as np


def process_scheduled_call(influxdb3_local, call_time, args=None):
    influxdb3_local.info("numpy", int(np.arange(5).sum()))
