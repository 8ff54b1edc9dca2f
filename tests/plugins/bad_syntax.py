x = 1
def process_writes(influxdb3_local, table_batches, args=None)
    pass
