"""The classic InfluxDB 3 shape: rows as dicts, a threshold from the trigger arguments.

Runs unchanged on InfluxDB 3 and on plughost. For every row of the trigger's table whose
`field` exceeds `threshold`, writes an `alerts` line and logs a warning; counts alerts per
trigger in the cache.

Trigger arguments: `field` (default `usage`), `threshold` (default `90`).
"""


def process_writes(influxdb3_local, table_batches, args=None):
    args = args or {}
    field = args.get("field", "usage")
    threshold = float(args.get("threshold", "90"))
    alerts = 0
    for batch in table_batches:
        for row in batch["rows"]:
            value = row.get(field)
            if value is None or value <= threshold:
                continue
            alerts += 1
            line = LineBuilder("alerts").tag("table", batch["table_name"]).float64_field(field, value)
            for key, tag in row.items():
                if isinstance(tag, str) and key != "time":
                    line.tag(key, tag)
            influxdb3_local.write(line.time_ns(row["time"]))
    if alerts:
        total = influxdb3_local.cache.get("alerts", 0) + alerts
        influxdb3_local.cache.put("alerts", total)
        influxdb3_local.warn(f"{alerts} rows above {threshold} ({total} since the trigger started)")
