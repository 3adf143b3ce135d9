"""Mergeable partial aggregates ("measures") that features are computed from.

A view's features are compiled into a small set of distinct measures: ``count``
of clicks serves ``clicks_5m``, ``clicks_1h`` and the numerator of ``ctr_1h``.
A partial is a plain list with one slot per measure; partials of adjacent time
tiles merge into the partial of a longer window, so one event updates one tile
per slide size however many windows use it.

>>> from engine.features.spec import FeatureView
>>> view = FeatureView.from_dict({"name": "u", "entity": "user_id", "windows": {"1h": "1h"},
...     "features": [{"name": "n", "agg": "count"}, {"name": "avg", "agg": "mean", "field": "context.x"}]})
>>> program = ViewProgram(view)
>>> acc = program.new_partial()
>>> program.update(acc, 1_000, program.inputs({"context": {"x": 2.0}}))
>>> program.update(acc, 2_000, program.inputs({"context": {"x": 4.0}}))
>>> program.values(acc, "1h")
{'n_1h': 2, 'avg_1h': 3.0}
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence

import datasketches
import numpy as np

from engine.features.keys import composite_key
from engine.features.spec import Agg, Feature, FeatureView

HLL_LG_K = 12  # ~1.6% relative standard error, 4 KiB at most per sketch

# Measure kinds (slot semantics).
COUNT, SUM, NUM, MIN, MAX, LAST, LAST_STR, HLL = "count", "sum", "num", "min", "max", "last", "last_str", "hll"

Getter = Callable[[Any], Any]

#: Measure kinds whose partials are plain numbers, folded and merged as arrays (engine/features/columnar.py).
ARRAY_KINDS = frozenset({COUNT, SUM, NUM, MIN, MAX, LAST})


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
_NUMERIC_OR_NONE = frozenset({int, float, type(None)})


def _none_for_nan(values: np.ndarray) -> list[Any]:
    """Python values of an array, None where NaN (ints stay ints)."""
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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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
        self._entity_getters = [field_getter(f) for f in view.entity]
        self._event_types = frozenset(view.event_types) if view.event_types is not None else None
        wheres = sorted({m.where for m in self.measures if m.where})
        self._where_slots = {w: i for i, w in enumerate(wheres)}
        self._where_preds = [self._predicate(w) for w in wheres]
        # Filters on one field each (the usual event_type filters) read each field once per event.
        self._where_fields: list[Getter] = []
        self._where_checks: list[tuple[int, frozenset[Any]]] | None = None
        if wheres and all(len(w) == 1 for w in wheres):
            fields = sorted({w[0][0] for w in wheres})
            self._where_fields = [field_getter(f) for f in fields]
            self._where_checks = [(fields.index(w[0][0]), frozenset(w[0][1])) for w in wheres]
        self._inputs = [self._input_fn(m) for m in self.measures]
        self._kinds = tuple(m.kind for m in self.measures)
        self._window_columns = {
            w.name: [(f"{feat.name}_{w.name}", feat) for feat in view.features if w.name in view.windows_of(feat)]
            for w in view.windows
        }
        # Per window: (column, finalizer) in order, ratios last; finalizers read slots directly.
        self._finalizers = {
            w: [(col, feat, self._finalizer(feat)) for col, feat in cols] for w, cols in self._window_columns.items()
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

    def entity_key(self, event: Mapping[str, Any]) -> str | None:
        """The entity this event belongs to (None when an entity field is missing).

        Composite keys join the fields with ``|``; ``%`` and ``|`` inside values are escaped.
        """
        if len(self._entity_getters) == 1:  # the common case, on the hot path
            value = self._entity_getters[0](event)
            return None if value is None or value == "" else str(value)
        parts = []
        for get in self._entity_getters:
            value = get(event)
            if value is None or value == "":
                return None
            parts.append(str(value))
        return composite_key(parts)

    @property
    def event_types(self) -> frozenset[str] | None:
        """The event types the view takes (None: all)."""
        return self._event_types

    def accepts(self, event_type: str) -> bool:
        """The view's source filter."""
        return self._event_types is None or event_type in self._event_types

    def inputs(self, event: Mapping[str, Any]) -> tuple[Any, ...]:
        """Per-measure inputs of one event (None where the measure skips it)."""
        checks = self._where_checks
        if checks is not None:
            values = [get(event) for get in self._where_fields]
            try:
                passed = [values[i] in allowed for i, allowed in checks]
            except TypeError:  # an unhashable value (never after validation): the slow path decides
                passed = [pred(event) for pred in self._where_preds]
        else:
            passed = [pred(event) for pred in self._where_preds]
        return tuple([fn(event, passed) for fn in self._inputs])

    @property
    def kinds(self) -> tuple[str, ...]:
        """The kind of each measure slot, in order."""
        return self._kinds

    @property
    def vectorisable(self) -> bool:
        """Whether every measure is numeric, so a shard can hold partials as arrays."""
        return all(k in ARRAY_KINDS for k in self._kinds)

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

    def input_matrix(self, events: FieldColumns) -> np.ndarray:
        """Per-measure inputs of many events as a float64 ``(events, measures)`` array.

        NaN where a measure skips the event: the same decisions as :meth:`inputs` (numbers
        only, finite, never bool), for :attr:`vectorisable` programs. Each field is read
        once however many measures use it.
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
                values = column(path)
                if set(map(type, values)) <= _NUMERIC_OR_NONE:
                    got = np.array(values, np.float64)  # None becomes NaN
                else:
                    got = np.fromiter((v if (v.__class__ is float or v.__class__ is int) else np.nan for v in values),
                                      np.float64, count=n)
                got[~np.isfinite(got)] = np.nan
                numbers[path] = got
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
                    codes[path] = (np.fromiter(map(index.__getitem__, values), np.int64, count=n), index)
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
        for j, m in enumerate(self.measures):
            out[:, j] = 1.0 if m.field is None else numeric(m.field)
            if m.where:
                out[~passed[m.where], j] = np.nan
        return out

    def window_columns(self, merged: np.ndarray, window: str) -> list[list[Any]]:
        """Feature values of one window for many entities, one list per column.

        ``merged`` is ``(measures, entities)`` of merged partials with NaN where a min, max
        or last has no value (see engine/features/columnar.py). Values equal
        :meth:`window_values`' except that sums, minima, maxima and last values are floats.
        """
        out: list[list[Any] | np.ndarray] = []
        for _, feat, finalize in self._finalizers[window]:
            if finalize is None:  # a ratio, filled below
                out.append([])
                continue
            ms = _measures_for(feat)
            x = merged[self._index[ms[0]]]
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

    def columns(self, window: str) -> list[str]:
        """Column names of one window, in the order of :meth:`window_values`."""
        return [column for column, _ in self._window_columns[window]]

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
