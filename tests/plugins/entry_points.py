"""Reports exactly what each entry point received, and mutates its inputs (they must be fresh next call)."""
import copy
import json


def _describe(value):
    return f"{type(value).__name__}:{value!r}"


def process_writes(influxdb3_local, table_batches, args):
    influxdb3_local.info("args", _describe(args))
    influxdb3_local.info("batches", json.dumps(table_batches, sort_keys=True))
    copied = copy.deepcopy(table_batches)
    influxdb3_local.info("deepcopy", copied == table_batches, [type(batch).__name__ for batch in copied])
    for batch in table_batches:
        for row in batch["rows"]:
            row["mutated"] = True
        batch["rows"].append({"extra": 1})
        influxdb3_local.info("after-mutation", len(batch["rows"]), batch["rows"][0].get("mutated"))
    if args is not None:
        args["mutated"] = "yes"


def process_scheduled_call(influxdb3_local, call_time, args):
    influxdb3_local.info("call_time", _describe(call_time), call_time.tzinfo, call_time.microsecond)
    if args and "undecodable" in args:
        influxdb3_local.info(b"caf\xe9".decode("utf-8", "surrogateescape"))
    influxdb3_local.info("args", _describe(args))
    if args is not None:
        args.clear()


def process_request(influxdb3_local, query_parameters, request_headers, request_body, args):
    return {
        "query": query_parameters,
        "headers": request_headers,
        "body_type": type(request_body).__name__,
        "body": request_body.decode(),
        "args": args,
    }
