"""Per-trigger dispatch (order, bounded queues, overlap, stop) and the one scheduler thread (ticks,
skipped ticks, ends)."""

import threading
import time

import pytest

from triggers.dispatch import Dispatcher
from triggers.schedule import Every
from triggers.scheduler import Scheduler

MS = 10**6


def wait_for(predicate, timeout=5.0, message="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {message}")
        time.sleep(0.002)


class Recorder:
    """A run function that records events and can be held at a gate."""

    def __init__(self, gate: threading.Event | None = None, delay: float = 0.0):
        self.seen: list = []
        self.active = 0
        self.most_active = 0
        self.gate = gate
        self.delay = delay
        self.lock = threading.Lock()

    def __call__(self, event):
        with self.lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        if self.gate is not None:
            assert self.gate.wait(10), "gate never opened"
        time.sleep(self.delay)
        with self.lock:
            self.seen.append(event)
            self.active -= 1


def test_sync_runs_one_at_a_time_in_order():
    record = Recorder(delay=0.001)
    dispatcher = Dispatcher("t", record)
    assert all(dispatcher.submit(i) for i in range(30))
    assert dispatcher.wait_idle(10)
    assert record.seen == list(range(30))
    assert record.most_active == 1
    dispatcher.stop()


def test_a_full_queue_refuses_and_counts_without_blocking():
    gate = threading.Event()
    record = Recorder(gate)
    dispatcher = Dispatcher("t", record, capacity=3)
    assert dispatcher.submit("running")
    wait_for(lambda: dispatcher.running == 1, message="the first event to start")
    assert [dispatcher.submit(i) for i in range(5)] == [True, True, True, False, False]
    started = time.perf_counter()
    assert dispatcher.submit("late") is False
    assert time.perf_counter() - started < 0.01
    assert dispatcher.refused == 3
    gate.set()
    assert dispatcher.wait_idle(10)
    assert record.seen == ["running", 0, 1, 2]
    dispatcher.stop()


def test_async_runs_overlap_up_to_the_bound():
    barrier = threading.Barrier(4, timeout=10)
    seen = []

    def run(event):
        barrier.wait()  # passes only if four runs are in progress at once
        seen.append(event)

    dispatcher = Dispatcher("t", run, concurrency=4)
    for i in range(8):
        assert dispatcher.submit(i)
    assert dispatcher.wait_idle(10)
    assert sorted(seen) == list(range(8))
    dispatcher.stop()


def test_async_never_exceeds_its_concurrency():
    record = Recorder(delay=0.005)
    dispatcher = Dispatcher("t", record, concurrency=3, capacity=100)
    for i in range(40):
        assert dispatcher.submit(i)
    assert dispatcher.wait_idle(10)
    assert record.most_active == 3 and sorted(record.seen) == list(range(40))
    dispatcher.stop()


def test_submit_now_accepts_only_what_can_start_at_once():
    gate = threading.Event()
    dispatcher = Dispatcher("t", Recorder(gate))
    assert dispatcher.submit_now("first")
    wait_for(lambda: dispatcher.running == 1)
    assert dispatcher.submit_now("second") is False
    assert dispatcher.pending == 0 and dispatcher.refused == 1
    gate.set()
    assert dispatcher.wait_idle(10)
    assert dispatcher.submit_now("third")
    dispatcher.stop()


def test_stop_discards_queued_events_and_refuses_new_ones():
    gate = threading.Event()
    discarded = []
    dispatcher = Dispatcher("t", Recorder(gate), discard=discarded.append)
    dispatcher.submit("running")
    wait_for(lambda: dispatcher.running == 1)
    dispatcher.submit("a")
    dispatcher.submit("b")
    threading.Timer(0.05, gate.set).start()
    assert dispatcher.stop(timeout=10)
    assert discarded == ["a", "b"]
    assert dispatcher.submit("c") is False


def test_a_worker_can_stop_its_own_dispatcher():
    holder = {}
    done = threading.Event()

    def run(event):
        holder["stopped"] = holder["dispatcher"].stop(timeout=5)
        done.set()

    holder["dispatcher"] = Dispatcher("t", run)
    holder["dispatcher"].submit("x")
    assert done.wait(5)
    assert holder["stopped"] is True


def test_an_exception_in_run_does_not_kill_the_worker():
    seen = []

    def run(event):
        if event == "boom":
            raise RuntimeError("boom")
        seen.append(event)

    dispatcher = Dispatcher("t", run)
    dispatcher.submit("boom")
    dispatcher.submit("after")
    assert dispatcher.wait_idle(5)
    assert seen == ["after"]
    dispatcher.stop()


# --- scheduler ----------------------------------------------------------------------------------

class Clock:
    """Real time plus an offset a test can move forward, as a suspended process would see."""

    def __init__(self):
        self.offset = 0

    def __call__(self):
        return time.time_ns() + self.offset


def test_ticks_fire_on_the_aligned_instant_with_call_time_the_tick():
    fired = []
    scheduler = Scheduler()
    scheduler.start()
    try:
        scheduler.add("t", Every(20 * MS), lambda tick: fired.append((tick, time.time_ns())) or True,
                      missed=lambda *a: pytest.fail(f"unexpected miss {a}"), ended=lambda key: None)
        wait_for(lambda: len(fired) >= 5, message="five ticks")
    finally:
        scheduler.close()
    ticks = [tick for tick, _ in fired]
    assert all(tick % (20 * MS) == 0 for tick in ticks)
    assert all(b - a == 20 * MS for a, b in zip(ticks, ticks[1:]))
    assert all(woke >= tick for tick, woke in fired)


def test_a_busy_trigger_skips_the_tick_and_says_so():
    misses = []
    answers = iter([True, False, False, True, True, True])
    fired = []

    def fire(tick):
        fired.append(tick)
        return next(answers, True)

    scheduler = Scheduler()
    scheduler.start()
    try:
        scheduler.add("t", Every(20 * MS), fire, missed=lambda *a: misses.append(a), ended=lambda key: None)
        wait_for(lambda: len(fired) >= 5, message="five ticks")
    finally:
        scheduler.close()
    assert [m[:2] for m in misses] == [("t", 1), ("t", 1)]
    assert "previous run is still executing" in misses[0][2]
    assert all(b - a == 20 * MS for a, b in zip(fired, fired[1:5]))  # no burst after the misses


def test_a_late_wake_skips_to_the_latest_due_tick_without_a_burst():
    clock = Clock()
    fired, misses = [], []
    scheduler = Scheduler(clock)
    scheduler.start()
    try:
        scheduler.add("t", Every(50 * MS), lambda tick: fired.append(tick) or True,
                      missed=lambda *a: misses.append(a), ended=lambda key: None)
        wait_for(lambda: len(fired) >= 1, message="a first tick")
        clock.offset += 1_000 * MS  # the process "was suspended" for a second
        wait_for(lambda: misses, message="the skipped ticks to be reported")
        wait_for(lambda: len(fired) >= 3, message="ticks after the jump")
    finally:
        scheduler.close()
    key, count, message = misses[0]
    assert key == "t" and 18 <= count <= 21, misses
    assert "skipped" in message and "late" in message
    after = fired[1:]
    assert all(tick % (50 * MS) == 0 for tick in after)
    assert after[1] - after[0] == 50 * MS  # one run for the whole pause, then the normal cadence


class ThreeTicks:
    """A finite schedule: three ticks 10 ms apart, starting shortly after it is created."""

    def __init__(self):
        first = (time.time_ns() // (10 * MS) + 3) * 10 * MS
        self.ticks = [first, first + 10 * MS, first + 20 * MS]

    def next_after(self, instant):
        return next((t for t in self.ticks if t > instant), None)

    def last_at_or_before(self, instant):
        return max((t for t in self.ticks if t <= instant), default=None)


def test_a_finished_schedule_ends_and_is_reported():
    fired, ended = [], threading.Event()
    schedule = ThreeTicks()
    scheduler = Scheduler()
    scheduler.start()
    try:
        scheduler.add("t", schedule, lambda tick: fired.append(tick) or True, missed=lambda *a: None,
                      ended=lambda key: ended.set())
        assert ended.wait(5)
    finally:
        scheduler.close()
    assert fired == schedule.ticks
    assert scheduler.next_fire("t") is None


def test_removed_schedules_stop_firing():
    fired = []
    scheduler = Scheduler()
    scheduler.start()
    try:
        scheduler.add("t", Every(10 * MS), lambda tick: fired.append(tick) or True, missed=lambda *a: None,
                      ended=lambda key: None)
        wait_for(lambda: len(fired) >= 2)
        scheduler.remove("t")
        count = len(fired)
        time.sleep(0.05)
        assert len(fired) <= count + 1  # at most the tick already being handed over
        assert scheduler.next_fire("t") is None
    finally:
        scheduler.close()


def test_a_schedule_with_no_tick_left_is_not_added():
    class Over:
        def next_after(self, instant):
            return None

        def last_at_or_before(self, instant):
            return None

    scheduler = Scheduler()
    assert scheduler.add("t", Over(), lambda tick: True, missed=lambda *a: None, ended=lambda key: None) is None
    assert scheduler.next_fire("t") is None
