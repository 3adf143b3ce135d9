"""Mergeable partial aggregates ("measures") that features are computed from.

A view's features are compiled into a small set of distinct measures: ``count``
of clicks serves ``clicks_5m``, ``clicks_1h`` and the numerator of ``ctr_1h``.
A partial holds one slot per measure; partials of adjacent time tiles merge into
the partial of a longer window, so one event updates one tile per slide size
however many windows use it. :class:`ViewProgram` reads the measures' inputs from a
batch of events a column at a time and turns merged partials into feature values;
the tiles themselves live in :class:`engine.features.shard.ShardAggregator`.

>>> from engine.features.spec import FeatureView
>>> view = FeatureView.from_dict({"name": "u", "entity": "user_id", "windows": {"1h": "1h"},
...     "features": [{"name": "n", "agg": "count"}, {"name": "avg", "agg": "mean", "field": "context.x"}]})
>>> program = ViewProgram(view)
>>> [(m.kind, m.field) for m in program.measures]
[('count', None), ('sum', 'context.x'), ('num', 'context.x')]
>>> numbers, texts = program.input_columns(EventRows([{"context": {"x": 2.0}}, {"context": {"x": "n/a"}}]))
>>> numbers.tolist()
[[1.0, 2.0, 2.0], [1.0, nan, nan]]
>>> program.window_columns(np.array([[3.0], [6.0], [2.0]]), "1h")  # merged: 3 events, x summing to 6 over 2
[[3], [3.0]]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from engine.events.columns import ColumnsAt, InteractionColumns
from engine.features._kernels import codes_of, context_numbers, numbers_of
from engine.features.keys import composite_key
from engine.features.spec import Agg, Feature, FeatureView

HLL_LG_K = 12  # ~1.6% relative standard error, 4 KiB at most per sketch

# Measure kinds (slot semantics).
COUNT, SUM, NUM, MIN, MAX, LAST, LAST_STR, HLL = "count", "sum", "num", "min", "max", "last", "last_str", "hll"

Getter = Callable[[Any], Any]

#: Measure kinds whose inputs are text: a sketch of distinct values, the last text value.
TEXT_KINDS = frozenset({HLL, LAST_STR})


def field_getter(path: str) -> Getter:
    """Read ``user_id`` or ``context.dwell_ms`` from an event (None when absent).

    Events are validated schema objects (attributes) or plain mappings (tests, backfill).
    """
    if path.startswith("context."):
        key = path[len("context.") :]

        def get_context(event: Any) -> Any:
            ctx = event.get("context") if isinstance(event, dict) else event.context
            return ctx.get(key) if ctx else None

        return get_context

    def get_top(event: Any) -> Any:
        # A dict is checked first: its own attributes (keys, items, ...) must never read as fields.
        return event.get(path) if event.__class__ is dict else getattr(event, path, None)

    return get_top


# Types a ``where`` value is compared as (anything else never matches, as in the row path).
_HASHABLE = frozenset({str, int, float, bool, type(None)})


def _none_for_nan(values: np.ndarray | list[Any]) -> list[Any]:
    """Python values of an array, None where NaN (ints stay ints); lists pass through."""
    if isinstance(values, list):
        return values
    out = values.tolist()
    if values.dtype.kind == "f":
        missing = np.flatnonzero(np.isnan(values))
        for i in missing.tolist():
            out[i] = None
    return out


class FieldColumns(Protocol):
    """Events read a field at a time (:class:`engine.events.columns.InteractionColumns`)."""

    def __len__(self) -> int: ...
    def field(self, path: str) -> list[Any]: ...


class EventRows:
    """A list of events (mappings or schema objects) as :class:`FieldColumns` (tests, tools)."""

    def __init__(self, events: Sequence[Any]) -> None:
        self.events = events

    def __len__(self) -> int:
        return len(self.events)

    def field(self, path: str) -> list[Any]:
        get = field_getter(path)
        return [get(e) for e in self.events]


@dataclass(frozen=True, slots=True)
class Measure:
    """One slot of a partial: a kind over an optional field, after an optional filter."""

    kind: str
    field: str | None
    where: tuple[tuple[str, tuple[Any, ...]], ...]


def _measures_for(feat: Feature) -> list[Measure]:
    where = feat.where
    match feat.agg:
        case Agg.COUNT:
            return [Measure(COUNT, None, where)]
        case Agg.SUM:
            return [Measure(SUM, feat.field, where)]
        case Agg.MEAN:
            return [Measure(SUM, feat.field, where), Measure(NUM, feat.field, where)]
        case Agg.MIN:
            return [Measure(MIN, feat.field, where)]
        case Agg.MAX:
            return [Measure(MAX, feat.field, where)]
        case Agg.LAST:
            return [Measure(LAST_STR if feat.value_type == "str" else LAST, feat.field, where)]
        case Agg.DISTINCT:
            return [Measure(HLL, feat.field, where)]
        case Agg.RATIO:
            return []
    raise ValueError(f"unknown aggregation {feat.agg}")


class ViewProgram:
    """A feature view compiled for the hot path: event -> inputs -> partial -> values."""

    def __init__(self, view: FeatureView) -> None:
        self.view = view
        measures: list[Measure] = []
        for feat in view.features:
            for m in _measures_for(feat):
                if m not in measures:
                    measures.append(m)
        self.measures: tuple[Measure, ...] = tuple(measures)
        self._index = {m: i for i, m in enumerate(self.measures)}
        self._event_types = frozenset(view.event_types) if view.event_types is not None else None
        self._where_slots = sorted({m.where for m in self.measures if m.where})
        self._kinds = tuple(m.kind for m in self.measures)
        self._window_columns = {
            w.name: [(f"{feat.name}_{w.name}", feat) for feat in view.features if w.name in view.windows_of(feat)]
            for w in view.windows
        }
        # Per window: (position of a ratio, position of its numerator, of its denominator).
        self._ratios = {}
        for w, cols in self._window_columns.items():
            pos = {feat.name: i for i, (_, feat) in enumerate(cols)}
            self._ratios[w] = [
                (i, pos[feat.numerator or ""], pos[feat.denominator or ""])
                for i, (_, feat) in enumerate(cols)
                if feat.agg is Agg.RATIO
            ]

    # -- events -> inputs -------------------------------------------------
    def entity_key(self, event: Mapping[str, Any]) -> str | None:
        """The entity this event belongs to (None when an entity field is missing).

        Composite keys join the fields with ``|``; ``%`` and ``|`` inside values are escaped.
        """
        return self.entity_column(EventRows([event]))[0]

    @property
    def event_types(self) -> frozenset[str] | None:
        """The event types the view takes (None: all)."""
        return self._event_types

    def accepts(self, event_type: str) -> bool:
        """The view's source filter."""
        return self._event_types is None or event_type in self._event_types

    @property
    def kinds(self) -> tuple[str, ...]:
        """The kind of each measure slot, in order."""
        return self._kinds

    def entity_column(self, events: FieldColumns) -> list[str | None]:
        """:meth:`entity_key` of every event."""
        if len(self.view.entity) == 1:
            values = events.field(self.view.entity[0])
            if values and set(map(type, values)) == {str} and min(map(len, values)) > 0:
                return values  # the common case: validated ids
            return [None if v is None or v == "" else str(v) for v in values]
        parts = [events.field(f) for f in self.view.entity]
        return [
            None if any(v is None or v == "" for v in row) else composite_key([str(v) for v in row])
            for row in zip(*parts)
        ]

    def input_columns(self, events: FieldColumns) -> tuple[np.ndarray, dict[int, list[str | None]]]:
        """Per-measure inputs of many events: numbers as an array, text by slot.

        The float64 ``(events, measures)`` array holds the numeric measures' inputs, NaN
        where a measure skips the event (and in the text slots); the dict holds, for each
        distinct-count or text-``last`` slot, the text of every event's value (None where
        skipped). The same decisions as :meth:`inputs`: numbers only, finite, never bool.
        Each field is read once however many measures use it.
        """
        n = len(events)
        columns: dict[str, list[Any]] = {}
        numbers: dict[str, np.ndarray] = {}
        codes: dict[str, tuple[np.ndarray, dict[Any, int]] | None] = {}

        def column(path: str) -> list[Any]:
            got = columns.get(path)
            if got is None:
                got = columns[path] = events.field(path)
            return got

        def numeric(path: str) -> np.ndarray:
            got = numbers.get(path)
            if got is None:
                # NaN for anything but a finite int or float (engine/features/_kernels.c).
                validated = isinstance(events, (InteractionColumns, ColumnsAt))  # contexts are dicts
                got = numbers[path] = (np.frombuffer(context_numbers(events.field("context"), path[8:]), np.float64)
                                       if validated and path.startswith("context.") and path not in columns
                                       else np.frombuffer(numbers_of(column(path)), np.float64))
            return got

        def coded(path: str) -> tuple[np.ndarray, dict[Any, int]] | None:
            """Each value as a code into its distinct values (None: some value is unhashable)."""
            if path not in codes:
                values = column(path)
                try:
                    index = {v: i for i, v in enumerate(set(values))}
                except TypeError:
                    codes[path] = None
                else:
                    codes[path] = (np.frombuffer(codes_of(values, index), np.int64), index)
            return codes[path]

        def matches(name: str, allowed: frozenset[Any]) -> np.ndarray:
            got = coded(name)
            if got is None:
                return np.fromiter((v.__class__ in _HASHABLE and v in allowed for v in column(name)), bool, count=n)
            value_codes, index = got
            hits = [i for v, i in index.items() if v.__class__ in _HASHABLE and v in allowed]
            return np.isin(value_codes, hits)

        passed: dict[tuple[tuple[str, tuple[Any, ...]], ...], np.ndarray] = {}
        for where in self._where_slots:
            mask = np.ones(n, bool)
            for name, allowed in where:
                mask &= matches(name, frozenset(allowed))
            passed[where] = mask
        out = np.empty((n, len(self.measures)))
        texts: dict[int, list[str | None]] = {}
        for j, m in enumerate(self.measures):
            if m.kind in TEXT_KINDS:
                out[:, j] = np.nan
                keep = passed[m.where].tolist() if m.where else [True] * n
                texts[j] = [None if (v is None or not k) else str(v) for v, k in zip(column(m.field or ""), keep)]
                continue
            out[:, j] = 1.0 if m.field is None else numeric(m.field)
            if m.where:
                out[~passed[m.where], j] = np.nan
        return out, texts

    def window_columns(
        self, merged: np.ndarray, window: str, texts: Mapping[int, list[Any]] | None = None
    ) -> list[list[Any]]:
        """Feature values of one window for many entities, one list per column.

        ``merged`` is ``(measures, entities)`` of merged numeric partials with NaN where a
        min, max or last has no value; ``texts`` holds, per text slot, each entity's merged
        sketch or ``(time, text)`` pair (None when empty). See engine/features/shard.py.
        Sums, minima, maxima and numeric last values are floats.
        """
        out: list[list[Any] | np.ndarray] = []
        for _, feat in self._window_columns[window]:
            if feat.agg is Agg.RATIO:  # filled below, from its numerator and denominator
                out.append([])
                continue
            ms = _measures_for(feat)
            slot = self._index[ms[0]]
            if ms[0].kind in TEXT_KINDS:
                parts = (texts or {})[slot]
                if feat.agg is Agg.DISTINCT:
                    out.append([0 if s is None else int(round(s.get_estimate())) for s in parts])
                else:
                    out.append([None if p is None else p[1] for p in parts])
                continue
            x = merged[slot]
            if feat.agg is Agg.COUNT:
                out.append(x.astype(np.int64))
            elif feat.agg is Agg.MEAN:
                num = merged[self._index[ms[1]]]
                with np.errstate(invalid="ignore", divide="ignore"):
                    out.append(np.where(num > 0, x / num, np.nan))
            elif feat.agg in (Agg.SUM, Agg.MIN, Agg.MAX, Agg.LAST):
                out.append(x)
            else:
                raise ValueError(f"{feat.agg} is not computed on arrays")
        for pos, num_pos, den_pos in self._ratios[window]:
            num = np.asarray(out[num_pos], np.float64)
            den = np.asarray(out[den_pos], np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[pos] = np.where(np.isnan(num) | np.isnan(den) | (den == 0), np.nan, num / den)
        return [_none_for_nan(col) for col in out]

    def window_features(self, window: str) -> list[tuple[str, Feature]]:
        """``(column, feature)`` of one window, in column order."""
        return list(self._window_columns[window])

    def ratio_positions(self, window: str) -> list[tuple[int, int, int]]:
        """Per ratio column of a window: its position, its numerator's and its denominator's."""
        return list(self._ratios[window])

    def columns(self, window: str) -> list[str]:
        """Column names of one window, in the order of :meth:`window_columns`."""
        return [column for column, _ in self._window_columns[window]]
