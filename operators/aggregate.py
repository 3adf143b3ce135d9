"""The windowed-aggregation step: a Bytewax stateful operator around ShardAggregator."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Hashable

from bytewax.operators import StatefulBatchLogic

from engine.features.aggregates import ViewProgram
from engine.features.shard import RunningValues, Row, ShardAggregator
from operators.validate import Origin


@dataclass(slots=True)
class ShardOutput:
    """What one call of a shard produced, for the sinks."""

    view: str
    shard: str = ""  # the stateful key, set after the step
    running: list[RunningValues] = field(default_factory=list)
    closed: list[dict[str, Any]] = field(default_factory=list)
    late: list[Origin] = field(default_factory=list)
    accepted: int = 0
    watermark_ms: int | None = None


@dataclass(frozen=True, slots=True)
class AggregateSettings:
    """Timing of one shard (from ``pipeline`` config)."""

    out_of_orderness_ms: int
    allowed_lateness_ms: int
    idle_advance: bool
    flush_interval_ms: int
    source_idle_ms: int = 10_000
    sources: tuple[Hashable, ...] = ()  # every input partition, as (topic, partition)


# How often an idle shard wakes to let wall-clock time close windows (idle_advance only).
_IDLE_TICK_S = 1.0
# Under load, wait at least this many times the last flush's compute time before the next
# one: computing + writing running values (writing costs ~2x computing) then takes under
# ~10% of the time, and the longer gap coalesces more events per entity write. At low
# rates flush_interval_ms rules, so freshness is unaffected.
_FLUSH_BACKOFF = 40.0


# A routed item: the view's name and a batch of its rows for one shard.
ShardInput = tuple[str, list[Row]]


class ShardLogic(StatefulBatchLogic[ShardInput, ShardOutput, dict[str, Any]]):
    """Folds batches into a shard; writes of running values are coalesced per flush interval.

    Bytewax's builder does not see the key, so the view is learnt from the first item
    (or from the resume state) and the aggregator is created then.
    """

    def __init__(
        self,
        programs: dict[str, ViewProgram],
        settings: AggregateSettings,
        resume: dict[str, Any] | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.clock = clock
        self.settings = settings
        self._programs = programs
        self._shard: ShardAggregator | None = None
        self._view = ""
        if resume is not None:
            self._init(resume["view"]).restore(resume["state"], clock())
        self._last_flush = 0.0
        self._flush_gap = settings.flush_interval_ms / 1000

    def _init(self, view: str) -> ShardAggregator:
        self._view = view
        self._shard = ShardAggregator(
            self._programs[view],
            out_of_orderness_ms=self.settings.out_of_orderness_ms,
            allowed_lateness_ms=self.settings.allowed_lateness_ms,
            idle_advance=self.settings.idle_advance,
            source_idle_ms=self.settings.source_idle_ms,
            sources=self.settings.sources,
            wall_now=self.clock(),
        )
        return self._shard

    @property
    def shard(self) -> ShardAggregator:
        assert self._shard is not None, "shard used before its first batch"
        return self._shard

    def _emit(self, now: float, late: list[Origin], accepted: int) -> ShardOutput:
        out = ShardOutput(self._view, late=late, accepted=accepted)
        self.shard.expire(now)  # idle time may have slid tiles out since the last call
        if self.shard.has_dirty and now - self._last_flush >= self._flush_gap:
            started = time.perf_counter()
            out.running = self.shard.running(self.shard.take_dirty(), now)
            cost = time.perf_counter() - started
            self._flush_gap = max(self.settings.flush_interval_ms / 1000, _FLUSH_BACKOFF * cost)
            self._last_flush = now
        out.closed = self.shard.close_windows(now)
        out.watermark_ms = self.shard.watermark_ms(now)
        return out

    def on_batch(self, values: list[ShardInput]) -> tuple[list[ShardOutput], bool]:
        now = self.clock()
        if self._shard is None:
            self._init(values[0][0])
        before = self.shard.accepted
        late: list[Origin] = []
        for _, rows in values:
            late.extend(self.shard.ingest(rows, now))  # type: ignore[arg-type]
        return [self._emit(now, late, self.shard.accepted - before)], False

    def on_notify(self) -> tuple[list[ShardOutput], bool]:
        if self._shard is None:
            return [], False
        now = self.clock()
        out = self._emit(now, [], 0)
        if not (out.running or out.closed):
            return [], False
        return [out], False

    def on_eof(self) -> tuple[list[ShardOutput], bool]:
        # Flush what is pending; windows stay open (a backfill equals the live stream).
        if self._shard is None:
            return [], False
        now = self.clock()
        self._last_flush = 0.0
        out = self._emit(now, [], 0)
        return ([out] if (out.running or out.closed) else []), False

    def notify_at(self) -> datetime | None:
        if self._shard is None:
            return None
        now = self.clock()
        if self.shard.has_dirty:
            due = self._last_flush + self._flush_gap
            return datetime.fromtimestamp(max(due, now), tz=timezone.utc)
        if self.settings.idle_advance and self.shard.max_event_ms is not None:
            return datetime.now(timezone.utc) + timedelta(seconds=_IDLE_TICK_S)
        return None

    def snapshot(self) -> dict[str, Any]:
        return {"view": self._view, "state": self.shard.snapshot()}
