"""Every learner kind learns through OnlineLearner, snapshots, and serves the same scores."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from engine.learning.learners import LearnerSpec, load_learners
from engine.learning.online import OnlineLearner
from engine.learning.records import JoinedExample, PredictionRecord
from engine.learning.snapshots import load_snapshot, publish_snapshot


def _stream(n: int, seed: int = 1) -> list[JoinedExample]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.random(), rng.random()
        features = {"user.a_1h": a, "request.b": b, "request.note": "text", "request.flag": True}
        rec = PredictionRecord(f"r{i}", "m", "1", "primary", i, None, features)
        out.append(JoinedExample(rec, 1.0 if a + 0.3 * b > 0.65 else 0.0, "label", i + 1))
    return out


@pytest.mark.parametrize("kind", ["logistic_regression", "fm", "hoeffding_adaptive_tree", "arf"])
def test_each_kind_learns_and_its_snapshot_scores_identically(kind: str, tmp_path: Path) -> None:
    learner = OnlineLearner(LearnerSpec(name="m", kind=kind, params={"n_models": 3} if kind == "arf" else {}))
    for ex in _stream(1500):
        learner.learn(ex)
    report = learner.validation.report()
    # Trees predict nothing before their first example: that one is not scored (River does the same).
    assert report["n"] >= 1499 and report["rolling"]["accuracy"] > 0.75, report
    assert learner.features == ["user.a_1h", "request.b"]  # non-numeric values are not features
    version = publish_snapshot(tmp_path, "m", learner.model, features=learner.features, kind=kind)
    served = load_snapshot(tmp_path / "m" / version).model
    for ex in _stream(20, seed=2):
        x = learner.features_of(ex.features)
        assert served.predict_proba_one(x) == learner.model.predict_proba_one(x)


def test_reset_on_drift_starts_a_fresh_model() -> None:
    learner = OnlineLearner(LearnerSpec(name="m", kind="logistic_regression"), on_drift="reset")
    stream = _stream(3000)
    for ex in stream[1500:]:
        ex.label = 1.0 - ex.label  # the concept flips halfway
    drifts = sum(learner.learn(ex) for ex in stream)
    assert drifts >= 1 and learner.resets == drifts


def test_detector_grace_silences_the_warm_up_only() -> None:
    stream = _stream(3000)
    for ex in stream[:200] + stream[1500:]:
        ex.label = 1.0 - ex.label  # a confusing start, then the concept flips halfway

    def drift_indices(grace: int) -> list[int]:
        learner = OnlineLearner(LearnerSpec(name="m", kind="logistic_regression"), detector_grace=grace)
        return [i for i, ex in enumerate(stream) if learner.learn(ex)]

    assert all(i >= 1000 for i in drift_indices(1000))  # nothing inside the grace period
    assert any(i >= 1500 for i in drift_indices(1000))  # the real drift is still found


def test_learner_specs_file_is_validated(tmp_path: Path) -> None:
    path = tmp_path / "learners.yaml"
    path.write_text("learners:\n  - {name: a, kind: fm, params: {n_factors: 4}, learn_from: [ranker]}\n")
    [spec] = load_learners(path)
    assert spec.learns_from("ranker", "canary") and not spec.learns_from("ranker", "shadow")
    assert not spec.learns_from("a", "primary")
    path.write_text("learners:\n  - {name: a, kind: fm, params: {no_such_param: 1}}\n")
    with pytest.raises(TypeError):
        load_learners(path)


def test_features_of_keeps_finite_numbers_only_and_reuses_a_clean_dict() -> None:
    learner = OnlineLearner(LearnerSpec(name="ctr", kind="logistic_regression"))
    clean = {"a": 1.0, "b": -2.5}
    assert learner.features_of(clean) is clean  # all finite floats: the record's dict, uncopied
    assert learner.features == ["a", "b"]
    mixed = {"a": 1, "flag": True, "name": "x", "bad": float("nan"), "big": float("inf"), "c": 3.0, "none": None}
    assert learner.features_of(mixed) == {"a": 1.0, "c": 3.0}  # ints become floats; the rest is dropped
    assert learner.features == ["a", "b", "c"]
    overflow = {"x": 1e308, "y": 1e308}  # finite values whose sum overflows: still kept
    assert learner.features_of(overflow) == overflow
    assert learner.features_of({}) == {}
    fixed = OnlineLearner(LearnerSpec(name="f", kind="logistic_regression", features=("b", "a")))
    assert list(fixed.features_of(clean)) == ["b", "a"]  # the spec's order, always a new dict


@pytest.mark.parametrize("on_drift", ["alert", "reset"])
@pytest.mark.parametrize("chunk", [1, 7, 500])
def test_learn_many_matches_one_at_a_time(on_drift: str, chunk: int) -> None:
    """Runs of any length: the same drifts at the same examples, metrics and model."""
    stream = _stream(3000, seed=3)
    for ex in stream[1200:2200]:
        ex.label = 1.0 - ex.label  # two concept changes
    for ex in stream[::97]:
        ex.prediction.features = {"request.note": "no numbers"}  # examples without features
    one = OnlineLearner(LearnerSpec(name="m", kind="logistic_regression"), on_drift=on_drift)  # type: ignore[arg-type]
    expected = []
    for i, ex in enumerate(stream):
        if one.learn(ex):
            expected.append((i, one.seen, one.validation.report()["rolling"]))
    many = OnlineLearner(LearnerSpec(name="m", kind="logistic_regression"), on_drift=on_drift)  # type: ignore[arg-type]
    found = []
    at = 0
    while at < len(stream):
        part = stream[at:at + chunk]

        def seen(index: int, seen_then: int, offset: int = at) -> None:
            found.append((offset + index, seen_then, many.validation.report()["rolling"]))

        at += many.learn_many([ex.features for ex in part], [ex.label for ex in part], on_drift=seen)
    assert len(expected) >= 2 and found == expected
    assert many.validation.report() == one.validation.report()
    assert (many.seen, many.drifts, many.resets, many.skipped_no_features) == \
        (one.seen, one.drifts, one.resets, one.skipped_no_features)
    x = {"user.a_1h": 0.3, "request.b": 0.9}
    assert many.model.predict_proba_one(x) == one.model.predict_proba_one(x)


def test_learn_many_stops_at_the_requested_count() -> None:
    stream = _stream(100)
    learner = OnlineLearner(LearnerSpec(name="m", kind="logistic_regression"))
    taken = learner.learn_many([ex.features for ex in stream], [ex.label for ex in stream], stop_at_seen=40)
    assert taken == 40 and learner.seen == 40 and learner.validation.report()["n"] == 40


def test_a_spec_with_named_features_keeps_exactly_those() -> None:
    learner = OnlineLearner(LearnerSpec(name="m", kind="logistic_regression", features=["a"]))
    learner.note_features(["a", "b"])
    learner.learn_many([{"a": 1.0, "b": 2.0}] * 5, [1.0] * 5, clean=True)
    assert learner.features == ["a"]
    assert set(learner.model["LogisticRegression"].weights) == {"a"}
