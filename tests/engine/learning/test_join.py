"""The label join on its own: matching, windows, early labels, policies, recovery."""

from __future__ import annotations

import pickle

from engine.learning.join import JoinSettings, LabelIn, LabelJoiner
from engine.learning.records import PredictionRecord

W = 10_000
ORIGIN = ("labels", 0, 1, b"{}", ())


def pred(rid: str, t: int, variant: str = "primary", item: str | None = None) -> PredictionRecord:
    return PredictionRecord(rid, "m", "1", variant, t, 0.5, {"request.x": 1.0},
                            {"item_id": item} if item else {})


def joiner(**kw: object) -> LabelJoiner:
    return LabelJoiner(JoinSettings(label_window_ms=W, out_of_orderness_ms=0, **kw))  # type: ignore[arg-type]


def test_one_label_joins_primary_and_shadow() -> None:
    j = joiner()
    j.add_prediction(pred("r", 0), "p", 0)
    j.add_prediction(pred("r", 0, "shadow"), "p", 0)
    out = j.add_label(LabelIn("r", 1.0, 5, origin=ORIGIN), "l", 0)
    assert sorted(e.prediction.variant for e in out) == ["primary", "shadow"]
    assert j.counts["joined"] == 2


def test_label_before_prediction_joins_and_is_not_routed() -> None:
    j = joiner()
    assert j.add_label(LabelIn("r", 1.0, 500, origin=ORIGIN), "l", 0) == []
    out = j.add_prediction(pred("r", 100), "p", 0)
    assert [(e.label, e.label_source) for e in out] == [(1.0, "label")]
    j.add_prediction(pred("z", 50_000), "p", 0)
    j.add_label(LabelIn("z", 0.0, 50_000, origin=ORIGIN), "l", 0)
    j.advance(0)
    assert j.take_unjoined() == []


def test_item_specific_labels_match_only_their_item() -> None:
    j = joiner()
    j.add_prediction(pred("r", 0, item="i1"), "p", 0)
    j.add_prediction(pred("r", 0, item="i2"), "p", 0)
    out = j.add_label(LabelIn("r", 1.0, 5, item_id="i2", implicit=True), "e", 0)
    assert [e.prediction.item_id for e in out] == ["i2"]
    j.add_prediction(pred("tick", 20_000), "p", 0)
    j.add_label(LabelIn("tick", 0.0, 20_000, origin=ORIGIN), "e", 0)
    closed = j.advance(0).examples
    assert [(e.prediction.item_id, e.label, e.label_source) for e in closed] == [("i1", 0.0, "window_closed")]


def test_conflicting_second_label_is_routed_and_agreeing_one_counted() -> None:
    j = joiner()
    j.add_prediction(pred("r", 0), "p", 0)
    j.add_label(LabelIn("r", 1.0, 5, implicit=True), "e", 0)
    j.add_label(LabelIn("r", 1.0, 6, origin=ORIGIN), "l", 0)
    j.add_label(LabelIn("r", 0.0, 7, origin=ORIGIN), "l", 0)
    assert j.counts["duplicate"] == 1
    assert [u.reason for u in j.take_unjoined()] == ["conflict"]


def test_drop_policy_counts_unlabeled_predictions() -> None:
    j = joiner(unlabeled="drop")
    j.add_prediction(pred("r", 0), "p", 0)
    j.add_prediction(pred("tick", 30_000), "p", 0)
    assert j.advance(0).examples == []
    assert j.counts["dropped_unlabeled"] == 1


def test_unheard_expected_source_holds_the_watermark_until_idle() -> None:
    j = joiner(sources=("p", "l"), source_idle_ms=5_000)
    j.add_prediction(pred("r", 0), "p", 0)
    j.add_prediction(pred("tick", 30_000), "p", 0)
    assert j.advance(1.0).examples == []  # "l" not heard from yet
    assert len(j.advance(10.0).examples) == 1  # "l" idle for 10 s: no longer waited for


def test_implicit_labels_that_cannot_join_are_counted_not_routed() -> None:
    j = joiner()
    j.add_label(LabelIn("nobody", 1.0, 5, implicit=True), "e", 0)
    j.add_prediction(pred("tick", 30_000), "p", 0)
    j.add_label(LabelIn("tick", 1.0, 30_000, implicit=True), "e", 0)
    j.advance(0)
    assert j.counts["unmatched_implicit"] == 1 and j.take_unjoined() == []


def test_snapshot_restore_continues_identically() -> None:
    a = joiner()
    for i in range(20):
        a.add_prediction(pred(f"r{i}", i * 1_000), "p", 0)
    a.add_label(LabelIn("r3", 1.0, 3_500, origin=ORIGIN), "l", 0)
    b = joiner()
    b.restore(pickle.loads(pickle.dumps(a.snapshot())), 0)
    for j in (a, b):
        j.add_label(LabelIn("r7", 1.0, 7_500, origin=ORIGIN), "l", 0)
        j.add_prediction(pred("tick", 60_000), "p", 0)
        j.add_label(LabelIn("tick", 0.0, 60_000, origin=ORIGIN), "l", 0)
    ea, eb = a.advance(0).examples, b.advance(0).examples
    assert [(e.prediction.request_id, e.label) for e in ea] == [(e.prediction.request_id, e.label) for e in eb]
    assert len(ea) == 18 and a.counts == b.counts


def test_a_click_rewards_only_its_slot_of_a_several_arm_decision() -> None:
    j = joiner()
    for arm in ("hero", "sale"):
        rec = pred("d1", 0)
        rec.arm = arm
        j.add_prediction(rec, "p", 0)
    out = j.add_label(LabelIn("d1", 1.0, 5, item_id="sale", implicit=True), "e", 0)
    assert [e.prediction.arm for e in out] == ["sale"]
