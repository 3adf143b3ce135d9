"""Impressions and clicks per variant: logged predictions joined with their outcomes.

The join is the learning dataflow's (:class:`engine.learning.join.LabelJoiner`), driven
in-process over a bounded set of records: a prediction joins an explicit label (``labels``
topic) or an implicit one (an ``events`` interaction of an implicit-label type, ``click`` by
default, that carries the prediction's ``request_id``; the item must match when both name
one) whose event time lies within ``label_window_ms`` of the prediction.

Only *mature* predictions count: those whose label window has closed by the end of the
data (the newest event time seen, minus ``out_of_orderness_ms``). A prediction from the last
window could still be clicked, and counting it as an impression without a click would bias
the newest arm's CTR down. Shadow predictions (variant ``shadow``) are left out: their
scores were never shown. One impression is one logged instance, so a ranking request that
scored ten items is ten impressions, and a click on item 7 joins the item-7 prediction only.

>>> from engine.learning.records import PredictionRecord
>>> from engine.learning.join import LabelIn
>>> preds = [PredictionRecord(f"r{i}", "ctr", "2" if i % 2 else "1", "treatment" if i % 2 else "control",
...                           1_000 + i, 0.5) for i in range(6)]
>>> clicks = [LabelIn("r1", 1.0, 1_500, implicit=True), LabelIn("r2", 1.0, 1_600, implicit=True)]
>>> tally = count_variants(preds, clicks, model="ctr", label_window_ms=10_000, end_ms=20_000)
>>> [(a.variant, a.impressions, a.clicks, a.versions) for a in tally.arms.values()]
[('control', 3, 1, ['1']), ('treatment', 3, 1, ['2'])]
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Sequence

import orjson

from engine.events.schemas import Interaction, Label
from engine.events.validation import validate_interaction, validate_label
from engine.learning.join import JoinSettings, LabelIn, LabelJoiner
from engine.learning.records import BadRecord, PredictionRecord, parse_prediction
from serving.routing import SHADOW

if TYPE_CHECKING:
    from engine.config import RtmlConfig


@dataclass(slots=True)
class ArmCounts:
    """One variant's mature impressions and the clicks among them."""

    variant: str
    impressions: int = 0
    clicks: int = 0
    versions: list[str] = field(default_factory=list)

    @property
    def ctr(self) -> float:
        return self.clicks / self.impressions if self.impressions else 0.0


@dataclass(slots=True)
class VariantTally:
    """Per-variant counts plus what was left out, and why."""

    arms: dict[str, ArmCounts]
    pending: int = 0  # predictions whose label window is still open
    skipped: Counter[str] = field(default_factory=Counter)  # shadow, other_model, before_since, bad_*
    end_ms: int | None = None


def parse_predictions(raws: Iterable[bytes], skipped: Counter[str] | None = None) -> list[PredictionRecord]:
    """Decode prediction records, counting the unreadable ones in ``skipped`` under ``bad_prediction``."""
    out: list[PredictionRecord] = []
    for raw in raws:
        try:
            out.append(parse_prediction(raw))
        except BadRecord:
            if skipped is not None:
                skipped["bad_prediction"] += 1
    return out


def parse_outcomes(
    raws: Iterable[bytes],
    *,
    implicit_labels: frozenset[str] = frozenset({"click"}),
    now_ms: int,
    max_future_ms: int,
    skipped: Counter[str] | None = None,
) -> tuple[list[LabelIn], int | None]:
    """Explicit labels (objects with ``label``) and implicit ones (interactions of an
    ``implicit_labels`` type that carry a ``request_id``), from ``labels`` / ``events`` records,
    and the newest event time of all valid records.

    Other interactions (views, clicks without a request id) are not outcomes and are skipped,
    but their time counts: the data is complete up to it, as in the learning dataflow's
    watermark. Invalid records are counted under ``bad_outcome``.
    """
    out: list[LabelIn] = []
    newest: int | None = None
    skipped = skipped if skipped is not None else Counter()
    for raw in raws:
        try:
            explicit = b'"label"' in raw and "label" in orjson.loads(raw)
        except orjson.JSONDecodeError:
            explicit = False  # maybe protobuf: let the validator decide
        if explicit:
            lab = validate_label(raw, None, now_ms, max_future_ms)
            if isinstance(lab, Label):
                out.append(LabelIn(lab.request_id, lab.label, lab.event_time, lab.item_id))
                newest = lab.event_time if newest is None else max(newest, lab.event_time)
            else:
                skipped["bad_outcome"] += 1
            continue
        ev = validate_interaction(raw, None, now_ms, max_future_ms)
        if not isinstance(ev, Interaction):
            skipped["bad_outcome"] += 1
            continue
        newest = ev.event_time if newest is None else max(newest, ev.event_time)
        if ev.request_id is not None and ev.event_type in implicit_labels:
            out.append(LabelIn(ev.request_id, 1.0, ev.event_time, ev.item_id, True))
        else:
            skipped["not_an_outcome"] += 1
    return out, newest


def count_variants(
    predictions: Iterable[PredictionRecord],
    outcomes: Iterable[LabelIn],
    *,
    model: str,
    label_window_ms: int,
    out_of_orderness_ms: int = 0,
    since_ms: int | None = None,
    end_ms: int | None = None,
    newest_ms: int | None = None,
    skipped: Counter[str] | None = None,
) -> VariantTally:
    """Join ``model``'s predictions (not shadow, at or after ``since_ms``) with outcomes; count per variant.

    ``end_ms``: the time up to which the data is complete (default: the newest event time
    seen, in the inputs or ``newest_ms`` (other events), minus ``out_of_orderness_ms``);
    predictions whose window ends after it are pending.
    A click is a joined label with value > 0.
    """
    skipped = skipped if skipped is not None else Counter()
    joiner = LabelJoiner(JoinSettings(label_window_ms=label_window_ms, out_of_orderness_ms=out_of_orderness_ms))
    clicked: set[int] = set()  # id() of joined predictions with a positive label
    kept: list[PredictionRecord] = []
    newest = newest_ms
    for p in predictions:
        if p.model != model:
            skipped["other_model"] += 1
            continue
        if p.variant == SHADOW:
            skipped["shadow"] += 1
            continue
        if since_ms is not None and p.event_time_ms < since_ms:
            skipped["before_since"] += 1
            continue
        kept.append(p)
        newest = p.event_time_ms if newest is None else max(newest, p.event_time_ms)
        for ex in joiner.add_prediction(p, None, 0.0):
            if ex.label > 0:
                clicked.add(id(ex.prediction))
    for label in outcomes:
        newest = label.event_time_ms if newest is None else max(newest, label.event_time_ms)
        for ex in joiner.add_label(label, None, 0.0):
            if ex.label > 0:
                clicked.add(id(ex.prediction))
    if end_ms is None and newest is not None:
        end_ms = newest - out_of_orderness_ms
    arms: dict[str, ArmCounts] = {}
    tally = VariantTally(arms, skipped=skipped, end_ms=end_ms)
    for p in sorted(kept, key=lambda r: (r.variant, r.event_time_ms)):
        if end_ms is None or p.event_time_ms + label_window_ms > end_ms:
            tally.pending += 1
            continue
        arm = arms.get(p.variant)
        if arm is None:
            arm = arms[p.variant] = ArmCounts(p.variant)
        arm.impressions += 1
        arm.clicks += id(p) in clicked
        if p.version not in arm.versions:
            arm.versions.append(p.version)
    return tally


def load_tally(
    prediction_raws: Sequence[bytes],
    outcome_raws: Sequence[bytes],
    *,
    model: str,
    label_window_ms: int,
    out_of_orderness_ms: int,
    implicit_labels: frozenset[str],
    now_ms: int,
    max_future_ms: int,
    since_ms: int | None = None,
) -> VariantTally:
    """:func:`count_variants` over raw ``predictions`` and ``labels`` / ``events`` records."""
    skipped: Counter[str] = Counter()
    predictions = parse_predictions(prediction_raws, skipped)
    outcomes, newest = parse_outcomes(outcome_raws, implicit_labels=implicit_labels, now_ms=now_ms,
                                      max_future_ms=max_future_ms, skipped=skipped)
    return count_variants(predictions, outcomes, model=model, label_window_ms=label_window_ms,
                          out_of_orderness_ms=out_of_orderness_ms, since_ms=since_ms, newest_ms=newest,
                          skipped=skipped)


def tally_for_config(
    cfg: "RtmlConfig",
    model: str,
    prediction_raws: Sequence[bytes],
    outcome_raws: Sequence[bytes],
    *,
    label_window_ms: int | None = None,
    since_ms: int | None = None,
    now_ms: int | None = None,
) -> VariantTally:
    """:func:`load_tally` with the join settings of the rtml config (``learning`` and ``pipeline``)."""
    import time

    lc = cfg.learning
    implicit = frozenset(lc.implicit_label_types)
    return load_tally(
        prediction_raws, outcome_raws, model=model, label_window_ms=label_window_ms or lc.label_window_ms,
        out_of_orderness_ms=lc.out_of_orderness_ms, implicit_labels=implicit,
        now_ms=int(time.time() * 1000) if now_ms is None else now_ms, max_future_ms=cfg.pipeline.max_future_ms,
        since_ms=since_ms,
    )
