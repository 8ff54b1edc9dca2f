def helper(value):
    raise ValueError(f"bad thing {value}")


def process_writes(influxdb3_local, table_batches, args=None):
    helper(len(table_batches))


def process_scheduled_call(influxdb3_local, call_time, args=None):
    influxdb3_local.info("about to fail")
    helper("scheduled")
