"""The distinct-value cache (DVC): the distinct value combinations of a table's columns, as InfluxDB 3 keeps them.

A cache holds a hierarchy of its columns, in the order given: every distinct value of the
first column, under each the distinct values of the second that appeared with it, and so on.
Every entry records when it was last seen, as the timestamp of the last row written through
it. Rows lacking a value in any of the columns are not cached. An answer lists the full
combinations, sorted, whose entries at every level were seen within `max_age` of now; pruning
drops those that were not, then the oldest combinations beyond `max_cardinality`.

Columns are tags or string fields only. A flush is reduced to its distinct combinations with
one Arrow group-by; only those touch Python dictionaries.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Sequence

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from cache.last_value import TIME, column_type_name

DEFAULT_MAX_CARDINALITY = 100_000
DEFAULT_MAX_AGE_SECONDS = 24 * 60 * 60

# Hidden columns; the control character keeps them apart from any line-protocol column name.
_ROW = "\x1frow"
_SEEN = "\x1fseen"
_SNAPSHOT_MIN_ENTRIES = 10_000


class DistinctCacheDefinition(msgspec.Struct, frozen=True):
    """One DVC as created. Column ids are positions in the table's schema at creation."""

    database: str
    table: str
    name: str
    columns: tuple[str, ...]
    column_ids: tuple[int, ...]
    max_cardinality: int
    max_age: int  # seconds


class _State(msgspec.Struct, array_like=True):
    """A snapshot: per level (1 column, 2 columns, ...), [*values, last_seen] entries."""

    levels: list[list[list[str | int]]]


class _Seen(msgspec.Struct, array_like=True):
    """A delta: the combinations a flush saw (one list per column) and their times, in write order."""

    columns: list[list[str]]
    times: list[int]


_encoder = msgspec.msgpack.Encoder()
_state_decoder = msgspec.msgpack.Decoder(_State)
_delta_decoder = msgspec.msgpack.Decoder(_Seen)


def define_distinct_cache(
    database: str,
    table: str,
    schema: pa.Schema,
    columns: Sequence[str],
    *,
    name: str | None = None,
    max_cardinality: int | None = None,
    max_age: int | None = None,
) -> DistinctCacheDefinition:
    """Check the parameters against the table's schema and fill in InfluxDB 3's defaults.

    Defaults: max_cardinality 100000, max_age one day, name `<table>_<columns joined by _>_distinct_cache`.
    Raises ValueError naming the bad parameter.
    """
    if not columns:
        raise ValueError("no columns provided when creating distinct cache")
    for column in columns:
        index = schema.get_field_index(column)
        if index < 0:
            raise ValueError(f"invalid column {column!r}: the table has no such column")
        kind = schema.field(index).type
        if not (pa.types.is_dictionary(kind) or kind == pa.string()):
            raise ValueError(
                f"invalid column {column!r}: its type is {column_type_name(kind)}; a distinct value cache "
                "takes only tags and string fields"
            )
    if len(set(columns)) != len(columns):
        raise ValueError("invalid columns: a column is given twice")
    max_cardinality = DEFAULT_MAX_CARDINALITY if max_cardinality is None else max_cardinality
    if isinstance(max_cardinality, bool) or not isinstance(max_cardinality, int) or max_cardinality < 1:
        raise ValueError(f"invalid max_cardinality {max_cardinality!r}: must be a whole number, at least 1")
    max_age = DEFAULT_MAX_AGE_SECONDS if max_age is None else max_age
    if isinstance(max_age, bool) or not isinstance(max_age, int) or max_age < 1:
        raise ValueError(f"invalid max_age {max_age!r}: must be a whole number of seconds, at least 1")
    return DistinctCacheDefinition(
        database=database,
        table=table,
        name=name or f"{table}_{'_'.join(columns)}_distinct_cache",
        columns=tuple(columns),
        column_ids=tuple(schema.get_field_index(c) for c in columns),
        max_cardinality=max_cardinality,
        max_age=max_age,
    )


class DistinctValueCache:
    """The contents of one DVC. Thread-safe: updates and answers may come from any thread.

    Nothing here blocks on I/O; updates hold a lock only while touching the dictionaries.
    """

    def __init__(self, definition: DistinctCacheDefinition, clock: Callable[[], float] = time.time):
        self.definition = definition
        self._clock = clock
        self._columns = list(definition.columns)
        # levels[i]: (values of columns 0..i) -> last seen, ns; the last level holds the combinations
        self._levels: list[dict[tuple[str, ...], int]] = [{} for _ in self._columns]
        self._lock = threading.Lock()
        self._answer: pa.Table | None = None
        self._logged = 0

    # -- writes -----------------------------------------------------------------------------------

    def ingest(self, batch: pa.RecordBatch) -> Callable[[], bytes] | None:
        """Apply one flush's rows.

        Returns None if no row had a value in every column, else the change to persist, as a
        function that encodes the combinations seen with their times, in write order.
        """
        for column in self._columns:
            if batch.column(column).null_count:
                batch = batch.filter(pc.is_valid(batch.column(column)))
        if batch.num_rows == 0:
            return None
        rows = pa.table(
            [pc.cast(batch.column(c), pa.string()) for c in self._columns]
            + [pc.cast(batch.column(TIME), pa.int64()),
               pc.subtract(pc.cumulative_sum(pa.repeat(pa.scalar(1, pa.int64()), batch.num_rows)), 1)],
            names=[*self._columns, TIME, _ROW],
        )
        # one group per combination: its last row's time and position, applied in write order
        seen = rows.group_by(self._columns, use_threads=False).aggregate([(TIME, "last"), (_ROW, "max")])
        seen = seen.take(pc.sort_indices(seen[f"{_ROW}_max"]))
        delta = _Seen([seen[c].to_pylist() for c in self._columns], seen[f"{TIME}_last"].to_pylist())
        self._apply(delta)
        self._logged += len(delta.times)
        return functools.partial(_encoder.encode, delta)

    def prune(self) -> bool:
        """Drop combinations not seen within max_age, then the oldest beyond max_cardinality.

        Returns whether anything was dropped.
        """
        cutoff = self._cutoff()
        limit = self.definition.max_cardinality
        with self._lock:
            leaves = self._levels[-1]
            alive = {c: t for c, t in leaves.items() if self._visible(c, t, cutoff)}
            if len(alive) > limit:
                alive = dict(sorted(alive.items(), key=lambda item: item[1])[len(alive) - limit:])
            if len(alive) == len(leaves):
                return False
            levels = [{} for _ in self._columns]
            levels[-1] = alive
            for depth in range(len(self._columns) - 1):
                level = self._levels[depth]
                levels[depth] = {p: level[p] for p in {c[: depth + 1] for c in alive}}
            self._levels = levels
            self._answer = None
        return True

    def restore(self, snapshot: bytes | None, deltas: Sequence[bytes]) -> None:
        """Load persisted contents (encoded snapshot and deltas, in order), then prune."""
        if snapshot is not None:
            state = _state_decoder.decode(snapshot)
            with self._lock:
                self._levels = [
                    {tuple(entry[:-1]): entry[-1] for entry in level} for level in state.levels
                ]
                self._answer = None
        for delta in deltas:
            self._apply(_delta_decoder.decode(delta))
        self.prune()
        self._logged = 0

    def snapshot_due(self) -> bool:
        """True once the entries persisted as deltas outweigh the contents."""
        return self._logged > max(_SNAPSHOT_MIN_ENTRIES, self.cardinality)

    def take_snapshot(self) -> Callable[[], bytes]:
        """A function that encodes the whole contents as of its call; resets `snapshot_due`.

        Deltas applied between this call and the encoding are in the snapshot and are
        replayed after it too, which changes nothing: replaying an entry twice in the same
        order leaves the same last-seen times.
        """
        self._logged = 0
        return self._encode_state

    # -- reads ------------------------------------------------------------------------------------

    def table(self) -> pa.Table:
        """The combinations seen within max_age, sorted, one string column per cache column."""
        cutoff = self._cutoff()
        with self._lock:
            answer = self._answer
            if answer is None:
                answer = self._answer = self._build_answer()
        visible = pc.greater(answer[f"{_SEEN}0"], cutoff)
        for depth in range(1, len(self._columns)):
            visible = pc.and_(visible, pc.greater(answer[f"{_SEEN}{depth}"], cutoff))
        return answer.filter(visible).select(self._columns)

    @property
    def cardinality(self) -> int:
        """Combinations held, expired ones not yet pruned included."""
        return len(self._levels[-1])

    # -- internals --------------------------------------------------------------------------------

    def _encode_state(self) -> bytes:
        with self._lock:
            levels = [[[*values, seen] for values, seen in level.items()] for level in self._levels]
        return _encoder.encode(_State(levels))

    def _apply(self, seen: _Seen) -> None:
        with self._lock:
            for depth, level in enumerate(self._levels):
                # in write order, so each prefix ends with the time of the last row through it
                level.update(zip(zip(*seen.columns[: depth + 1]), seen.times))
            self._answer = None

    def _build_answer(self) -> pa.Table:
        """Every combination, sorted, with the last-seen time of each of its levels (lock held)."""
        combinations = sorted(self._levels[-1])
        columns = {name: pa.array([c[i] for c in combinations], pa.string()) for i, name in enumerate(self._columns)}
        for depth, level in enumerate(self._levels):
            columns[f"{_SEEN}{depth}"] = pa.array([level[c[: depth + 1]] for c in combinations], pa.int64())
        return pa.table(columns)

    def _visible(self, combination: tuple[str, ...], seen: int, cutoff: int) -> bool:
        if seen <= cutoff:
            return False
        return all(self._levels[d][combination[: d + 1]] > cutoff for d in range(len(combination) - 1))

    def _cutoff(self) -> int:
        return int((self._clock() - self.definition.max_age) * 1_000_000_000)

