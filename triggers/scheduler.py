"""One thread that fires every schedule trigger: a heap of next fire times, woken for the earliest.

Missed ticks are skipped, never run late in a burst, and never skipped silently:

- If the scheduler wakes after several ticks of one trigger have passed (the process was
  suspended, the clock jumped forward), the earlier ones are skipped and reported, and only the
  latest due tick fires.
- If a tick comes while the trigger cannot start it at once (a synchronous trigger whose previous
  run is still executing, an asynchronous one with all its runs in use), that tick is skipped
  and reported; the trigger fires again on its next tick.

`call_time` handed to a trigger is always the tick's scheduled instant, never the wake-up time.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from typing import Callable, Hashable, Protocol

from triggers.schedule import format_instant

log = logging.getLogger("plughost.engine")

# Counting the ticks a long pause skipped costs one calendar step per tick on cron schedules;
# beyond this many the report says "at least".
_MAX_COUNTED = 1000


class Schedule(Protocol):
    def next_after(self, instant_ns: int) -> int | None: ...

    def last_at_or_before(self, instant_ns: int) -> int | None: ...


class Missed(Protocol):
    def __call__(self, key: Hashable, count: int, message: str) -> None:
        """`count` ticks of `key` were skipped; `message` says which and why."""


class _Entry:
    __slots__ = ("key", "schedule", "fire", "missed", "ended", "cancelled")

    def __init__(self, key, schedule, fire, missed, ended):
        self.key = key
        self.schedule = schedule
        self.fire = fire
        self.missed = missed
        self.ended = ended
        self.cancelled = False


class Scheduler:
    """Calls `fire(call_time_ns) -> bool` for each registered schedule at its ticks, on one thread.

    `fire` must not block; it returns False when the trigger could not start the tick now.
    """

    def __init__(self, clock: Callable[[], int] = time.time_ns):
        self._clock = clock
        self._heap: list[tuple[int, int, _Entry]] = []
        self._entries: dict[Hashable, _Entry] = {}
        self._order = itertools.count()
        self._changed = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="trigger-scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop firing; blocks until the scheduler thread has exited (it never runs plugins)."""
        with self._changed:
            self._closed = True
            self._changed.notify()
        if self._thread.is_alive():
            self._thread.join()

    def add(
        self,
        key: Hashable,
        schedule: Schedule,
        fire: Callable[[int], bool],
        missed: Missed,
        ended: Callable[[Hashable], None],
    ) -> int | None:
        """Start firing `schedule` from its first tick after now and return that tick, or None
        (adding nothing) when the schedule has no tick left. Replaces an entry with the same key.

        `missed(key, count, message)` reports skipped ticks; `ended(key)` is called after a
        finite cron schedule (one with a year field) has fired its last tick.
        """
        first = schedule.next_after(self._clock())
        with self._changed:
            self._remove_locked(key)
            if first is None:
                return None
            entry = _Entry(key, schedule, fire, missed, ended)
            self._entries[key] = entry
            heapq.heappush(self._heap, (first, next(self._order), entry))
            self._changed.notify()
        return first

    def remove(self, key: Hashable) -> None:
        """Stop firing `key`; a tick already handed to `fire` is not recalled."""
        with self._changed:
            self._remove_locked(key)

    def _remove_locked(self, key: Hashable) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            entry.cancelled = True

    def next_fire(self, key: Hashable) -> int | None:
        """The next scheduled tick of `key`, or None if it is not scheduled."""
        with self._changed:
            entry = self._entries.get(key)
            return next((when for when, _, e in self._heap if e is entry), None)

    def _loop(self) -> None:
        while True:
            with self._changed:
                while True:
                    if self._closed:
                        return
                    while self._heap and self._heap[0][2].cancelled:
                        heapq.heappop(self._heap)
                    now = self._clock()
                    if self._heap and self._heap[0][0] <= now:
                        tick, _, entry = heapq.heappop(self._heap)
                        break
                    self._changed.wait(None if not self._heap else (self._heap[0][0] - now) / 1e9)
            try:
                self._fire_due(entry, tick, now)
            except Exception:
                log.exception("processing engine: scheduling %s failed; it is no longer scheduled", entry.key)

    def _fire_due(self, entry: _Entry, tick: int, now: int) -> None:
        schedule = entry.schedule
        following = schedule.next_after(tick)
        if following is not None and following <= now:
            latest = schedule.last_at_or_before(now)
            count, exact = self._count(schedule, tick, latest)
            entry.missed(
                entry.key,
                count,
                f"skipped {'' if exact else 'at least '}{count} scheduled run(s) from "
                f"{format_instant(tick)}: the scheduler woke {(now - tick) / 1e6:.0f}ms late; "
                f"running the one at {format_instant(latest)}",
            )
            tick, following = latest, schedule.next_after(latest)
        try:
            accepted = entry.fire(tick)
        except Exception:
            log.exception("processing engine: firing %s at %s failed", entry.key, format_instant(tick))
            accepted = True  # the failure is already reported; it is not a missed tick
        if not accepted:
            entry.missed(
                entry.key,
                1,
                f"skipped the scheduled run at {format_instant(tick)}: the previous run is still executing",
            )
        with self._changed:
            if entry.cancelled:
                return
            if following is not None:
                heapq.heappush(self._heap, (following, next(self._order), entry))
                return
            self._entries.pop(entry.key, None)
        entry.ended(entry.key)

    @staticmethod
    def _count(schedule: Schedule, first: int, latest: int) -> tuple[int, bool]:
        """Ticks from `first` up to (not including) `latest`, and whether the count is exact."""
        interval = getattr(schedule, "interval_ns", None)
        if interval is not None:
            return (latest - first) // interval, True
        count, tick = 0, first
        while tick is not None and tick < latest and count < _MAX_COUNTED:
            count += 1
            tick = schedule.next_after(tick)
        return count, count < _MAX_COUNTED
