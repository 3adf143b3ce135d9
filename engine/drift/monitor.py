"""Windowed data and prediction drift monitor (library level; dataflows/drift.py runs it in-stream).

What is monitored
-----------------
Prediction records (:class:`~engine.learning.records.PredictionRecord`, one per logged
prediction) are grouped **per model**. Every numeric value in ``record.features`` is one
*feature* (its key, the feature source such as ``user.clicks_1h`` or ``request.price``), and
``record.score`` is the feature ``"score"``: drift of a feature is **data drift**, drift of
the score is **prediction drift**.

* Variants: canary and A/B variants are pooled into their model's window (they serve the
  model's traffic); ``variant == "shadow"`` records are ignored and counted
  (``ObserveCounts.shadow``): a shadow scoring logs the *same* features as the primary
  prediction of the same request, so counting it would double every value, and its score
  belongs to a version that serves nobody. Pass ``include_shadow=True`` to keep them.
* Values: ints and finite floats. ``None`` counts as ``missing``; anything else (text,
  booleans, lists, NaN, infinities) as ``non_numeric``. Both are counted per
  ``(model, feature, reason)`` and skipped; a record never makes the monitor fail.

Windows
-------
Tumbling event-time windows of ``window_ms``, aligned to the epoch: ``[k W, (k + 1) W)``.
:meth:`DriftMonitor.advance` takes an event-time watermark; every window whose end is at or
before it is *closed* and tested, and a later record that falls into a closed window is
*late* (counted, dropped: the window's verdict is final). Memory per open window and feature
is bounded: the first ``max_window_samples`` values are kept exactly, beyond that a uniform
reservoir sample of that size (Algorithm R, seeded, so runs are reproducible) -- plus, with
``ks_method="kll"``, a KLL sketch of *every* value. PSI, JS and the exact KS then see the
reservoir (``n_current`` in the result is the sample size; ``n_window`` in the alert details
is the number of values seen).

The test of a closed window, per feature:

* fewer than ``min_samples`` values: not tested, :class:`SkippedTest` reason ``min_samples``;
* **PSI** and **Jensen-Shannon distance** on the configured binning with ``epsilon`` for
  empty bins: ``quantile`` / ``uniform`` edges from the reference (computed once per
  feature), or ``evidently`` = Sturges over reference + current (recomputed per window,
  Evidently-compatible numbers);
* **KS**: ``exact`` = ``scipy.stats.ks_2samp`` on the bounded window (its p-value is
  reported, drift when below ``ks_p_value``), or ``kll`` = the DataSketches KLL KS test (the
  D statistic is reported, drift when above the sketch threshold for significance
  ``ks_p_value``).

Every computed statistic is returned as a :class:`DriftStat` (for gauges); every drifted one
also as a :class:`~engine.alerts.DriftAlert` (``details`` = the
:class:`~engine.drift.statistics.DriftResult` dict: binning, epsilon, KS method, sample
sizes; plus ``n_window`` and ``reference``). Statistic names in stats and alerts:
``psi``, ``js_distance``, ``ks_p_value`` (exact KS; smaller is worse) and ``ks_kll_d``
(KLL KS D statistic).

Reference
---------
* A file (``drift.reference``): Parquet or JSONL rows of feature values, columns = feature
  sources, plus an optional ``score`` column (e.g. the training set with its model scores)
  and an optional ``model`` column (rows then serve only that model; rows without a model
  serve every model). JSONL rows may also be prediction records (a ``features`` object,
  ``score`` and ``model``), so a known-good stretch of the predictions topic can be the
  reference. A feature that the file does not hold is not tested (reason ``no_reference``).
* ``None`` (the default): the reference is **pinned** from the stream. Per model and
  feature, the first closed window that has at least ``min_samples`` values becomes the
  reference (reason ``reference_pinned``; that window is not tested) and every later window
  is compared with it. The pinned reference is part of the snapshot, so a restart keeps it.

>>> import numpy as np
>>> from engine.config import DriftConfig
>>> from engine.learning.records import PredictionRecord
>>> rng = np.random.default_rng(0)
>>> mon = DriftMonitor(DriftConfig(window_ms=1_000, min_samples=100))
>>> def records(start_ms, shift):
...     xs = rng.normal(shift, 1.0, 500)
...     return [PredictionRecord(f"r{start_ms}-{i}", "ctr", "1", "primary", start_ms + i,
...                              score=0.5, features={"user.x": float(x)}) for i, x in enumerate(xs)]
>>> mon.observe(records(0, 0.0)).records
500
>>> [s.reason for s in mon.advance(1_000).skipped]  # the first full window is pinned
['reference_pinned', 'reference_pinned']
>>> _ = mon.observe(records(1_000, 2.0))
>>> out = mon.advance(2_000)
>>> sorted({(a.kind, a.feature, a.statistic) for a in out.alerts})
[('data_drift', 'user.x', 'js_distance'), ('data_drift', 'user.x', 'ks_p_value'), ('data_drift', 'user.x', 'psi')]
"""

from __future__ import annotations

import math
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping

import datasketches
import numpy as np
import orjson
import pandas as pd

from engine.alerts import AlertKind, DriftAlert
from engine.config import DriftConfig
from engine.drift.binning import Binning, quantile_binning, sturges_evidently_binning, uniform_binning
from engine.drift.statistics import DriftResult, js_distance, kll_sketch, ks_exact, ks_kll, psi
from engine.learning.records import PredictionRecord

__all__ = [
    "SCORE",
    "SHADOW",
    "DriftMonitor",
    "DriftStat",
    "MonitorOutput",
    "ObserveCounts",
    "Reference",
    "SkippedTest",
    "load_reference",
    "numeric_value",
]

#: The feature name under which the prediction score is monitored (prediction drift).
SCORE = "score"
#: The variant whose records are ignored unless ``include_shadow``.
SHADOW = "shadow"
#: KLL sketch size for ``ks_method="kll"`` (the datasketches default; rank error ~1.3 %).
KLL_K = 200

# DriftResult.statistic -> the name used in stats, alerts and metrics. ``ks_p_value`` is the
# name engine.alerts.severity_of knows as "smaller is worse".
_STATISTIC_NAMES = {"psi": "psi", "js_distance": "js_distance", "ks_pvalue": "ks_p_value", "ks_kll": "ks_kll_d"}

SkipReason = Literal["min_samples", "no_reference", "reference_pinned"]
InvalidReason = Literal["missing", "non_numeric"]


def numeric_value(value: Any) -> float | None:
    """``value`` as a float when it is an int or a finite float (not a bool), else None.

    >>> numeric_value(3), numeric_value(2.5), numeric_value(True), numeric_value("1"), numeric_value(float("nan"))
    (3.0, 2.5, None, None, None)
    """
    if value.__class__ is float:
        return value if math.isfinite(value) else None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    v = float(value)
    return v if math.isfinite(v) else None


# -- reference -------------------------------------------------------------------------------


@dataclass
class Reference:
    """Reference values per model (``None`` = every model) and feature, loaded from a file.

    >>> ref = Reference.from_rows([{"user.x": 1.0, "score": 0.2}, {"user.x": 2, "model": "ctr"}, {"user.x": "?"}])
    >>> ref.values_for("ctr", "user.x").tolist(), ref.values_for("other", "user.x").tolist()
    ([2.0], [1.0])
    >>> ref.values_for("ctr", "score").tolist(), ref.values_for("ctr", "user.y") is None
    ([0.2], True)
    """

    values: dict[str | None, dict[str, np.ndarray]]
    source: str = "rows"

    def values_for(self, model: str, feature: str) -> np.ndarray | None:
        """The model's own reference values for ``feature``, else the shared ones, else None."""
        own = self.values.get(model, {}).get(feature)
        return own if own is not None else self.values.get(None, {}).get(feature)

    @classmethod
    def from_frame(cls, df: pd.DataFrame, source: str = "frame") -> "Reference":
        """Columns = features (non-numeric cells dropped); an optional ``model`` column."""
        groups: list[tuple[str | None, pd.DataFrame]] = [(None, df)]
        if "model" in df.columns:
            has_model = df["model"].notna() & (df["model"].astype(str) != "")
            groups = [(None, df[~has_model])]
            groups += [(str(m), g) for m, g in df[has_model].groupby(df[has_model]["model"].astype(str))]
        values: dict[str | None, dict[str, np.ndarray]] = {}
        for model, frame in groups:
            for column in frame.columns:
                if column == "model" or frame[column].dtype == bool:
                    continue
                arr = np.fromiter(
                    (v for v in map(numeric_value, frame[column].tolist()) if v is not None), dtype=np.float64
                )
                if arr.size:
                    values.setdefault(model, {})[str(column)] = arr
        return cls(values, source)

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]], source: str = "rows") -> "Reference":
        """Rows of feature values, or prediction-record-like rows (``features``, ``score``, ``model``)."""
        flat = []
        for row in rows:
            if isinstance(row.get("features"), Mapping):
                flat.append({**row["features"], SCORE: row.get(SCORE), "model": row.get("model")})
            else:
                flat.append(dict(row))
        return cls.from_frame(pd.DataFrame.from_records(flat), source)


def load_reference(path: str | os.PathLike[str]) -> Reference:
    """Load a reference from a ``.parquet`` file or a JSONL file (one JSON object a line).

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "ref.jsonl"
    >>> _ = p.write_text('{"user.x": 1.0}\\n{"user.x": 3.0}\\n')
    >>> load_reference(p).values_for("any", "user.x").tolist()
    [1.0, 3.0]
    """
    p = Path(path)
    if p.suffix == ".parquet":
        return Reference.from_frame(pd.read_parquet(p), source=str(p))
    with open(p, "rb") as fh:
        rows = [orjson.loads(line) for line in fh if line.strip()]
    return Reference.from_rows(rows, source=str(p))


# -- outputs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftStat:
    """One statistic of one feature over one closed window (alert or not)."""

    model: str
    feature: str
    kind: AlertKind
    statistic: str
    value: float
    threshold: float
    drifted: bool
    window_start_ms: int
    window_end_ms: int
    n_window: int
    reference: str
    result: DriftResult

    def details(self) -> dict[str, Any]:
        """The alert's ``details``: the DriftResult dict plus window size and reference origin."""
        return {**self.result.to_dict(), "n_window": self.n_window, "reference": self.reference}

    def to_alert(self, at_ms: int) -> DriftAlert:
        """This statistic as an alert (whether or not it drifted)."""
        return DriftAlert(
            self.kind, self.model, self.feature, self.statistic, self.value, self.threshold,
            self.window_start_ms, self.window_end_ms, at_ms, self.details(),
        )


@dataclass(frozen=True)
class SkippedTest:
    """A feature of a closed window that was not tested, and why."""

    model: str
    feature: str
    window_start_ms: int
    window_end_ms: int
    reason: SkipReason
    n_window: int


@dataclass
class MonitorOutput:
    """What one :meth:`DriftMonitor.advance` produced."""

    stats: list[DriftStat] = field(default_factory=list)
    alerts: list[DriftAlert] = field(default_factory=list)
    skipped: list[SkippedTest] = field(default_factory=list)
    windows_closed: int = 0

    def __bool__(self) -> bool:
        return bool(self.stats or self.skipped or self.windows_closed)


@dataclass
class ObserveCounts:
    """What :meth:`DriftMonitor.observe` did with the records it got (per call or cumulative)."""

    records: int = 0  # records taken into a window
    shadow: int = 0  # ignored shadow records
    late: int = 0  # records whose window had already closed
    invalid: Counter = field(default_factory=Counter)  # (model, feature, reason) -> values skipped

    def add(self, other: "ObserveCounts") -> None:
        self.records += other.records
        self.shadow += other.shadow
        self.late += other.late
        self.invalid.update(other.invalid)


# -- state -----------------------------------------------------------------------------------


class _Sample:
    """Bounded values of one feature in one window: exact, then a uniform reservoir; + KLL."""

    __slots__ = ("n", "values", "sketch")

    def __init__(self, kll_k: int | None) -> None:
        self.n = 0
        self.values: list[float] = []
        self.sketch = datasketches.kll_doubles_sketch(kll_k) if kll_k else None

    def add(self, value: float, cap: int, rng: random.Random) -> None:
        self.n += 1
        if len(self.values) < cap:
            self.values.append(value)
        else:
            j = rng.randrange(self.n)  # Algorithm R: every value kept with probability cap / n
            if j < cap:
                self.values[j] = value
        if self.sketch is not None:
            self.sketch.update(value)

    def to_state(self) -> dict[str, Any]:
        # KLL sketches do not pickle: snapshots hold their serialised bytes.
        return {"n": self.n, "values": self.values, "sketch": None if self.sketch is None else self.sketch.serialize()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "_Sample":
        s = cls(None)
        s.n, s.values = state["n"], list(state["values"])
        if state["sketch"] is not None:
            s.sketch = datasketches.kll_doubles_sketch.deserialize(state["sketch"])
        return s


@dataclass
class _Pinned:
    """A reference pinned from the stream: the sample of the first full window."""

    sample: _Sample
    window_start_ms: int
    window_end_ms: int


@dataclass
class _FeatureRef:
    """What a comparison needs from the reference, prepared once per feature."""

    values: np.ndarray
    origin: str
    binning: Binning | None = None  # quantile / uniform only (Sturges depends on the window)
    sketch: Any = None


class DriftMonitor:
    """Tumbling-window drift monitor over prediction records; see the module docs.

    Args:
        config: the ``drift`` config section (window, thresholds, binning, KS method...).
        reference: the reference distributions; ``None`` pins the first full window per
            model and feature (``config.reference`` is *not* read here: the caller loads it
            with :func:`load_reference`, once for all monitors).
        seed: seeds the reservoir sampling.
        include_shadow: also monitor ``variant == "shadow"`` records.

    One watermark drives all models of a monitor; the drift dataflow keeps one monitor per
    model. State is plain data (:meth:`snapshot` / :meth:`restore`).
    """

    def __init__(
        self,
        config: DriftConfig,
        reference: Reference | None = None,
        *,
        seed: int = 0,
        include_shadow: bool = False,
    ) -> None:
        self.config = config
        self.reference = reference
        self.include_shadow = include_shadow
        self._rng = random.Random(seed)
        self._kll_k = KLL_K if config.ks_method == "kll" else None
        # model -> window start -> feature -> sample
        self._windows: dict[str, dict[int, dict[str, _Sample]]] = {}
        self._pinned: dict[tuple[str, str], _Pinned] = {}
        self._prepared: dict[tuple[str, str], _FeatureRef] = {}
        self.closed_upto_ms: int | None = None  # every window ending at or before this is closed
        self.counts = ObserveCounts()

    # -- ingest -------------------------------------------------------------------------
    @property
    def open_windows(self) -> int:
        """Windows (all models) holding values, not closed yet."""
        return sum(len(w) for w in self._windows.values())

    def observe(self, records: Iterable[PredictionRecord]) -> ObserveCounts:
        """Add records to their windows; returns what happened to them (also added to :attr:`counts`)."""
        out = ObserveCounts()
        w_ms, cap, rng, kll_k = self.config.window_ms, self.config.max_window_samples, self._rng, self._kll_k
        closed = self.closed_upto_ms
        for rec in records:
            if rec.variant == SHADOW and not self.include_shadow:
                out.shadow += 1
                continue
            start = rec.event_time_ms - rec.event_time_ms % w_ms
            if closed is not None and start + w_ms <= closed:
                out.late += 1
                continue
            out.records += 1
            window = self._windows.setdefault(rec.model, {}).setdefault(start, {})
            for name, raw in (*rec.features.items(), (SCORE, rec.score)):
                value = numeric_value(raw)
                if value is None:
                    out.invalid[(rec.model, name, "missing" if raw is None else "non_numeric")] += 1
                    continue
                sample = window.get(name)
                if sample is None:
                    sample = window[name] = _Sample(kll_k)
                sample.add(value, cap, rng)
        self.counts.add(out)
        return out

    # -- closing --------------------------------------------------------------------------
    def advance(self, watermark_ms: int, at_ms: int | None = None) -> MonitorOutput:
        """Close and test every window ending at or before ``watermark_ms`` (monotone).

        ``at_ms`` stamps the alerts (default: the wall clock).
        """
        w_ms = self.config.window_ms
        upto = watermark_ms - watermark_ms % w_ms
        if self.closed_upto_ms is not None and upto <= self.closed_upto_ms:
            return MonitorOutput()
        self.closed_upto_ms = upto
        at = int(time.time() * 1000) if at_ms is None else at_ms
        out = MonitorOutput()
        for model in sorted(self._windows):
            windows = self._windows[model]
            for start in sorted(s for s in windows if s + w_ms <= upto):
                self._close(model, start, windows.pop(start), at, out)
                out.windows_closed += 1
            if not windows:
                del self._windows[model]
        return out

    def _close(self, model: str, start: int, samples: dict[str, _Sample], at_ms: int, out: MonitorOutput) -> None:
        end = start + self.config.window_ms
        pinned_features = {f for m, f in self._pinned if m == model}
        for feature in sorted(samples.keys() | pinned_features):
            sample = samples.get(feature)
            n = 0 if sample is None else sample.n
            if sample is None or n < self.config.min_samples:
                out.skipped.append(SkippedTest(model, feature, start, end, "min_samples", n))
                continue
            ref = self._feature_ref(model, feature)
            if ref is None:
                if self.reference is not None:
                    out.skipped.append(SkippedTest(model, feature, start, end, "no_reference", n))
                else:
                    self._pinned[(model, feature)] = _Pinned(sample, start, end)
                    out.skipped.append(SkippedTest(model, feature, start, end, "reference_pinned", n))
                continue
            for result in self._compare(ref, sample):
                stat = DriftStat(
                    model=model,
                    feature=feature,
                    kind="prediction_drift" if feature == SCORE else "data_drift",
                    statistic=_STATISTIC_NAMES[result.statistic],
                    value=result.value,
                    threshold=result.threshold,
                    drifted=result.drifted,
                    window_start_ms=start,
                    window_end_ms=end,
                    n_window=n,
                    reference=ref.origin,
                    result=result,
                )
                out.stats.append(stat)
                if stat.drifted:
                    out.alerts.append(stat.to_alert(at_ms))

    def _feature_ref(self, model: str, feature: str) -> _FeatureRef | None:
        key = (model, feature)
        ref = self._prepared.get(key)
        if ref is not None:
            return ref
        sketch = None
        if self.reference is not None:
            values = self.reference.values_for(model, feature)
            if values is None or values.size < 2:
                return None
            origin = f"file:{self.reference.source}"
        else:
            pinned = self._pinned.get(key)
            if pinned is None:
                return None
            values = np.asarray(pinned.sample.values, dtype=np.float64)
            origin = f"pinned:{pinned.window_start_ms}-{pinned.window_end_ms}"
            sketch = pinned.sample.sketch
        cfg = self.config
        if cfg.ks_method == "kll" and sketch is None:
            sketch = kll_sketch(values, k=KLL_K)
        binning = None
        if cfg.binning == "quantile":
            binning = quantile_binning(values, cfg.n_bins, cfg.epsilon)
        elif cfg.binning == "uniform":
            binning = uniform_binning(values, cfg.n_bins, cfg.epsilon)
        ref = self._prepared[key] = _FeatureRef(values, origin, binning, sketch)
        return ref

    def _compare(self, ref: _FeatureRef, sample: _Sample) -> list[DriftResult]:
        cfg = self.config
        cur = np.asarray(sample.values, dtype=np.float64)
        b = ref.binning or sturges_evidently_binning(ref.values, cur, cfg.epsilon)
        results = [psi(ref.values, cur, b, cfg.psi_threshold), js_distance(ref.values, cur, b, cfg.js_threshold)]
        if cfg.ks_method == "kll":
            results.append(ks_kll(ref.sketch, sample.sketch, threshold=cfg.ks_p_value))
        else:
            results.append(ks_exact(ref.values, cur, threshold=cfg.ks_p_value))
        return results

    # -- state ------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Plain, picklable state (open windows, pinned references, counters, RNG).

        A file reference is not included: it is loaded again from the config on restart.
        """
        return {
            "windows": {
                m: {s: {f: smp.to_state() for f, smp in feats.items()} for s, feats in ws.items()}
                for m, ws in self._windows.items()
            },
            "pinned": {
                k: (p.sample.to_state(), p.window_start_ms, p.window_end_ms) for k, p in self._pinned.items()
            },
            "closed_upto_ms": self.closed_upto_ms,
            "counts": (self.counts.records, self.counts.shadow, self.counts.late, dict(self.counts.invalid)),
            "rng": self._rng.getstate(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Load a :meth:`snapshot`."""
        self._windows = {
            m: {s: {f: _Sample.from_state(st) for f, st in feats.items()} for s, feats in ws.items()}
            for m, ws in state["windows"].items()
        }
        self._pinned = {k: _Pinned(_Sample.from_state(st), s, e) for k, (st, s, e) in state["pinned"].items()}
        self._prepared = {}
        self.closed_upto_ms = state["closed_upto_ms"]
        records, shadow, late, invalid = state["counts"]
        self.counts = ObserveCounts(records, shadow, late, Counter(invalid))
        self._rng.setstate(state["rng"])
