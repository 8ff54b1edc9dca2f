"""Benchmark runner: `python -m benchmarks` lists them, `python -m benchmarks NAME [args]` runs one.

`python -m benchmarks NAME --quick` is the same as `python -m benchmarks.NAME --quick`.
"""

from __future__ import annotations

import ast
import pkgutil
import runpy
import sys
from pathlib import Path

import benchmarks


def available() -> dict[str, str]:
    """Benchmark module names and the first line of each docstring, read without importing."""
    found = {}
    for module in pkgutil.iter_modules(benchmarks.__path__):
        if module.name.startswith("_"):
            continue
        source = Path(module.module_finder.path, f"{module.name}.py").read_text()
        found[module.name] = (ast.get_docstring(ast.parse(source)) or "").split("\n")[0]
    return dict(sorted(found.items()))


def main() -> None:
    names = available()
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print("usage: python -m benchmarks NAME [--quick]\n\nbenchmarks:")
        for name, summary in names.items():
            print(f"  {name:20} {summary}")
        return
    name, arguments = sys.argv[1], sys.argv[2:]
    if name not in names:
        raise SystemExit(f"unknown benchmark {name!r}; choose from: {', '.join(names)}")
    sys.argv = [f"benchmarks.{name}", *arguments]
    runpy.run_module(f"benchmarks.{name}", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
