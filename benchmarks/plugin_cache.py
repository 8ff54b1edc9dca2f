"""Plugin cache put/get throughput from inside a plugin: trigger-local and global, in memory and written through.

Measured in one run, from a request trigger's plugin that loops `cache.put` / `cache.get` over
a small dict value (timed inside the plugin, so the per-run overhead is excluded):
1. baseline: a runtime whose cache is the in-memory `GlobalCache` (nothing survives a restart);
2. persistent: a runtime whose cache is `PersistentPluginCache` over a `CacheStore` in a
   temporary directory (trigger-local and global puts committed to SQLite before they return).

Prints ops/s side by side and the persistent / in-memory ratio.

Run: `python -m benchmarks.plugin_cache [--quick]`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchmarks.plugin_overhead import NullDatabase, temporary_plugins
from cache.plugin_cache import GlobalCache
from cache.plugin_persistence import PersistentPluginCache
from cache.store import CacheStore
from sandbox.runtime import PluginRuntime, PluginSpec

PLUGIN = """
import time

def process_request(influxdb3_local, query_parameters, request_headers, request_body, args=None):
    cache = influxdb3_local.cache
    use_global = query_parameters["scope"] == "global"
    count = int(query_parameters["count"])
    value = {"count": 1, "last": 12.5, "host": "server-a"}
    started = time.perf_counter()
    if query_parameters["op"] == "put":
        for i in range(count):
            cache.put(f"k{i % 100}", value, use_global=use_global)
    else:
        for i in range(count):
            cache.get(f"k{i % 100}", use_global=use_global)
    return {"seconds": time.perf_counter() - started}
"""

CASES = [(scope, op) for scope in ("trigger-local", "global") for op in ("put", "get")]


def measure(runtime: PluginRuntime, count: int) -> dict[tuple[str, str], float]:
    """ops/s for every (scope, op) case, from one trigger loaded in `runtime`."""
    handle = runtime.load(PluginSpec("bench", "bench", "cache_bench.py", "request"))
    rates = {}
    for scope, op in CASES:
        params = {"scope": "global" if scope == "global" else "local", "op": op}
        handle.run_request({**params, "op": "put", "count": "100"}, {}, b"", None)  # warm: keys exist
        result = handle.run_request({**params, "count": str(count)}, {}, b"", None)
        if not result.ok:
            raise RuntimeError(result.error)
        rates[(scope, op)] = count / json.loads(result.response.body)["seconds"]
    handle.close()
    return rates


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer operations, finishes in a few seconds")
    options = parser.parse_args(argv)
    count = 500 if options.quick else 5000

    with temporary_plugins({"cache_bench.py": PLUGIN}) as plugin_dir:
        with PluginRuntime(NullDatabase(), plugin_dir, plugin_dir / "run-memory", workers=1,
                           global_cache=GlobalCache()) as runtime:
            in_memory = measure(runtime, count)
        with tempfile.TemporaryDirectory(prefix="plughost-bench-store-") as data_dir:
            store = CacheStore.in_directory(Path(data_dir))
            persistent_cache = PersistentPluginCache()
            persistent_cache.open(store.plugin_cache)
            try:
                with PluginRuntime(NullDatabase(), plugin_dir, plugin_dir / "run-persistent", workers=1,
                                   global_cache=persistent_cache) as runtime:
                    persistent = measure(runtime, count)
            finally:
                persistent_cache.close()
                store.close()

    print(f"plugin cache ops/s from inside a plugin, {count} ops per case, a 3-item dict value; "
          f"ratio = persistent / in-memory (same run)\n")
    print(f"{'case':22} {'in-memory ops/s':>16} {'persistent ops/s':>17} {'ratio':>7}")
    for scope, op in CASES:
        base, written = in_memory[(scope, op)], persistent[(scope, op)]
        print(f"{scope + ' ' + op:22} {base:16,.0f} {written:17,.0f} {written / base:7.3f}")


if __name__ == "__main__":
    main()
