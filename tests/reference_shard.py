"""A reference implementation of a shard's windowed aggregation, event by event (tests only).

The engine aggregates on arrays (:class:`engine.features.shard.ShardAggregator`). This is
the straightforward version of the same semantics: a dict of partials per entity and per
tile, folded one event at a time with plain Python numbers. The differential tests run
both over the same events and compare every output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterable, Mapping, Sequence

import datasketches

from engine.features.aggregates import (
    COUNT, HLL, HLL_LG_K, LAST, LAST_STR, MAX, MIN, NUM, SUM, Measure, ViewProgram, _measures_for, field_getter,
)
from engine.features.shard import RunningValues
from engine.features.spec import Agg, Feature, Window
from engine.watermark import SourceWatermark

# (entity, event_time_ms, per-measure inputs, source partition, reference returned if late)
Row = tuple[str, int, tuple[Any, ...], Hashable, Hashable]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class RowProgram:
    """A view's measures event by event: inputs -> partial (a list per tile) -> values."""

    def __init__(self, program: ViewProgram) -> None:
        self.program = program
        self.view = program.view
        self.measures = program.measures
        self._kinds = tuple(m.kind for m in self.measures)
        self._index = {m: i for i, m in enumerate(self.measures)}
        wheres = sorted({m.where for m in self.measures if m.where})
        self._where_slots = {w: i for i, w in enumerate(wheres)}
        self._where_preds = [self._predicate(w) for w in wheres]
        self._inputs = [self._input_fn(m) for m in self.measures]
        windows = [w.name for w in self.view.windows]
        self._finalizers = {
            w: [(col, feat, self._finalizer(feat)) for col, feat in program.window_features(w)] for w in windows
        }
        self._ratios = {w: program.ratio_positions(w) for w in windows}

    def columns(self, window: str) -> list[str]:
        return self.program.columns(window)

    def entity_key(self, event: Mapping[str, Any]) -> str | None:
        return self.program.entity_key(event)

    def accepts(self, event_type: str) -> bool:
        return self.program.accepts(event_type)

    @staticmethod
    def _predicate(where: tuple[tuple[str, tuple[Any, ...]], ...]) -> Callable[[Mapping[str, Any]], bool]:
        checks = [(field_getter(name), frozenset(values)) for name, values in where]
        if len(checks) == 1:  # one field, the usual event_type filter
            get_one, allowed_one = checks[0]

            def passes_one(event: Mapping[str, Any]) -> bool:
                try:
                    return get_one(event) in allowed_one
                except TypeError:  # unhashable value never matches
                    return False

            return passes_one

        def passes(event: Mapping[str, Any]) -> bool:
            for get, allowed in checks:
                value = get(event)
                try:
                    if value not in allowed:
                        return False
                except TypeError:  # unhashable value never matches
                    return False
            return True

        return passes

    def _input_fn(self, m: Measure) -> Callable[[Mapping[str, Any], list[bool]], Any]:
        where_slot = self._where_slots.get(m.where) if m.where else None
        get = field_getter(m.field) if m.field else None

        numeric = m.kind in (SUM, NUM, MIN, MAX, LAST)

        def extract(event: Mapping[str, Any], passed: list[bool]) -> Any:
            if where_slot is not None and not passed[where_slot]:
                return None
            if get is None:
                return 1
            value = get(event)
            if value is None:
                return None
            if numeric:
                return value if _is_number(value) else None
            return str(value)  # HLL and LAST_STR hash / keep the text form

        return extract

    def inputs(self, event: Mapping[str, Any]) -> tuple[Any, ...]:
        """Per-measure inputs of one event (None where the measure skips it)."""
        passed = [pred(event) for pred in self._where_preds]
        return tuple([fn(event, passed) for fn in self._inputs])

    # -- partials -----------------------------------------------------------
    def new_partial(self) -> list[Any]:
        return [0 if k in (COUNT, NUM) else (0.0 if k == SUM else None) for k in self._kinds]

    def update(self, acc: list[Any], event_time: int, inputs: tuple[Any, ...]) -> None:
        """Fold one event's inputs into a partial."""
        for i, kind in enumerate(self._kinds):
            x = inputs[i]
            if x is None:
                continue
            if kind == COUNT or kind == NUM:
                acc[i] += 1
            elif kind == SUM:
                acc[i] += x
            elif kind == MIN:
                cur = acc[i]
                if cur is None or x < cur:
                    acc[i] = x
            elif kind == MAX:
                cur = acc[i]
                if cur is None or x > cur:
                    acc[i] = x
            elif kind == LAST or kind == LAST_STR:
                cur = acc[i]
                # Ties in event time keep the larger value, so arrival order never matters.
                if cur is None or (event_time, x) > cur:
                    acc[i] = (event_time, x)
            else:  # HLL
                sketch = acc[i]
                if sketch is None:
                    sketch = acc[i] = datasketches.hll_sketch(HLL_LG_K)
                sketch.update(x)

    def merge(self, partials: Sequence[list[Any]]) -> list[Any]:
        """Merge partials of disjoint tiles into one (inputs are not modified).

        Slot by slot with builtins: this runs for every running value written.
        """
        if len(partials) == 1:
            return list(partials[0])
        if not partials:
            return self.new_partial()
        out: list[Any] = []
        for i, kind in enumerate(self._kinds):
            if kind == COUNT or kind == NUM or kind == SUM:
                out.append(sum(p[i] for p in partials))
                continue
            present = [p[i] for p in partials if p[i] is not None]
            if not present:
                out.append(None)
            elif kind == MIN:
                out.append(min(present))
            elif kind == HLL:
                union = datasketches.hll_union(HLL_LG_K)
                for sketch in present:
                    union.update(sketch)
                out.append(union.get_result())
            else:  # MAX, LAST, LAST_STR: (event time, value) pairs compare as intended
                out.append(max(present))
        return out

    def values(self, acc: list[Any], window: str) -> dict[str, Any]:
        """Feature values of one window from its merged partial."""
        return dict(zip(self.columns(window), self.window_values(acc, window)))

    def window_values(self, acc: list[Any], window: str) -> list[Any]:
        """Feature values of one window, as a list in :meth:`columns` order (hot path)."""
        out = [None if finalize is None else finalize(acc) for _, _, finalize in self._finalizers[window]]
        for pos, num_pos, den_pos in self._ratios[window]:
            num, den = out[num_pos], out[den_pos]
            out[pos] = (num / den) if (num is not None and den) else None
        return out

    def _finalizer(self, feat: Feature) -> Callable[[list[Any]], Any] | None:
        ms = _measures_for(feat)
        if not ms:
            return None
        i = self._index[ms[0]]
        match feat.agg:
            case Agg.COUNT | Agg.SUM | Agg.MIN | Agg.MAX:
                return lambda acc: acc[i]
            case Agg.MEAN:
                j = self._index[ms[1]]
                return lambda acc: acc[i] / acc[j] if acc[j] else None
            case Agg.LAST:
                return lambda acc: acc[i][1] if acc[i] is not None else None
            case Agg.DISTINCT:
                return lambda acc: int(round(acc[i].get_estimate())) if acc[i] is not None else 0
        raise ValueError(feat.agg)

    # -- snapshots (HLL sketches do not pickle) -----------------------------
    def encode_partial(self, acc: list[Any]) -> list[Any]:
        return [
            (x.serialize_compact() if (kind == HLL and x is not None) else x)
            for kind, x in zip(self._kinds, acc)
        ]

    def decode_partial(self, data: list[Any]) -> list[Any]:
        return [
            (datasketches.hll_sketch.deserialize(x) if (kind == HLL and x is not None) else x)
            for kind, x in zip(self._kinds, data)
        ]


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


class RowShard:
    """Windowed features of a shard of entities, event by event (the reference)."""

    def __init__(
        self,
        program: RowProgram,
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
