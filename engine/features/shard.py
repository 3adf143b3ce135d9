"""Event-time windowed aggregation for many entities at once (one shard of a view).

Bytewax's window operators make one Python call per key per batch, so their cost
grows with the number of entities (FIELD-NOTES: 0.15x of raw consume at 10k keys).
A :class:`ShardAggregator` instead owns a whole shard of entities: one call folds a
batch of events for thousands of entities into time *tiles* (one tile per entity
per slide interval), and windows are answered by merging tiles.

Semantics (documented in docs/features.md):

* watermark = the smallest, over the source partitions feeding the shard, of the
  newest event time seen from that partition, minus ``out_of_orderness_ms`` (+
  wall-clock time since the newest event when ``idle_advance`` is on). A partition
  read behind the others therefore does not make its events late. A partition that
  has been silent (or, if expected, unheard of) for ``source_idle_ms`` of wall time
  stops holding the watermark back. It never moves back, so nothing enters a
  window that was already closed;
* an event is *late* when its time is before ``watermark - allowed_lateness_ms``;
  late events are returned to the caller (dead-letter queue), never aggregated;
* a window ``[end - size, end)`` is *closed* (final, logged offline) once
  ``watermark - allowed_lateness_ms >= end``;
* the *running* value of a window is the window of that size that contains
  ``asof`` = the shard's max event time (+ idle time): it covers the tiles up to
  and including asof's tile. Running values are refreshed whenever an entity gets
  an event and whenever a tile slides out of its window.

>>> from engine.features.spec import FeatureView
>>> view = FeatureView.from_dict({"name": "u", "entity": "user_id",
...     "windows": {"10s": "10s"}, "features": [{"name": "n", "agg": "count"}]})
>>> shard = ShardAggregator(ViewProgram(view), out_of_orderness_ms=0, allowed_lateness_ms=0,
...     idle_advance=False)
>>> rows = [("a", 1_000, (1,), "p0", None), ("a", 12_000, (1,), "p0", None), ("b", 5_000, (1,), "p0", "late!")]
>>> shard.ingest(rows, wall_now=0.0)
['late!']
>>> [(r.entity, r.as_dict()) for r in shard.running(shard.take_dirty())]
[('a', {'n_10s': 1})]
>>> [(r["entity"], r["window_end_ms"], r["n"]) for r in shard.close_windows(wall_now=0.0)]
[('a', 10000, 1)]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable, Sequence

from engine.features.aggregates import ViewProgram
from engine.features.spec import Window
from engine.watermark import SourceWatermark

# (entity, event_time_ms, per-measure inputs, source partition, reference returned if late)
Row = tuple[str, int, tuple[Any, ...], Hashable, Hashable]


@dataclass(slots=True)
class RunningValues:
    """Current values of one entity's features, as of ``asof_ms``.

    ``values`` line up with ``columns`` (shared by every row of a shard: no dict per row).
    """

    entity: str
    columns: Sequence[str]
    values: list[Any]
    last_event_ms: int
    asof_ms: int
    has_new_events: bool = True  # False when only the window slid (for freshness metrics)

    def as_dict(self) -> dict[str, Any]:
        return dict(zip(self.columns, self.values))


@dataclass(slots=True)
class _SlideGroup:
    """Tiles shared by every window with the same slide."""

    slide_ms: int
    windows: list[Window]
    max_tiles: int
    tiles: dict[str, dict[int, list[Any]]] = field(default_factory=dict)
    tile_entities: dict[int, set[str]] = field(default_factory=dict)
    asof_tile: int | None = None
    closed_upto_ms: int | None = None


class ShardAggregator:
    """Windowed features of a shard of entities of one view; see the module docs."""

    def __init__(
        self,
        program: ViewProgram,
        *,
        out_of_orderness_ms: int,
        allowed_lateness_ms: int,
        idle_advance: bool,
        source_idle_ms: int = 10_000,
        sources: Iterable[Hashable] = (),
        wall_now: float = 0.0,
    ) -> None:
        self.program = program
        self.allowed_lateness_ms = allowed_lateness_ms
        self.clock = SourceWatermark(
            out_of_orderness_ms=out_of_orderness_ms,
            source_idle_ms=source_idle_ms,
            idle_advance=idle_advance,
            sources=sources,
            wall_now=wall_now,
        )
        by_slide: dict[int, list[Window]] = {}
        for w in program.view.windows:
            by_slide.setdefault(w.slide_ms, []).append(w)
        self._groups = [
            _SlideGroup(slide, ws, max(w.tiles for w in ws)) for slide, ws in sorted(by_slide.items())
        ]
        self.columns = tuple(c for g in self._groups for w in g.windows for c in program.columns(w.name))
        # Asof never moves back, even when idle advance overshot the next event.
        self._asof_high: int | None = None
        self._touched: set[str] = set()
        self._last_event: dict[str, int] = {}
        self._dirty: set[str] = set()
        self.accepted = 0
        self.late = 0

    # -- time ---------------------------------------------------------------
    @property
    def max_event_ms(self) -> int | None:
        """The newest event time accepted so far."""
        return self.clock.max_event_ms

    def watermark_ms(self, wall_now: float) -> int | None:
        """Event time before which the shard expects no more (on-time) events; monotone."""
        return self.clock.watermark_ms(wall_now)

    def asof_ms(self, wall_now: float) -> int | None:
        """The time running windows are computed as of; monotone."""
        if self.max_event_ms is None:
            return None
        raw = self.max_event_ms + self.clock.idle_ms(wall_now)
        if self._asof_high is None or raw > self._asof_high:
            self._asof_high = raw
        return self._asof_high

    # -- ingest ---------------------------------------------------------------
    def ingest(self, rows: Sequence[Row], wall_now: float) -> list[Hashable]:
        """Fold events into tiles; return the references of late events."""
        late_at = self.clock.observe_rows(
            [r[1] for r in rows], [r[3] for r in rows], wall_now, self.allowed_lateness_ms
        )
        late = [rows[i][4] for i in late_at]
        if late_at:
            skip = set(late_at)
            rows = [r for i, r in enumerate(rows) if i not in skip]
        program = self.program
        groups = self._groups
        last_event = self._last_event
        dirty = self._dirty
        touched = self._touched
        for entity, t, inputs, _, _ in rows:
            for g in groups:
                k = t // g.slide_ms
                ent_tiles = g.tiles.get(entity)
                if ent_tiles is None:
                    ent_tiles = g.tiles[entity] = {}
                acc = ent_tiles.get(k)
                if acc is None:
                    acc = ent_tiles[k] = program.new_partial()
                    members = g.tile_entities.get(k)
                    if members is None:
                        g.tile_entities[k] = {entity}
                    else:
                        members.add(entity)
                program.update(acc, t, inputs)
            prev = last_event.get(entity)
            if prev is None or t > prev:
                last_event[entity] = t
            dirty.add(entity)
            touched.add(entity)
        self.accepted += len(rows)
        self.late += len(late)
        self.clock.watermark_ms(wall_now)
        self.expire(wall_now)
        return late

    def expire(self, wall_now: float) -> None:
        """Mark entities whose running windows lost a tile since the last call."""
        asof = self.asof_ms(wall_now)
        if asof is None:
            return
        for g in self._groups:
            k_new = asof // g.slide_ms
            k_old = g.asof_tile
            g.asof_tile = k_new
            if k_old is None or k_new <= k_old:
                continue
            for w in g.windows:
                n = w.tiles
                lo, hi = k_old - n + 1, k_new - n  # tiles that slid out: (k_old - n, k_new - n]
                for k in g.tile_entities:
                    if lo <= k <= hi:
                        self._dirty.update(g.tile_entities[k])

    # -- outputs ----------------------------------------------------------------
    def take_dirty(self) -> list[str]:
        """Entities whose running values changed since the last call (cleared)."""
        out = sorted(self._dirty)
        self._dirty = set()
        return out

    @property
    def has_dirty(self) -> bool:
        return bool(self._dirty)

    def running(self, entities: Sequence[str], wall_now: float = 0.0) -> list[RunningValues]:
        """Running values of ``entities`` as of the shard's current time."""
        asof = self.asof_ms(wall_now)
        if asof is None:
            return []
        program = self.program
        columns = self.columns
        plan = [(g, asof // g.slide_ms, [(w.name, asof // g.slide_ms - w.tiles + 1) for w in g.windows])
                for g in self._groups]
        out = []
        empty: dict[int, list[Any]] = {}
        for entity in entities:
            values: list[Any] = []
            for g, k_now, windows in plan:
                ent_tiles = g.tiles.get(entity, empty)
                for name, lo in windows:
                    parts = [acc for k, acc in ent_tiles.items() if lo <= k <= k_now]
                    values += program.window_values(program.merge(parts), name)
            last = self._last_event.get(entity)
            if last is None:
                continue
            out.append(RunningValues(entity, columns, values, last, asof, entity in self._touched))
            self._touched.discard(entity)
            if all(entity not in g.tiles for g in self._groups):
                del self._last_event[entity]  # everything expired; this write zeroed it
        return out

    def close_windows(self, wall_now: float) -> list[dict[str, Any]]:
        """Final values of every window that the watermark has closed since the last call.

        One row per (entity, window, window end) with data; tiles no window needs are dropped.
        """
        wm = self.watermark_ms(wall_now)
        if wm is None:
            return []
        program = self.program
        limit = wm - self.allowed_lateness_ms
        rows: list[dict[str, Any]] = []
        for g in self._groups:
            S = g.slide_ms
            closable = (limit // S) * S
            if not g.tile_entities:
                g.closed_upto_ms = closable if g.closed_upto_ms is None else max(g.closed_upto_ms, closable)
                continue
            data_tiles = sorted(g.tile_entities)
            if g.closed_upto_ms is None:
                g.closed_upto_ms = data_tiles[0] * S
            end = g.closed_upto_ms + S
            while end <= closable:
                for w in g.windows:
                    first, last_k = (end - w.size_ms) // S, end // S - 1
                    members: set[str] = set()
                    for k in range(max(first, data_tiles[0]), last_k + 1):
                        members.update(g.tile_entities.get(k, ()))
                    for entity in sorted(members):
                        ent_tiles = g.tiles[entity]
                        parts = [ent_tiles[k] for k in range(first, last_k + 1) if k in ent_tiles]
                        row = {"entity": entity, "window": w.name, "window_start_ms": end - w.size_ms,
                               "window_end_ms": end}
                        feats = program.values(program.merge(parts), w.name)
                        row.update({col[: -len(w.name) - 1]: v for col, v in feats.items()})
                        rows.append(row)
                g.closed_upto_ms = end
                # Jump over stretches with no data in any window of this group.
                next_data = next((k for k in data_tiles if k * S >= end + S - g.max_tiles * S), None)
                if next_data is None:
                    g.closed_upto_ms = max(end, closable)
                    break
                end = max(end + S, next_data * S + S)
            self._purge(g)
        return rows

    def _purge(self, g: _SlideGroup) -> None:
        """Drop tiles that every window containing them has closed past."""
        if g.closed_upto_ms is None:
            return
        horizon = (g.closed_upto_ms - g.max_tiles * g.slide_ms) // g.slide_ms  # tiles k <= horizon go
        for k in [k for k in g.tile_entities if k <= horizon]:
            for entity in g.tile_entities.pop(k):
                ent_tiles = g.tiles.get(entity)
                if ent_tiles is None:
                    continue
                ent_tiles.pop(k, None)
                if not ent_tiles:
                    del g.tiles[entity]
                    if all(entity not in other.tiles for other in self._groups) and entity not in self._dirty:
                        self._last_event.pop(entity, None)  # its zeroing write already happened

    # -- recovery ---------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Plain, picklable state (HLL sketches serialised)."""
        enc = self.program.encode_partial
        return {
            **self.clock.snapshot(),
            "asof_high": self._asof_high,
            "touched": sorted(self._touched),
            "last_event": dict(self._last_event),
            "dirty": sorted(self._dirty),
            "groups": [
                {
                    "slide_ms": g.slide_ms,
                    "asof_tile": g.asof_tile,
                    "closed_upto_ms": g.closed_upto_ms,
                    "tiles": {e: {k: enc(acc) for k, acc in t.items()} for e, t in g.tiles.items()},
                }
                for g in self._groups
            ],
            "late": self.late,
        }

    def restore(self, state: dict[str, Any], wall_now: float) -> None:
        """Load a :meth:`snapshot` (the spec must be unchanged)."""
        dec = self.program.decode_partial
        self.clock.restore(state, wall_now)
        self._asof_high = state["asof_high"]
        self._touched = set(state["touched"])
        self._last_event = dict(state["last_event"])
        self._dirty = set(state["dirty"])
        self.late = state.get("late", 0)
        by_slide = {g.slide_ms: g for g in self._groups}
        for gs in state["groups"]:
            g = by_slide[gs["slide_ms"]]
            g.asof_tile = gs["asof_tile"]
            g.closed_upto_ms = gs["closed_upto_ms"]
            g.tiles = {e: {k: dec(acc) for k, acc in t.items()} for e, t in gs["tiles"].items()}
            g.tile_entities = {}
            for e, t in g.tiles.items():
                for k in t:
                    g.tile_entities.setdefault(k, set()).add(e)
