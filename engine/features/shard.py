"""Event-time windowed aggregation for many entities at once (one shard of a view).

Bytewax's window operators make one Python call per key per batch, so their cost
grows with the number of entities (FIELD-NOTES: 0.15x of raw consume at 10k keys).
A :class:`ShardAggregator` instead owns a whole shard of entities: one call folds a
batch of events for thousands of entities into time *tiles* (one tile per entity
per slide interval), and windows are answered by merging tiles.

The tiles are arrays. An entity is a row number, and each time tile holds one array
``(measures, entities)`` of numeric partials (count, sum, min, max, last value), an
event count per row, and for the text measures a dict per slot from row to partial (an
HLL sketch for ``distinct``, a ``(time, text)`` pair for a text ``last``). A batch
arrives as columns (:class:`ShardBatch`) and is folded with a few numpy calls per tile;
running values are computed for all dirty entities at once. So the Python cost per
event is a dict lookup plus, for text measures, one sketch update, not a loop over
measures. ``tests/reference_shard.py`` holds the same semantics event by event, with
plain Python numbers; a differential test runs both.

Sums, minima, maxima and numeric last values are float64 (their online and offline
type is float anyway), so integers beyond 2**53 lose precision, as in pandas.

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
>>> program = ViewProgram(view)
>>> shard = ShardAggregator(program, out_of_orderness_ms=0, allowed_lateness_ms=0, idle_advance=False)
>>> events = [{"user_id": "a", "event_time": 1_000}, {"user_id": "a", "event_time": 12_000},
...           {"user_id": "b", "event_time": 5_000}]
>>> batch = ShardBatch.of(program, events, source="p0", refs=["e1", "e2", "late!"])
>>> shard.ingest(batch, wall_now=0.0)
['late!']
>>> [(r.entity, r.as_dict()) for r in shard.running(shard.take_dirty())]
[('a', {'n_10s': 1})]
>>> [(r["entity"], r["window_end_ms"], r["n"]) for r in shard.close_windows(wall_now=0.0)]
[('a', 10000, 1)]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable, Sequence

import datasketches
import numpy as np

from engine.features._kernels import rows_of
from engine.features.aggregates import COUNT, HLL, HLL_LG_K, LAST, LAST_STR, MAX, MIN, NUM, SUM, EventRows, ViewProgram
from engine.features.spec import Window
from engine.watermark import SourceWatermark

NO_EVENT = np.iinfo(np.int64).min
_ADDITIVE = (COUNT, NUM, SUM)
# Keep compacting cheap: only when this many rows (and half of all) belong to no live entity.
_COMPACT_MIN_DEAD = 1024


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
class ShardBatch:
    """Events of one source partition for one shard of a view, as columns.

    ``inputs`` is ``(events, measures)`` and ``texts`` the text inputs by slot, from
    :meth:`ViewProgram.input_columns` (NaN or None where a measure skips an event); ``refs``
    are what :meth:`ShardAggregator.ingest` returns for late events (their origins, for the
    dead-letter queue).
    """

    entities: list[str]
    times: np.ndarray
    inputs: np.ndarray
    source: Hashable
    refs: Sequence[Any]
    texts: dict[int, list[str | None]] = field(default_factory=dict)

    @classmethod
    def of(cls, program: ViewProgram, events: Sequence[Any], source: Hashable, refs: Sequence[Any]) -> "ShardBatch":
        """A batch of events (mappings or schema objects) that all have an entity (tests, tools)."""
        rows = EventRows(events)
        entities = program.entity_column(rows)
        if any(e is None for e in entities):
            raise ValueError("every event of a ShardBatch needs an entity")
        times = np.asarray(rows.field("event_time"), np.int64)
        numbers, texts = program.input_columns(rows)
        return cls(entities, times, numbers, source, refs, texts)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.entities)


class _Tile:
    """Partials of every entity for one time tile.

    ``acc[measure, row]`` for numeric measures, event counts per row, times of numeric last
    values, and per text slot a dict ``row -> partial`` (an HLL sketch, or a
    ``(time, text)`` pair) for the rows that have one.
    """

    __slots__ = ("hits", "acc", "last_t", "texts")

    def __init__(self, hits: np.ndarray, acc: np.ndarray, last_t: np.ndarray | None,
                 texts: dict[int, dict[int, Any]]) -> None:
        self.hits = hits
        self.acc = acc
        self.last_t = last_t
        self.texts = texts

    @classmethod
    def empty(cls, capacity: int, init: np.ndarray, n_last: int, text_slots: Sequence[int]) -> "_Tile":
        """``n_last``: how many numeric last slots need event times (one row each)."""
        acc = np.repeat(init[:, None], capacity, axis=1)
        last_t = np.full((n_last, capacity), NO_EVENT, np.int64) if n_last else None
        return cls(np.zeros(capacity, np.int64), acc, last_t, {j: {} for j in text_slots})

    @property
    def n_last(self) -> int:
        return 0 if self.last_t is None else len(self.last_t)

    def taken(self, rows: np.ndarray, capacity: int, init: np.ndarray) -> "_Tile":
        """A tile of ``capacity`` rows holding this tile's ``rows`` in order (growth, compaction)."""
        out = _Tile.empty(capacity, init, self.n_last, ())
        n = len(rows)
        out.hits[:n] = self.hits[rows]
        out.acc[:, :n] = self.acc[:, rows]
        if self.last_t is not None:
            out.last_t[:, :n] = self.last_t[:, rows]  # type: ignore[index]
        renumber = {old: new for new, old in enumerate(rows.tolist())}
        out.texts = {j: {renumber[r]: p for r, p in d.items() if r in renumber} for j, d in self.texts.items()}
        return out


@dataclass(slots=True)
class _Group:
    """Tiles shared by every window with the same slide."""

    slide_ms: int
    windows: list[Window]
    max_tiles: int
    tiles: dict[int, _Tile]
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
        kinds = program.kinds
        self._init = np.array(
            [np.inf if k == MIN else (-np.inf if k == MAX else (np.nan if k == LAST else 0.0)) for k in kinds]
        )
        self._additive = [j for j, k in enumerate(kinds) if k in _ADDITIVE]
        self._counted = [j for j, k in enumerate(kinds) if k in (COUNT, NUM)]
        self._summed = [j for j, k in enumerate(kinds) if k == SUM]
        self._min = [j for j, k in enumerate(kinds) if k == MIN]
        self._max = [j for j, k in enumerate(kinds) if k == MAX]
        self._last = [j for j, k in enumerate(kinds) if k == LAST]
        self._last_row = {j: i for i, j in enumerate(self._last)}  # slot -> row of a tile's last_t
        self._sketches = [j for j, k in enumerate(kinds) if k == HLL]
        self._last_texts = [j for j, k in enumerate(kinds) if k == LAST_STR]
        self._text_slots = self._sketches + self._last_texts
        by_slide: dict[int, list[Window]] = {}
        for w in program.view.windows:
            by_slide.setdefault(w.slide_ms, []).append(w)
        self._groups = [_Group(slide, ws, max(w.tiles for w in ws), {}) for slide, ws in sorted(by_slide.items())]
        self.columns = tuple(c for g in self._groups for w in g.windows for c in program.columns(w.name))
        self._asof_high: int | None = None
        # Entities are rows; arrays have room for ``_capacity`` rows, ``_names`` holds the used ones.
        self._row: dict[str, int] = {}
        self._names: list[str] = []
        self._capacity = 0
        self._last_event = np.empty(0, np.int64)
        self._dirty = np.empty(0, bool)
        self._touched = np.empty(0, bool)
        self._grow(64)
        self.accepted = 0
        self.late = 0

    # -- rows -------------------------------------------------------------------
    def _grow(self, capacity: int) -> None:
        """Room for ``capacity`` rows; the rows in use keep their numbers."""
        self._renumber(np.arange(min(len(self._last_event), capacity)), capacity)

    def _renumber(self, keep: np.ndarray, capacity: int) -> None:
        """Arrays of ``capacity`` rows holding the rows ``keep``, in that order (then empty rows)."""

        def taken(a: np.ndarray, fill: Any) -> np.ndarray:
            out = np.full(capacity, fill, a.dtype)
            out[: len(keep)] = a[keep]
            return out

        self._last_event = taken(self._last_event, NO_EVENT)
        self._dirty = taken(self._dirty, False)
        self._touched = taken(self._touched, False)
        for g in self._groups:
            g.tiles = {k: t.taken(keep, capacity, self._init) for k, t in g.tiles.items()}
        self._capacity = capacity

    def _rows_of(self, entities: list[str]) -> np.ndarray:
        rows = np.frombuffer(rows_of(entities, self._row, self._names), np.int64)  # numbers new entities
        if len(self._names) > self._capacity:
            self._grow(max(len(self._names), 2 * self._capacity))
        return rows

    # -- time -------------------------------------------------------------------
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

    # -- ingest -----------------------------------------------------------------
    def ingest(self, batch: ShardBatch, wall_now: float) -> list[Any]:
        """Fold a batch into tiles; return the references of late events."""
        times, inputs, entities, texts = batch.times, batch.inputs, batch.entities, batch.texts
        late_at = self.clock.observe_source(batch.source, times, wall_now, self.allowed_lateness_ms)
        late = [batch.refs[i] for i in late_at.tolist()]
        if len(late_at):
            keep = np.ones(len(times), bool)
            keep[late_at] = False
            times, inputs = times[keep], inputs[keep]
            kept = keep.tolist()
            entities = [e for e, k in zip(entities, kept) if k]
            texts = {j: [v for v, k in zip(vals, kept) if k] for j, vals in texts.items()}
        if len(times):
            rows = self._rows_of(entities)
            for g in self._groups:
                k = times // g.slide_ms
                k_lo, k_hi = int(k.min()), int(k.max())
                if k_lo == k_hi:
                    self._fold(self._tile(g, k_lo), rows, times, inputs, texts)
                    continue
                for kk in np.unique(k).tolist():
                    sel = k == kk
                    at = np.flatnonzero(sel).tolist()
                    self._fold(self._tile(g, kk), rows[sel], times[sel], inputs[sel],
                               {j: [vals[i] for i in at] for j, vals in texts.items()})
            np.maximum.at(self._last_event, rows, times)
            self._dirty[rows] = True
            self._touched[rows] = True
            self.accepted += len(times)
        self.late += len(late)
        self.clock.watermark_ms(wall_now)
        self.expire(wall_now)
        return late

    def _tile(self, g: _Group, k: int) -> _Tile:
        tile = g.tiles.get(k)
        if tile is None:
            tile = g.tiles[k] = _Tile.empty(self._capacity, self._init, len(self._last), self._text_slots)
        return tile

    def _fold(self, tile: _Tile, rows: np.ndarray, times: np.ndarray, inputs: np.ndarray,
              texts: dict[int, list[str | None]]) -> None:
        """Fold events into one tile; float sums keep arrival order, text goes event by event."""
        np.add.at(tile.hits, rows, 1)
        acc = tile.acc
        present = ~np.isnan(inputs)
        for j in self._counted:
            np.add.at(acc[j], rows[present[:, j]], 1.0)
        for j in self._summed:
            m = present[:, j]
            np.add.at(acc[j], rows[m], inputs[m, j])
        for j in self._min:
            m = present[:, j]
            np.minimum.at(acc[j], rows[m], inputs[m, j])
        for j in self._max:
            m = present[:, j]
            np.maximum.at(acc[j], rows[m], inputs[m, j])
        for j in self._last:
            m = present[:, j]
            self._fold_last(tile, j, self._last_row[j], rows[m], times[m], inputs[m, j])
        if texts:
            row_list, time_list = rows.tolist(), times.tolist()
            for j in self._sketches:
                sketches = tile.texts[j]
                for r, x in zip(row_list, texts[j]):
                    if x is not None:
                        sketch = sketches.get(r)
                        if sketch is None:
                            sketch = sketches[r] = datasketches.hll_sketch(HLL_LG_K)
                        sketch.update(x)
            for j in self._last_texts:
                lasts = tile.texts[j]
                for r, t, x in zip(row_list, time_list, texts[j]):
                    # Ties in event time keep the larger value, so arrival order never matters.
                    if x is not None and (r not in lasts or (t, x) > lasts[r]):
                        lasts[r] = (t, x)

    @staticmethod
    def _fold_last(tile: _Tile, j: int, li: int, rows: np.ndarray, times: np.ndarray, values: np.ndarray) -> None:
        """Keep the value of the newest event per row; ties in time keep the larger value."""
        if not len(rows):
            return
        order = np.lexsort((values, times, rows))
        rows, times, values = rows[order], times[order], values[order]
        final = np.ones(len(rows), bool)
        final[:-1] = rows[1:] != rows[:-1]  # the greatest (time, value) of each row comes last
        rows, times, values = rows[final], times[final], values[final]
        assert tile.last_t is not None
        cur_t, cur_v = tile.last_t[li, rows], tile.acc[j, rows]
        newer = (times > cur_t) | ((times == cur_t) & (values > cur_v))
        tile.last_t[li, rows[newer]] = times[newer]
        tile.acc[j, rows[newer]] = values[newer]

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
                lo, hi = k_old - w.tiles + 1, k_new - w.tiles  # tiles that slid out
                for k, tile in g.tiles.items():
                    if lo <= k <= hi:
                        self._dirty |= tile.hits > 0

    # -- outputs ------------------------------------------------------------------
    def take_dirty(self) -> np.ndarray:
        """Rows whose running values changed since the last call (cleared)."""
        rows = np.flatnonzero(self._dirty)
        self._dirty[:] = False
        return rows

    @property
    def has_dirty(self) -> bool:
        return bool(self._dirty.any())

    def _merge(self, g: _Group, lo: int, hi: int, rows: np.ndarray) -> tuple[np.ndarray, dict[int, list[Any]]]:
        """Merged partials of tiles ``lo..hi`` for ``rows``.

        Numeric ``(measures, len(rows))`` with NaN for no min/max/last, and per text slot a
        list: the union sketch or the newest ``(time, text)``, None when there is none.
        """
        ks = sorted(k for k in g.tiles if lo <= k <= hi)
        texts = {j: self._merge_texts(j, [g.tiles[k] for k in ks], rows) for j in self._text_slots}
        out = np.repeat(self._init[:, None], len(rows), axis=1)
        add, mins, maxs = self._additive, self._min, self._max
        for k in ks:  # ascending: a later tile's last value is newer than any earlier one
            tile = g.tiles[k]
            part = tile.acc[:, rows]
            if add:
                out[add] += part[add]
            if mins:
                out[mins] = np.minimum(out[mins], part[mins])
            if maxs:
                out[maxs] = np.maximum(out[maxs], part[maxs])
            for j in self._last:
                has = tile.last_t[self._last_row[j], rows] != NO_EVENT  # type: ignore[index]
                out[j, has] = part[j, has]
        if mins or maxs:
            bounded = mins + maxs
            sub = out[bounded]
            sub[np.isinf(sub)] = np.nan
            out[bounded] = sub
        return out, texts

    def _merge_texts(self, j: int, tiles: list[_Tile], rows: np.ndarray) -> list[Any]:
        parts = [t.texts[j] for t in tiles if t.texts[j]]
        out: list[Any] = []
        sketch = j in self._sketches
        for r in rows.tolist():
            present = [p[r] for p in parts if r in p]
            if not present:
                out.append(None)
            elif len(present) == 1 or not sketch:
                out.append(present[0] if len(present) == 1 else max(present))
            else:
                union = datasketches.hll_union(HLL_LG_K)
                for s in present:
                    union.update(s)
                out.append(union.get_result())
        return out

    def _alive(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Whether each of ``rows`` (default: every row) has data in some tile."""
        alive = np.zeros(self._capacity if rows is None else len(rows), bool)
        for g in self._groups:
            for tile in g.tiles.values():
                alive |= (tile.hits if rows is None else tile.hits[rows]) > 0
        return alive

    def running(self, rows: Sequence[int] | np.ndarray, wall_now: float = 0.0) -> list[RunningValues]:
        """Running values of entity ``rows`` (from :meth:`take_dirty`) as of the shard's time."""
        asof = self.asof_ms(wall_now)
        rows = np.asarray(rows, np.int64)
        if asof is None or not len(rows):
            return []
        rows = rows[self._last_event[rows] != NO_EVENT]
        columns: list[list[Any]] = []
        for g in self._groups:
            k_now = asof // g.slide_ms
            for w in g.windows:
                merged, texts = self._merge(g, k_now - w.tiles + 1, k_now, rows)
                columns += self.program.window_columns(merged, w.name, texts)
        names = self._names
        touched = self._touched[rows].tolist()
        lasts = self._last_event[rows].tolist()
        cols = self.columns
        out = [
            RunningValues(names[r], cols, list(values), last, asof, new)
            for r, values, last, new in zip(rows.tolist(), zip(*columns), lasts, touched)
        ]
        self._touched[rows] = False
        gone = rows[~self._alive(rows)]
        self._last_event[gone] = NO_EVENT  # everything expired; this write zeroed it
        return out

    def close_windows(self, wall_now: float) -> list[dict[str, Any]]:
        """Final values of every window that the watermark has closed since the last call.

        One row per (entity, window, window end) with data; tiles no window needs are
        dropped, and dead rows compacted once every group is done (rows keep their numbers
        until then).
        """
        wm = self.watermark_ms(wall_now)
        if wm is None:
            return []
        limit = wm - self.allowed_lateness_ms
        out: list[dict[str, Any]] = []
        names = self._names
        dropped = False
        for g in self._groups:
            S = g.slide_ms
            closable = (limit // S) * S
            if not g.tiles:
                g.closed_upto_ms = closable if g.closed_upto_ms is None else max(g.closed_upto_ms, closable)
                continue
            data_tiles = sorted(g.tiles)
            if g.closed_upto_ms is None:
                g.closed_upto_ms = data_tiles[0] * S
            end = g.closed_upto_ms + S
            while end <= closable:
                for w in g.windows:
                    first, last_k = (end - w.size_ms) // S, end // S - 1
                    members = np.zeros(self._capacity, bool)
                    for k in range(max(first, data_tiles[0]), last_k + 1):
                        tile = g.tiles.get(k)
                        if tile is not None:
                            members |= tile.hits > 0
                    rows = np.flatnonzero(members)
                    if not len(rows):
                        continue
                    rows = rows[np.argsort([names[r] for r in rows.tolist()], kind="stable")]
                    merged, texts = self._merge(g, first, last_k, rows)
                    feats = self.program.window_columns(merged, w.name, texts)
                    keys = [c[: -len(w.name) - 1] for c in self.program.columns(w.name)]
                    start = end - w.size_ms
                    for r, values in zip(rows.tolist(), zip(*feats)):
                        row = {"entity": names[r], "window": w.name, "window_start_ms": start, "window_end_ms": end}
                        row.update(zip(keys, values))
                        out.append(row)
                g.closed_upto_ms = end
                # Jump over stretches with no data in any window of this group.
                next_data = next((k for k in data_tiles if k * S >= end + S - g.max_tiles * S), None)
                if next_data is None:
                    g.closed_upto_ms = max(end, closable)
                    break
                end = max(end + S, next_data * S + S)
            dropped = self._drop_closed_tiles(g) or dropped
        if dropped:
            self._forget_and_compact()
        return out

    @staticmethod
    def _drop_closed_tiles(g: _Group) -> bool:
        """Drop tiles that every window containing them has closed past; whether any went."""
        if g.closed_upto_ms is None:
            return False
        horizon = (g.closed_upto_ms - g.max_tiles * g.slide_ms) // g.slide_ms  # tiles k <= horizon go
        gone = [k for k in g.tiles if k <= horizon]
        for k in gone:
            del g.tiles[k]
        return bool(gone)

    def _forget_and_compact(self) -> None:
        """After tiles were dropped: forget entities left without data, compact dead rows."""
        alive = self._alive()
        # Entities left without data whose zeroing write already happened.
        self._last_event[~alive & ~self._dirty] = NO_EVENT
        dead = len(self._names) - int(np.count_nonzero(self._last_event[: len(self._names)] != NO_EVENT))
        if dead >= _COMPACT_MIN_DEAD and 2 * dead >= len(self._names):
            self._compact()

    def _compact(self) -> None:
        """Renumber rows, keeping entities that have an event time (the rest hold nothing)."""
        keep = np.flatnonzero(self._last_event[: len(self._names)] != NO_EVENT)
        self._renumber(keep, max(64, 2 * len(keep)))
        self._names = [self._names[r] for r in keep.tolist()]
        self._row = {e: i for i, e in enumerate(self._names)}

    # -- recovery -------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Plain, picklable state (arrays cut to the rows in use)."""
        n = len(self._names)

        def tile_state(t: _Tile) -> dict[str, Any]:
            return {"hits": t.hits[:n].copy(), "acc": t.acc[:, :n].copy(),
                    "last_t": None if t.last_t is None else t.last_t[:, :n].copy(),
                    "texts": {j: {r: (p.serialize_compact() if j in self._sketches else p) for r, p in d.items()}
                              for j, d in t.texts.items()}}

        return {
            **self.clock.snapshot(),
            "layout": "arrays",
            "asof_high": self._asof_high,
            "entities": list(self._names),
            "last_event": self._last_event[:n].copy(),
            "dirty": self._dirty[:n].copy(),
            "touched": self._touched[:n].copy(),
            "groups": [
                {"slide_ms": g.slide_ms, "asof_tile": g.asof_tile, "closed_upto_ms": g.closed_upto_ms,
                 "tiles": {k: tile_state(t) for k, t in g.tiles.items()}}
                for g in self._groups
            ],
            "late": self.late,
        }

    def restore(self, state: dict[str, Any], wall_now: float) -> None:
        """Load a :meth:`snapshot` (the spec must be unchanged)."""
        if state.get("layout") != "arrays":
            raise ValueError("this snapshot was taken by an earlier rtml (per-entity partials): start afresh")
        self.clock.restore(state, wall_now)
        self._asof_high = state["asof_high"]
        self._names = list(state["entities"])
        self._row = {e: i for i, e in enumerate(self._names)}
        n = len(self._names)
        capacity = max(64, n)
        self._capacity = 0
        self._last_event = np.asarray(state["last_event"], np.int64)
        self._dirty = np.asarray(state["dirty"], bool)
        self._touched = np.asarray(state["touched"], bool)
        by_slide = {g.slide_ms: g for g in self._groups}
        for gs in state["groups"]:
            g = by_slide[gs["slide_ms"]]
            g.asof_tile = gs["asof_tile"]
            g.closed_upto_ms = gs["closed_upto_ms"]
            g.tiles = {k: _Tile(np.asarray(t["hits"]), np.asarray(t["acc"]),
                                None if t["last_t"] is None else np.asarray(t["last_t"]),
                                {j: {r: (datasketches.hll_sketch.deserialize(p) if j in self._sketches else tuple(p))
                                     for r, p in d.items()} for j, d in t["texts"].items()})
                       for k, t in gs["tiles"].items()}
        self._grow(capacity)
        self.late = state.get("late", 0)
