"""Even out the input's checking over processes when its partitions split unevenly.

Bytewax gives each source partition to one worker, so 3 partitions over 2 processes leave
one process reading twice as much as the other. Reading a batch (librdkafka, the source)
stays where the partition is; checking it (validation, routing) can run anywhere. The
:class:`Spreader` of a process that reads more than its fair share sends just enough of its
batches to the other processes that both spend the same time on input, and keeps the rest:
sending a batch costs a pickle, and ``op.redistribute`` would send half of every process's
batches, balanced or not.

How much to send follows from what this process sees and measures of its own work:

* the input left to read, partition by partition: this process sees its own partitions at
  its source, and every partition at its shards (each shard gets events of every
  partition, with the backlog its batch was read with). A partition weighs its backlog
  plus one message: catching up, the process whose partitions have more left sends more of
  its checking, and one that runs ahead keeps more, until both finish together; keeping
  up (no backlogs), partitions weigh the same. A partition has no input once seen caught up
  and then quiet for a second; one not seen yet weighs as much as the average one seen;
* ``mine`` is the weight of this process's partitions, ``fair`` the total weight divided
  by the number of workers;
* an event costs its worker thread ``read`` seconds to read and ``check`` to check. The
  worker thread is what to balance: it holds the GIL, while librdkafka's own threads fetch
  and decode beside it (and run far ahead of it when catching up);
* it sends ``(mine - fair) / mine * (read + check) / check`` of its batches (at most all).

With 2 processes, that equalises ``read + check`` across them: the reader of 2 of 3 equal
partitions sends 40% of its batches when reading costs two thirds of checking.

>>> meter = ReadMeter(workers=2, partitions=["p0", "p1", "p2"])
>>> meter.saw_read({"p0": 1000, "p1": 1000}, now=0.0)  # both read with a backlog
>>> meter.record_read(0.2, 1000); meter.record_check(0.3, 1000)
>>> round(meter.share(now=0.5), 3)  # p2 unseen weighs 1001 too: (2 - 3 / 2) / 2 * (0.2 + 0.3) / 0.3
0.417
>>> meter.saw_folded({"p2": 3001}, now=0.6)  # p2 has more left: this process keeps everything
>>> round(meter.share(now=0.7), 3)
0.0
>>> meter.saw_folded({"p2": 0}, now=1.0)  # p2's reader caught up...
>>> round(meter.share(now=2.5), 3)  # ...and nothing came since: (2 - 2 / 2) / 2 * 5 / 3
0.833
"""

from __future__ import annotations

import time
from typing import Any, Callable, Generic, Hashable, Iterable, Mapping, Sequence, TypeVar

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from engine.runtime.placement import keys_on

X = TypeVar("X")
S = TypeVar("S")
Y = TypeVar("Y")

# Older measurements fade: each new one weighs this much (the share follows cost changes).
_DECAY = 0.98
# A caught-up partition whose events were last seen this long ago has no input now.
_ACTIVE_S = 1.0


class ReadMeter:
    """What one process reads and what its input costs it (shared by its source and steps)."""

    def __init__(self, workers: int, partitions: Iterable[Hashable] = ()) -> None:
        """``partitions``: every partition of the input (those not seen yet count as having data)."""
        self.workers = workers
        # Decayed sums of seconds and events, per kind of work.
        self.read_s = self.read_n = self.check_s = self.check_n = 0.0
        self._partitions = set(partitions)
        # partition -> (when its events were last seen here, the backlog they were read with)
        self._seen: dict[Hashable, tuple[float, int]] = {}
        self._mine: set[Hashable] = set()

    def saw_read(self, backlogs: Mapping[Hashable, int], now: float | None = None) -> None:
        """This process's source just read ``{partition: backlog after the batch}``."""
        self._mine.update(backlogs)
        self.saw_folded(backlogs, now)

    def saw_folded(self, backlogs: Mapping[Hashable, int], now: float | None = None) -> None:
        """Events of ``{partition: backlog}`` (read by any process) reached this process."""
        now = time.monotonic() if now is None else now
        for p, backlog in backlogs.items():
            self._seen[p] = (now, backlog)
        self._partitions.update(backlogs)

    def _weights(self, now: float) -> dict[Hashable, float]:
        """The input left in each partition: its backlog + 1, 0 once caught up and quiet."""
        since = now - _ACTIVE_S
        seen = {p: (0.0 if t < since and backlog <= 0 else backlog + 1.0) for p, (t, backlog) in self._seen.items()}
        unseen = sum(seen.values()) / len(seen) if seen else 1.0
        return {p: seen.get(p, unseen) for p in self._partitions}

    def record_read(self, seconds: float, events: int) -> None:
        self.read_s = self.read_s * _DECAY + seconds
        self.read_n = self.read_n * _DECAY + events

    def record_check(self, seconds: float, events: int) -> None:
        self.check_s = self.check_s * _DECAY + seconds
        self.check_n = self.check_n * _DECAY + events

    def share(self, now: float) -> float:
        """The fraction of this process's batches to check elsewhere."""
        if self.check_n <= 0.0 or self.read_n <= 0.0:
            return 0.0
        weights = self._weights(now)
        mine = sum(weights[p] for p in self._mine)
        fair = sum(weights.values()) / self.workers
        if mine <= fair:
            return 0.0
        read, check = self.read_s / self.read_n, self.check_s / self.check_n
        return min(1.0, (mine - fair) / mine * (read + check) / check)

    def timed_check(self, step: Callable[[X], Y], *, counts_events: bool = True) -> Callable[[X], Y]:
        """``step`` over a batch, its thread CPU time counted as checking.

        Checking takes several steps; only one of them (``counts_events``) counts the
        batch's events, so that the cost per event sums the steps.
        """

        def timed(batch: X) -> Y:
            started = time.thread_time()
            try:
                return step(batch)
            finally:
                self.record_check(time.thread_time() - started, len(batch) if counts_events else 0)  # type: ignore[arg-type]

        return timed


class _MeteredPartition(StatefulSourcePartition[X, S], Generic[X, S]):
    def __init__(self, inner: StatefulSourcePartition[X, S], meter: ReadMeter) -> None:
        self.inner = inner
        self.meter = meter

    def next_batch(self) -> list[X]:
        started = time.thread_time()
        batches = self.inner.next_batch()
        events = sum(map(len, batches))  # type: ignore[arg-type]
        if events:  # an empty poll is idle time, not the cost of reading
            self.meter.record_read(time.thread_time() - started, events)
            self.meter.saw_read({b.source_id: b.backlog for b in batches})  # type: ignore[attr-defined]
        return batches

    def next_awake(self) -> Any:
        return self.inner.next_awake()

    def snapshot(self) -> S:
        return self.inner.snapshot()

    def close(self) -> None:
        self.inner.close()


class MeteredSource(FixedPartitionedSource[X, S], Generic[X, S]):
    """A partitioned source whose partitions report to this process's :class:`ReadMeter`."""

    def __init__(self, source: FixedPartitionedSource[X, S], meter: ReadMeter) -> None:
        self.source = source
        self.meter = meter

    def list_parts(self) -> list[str]:
        return self.source.list_parts()

    def build_part(self, step_id: str, for_part: str, resume_state: S | None) -> _MeteredPartition[X, S]:
        return _MeteredPartition(self.source.build_part(step_id, for_part, resume_state), self.meter)

    def source_ids(self) -> list[Any]:
        """The wrapped source's partition ids (see KafkaBatchSource.source_ids)."""
        return self.source.source_ids()  # type: ignore[attr-defined]


class Spreader:
    """Keys each batch for the worker that checks it: this one, or another for its share.

    ``keys[w]`` is a state key that Bytewax routes to worker ``w``; a keyed pass-through step
    after :meth:`key` moves the batch there.
    """

    def __init__(self, meter: ReadMeter, here: int, keys: Sequence[str]) -> None:
        self.meter = meter
        self.here = here
        self.keys = list(keys)
        self._others = [w for w in range(len(keys)) if w != here]
        self._credit = 0.0
        self._next = 0

    @classmethod
    def for_process(cls, meter: ReadMeter, here: int) -> "Spreader":
        """The spreader of worker ``here``, its keys placed by :func:`engine.runtime.placement.keys_on`."""
        names = {f"check{w}": w for w in range(meter.workers)}
        placed = keys_on(names, meter.workers)
        return cls(meter, here, [placed[f"check{w}"] for w in range(meter.workers)])

    def key(self, batch: X) -> tuple[str, X]:
        """``(key, batch)``: sends ``share()`` of the batches, spaced evenly, to the others."""
        self._credit += self.meter.share(time.monotonic())
        if self._credit >= 1.0 and self._others:
            self._credit -= 1.0
            target = self._others[self._next % len(self._others)]
            self._next += 1
            return self.keys[target], batch
        return self.keys[self.here], batch
