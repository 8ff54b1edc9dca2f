"""Runs the query in args["sql"] (with optional params/database) and logs the result or the error."""
import json


def process_scheduled_call(influxdb3_local, call_time, args):
    params = json.loads(args["params"]) if "params" in args else None
    try:
        rows = influxdb3_local.query(args["sql"], params, args.get("database"))
    except Exception as e:
        influxdb3_local.error(type(e).__name__, str(e))
        return
    influxdb3_local.info(repr(rows))
    influxdb3_local.info(repr([{k: type(v).__name__ for k, v in row.items()} for row in rows]))
