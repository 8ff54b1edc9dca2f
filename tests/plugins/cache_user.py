"""Exercises influxdb3_local.cache: by reference locally, by value globally."""
import threading


class Counter:
    def __init__(self):
        self.n = 0


def process_scheduled_call(influxdb3_local, call_time, args):
    cache = influxdb3_local.cache
    step = args["step"]
    if step == "put_local":
        shared = Counter()
        cache.put("counter", shared)
        cache.put("lock", threading.Lock())
        shared.n = 5  # mutating after put must be visible: the cache holds the object itself
    elif step == "get_local":
        counter = cache.get("counter")
        counter.n += 1
        influxdb3_local.info("local", counter.n, type(cache.get("lock")).__name__, cache.get("missing", "dflt"))
    elif step == "put_global":
        value = {"items": [1, 2]}
        cache.put("g", value, use_global=True)
        value["items"].append(3)  # not visible: global values are stored by value
    elif step == "get_global":
        influxdb3_local.info("global", cache.get("g", use_global=True), cache.get("g"))
    elif step == "ttl":
        cache.put("short", "v", 0)
        cache.put("long", "v", 60.5)
        influxdb3_local.info("ttl", cache.get("short"), cache.get("long"), cache.delete("long"), cache.delete("long"))
        for bad in (-1, float("nan")):
            try:
                cache.put("bad", 1, bad)
            except ValueError as e:
                influxdb3_local.info("ValueError", str(e))
    elif step == "unpicklable_global":
        try:
            cache.put("lock", threading.Lock(), use_global=True)
        except TypeError as e:
            influxdb3_local.info("TypeError", "cannot be stored by value" in str(e))
