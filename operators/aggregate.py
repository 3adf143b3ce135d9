"""The windowed-aggregation step: a Bytewax stateful operator around ShardAggregator."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Hashable

from bytewax.operators import StatefulBatchLogic

from engine.features.aggregates import ViewProgram
from engine.features.shard import RunningValues, ShardAggregator, ShardBatch
from operators.validate import Origin


@dataclass(slots=True)
class ShardOutput:
    """What one call of a shard produced, for the sinks."""

    view: str
    shard: str = ""  # the shard's name (its stateful key without the placement salt), set after the step
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
    # A batch read with at least this many messages still waiting in its partition is catch-up.
    catch_up_backlog: int = 10_000


# How long a shard stays in catch-up spacing after the last batch read behind.
_CATCH_UP_HOLD_S = 0.1
# How often an idle shard wakes to let wall-clock time close windows (idle_advance only).
_IDLE_TICK_S = 1.0


class FlushPacer:
    """Spaces the flushes of a process's shards so that flushing takes at most ``share`` of its time.

    A flush (computing running values, then the sink writing them to Redis) costs about
    ``compute + entities x write cost per entity``. Each shard waits ``cost x shards / share``
    after a flush, never less than ``min_gap_s``, so all shards of the process together spend
    at most ``share`` of it flushing. While the input rate times the write cost per entity
    stays below ``share`` (live traffic), the gap settles at ``min_gap_s`` and features stay
    fresh; above it (catching up on a backlog) the gap grows until every entity of a shard is
    dirty, and each write then coalesces many events. One pacer is shared by the shards and
    the Redis sink of a process (they run on its workers, which share a CPU).
    """

    def __init__(self, min_gap_s: float, share: float = 0.1) -> None:
        self.min_gap_s = min_gap_s
        self.share = share
        self.write_s_per_entity = 0.0
        self._shards = 0

    def register_shard(self) -> None:
        self._shards += 1

    def record_write(self, entities: int, seconds: float) -> None:
        """The sink wrote ``entities`` hashes in ``seconds`` (moving average per entity)."""
        if entities:
            per = seconds / entities
            w = self.write_s_per_entity
            self.write_s_per_entity = per if w == 0.0 else 0.8 * w + 0.2 * per

    def gap(self, compute_s: float, entities: int) -> float:
        """Seconds a shard waits after a flush that took ``compute_s`` and wrote ``entities``."""
        cost = compute_s + entities * self.write_s_per_entity
        return max(self.min_gap_s, cost * max(1, self._shards) / self.share)


# A routed item: the view's name, its events for one shard, and how many messages were still
# waiting in their partition when the batch was read (its backlog).
ShardInput = tuple[str, ShardBatch, int]


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
        pacer: FlushPacer | None = None,
        on_sources: Callable[[dict[Hashable, int]], None] | None = None,
    ) -> None:
        self.clock = clock
        # Told which source partitions each call's events came from, and their backlogs.
        self._on_sources = on_sources
        self._pacer = pacer or FlushPacer(settings.flush_interval_ms / 1000)
        self._pacer.register_shard()
        self.settings = settings
        self._programs = programs
        self._shard: ShardAggregator | None = None
        self._view = ""
        if resume is not None:
            self._init(resume["view"]).restore(resume["state"], clock())
        self._last_flush = 0.0
        self._flush_gap = settings.flush_interval_ms / 1000
        self._catching_up = False
        self._behind_until = 0.0

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

    def _due(self) -> float:
        """When the pending running values are written next.

        On a grid of ``min_gap_s`` shared by every shard of the process (wall-clock
        multiples), so that the shards flush in the same timer round and the sink writes
        them to Redis in one round trip instead of one per shard. While catching up, no
        later than when catching up may end.
        """
        step_us = round(self._pacer.min_gap_s * 1e6)
        if step_us <= 0:
            due = self._last_flush + self._flush_gap
        else:
            # Whole microseconds, counted from the grid step the last flush belonged to: a
            # timer fires a little after its step, and counting from then would skip one.
            last_step = round(self._last_flush * 1e6) // step_us
            due = (last_step + -(-round(self._flush_gap * 1e6) // step_us)) * step_us / 1e6
        return min(due, self._behind_until) if self._catching_up else due

    def _check_caught_up(self, now: float) -> None:
        """Back to live spacing once no batch read behind arrived for a while."""
        if self._catching_up and now >= self._behind_until:
            self._catching_up = False
            self._flush_gap = self._pacer.min_gap_s

    def _emit(self, now: float, late: list[Origin], accepted: int, *, flush: bool = True) -> ShardOutput:
        out = ShardOutput(self._view, late=late, accepted=accepted)
        self.shard.expire(now)  # idle time may have slid tiles out since the last call
        self._check_caught_up(now)
        if flush and self.shard.has_dirty and now >= self._due():
            started = time.perf_counter()
            out.running = self.shard.running(self.shard.take_dirty(), now)
            compute_s = time.perf_counter() - started
            # Live: every flush_interval_ms, for freshness. Catching up: paced by cost, so
            # that each write coalesces many events (freshness means little while behind).
            self._flush_gap = (
                self._pacer.gap(compute_s, len(out.running)) if self._catching_up else self._pacer.min_gap_s
            )
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
        behind = False
        for _, events, backlog in values:
            late.extend(self.shard.ingest(events, now))
            behind = behind or backlog >= self.settings.catch_up_backlog
        if self._on_sources is not None:
            self._on_sources({events.source: backlog for _, events, backlog in values})
        if behind:
            # Catching up while batches read behind keep coming (from any partition of the
            # shard), and for a short hold after: a shard that hears nothing more, or whose
            # partitions have all caught up, returns to live spacing within the hold.
            self._catching_up = True
            self._behind_until = now + _CATCH_UP_HOLD_S
        # Writes go out from the timer (notify_at), aligned across shards; only with no
        # flush interval at all does every batch write.
        flush = self._pacer.min_gap_s <= 0
        return [self._emit(now, late, self.shard.accepted - before, flush=flush)], False

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
            return datetime.fromtimestamp(max(self._due(), now), tz=timezone.utc)
        if self.settings.idle_advance and self.shard.max_event_ms is not None:
            return datetime.now(timezone.utc) + timedelta(seconds=_IDLE_TICK_S)
        return None

    def snapshot(self) -> dict[str, Any]:
        return {"view": self._view, "state": self.shard.snapshot()}
