"""Per-trigger dispatch: a bounded queue and the worker threads that run a trigger's events.

A synchronous trigger has one worker, so its events run one at a time in arrival order. An
asynchronous trigger has up to `concurrency` workers, so runs overlap and may finish out of
order (as InfluxDB 3's `--run-asynchronous`). Submitting never blocks: when the queue is full the
event is refused and counted, so a slow or stuck plugin can only lose its own events; it never
holds up the WAL flush, ingest, or any other trigger (InfluxDB 3 issue #26003).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Callable, Generic, TypeVar

Event = TypeVar("Event")

log = logging.getLogger("plughost.engine")

# InfluxDB 3's PLUGIN_EVENT_BUFFER_SIZE: events waiting behind the running one.
DEFAULT_CAPACITY = 60
# Overlapping runs an asynchronous trigger may have at once.
DEFAULT_ASYNC_CONCURRENCY = 8


class Dispatcher(Generic[Event]):
    """Runs `run(event)` for one trigger on its own worker threads.

    Workers start on demand (never more than `concurrency`) and live until `stop()`.
    `run` must not raise; anything it lets through is logged and the worker carries on.
    """

    def __init__(
        self,
        name: str,
        run: Callable[[Event], None],
        *,
        concurrency: int = 1,
        capacity: int = DEFAULT_CAPACITY,
        discard: Callable[[Event], None] = lambda event: None,
    ):
        """`discard(event)` is called for every queued event that `stop()` throws away."""
        if concurrency < 1 or capacity < 0:
            raise ValueError("concurrency must be >= 1 and capacity >= 0")
        self.name = name
        self._run = run
        self._discard = discard
        self._concurrency = concurrency
        self._capacity = capacity
        self._queue: collections.deque[Event] = collections.deque()
        self._changed = threading.Condition()
        self._workers: list[threading.Thread] = []
        self._idle = 0
        self._running = 0
        self._stopped = False
        self.refused = 0

    @property
    def pending(self) -> int:
        """Events waiting for a worker."""
        return len(self._queue)

    @property
    def running(self) -> int:
        """Events being run right now."""
        return self._running

    def submit(self, event: Event) -> bool:
        """Queue `event`; never blocks. Returns False (and counts it) when the queue is full or
        the dispatcher is stopped; the caller still owns a refused event."""
        with self._changed:
            if self._stopped or len(self._queue) >= self._capacity + self._free_workers():
                self.refused += 1
                return False
            self._enqueue(event)
            return True

    def submit_now(self, event: Event) -> bool:
        """Accept `event` only if a worker can start it at once (nothing would wait in the queue);
        never blocks. Returns False, and counts it, otherwise."""
        with self._changed:
            if self._stopped or len(self._queue) >= self._free_workers():
                self.refused += 1
                return False
            self._enqueue(event)
            return True

    def _free_workers(self) -> int:
        return self._concurrency - self._running

    def _enqueue(self, event: Event) -> None:
        self._queue.append(event)
        if self._idle >= len(self._queue):
            self._changed.notify()
        elif len(self._workers) < self._concurrency:
            worker = threading.Thread(
                target=self._work, name=f"trigger:{self.name}:{len(self._workers)}", daemon=True
            )
            self._workers.append(worker)
            worker.start()

    def _work(self) -> None:
        while True:
            with self._changed:
                while not self._queue and not self._stopped:
                    self._idle += 1
                    self._changed.wait()
                    self._idle -= 1
                if self._stopped:
                    return
                event = self._queue.popleft()
                self._running += 1
            try:
                self._run(event)
            except Exception:
                log.exception("processing engine: internal error running an event of trigger %s", self.name)
            finally:
                with self._changed:
                    self._running -= 1
                    self._changed.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is queued or running, or `timeout` seconds pass. True when idle."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while self._queue or self._running:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return True

    def stop(self, timeout: float | None = None) -> bool:
        """Refuse new events, discard queued ones, and wait up to `timeout` seconds for runs in
        progress to finish. A worker may stop its own dispatcher: it is not waited for.

        Returns True when every worker (other than the caller) has exited.
        """
        with self._changed:
            self._stopped = True
            queued = list(self._queue)
            self._queue.clear()
            self._changed.notify_all()
            workers = list(self._workers)
        for event in queued:
            self._discard(event)
        deadline = None if timeout is None else time.monotonic() + timeout
        current = threading.current_thread()
        for worker in workers:
            if worker is current:
                continue
            worker.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(w.is_alive() for w in workers if w is not current)
