"""Training-serving skew report: served features versus point-in-time closed windows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.config import RtmlConfig, load_config
from engine.features.offline import OfflineLogWriter
from engine.features.skew import compare_features, skew_report
from engine.features.spec import FeatureView, load_views
from tests.dataflows.conftest import produce_events

SPECS = """
views:
  - name: user
    entity: user_id
    ttl: 1h
    windows: {1m: 1m}
    features:
      - {name: clicks, agg: count, where: {event_type: click}}
      - {name: impressions, agg: count, where: {event_type: impression}}
      - {name: ctr, agg: ratio, numerator: clicks, denominator: impressions}
  - name: user_item
    entity: [user_id, item_id]
    ttl: 1h
    windows: {1m: 1m}
    features:
      - {name: last_cat, agg: last, field: context.cat, dtype: str}
"""
HOUR = 3_600_000


def _window(entity: str, end: int, **values: Any) -> dict[str, Any]:
    return {"entity": entity, "window": "1m", "window_start_ms": end - 60_000, "window_end_ms": end, **values}


def _offline(root: Path, views: list[FeatureView]) -> None:
    """Closed windows as the features dataflow's OfflineLogSink writes them."""
    user, user_item = views
    w = OfflineLogWriter(root, user, "t")
    w.write([_window("u1", 60_000, clicks=2, impressions=4, ctr=0.5),
             _window("u1", 120_000, clicks=3, impressions=6, ctr=0.5),
             _window("u1", 180_000, clicks=9, impressions=9, ctr=1.0),  # ends after T: not visible
             _window("u3", 60_000, clicks=1, impressions=0, ctr=None),
             _window("u4", 120_000, clicks=0, impressions=0, ctr=None)], created_ms=1)
    # A replay logged the u1 window ending at 120 s again: the newest row wins.
    w.write([_window("u1", 120_000, clicks=5, impressions=10, ctr=0.5)], created_ms=2)
    OfflineLogWriter(root, user_item, "t").write([_window("u1|i%7C1", 120_000, last_cat="a")], created_ms=1)


def _rec(rid: str, t: int, ids: dict[str, str], features: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"request_id": rid, "model": "ranker", "version": "1", "variant": "primary", "event_time_ms": t,
            "entity_ids": ids, "features": features, "score": 0.5, **extra}


def _records() -> list[Any]:
    r1 = _rec("r1", 150_000, {"user_id": "u1", "item_id": "i|1"}, {
        "user.clicks_1m": 5, "user.ctr_1m": 0.5000001, "user.impressions_1m": 12, "request.price": 3.0,
        "user_item.last_cat_1m": "a"})
    return [
        r1,
        _rec("r2", 120_000, {"user_id": "u1", "item_id": "i|1"}, {
            "user.clicks_1m": 4, "user.ctr_1m": None, "user_item.last_cat_1m": "b"},
            feature_defaults=["user.clicks_1m"]),
        _rec("r3", 150_000, {"user_id": "u2"}, {"user.clicks_1m": 0}),  # no offline row at all
        _rec("r4", 60_000 + HOUR + 1, {"user_id": "u3"}, {"user.clicks_1m": 1}),  # only row older than TTL
        _rec("r5", 130_000, {"user_id": "u4"}, {"user.ctr_1m": None, "user.clicks_1m": 0}),
        _rec("r6", 150_000, {"item_id": "x"}, {"user.clicks_1m": 3}),  # no user_id
        {**r1, "variant": "shadow", "request_id": "r1"},
        {**r1, "model": "other", "features": {"user.clicks_1m": 100}},
        b"garbage",
        _rec("r10", 150_000, {"user_id": "u1"}, {"unknown.x": 1, "user.nope_1m": 2}),
    ]


@pytest.fixture()
def views() -> list[FeatureView]:
    return load_views(SPECS)


def test_counts_per_feature_and_overall_are_exact(tmp_path: Path, views: list[FeatureView]) -> None:
    _offline(tmp_path, views)
    report = compare_features(_records(), views, tmp_path, model="ranker")
    got = {f.feature: f for f in report.features}
    assert list(got) == ["user.clicks_1m", "user.ctr_1m", "user.impressions_1m", "user_item.last_cat_1m"]

    clicks = got["user.clicks_1m"]
    assert (clicks.rows, clicks.compared, clicks.missing_offline, clicks.no_entity, clicks.defaulted,
            clicks.mismatches, clicks.numeric_pairs) == (6, 3, 2, 1, 1, 1, 3)
    assert clicks.mismatch_rate == pytest.approx(1 / 3)
    assert clicks.mean_abs_diff == pytest.approx(1 / 3) and clicks.max_abs_diff == 1.0

    ctr = got["user.ctr_1m"]  # r1 within tolerance, r2 null vs 0.5, r5 null vs null
    assert (ctr.rows, ctr.compared, ctr.mismatches, ctr.numeric_pairs) == (3, 3, 1, 1)
    assert ctr.mean_abs_diff == pytest.approx(1e-7)

    imp = got["user.impressions_1m"]
    assert (imp.rows, imp.compared, imp.mismatches, imp.mean_abs_diff) == (1, 1, 1, 2.0)

    cat = got["user_item.last_cat_1m"]  # composite, escaped entity key; text compared by equality
    assert (cat.rows, cat.compared, cat.mismatches, cat.mean_abs_diff) == (2, 2, 1, None)

    o = report.overall
    assert (o.feature, o.rows, o.compared, o.missing_offline, o.no_entity, o.defaulted, o.mismatches) == (
        "(all)", 12, 9, 2, 1, 1, 4)
    assert o.mismatch_rate == pytest.approx(4 / 9)
    assert report.records == 7
    assert report.records_skipped == {"shadow": 1, "other_model": 1, "bad_undecodable": 1}
    assert report.sources_skipped == {"request": 1, "unknown_view": 1, "unknown_column": 1}

    d = report.to_dict()
    assert d["overall"]["mismatches"] == 4 and d["features"][0]["mismatch_rate"] == pytest.approx(1 / 3)
    orjson.dumps(d)  # JSON-ready
    text = report.to_text()
    assert "user_item.last_cat_1m" in text and text.splitlines()[-1].split()[:3] == ["(all)", "12", "9"]


def test_tolerance_filters_and_shadow(tmp_path: Path, views: list[FeatureView]) -> None:
    _offline(tmp_path, views)
    strict = compare_features(_records(), views, tmp_path, model="ranker", rel_tol=1e-9, abs_tol=0.0)
    assert {f.feature: f.mismatches for f in strict.features}["user.ctr_1m"] == 2
    loose = compare_features(_records(), views, tmp_path, model="ranker", abs_tol=1.0)
    assert {f.feature: f.mismatches for f in loose.features}["user.clicks_1m"] == 0  # |4 - 5| <= 1
    everything = compare_features(_records(), views, tmp_path, include_shadow=True)
    assert everything.records == 9 and everything.records_skipped == {"bad_undecodable": 1}
    ranged = compare_features(_records(), views, tmp_path, model="ranker", since_ms=130_000, until_ms=150_000)
    assert ranged.records == 1 and ranged.records_skipped["out_of_range"] == 6
    empty = compare_features([], views, tmp_path)
    assert empty.features == [] and empty.overall.mismatch_rate is None


def _cfg(tmp_path: Path, **kafka: Any) -> RtmlConfig:
    specs = tmp_path / "features.yaml"
    specs.write_text(SPECS)
    return load_config(env={}, overrides={
        "kafka": kafka, "pipeline": {"feature_specs": str(specs), "offline_dir": str(tmp_path / "offline")}})


def test_skew_report_from_file_and_from_the_predictions_topic_agree(
    tmp_path: Path, views: list[FeatureView], stack, unique_topic
) -> None:
    cfg = _cfg(tmp_path, bootstrap=stack.bootstrap)
    _offline(Path(cfg.pipeline.offline_dir or ""), views)
    payloads = [r if isinstance(r, bytes) else orjson.dumps(r) for r in _records()]
    jsonl = tmp_path / "predictions.jsonl"
    jsonl.write_bytes(b"\n".join(payloads) + b"\n")
    from_file = skew_report(cfg, jsonl, model="ranker")
    assert from_file.overall.mismatches == 4

    topic = unique_topic("predictions", partitions=2)
    cfg.learning.predictions_topic = topic
    produce_events(stack.bootstrap, topic, payloads)
    from_topic = skew_report(cfg, model="ranker")
    assert from_topic.to_dict() == from_file.to_dict()
