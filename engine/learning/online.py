"""One online learner: predict, score, learn -- in River's progressive-validation order.

For every joined example, :meth:`OnlineLearner.learn` does exactly what
``river.evaluate.progressive_val_score`` does: predict with the current model, update the
metrics only when the prediction is not empty, then ``learn_one``. The decision is the most
probable class (River's ``predict_one``: a 0.5/0.5 tie goes to the first class, False). The
0/1 error of each decision feeds a concept-drift detector that alerts only when the error
*rises* (:class:`~engine.drift.detectors.ErrorRiseDetector`); with ``on_drift="reset"`` the
model then starts afresh.

>>> from engine.learning.learners import LearnerSpec
>>> from engine.learning.records import JoinedExample, PredictionRecord
>>> learner = OnlineLearner(LearnerSpec(name="ctr", kind="logistic_regression"))
>>> for i in range(200):
...     x = {"request.a": float(i % 2)}
...     rec = PredictionRecord(f"r{i}", "ctr", "1", "primary", 1_000 + i, None, x)
...     _ = learner.learn(JoinedExample(rec, float(i % 2), "label", 1_001 + i))
>>> learner.validation.report()["accuracy"] > 0.95, learner.features
(True, ['request.a'])
"""

from __future__ import annotations

import time
from operator import ne
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

from engine.drift.detectors import DetectorName, ErrorRiseDetector
from engine.learning.evaluation import ProgressiveValidation
from engine.learning.learners import LearnerSpec, build_model
from engine.learning.records import JoinedExample


def clean_features(values: Any) -> bool:
    """A dict whose values are all floats (not ints, bools or anything else), all finite:
    a model input as it is. C-level loops only.

    >>> clean_features({"a": 1.0}), clean_features({"a": 1}), clean_features({"a": float("nan")})
    (True, False, False)
    """
    if values.__class__ is not dict:
        return False
    vals = values.values()
    if not vals or set(map(type, vals)) != _FLOAT_ONLY:
        return False
    total = sum(vals)
    return total - total == 0.0  # inf or nan anywhere (or an overflowing sum): not taken


_FLOAT_ONLY = {float}


def _example_index(entry: int, holes: list[int]) -> int:
    """The example behind metrics entry ``entry``, given the examples without one (ascending)."""
    index = entry
    for hole in holes:
        if hole > index:
            break
        index += 1
    return index


class OnlineLearner:
    """A River model learning from joined examples, with its progressive metrics and detector."""

    def __init__(
        self,
        spec: LearnerSpec,
        *,
        window: int = 5_000,
        detector: DetectorName = "hddm_a",
        on_drift: Literal["alert", "reset"] = "alert",
        detector_grace: int = 0,
    ) -> None:
        self.spec = spec
        self.model = build_model(spec)
        self.validation = ProgressiveValidation(window)
        # A fresh learner's error moves while it warms up: no alerts for its first examples.
        self.detector = ErrorRiseDetector(detector, grace_period=detector_grace)
        self.on_drift = on_drift
        self.features: list[str] = list(spec.features or ())
        self._fixed_features = spec.features is not None
        self._known = set(self.features)
        self.seen = 0
        self.since_snapshot = 0
        self.last_snapshot_s = time.time()
        self.drifts = 0
        self.resets = 0
        self.skipped_no_features = 0

    def features_of(self, values: Mapping[str, Any]) -> dict[str, float]:
        """The model input: the spec's features (or every numeric one), in a stable order.

        When every value is already a finite float (what serving logs) and the spec names no
        features, the record's own dict is the input, uncopied: River never mutates its input.
        """
        if not self._fixed_features and clean_features(values):
            self.note_features(values)
            return values  # type: ignore[return-value]
        x: dict[str, float] = {}
        names = self.features if self._fixed_features else values
        for name in names:
            v = values.get(name)
            if v.__class__ is not float:
                if v.__class__ is not int:  # bool, str, None, nested values: not a number
                    continue
                v = float(v)  # type: ignore[arg-type]
            if v - v != 0.0:  # inf or nan
                continue
            x[name] = v  # type: ignore[assignment]
        if not self._fixed_features:
            self.note_features(x)
        return x

    def note_features(self, names: Iterable[str]) -> None:
        """Add names not seen before to :attr:`features` (in the order given); a spec that
        names its features keeps exactly those."""
        if not self._fixed_features and not self._known.issuperset(names):
            for name in names:
                if name not in self._known:
                    self._known.add(name)
                    self.features.append(name)

    def learn(self, example: JoinedExample) -> bool:
        """Predict, score, learn one example; True when concept drift was detected on it."""
        drifts = self.drifts
        self.learn_many([example.features], [example.label])
        return self.drifts > drifts

    def learn_many(
        self, values: Iterable[Mapping[str, Any]], labels: Sequence[float], stop_at_seen: int | None = None, *,
        clean: bool = False, on_drift: Callable[[int, int], None] | None = None,
    ) -> int:
        """:meth:`learn` on each value and its label, in order; how many it went through.

        Stops once :attr:`seen` reaches ``stop_at_seen``. For each example on which concept
        drift is detected, ``on_drift(its index, seen then)`` is called when the metrics
        include exactly the examples up to it. With ``on_drift="reset"`` the model starts afresh there, and
        this call stops after that example; otherwise the detector reads the run's errors once
        the model has learnt them (the same decisions, without a call per example).

        ``clean=True``: the caller vouches that every value passes :func:`clean_features` and
        has called :meth:`note_features` with their names (a learner batch checks that in the
        process that builds it), so each dict is the model input as it is.
        """
        model = self.model
        predict, learn_one = model.predict_proba_one, model.learn_one
        as_is = clean and not self._fixed_features
        resetting = self.on_drift == "reset"
        observe = self.detector.observe
        ys: list[bool] = []
        ps: list[float] = []
        ds: list[bool] = []
        holes: list[int] = []  # examples without a metrics entry (no features, or no prediction)
        unlearnt: list[int] = []  # examples without features (not learnt, not counted in seen)
        seen = start_seen = self.seen
        stop = seen + len(labels) if stop_at_seen is None else stop_at_seen
        drift_at = i = -1
        features_of = self.features_of
        inputs = zip(values, labels) if as_is else ((features_of(raw), label) for raw, label in zip(values, labels))
        for i, (x, label) in enumerate(inputs):
            if not x:
                self.skipped_no_features += 1
                holes.append(i)
                unlearnt.append(i)
                continue
            y = label >= 0.5
            proba = predict(x)
            if proba:
                p = proba.get(True, 0.0)
                q = proba.get(False, 0.0)
                # River's predict_one: the most probable class, a tie to the first one listed.
                decision = p > q if p != q else next(iter(proba)) is True
                ys.append(y)
                ps.append(float(p))
                ds.append(decision)
                if resetting and observe(decision != y):
                    drift_at = i
            else:
                holes.append(i)
            learn_one(x, y)
            seen += 1
            if drift_at >= 0 or seen >= stop:
                break
        taken = i + 1
        self.since_snapshot += seen - self.seen
        self.seen = seen
        if resetting:
            self.validation.update_many(ys, ps, ds)
            if drift_at >= 0:
                self.drifts += 1
                self.reset()
                if on_drift is not None:
                    on_drift(drift_at, seen)
            return taken
        wrong = list(map(ne, ds, ys))
        at = 0
        while (k := self.detector.first_alert(wrong, at)) is not None:
            self.validation.update_many(ys[at:k + 1], ps[at:k + 1], ds[at:k + 1])
            self.drifts += 1
            if on_drift is not None:
                index = _example_index(k, holes)
                on_drift(index, start_seen + index + 1 - sum(1 for u in unlearnt if u <= index))
            at = k + 1
        self.validation.update_many(ys[at:], ps[at:], ds[at:])
        return taken

    def reset(self) -> None:
        """Start the model afresh (metrics and counters continue)."""
        self.model = build_model(self.spec)
        self.detector.reset()
        self.resets += 1

    def snapshot_due(self, every_examples: int, every_s: float, now_s: float) -> bool:
        """True when enough examples or time passed since the last snapshot (and it learnt)."""
        if self.since_snapshot == 0:
            return False
        return self.since_snapshot >= every_examples or now_s - self.last_snapshot_s >= every_s

    def mark_snapshot(self, now_s: float) -> None:
        self.since_snapshot = 0
        self.last_snapshot_s = now_s

    def report(self) -> dict[str, Any]:
        """Progressive metrics plus counters, as published to the metrics topic."""
        return {
            "learner": self.spec.name,
            "kind": self.spec.kind,
            "examples": self.seen,
            "drifts": self.drifts,
            "resets": self.resets,
            "skipped_no_features": self.skipped_no_features,
            **self.validation.report(),
        }
