"""Training-serving skew: features as served versus the same features as a training set sees them.

What is compared
----------------
*Served* values are the ``features`` of logged prediction records (the ``predictions``
topic, or a JSONL file of such records): what the model actually received, read from the
online store (Redis) at prediction time ``T = event_time_ms``. Each feature source
``view.column`` (column ``<feature>_<window>``, see docs/features.md) is recomputed the way
a training set built from the **offline log** (:func:`engine.features.offline.read_offline`)
sees it, point in time: for the record's entity (``entity_ids`` keyed like the features
dataflow keys the view) the row of the **latest closed window** with
``T - ttl <= window_end_ms <= T`` (``ttl`` = the view's TTL) and its column ``<feature>``.
``request.*`` sources (values the request carried) have no offline counterpart and are not
compared.

What the numbers mean
---------------------
Online and offline values differ **by design**: the online value is the *running* window
that contains ``T`` (a partial window for tumbling windows, ``[E - size, E)`` with ``E`` after
``T``), while the offline log holds only *closed* windows (every window ends at or before
``T``), written once the watermark passed them. A count that the model saw as 3 in the
current minute is, for training, the 5 of the last full minute. The report therefore
shows exactly the skew that a model trained on offline point-in-time features suffers when
it is served online features -- not a bug detector (a logic bug shows up as a mismatch
rate that is high even for long, slowly-sliding windows). Other sources of mismatch it
also shows: defaults served when Redis had no value (``defaulted``), an entity with no row
in the offline log within the TTL (``missing_offline``: a training set gets null there; such
rows are counted, not compared), cached predictions (features of an earlier request).

Per feature source and overall:

* ``rows``: served values of that source in the selected records;
* ``compared``: rows with an offline row to compare with;
* ``missing_offline``: no closed window within the TTL (not compared);
* ``no_entity``: the record lacks an entity id the view is keyed by (not compared);
* ``defaulted``: of the compared rows, how many were served a default
  (``feature_defaults`` of the record);
* ``mismatches``: compared rows whose values differ: numbers beyond
  ``math.isclose(served, offline, rel_tol, abs_tol)``, text that is not equal, or one side
  null and the other not (two nulls match); ``mismatch_rate = mismatches / compared``;
* ``mean_abs_diff`` / ``max_abs_diff``: over compared rows where both values are numbers.

Shadow records (``variant == "shadow"``) repeat the primary prediction's features and are
left out unless ``include_shadow``.

>>> import tempfile
>>> from engine.features.offline import OfflineLogWriter
>>> from engine.features.spec import FeatureView
>>> view = FeatureView.from_dict({"name": "user", "entity": "user_id", "windows": {"1m": "1m"},
...     "features": [{"name": "clicks", "agg": "count"}]})
>>> root = tempfile.mkdtemp()
>>> OfflineLogWriter(root, view, "w").write([{"entity": "u1", "window": "1m", "window_start_ms": 0,
...     "window_end_ms": 60_000, "clicks": 4}])
>>> recs = [{"request_id": f"r{i}", "model": "m", "event_time_ms": 90_000, "entity_ids": {"user_id": u},
...          "features": {"user.clicks_1m": v, "request.price": 1.0}} for i, (u, v) in enumerate(
...          [("u1", 4), ("u1", 6), ("u2", 1)])]
>>> report = compare_features(recs, [view], root)
>>> f = report.features[0]
>>> (f.feature, f.rows, f.compared, f.missing_offline, f.mismatches, f.mismatch_rate, f.mean_abs_diff)
('user.clicks_1m', 3, 2, 1, 1, 0.5, 1.0)
>>> report.sources_skipped
{'request': 3}
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import orjson
import pandas as pd

from engine.config import RtmlConfig
from engine.events.topic_reader import read_jsonl_file as read_prediction_file
from engine.events.topic_reader import read_topic as read_prediction_topic
from engine.features.aggregates import ViewProgram
from engine.features.offline import read_offline
from engine.features.spec import FeatureView, default_views_path, load_views
from engine.learning.records import BadRecord, prediction_from_dict

__all__ = [
    "FeatureSkew",
    "SkewReport",
    "compare_features",
    "read_prediction_file",
    "read_prediction_topic",
    "skew_report",
]

REQUEST_SOURCE = "request"  # ``request.<name>``: the request's own value, nothing offline
SHADOW = "shadow"
OVERALL = "(all)"


@dataclass
class FeatureSkew:
    """Skew counts of one feature source (or of all of them: ``feature == "(all)"``)."""

    feature: str
    rows: int = 0
    compared: int = 0
    missing_offline: int = 0
    no_entity: int = 0
    defaulted: int = 0
    mismatches: int = 0
    numeric_pairs: int = 0
    abs_diff_sum: float = 0.0
    max_abs_diff: float | None = None

    @property
    def mismatch_rate(self) -> float | None:
        """``mismatches / compared`` (None when nothing was compared)."""
        return self.mismatches / self.compared if self.compared else None

    @property
    def mean_abs_diff(self) -> float | None:
        """Mean ``|served - offline|`` over compared numeric pairs (None when there are none)."""
        return self.abs_diff_sum / self.numeric_pairs if self.numeric_pairs else None

    def add(self, other: "FeatureSkew") -> None:
        for name in ("rows", "compared", "missing_offline", "no_entity", "defaulted", "mismatches", "numeric_pairs"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.abs_diff_sum += other.abs_diff_sum
        if other.max_abs_diff is not None:
            self.max_abs_diff = max(self.max_abs_diff or 0.0, other.max_abs_diff)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        del out["abs_diff_sum"]
        out["mismatch_rate"] = self.mismatch_rate
        out["mean_abs_diff"] = self.mean_abs_diff
        return out


@dataclass
class SkewReport:
    """Per-feature skew and the totals; see the module docs."""

    features: list[FeatureSkew]
    overall: FeatureSkew
    records: int  # prediction records compared (after the filters)
    records_skipped: dict[str, int] = field(default_factory=dict)  # shadow, other_model, out_of_range, bad reasons
    sources_skipped: dict[str, int] = field(default_factory=dict)  # request, unknown_view, unknown_column
    rel_tol: float = 1e-6
    abs_tol: float = 1e-9

    def to_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "records_skipped": dict(self.records_skipped),
            "sources_skipped": dict(self.sources_skipped),
            "rel_tol": self.rel_tol,
            "abs_tol": self.abs_tol,
            "features": [f.to_dict() for f in self.features],
            "overall": self.overall.to_dict(),
        }

    def to_text(self) -> str:
        """A plain-text table (one line per feature source, then the totals)."""
        cols = ["rows", "compared", "missing_offline", "no_entity", "defaulted", "mismatches"]
        header = ["feature", *cols, "mismatch_rate", "mean_abs_diff", "max_abs_diff"]

        def fmt(x: Any) -> str:
            if x is None:
                return "-"
            return f"{x:.4g}" if isinstance(x, float) else str(x)

        body = [
            [f.feature, *(str(getattr(f, c)) for c in cols), fmt(f.mismatch_rate), fmt(f.mean_abs_diff),
             fmt(f.max_abs_diff)]
            for f in [*self.features, self.overall]
        ]
        widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

        def line(r: list[str]) -> str:
            return "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))

        skipped = ", ".join(f"{k}={v}" for k, v in sorted(self.records_skipped.items())) or "none"
        sources = ", ".join(f"{k}={v}" for k, v in sorted(self.sources_skipped.items())) or "none"
        lines = [
            f"records compared: {self.records}  skipped: {skipped}",
            f"sources not compared: {sources}  tolerance: rel {self.rel_tol:g}, abs {self.abs_tol:g}",
            line(header),
            *(line(r) for r in body),
        ]
        return "\n".join(lines)


# -- the comparison ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Served:
    source: str
    feature: str
    window: str
    entity: str | None
    t: int
    value: Any
    defaulted: bool


def _entity_event(entity_ids: Mapping[str, str]) -> dict[str, Any]:
    # ViewProgram.entity_key reads an event: put ``context.<key>`` entity ids under context.
    event: dict[str, Any] = {"context": {}}
    for k, v in entity_ids.items():
        if k.startswith("context."):
            event["context"][k[len("context."):]] = v
        else:
            event[k] = v
    return event


def _decode(raw: bytes | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(raw, Mapping):
        return dict(raw)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRecord("undecodable", f"not JSON: {exc}") from None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_null(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def compare_features(
    records: Iterable[bytes | Mapping[str, Any]],
    views: Sequence[FeatureView],
    offline_dir: str | os.PathLike[str],
    *,
    rel_tol: float = 1e-6,
    abs_tol: float = 1e-9,
    model: str | None = None,
    include_shadow: bool = False,
    since_ms: int | None = None,
    until_ms: int | None = None,
) -> SkewReport:
    """Compare served features of ``records`` (raw JSON or dicts) with the offline log.

    ``model`` keeps only that model's records; ``since_ms`` / ``until_ms`` keep records with
    ``since_ms <= event_time_ms < until_ms``.
    """
    by_view = {v.name: v for v in views}
    programs = {v.name: ViewProgram(v) for v in views}
    columns = {
        v.name: {f"{feat.name}_{w}": (feat.name, w) for feat in v.features for w in v.windows_of(feat)}
        for v in views
    }
    skipped: Counter[str] = Counter()
    sources_skipped: Counter[str] = Counter()
    served: dict[str, list[_Served]] = {}
    n_records = 0
    for raw in records:
        try:
            d = _decode(raw)
            rec = prediction_from_dict(d)
        except BadRecord as exc:
            skipped[f"bad_{exc.reason}"] += 1
            continue
        if rec.variant == SHADOW and not include_shadow:
            skipped["shadow"] += 1
            continue
        if model is not None and rec.model != model:
            skipped["other_model"] += 1
            continue
        if (since_ms is not None and rec.event_time_ms < since_ms) or (until_ms is not None and rec.event_time_ms >= until_ms):
            skipped["out_of_range"] += 1
            continue
        n_records += 1
        defaults = set(d.get("feature_defaults") or ())
        event = _entity_event(rec.entity_ids)
        for source, value in rec.features.items():
            view_name, _, column = source.partition(".")
            if view_name == REQUEST_SOURCE:
                sources_skipped["request"] += 1
                continue
            if view_name not in by_view:
                sources_skipped["unknown_view"] += 1
                continue
            fw = columns[view_name].get(column)
            if fw is None:
                sources_skipped["unknown_column"] += 1
                continue
            entity = programs[view_name].entity_key(event)
            served.setdefault(view_name, []).append(
                _Served(source, fw[0], fw[1], entity, rec.event_time_ms, value, source in defaults)
            )

    per_feature: dict[str, FeatureSkew] = {}
    for view_name, rows in served.items():
        _compare_view(by_view[view_name], rows, offline_dir, per_feature, rel_tol, abs_tol)
    features = [per_feature[k] for k in sorted(per_feature)]
    overall = FeatureSkew(OVERALL)
    for f in features:
        overall.add(f)
    return SkewReport(features, overall, n_records, dict(skipped), dict(sources_skipped), rel_tol, abs_tol)


def _compare_view(
    view: FeatureView,
    rows: list[_Served],
    offline_dir: str | os.PathLike[str],
    per_feature: dict[str, FeatureSkew],
    rel_tol: float,
    abs_tol: float,
) -> None:
    offline = read_offline(offline_dir, view)
    for r in rows:
        stats = per_feature.setdefault(r.source, FeatureSkew(r.source))
        stats.rows += 1
        if r.entity is None:
            stats.no_entity += 1
    keyed = [(i, r) for i, r in enumerate(rows) if r.entity is not None]
    if not keyed:
        return
    # ``__``-prefixed names cannot collide with a feature column of the offline log.
    left = pd.DataFrame({
        "__i": [i for i, _ in keyed],
        "entity": [r.entity for _, r in keyed],
        "__window": [r.window for _, r in keyed],
        "__t": pd.array([r.t for _, r in keyed], dtype="int64"),
    })
    found: dict[int, Any] = {}  # row index -> offline value (absent: no closed window within the TTL)
    for window, lw in left.groupby("__window"):
        right = offline[offline["window"] == window]
        if right.empty:
            continue
        # Point in time: the latest closed window with T - ttl <= window_end_ms <= T.
        merged = pd.merge_asof(
            lw.sort_values("__t"),
            right.drop(columns=["window"]).astype({"window_end_ms": "int64"}).sort_values("window_end_ms"),
            left_on="__t", right_on="window_end_ms", by="entity", direction="backward",
            allow_exact_matches=True, tolerance=view.ttl_ms,
        )
        hit = merged[merged["window_end_ms"].notna()]
        for i, row in zip(hit["__i"], hit.to_dict("records")):
            found[int(i)] = row[rows[int(i)].feature]
    for i, r in keyed:
        stats = per_feature[r.source]
        if i not in found:
            stats.missing_offline += 1
            continue
        stats.compared += 1
        stats.defaulted += r.defaulted
        off = found[i]
        if _is_null(r.value) or _is_null(off):
            stats.mismatches += not (_is_null(r.value) and _is_null(off))
        elif _is_number(r.value) and _is_number(off):
            diff = abs(float(r.value) - float(off))
            stats.numeric_pairs += 1
            stats.abs_diff_sum += diff
            stats.max_abs_diff = diff if stats.max_abs_diff is None else max(stats.max_abs_diff, diff)
            stats.mismatches += not math.isclose(float(r.value), float(off), rel_tol=rel_tol, abs_tol=abs_tol)
        else:
            stats.mismatches += r.value != off


def skew_report(
    cfg: RtmlConfig,
    source: str | os.PathLike[str] | None = None,
    *,
    model: str | None = None,
    rel_tol: float = 1e-6,
    abs_tol: float = 1e-9,
    include_shadow: bool = False,
    since_ms: int | None = None,
    until_ms: int | None = None,
    views: Sequence[FeatureView] | None = None,
    timeout_s: float = 60.0,
) -> SkewReport:
    """The skew report of a configuration (what ``rtml skew`` prints).

    ``source``: a JSONL file of prediction records, or None to read
    ``learning.predictions_topic`` from the beginning to its current end (needs
    ``kafka.bootstrap``). Views are the configured feature specs, the offline log
    ``pipeline.offline_dir``.
    """
    if source is not None:
        raw = read_prediction_file(source)
    else:
        if not cfg.kafka.bootstrap:
            raise ValueError("skew_report needs kafka.bootstrap to read the predictions topic (or a JSONL file)")
        raw = read_prediction_topic(cfg.kafka.bootstrap, cfg.learning.predictions_topic, timeout_s)
    if views is None:
        views = load_views(cfg.pipeline.feature_specs or default_views_path())
    return compare_features(
        raw, views, Path(cfg.pipeline.offline_dir or ""), rel_tol=rel_tol, abs_tol=abs_tol, model=model,
        include_shadow=include_shadow, since_ms=since_ms, until_ms=until_ms,
    )
