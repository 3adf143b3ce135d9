"""Learner batches: what crosses processes, and how it comes back."""

from __future__ import annotations

import pickle

from engine.learning.records import JoinedExample, PredictionRecord
from operators.learn import LearnerBatch, RowDicts


def _examples(features: list[dict], start: int = 0) -> list[JoinedExample]:
    return [JoinedExample(PredictionRecord(f"r{i}", "m", "1", "primary", i, None, f), float(i % 2), "label", start + i)
            for i, f in enumerate(features)]


def test_a_batch_comes_back_equal_with_interned_shared_names() -> None:
    rows = [{"user.a": float(i), "user.b": 0.5} for i in range(4)]
    batch = LearnerBatch.of(_examples(rows))
    assert batch.clean
    first, second = pickle.loads(pickle.dumps(batch)), pickle.loads(pickle.dumps(batch))
    assert isinstance(first.values, RowDicts)
    assert list(first.values) == rows and first.labels == batch.labels and first.label_times == batch.label_times
    # The same key objects in every batch: River's dict lookups skip the string comparison.
    assert all(a is b for a, b in zip(next(iter(first.values)), next(iter(second.values))))
    assert first.feature_names() == ["user.a", "user.b"]
    assert first.values[1:3][0] == rows[1] and len(first.values[1:]) == 3


def test_mixed_layouts_and_unclean_values_survive() -> None:
    rows = [{"a": 1.0}, {"b": 2.0, "a": 3.0}, {"a": "text"}, {"a": float("nan")}]
    batch = LearnerBatch.of(_examples(rows))
    assert not batch.clean
    back = pickle.loads(pickle.dumps(batch))
    assert [list(d.items()) for d in back.values][:3] == [list(d.items()) for d in rows][:3]
    assert back.feature_names() == ["a", "b"] and not back.clean


def test_batches_merge_in_label_time_order() -> None:
    early = LearnerBatch.of(_examples([{"a": 1.0}, {"a": 3.0}], start=10))  # label times 10, 11
    late = LearnerBatch.of(_examples([{"a": 2.0}], start=5))  # label time 5
    for batches in ([early, late], [pickle.loads(pickle.dumps(b)) for b in (early, late)]):
        merged = LearnerBatch.in_label_time_order(batches)
        assert merged.label_times == [5, 10, 11]
        assert [d["a"] for d in merged.values] == [2.0, 1.0, 3.0]
        assert merged.clean
