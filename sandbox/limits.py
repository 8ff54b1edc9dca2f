"""What a run may use: `RunLimits`, how limits combine with the server's defaults, and how a breach reads.

Three limits, each None for "no limit":

- `max_run_time` (seconds): wall-clock time from the moment the run was sent to its worker.
- `max_cpu_time` (seconds): CPU time of the worker thread that runs the plugin (threads the
  plugin starts itself are not charged).
- `max_memory` (bytes): in process mode, the worker's resident size above what the bare worker
  used before loading the plugin (imports, module state and the run); in interpreter mode, how
  much the shared worker's resident size grew while the run was in flight.

A breach reads `cpu time limit 500ms exceeded (512ms)`: the limit, then the figure that broke it.
"""

from __future__ import annotations

import msgspec


class RunLimits(msgspec.Struct, frozen=True):
    """Limits for the runs of one trigger (or a server's defaults); None = no limit."""

    max_run_time: float | None = None
    max_cpu_time: float | None = None
    max_memory: int | None = None

    def over(self, defaults: RunLimits) -> RunLimits:
        """These limits, with every one left unset taken from `defaults`."""
        return RunLimits(
            max_run_time=self.max_run_time if self.max_run_time is not None else defaults.max_run_time,
            max_cpu_time=self.max_cpu_time if self.max_cpu_time is not None else defaults.max_cpu_time,
            max_memory=self.max_memory if self.max_memory is not None else defaults.max_memory,
        )

    @property
    def any(self) -> bool:
        return self.max_run_time is not None or self.max_cpu_time is not None or self.max_memory is not None


def format_seconds(seconds: float) -> str:
    """`500ms`, `2s`, `2.01s`: milliseconds under a second, else seconds with up to two decimals."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    return f"{seconds:.2f}".rstrip("0").rstrip(".") + "s"


def format_bytes(amount: int) -> str:
    """`256MiB`, `262.4MiB`, `1GiB`, `900B`: binary units, at most one decimal."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if amount >= size:
            return f"{amount / size:.1f}".removesuffix(".0") + unit
    return f"{amount}B"


def run_time_breach(limit: float, figure: float) -> str:
    return f"run time limit {format_seconds(limit)} exceeded ({format_seconds(figure)})"


def cpu_time_breach(limit: float, figure: float) -> str:
    return f"cpu time limit {format_seconds(limit)} exceeded ({format_seconds(figure)})"


def memory_breach(limit: int, figure: int) -> str:
    return f"memory limit {format_bytes(limit)} exceeded ({format_bytes(figure)})"


def memory_refusal(limit: int, in_use: int) -> str:
    """A process-mode allocation refused by the worker's address-space cap (MemoryError)."""
    return (f"memory limit {format_bytes(limit)} exceeded (an allocation that would have passed it was "
            f"refused with MemoryError at {format_bytes(in_use)})")
