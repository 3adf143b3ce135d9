"""Event-time watermarks over several source partitions (the features and learning dataflows).

The watermark follows the *slowest active* source partition, as in Flink: a partition read
behind the others does not make its events late. A partition silent for ``source_idle_ms``
(wall clock) stops holding the watermark back; an *expected* partition that has not been
heard from yet holds it back (until idle). With ``idle_advance`` a quiet stream's watermark
moves on with the wall clock, so windows close without new events. The watermark never
moves back.

>>> wm = SourceWatermark(out_of_orderness_ms=1_000, sources=[("t", 0), ("t", 1)])
>>> wm.observe(("t", 0), 10_000, wall_now=0.0)
>>> wm.watermark_ms(wall_now=0.0) is None  # partition 1 not heard from yet
True
>>> wm.observe(("t", 1), 7_000, wall_now=0.0)
>>> wm.watermark_ms(wall_now=0.0)
6000
>>> wm.watermark_ms(wall_now=20.0)  # partition 1 silent past source_idle_ms: 0 no longer holds back
9000
"""

from __future__ import annotations

from itertools import repeat
from typing import Any, Hashable, Iterable, Protocol

import numpy as np


class WatermarkTiming(Protocol):
    """The settings a watermark is built from (join, drift and aggregation settings have them)."""

    @property
    def out_of_orderness_ms(self) -> int: ...
    @property
    def source_idle_ms(self) -> int: ...
    @property
    def idle_advance(self) -> bool: ...
    @property
    def sources(self) -> tuple[Hashable, ...]: ...


class SourceWatermark:
    """Per-source maximum event times, and the watermark they allow."""

    def __init__(
        self,
        *,
        out_of_orderness_ms: int,
        source_idle_ms: int = 10_000,
        idle_advance: bool = False,
        sources: Iterable[Hashable] = (),
        wall_now: float = 0.0,
    ) -> None:
        self.out_of_orderness_ms = out_of_orderness_ms
        self.source_idle_ms = source_idle_ms
        self.idle_advance = idle_advance
        self.expected = tuple(sources)
        # Read and written directly by hot loops (ShardAggregator.ingest) for speed.
        self.source_max: dict[Hashable, int] = {}
        self.source_seen: dict[Hashable, float] = {s: wall_now for s in self.expected}
        self.max_event_ms: int | None = None
        self.wall_at_max = 0.0
        self.high: int | None = None

    @classmethod
    def from_timing(cls, timing: WatermarkTiming, wall_now: float = 0.0) -> "SourceWatermark":
        """A watermark with ``timing``'s settings."""
        return cls(
            out_of_orderness_ms=timing.out_of_orderness_ms,
            source_idle_ms=timing.source_idle_ms,
            idle_advance=timing.idle_advance,
            sources=timing.sources,
            wall_now=wall_now,
        )

    def observe(self, source: Hashable, t: int, wall_now: float) -> None:
        """Record an event at time ``t`` from ``source``."""
        self.source_seen[source] = wall_now
        cur = self.source_max.get(source)
        if cur is None or t > cur:
            self.source_max[source] = t
            if self.max_event_ms is None or t > self.max_event_ms:
                self.max_event_ms = t
                self.wall_at_max = wall_now

    def observe_rows(
        self, times: Iterable[int], sources: Iterable[Hashable], wall_now: float, allowed_lateness_ms: int
    ) -> list[int]:
        """Observe events in arrival order; return the positions of the late ones (not observed).

        An event is late when its time is before ``watermark - allowed_lateness_ms``, with the
        watermark as it stands when the event arrives: it moves within the batch as the slowest
        source moves, never below its value at the start of the batch.
        """
        late: list[int] = []
        wm = self.watermark_ms(wall_now)
        high = wm if wm is not None else -(2**62)
        threshold = None if wm is None else wm - allowed_lateness_ms
        slowest = None if wm is None else self.slowest_source_ms(wall_now)
        source_max, source_seen = self.source_max, self.source_seen
        max_t = self.max_event_ms
        for i, (t, source) in enumerate(zip(times, sources)):
            if threshold is not None and t < threshold:
                late.append(i)
                continue
            source_seen[source] = wall_now
            cur = source_max.get(source)
            if cur is None or t > cur:
                source_max[source] = t
                if max_t is None or t > max_t:
                    max_t = self.max_event_ms = t
                    self.wall_at_max = wall_now
                if cur is None or cur == slowest:  # only then can the slowest source move
                    slowest = self.slowest_source_ms(wall_now)
                    if slowest is not None:
                        threshold = max(high, slowest - self.out_of_orderness_ms) - allowed_lateness_ms
        return late

    def observe_source(
        self, source: Hashable, times: np.ndarray, wall_now: float, allowed_lateness_ms: int
    ) -> np.ndarray:
        """:meth:`observe_rows` for events of one source as an int64 array; late positions.

        When no event can be late (every time is at or after the highest threshold the batch
        could raise), the batch is observed at once; otherwise row by row.
        """
        if not len(times):
            return np.empty(0, np.int64)
        wm = self.watermark_ms(wall_now)
        if wm is not None:
            t_max = int(times.max())
            newest = t_max if self.max_event_ms is None else max(self.max_event_ms, t_max)
            if int(times.min()) >= max(wm, newest - self.out_of_orderness_ms) - allowed_lateness_ms:
                self.observe(source, t_max, wall_now)
                return np.empty(0, np.int64)
        return np.asarray(self.observe_rows(times.tolist(), repeat(source), wall_now, allowed_lateness_ms), np.int64)

    def heard(self, source: Hashable, wall_now: float) -> None:
        """``source`` is alive (e.g. it delivered only records without event time)."""
        self.source_seen[source] = wall_now

    def idle_ms(self, wall_now: float) -> int:
        """How far idle advance moves the watermark past the newest event (0 when off)."""
        if not self.idle_advance or self.max_event_ms is None:
            return 0
        return max(0, int((wall_now - self.wall_at_max) * 1000))

    def slowest_source_ms(self, wall_now: float) -> int | None:
        """Newest event time of the active source furthest behind (None: one is unheard of)."""
        horizon = wall_now - self.source_idle_ms / 1000
        slowest: int | None = None
        for source, seen_at in self.source_seen.items():
            if seen_at < horizon:
                continue  # silent for too long: it must not stall everyone else
            t = self.source_max.get(source)
            if t is None:
                return None  # expected, not heard from yet
            if slowest is None or t < slowest:
                slowest = t
        if slowest is None:  # every source idle: the newest time is the best guess
            return max(self.source_max.values()) if self.source_max else None
        return slowest

    def watermark_ms(self, wall_now: float) -> int | None:
        """Event time before which no more on-time events are expected; monotone."""
        slowest = self.slowest_source_ms(wall_now)
        if slowest is None:
            return self.high
        raw = slowest - self.out_of_orderness_ms + self.idle_ms(wall_now)
        if self.high is None or raw > self.high:
            self.high = raw
        return self.high

    def snapshot(self) -> dict[str, Any]:
        """Plain, picklable state."""
        return {"max_event_ms": self.max_event_ms, "source_max": dict(self.source_max), "wm_high": self.high}

    def restore(self, state: dict[str, Any], wall_now: float) -> None:
        """Load a :meth:`snapshot`; every known source counts as just heard from."""
        self.max_event_ms = state["max_event_ms"]
        self.source_max = dict(state["source_max"])
        self.source_seen = {s: wall_now for s in (*self.expected, *self.source_max)}
        self.high = state["wm_high"]
        self.wall_at_max = wall_now
