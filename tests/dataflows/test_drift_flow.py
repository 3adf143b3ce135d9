"""The drift dataflow end to end on the real broker: predictions in, alerts + dead letters out."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from bytewax.recovery import RecoveryConfig
from bytewax.testing import run_main

from dataflows.drift import build_drift_flow
from engine.alerts import DriftAlert
from engine.config import RtmlConfig, load_config
from engine.events.dlq import DeadLetter
from engine.metrics import DriftMetrics
from engine.runtime.jobs import init_recovery
from engine.runtime.topics import ensure_topics
from operators.sources import KafkaBatchSource
from tests.dataflows.conftest import consume_all, produce_events

pytestmark = pytest.mark.slow

W = 60_000
T0 = 1_767_225_600_000  # a window boundary (2026-01-01T00:00Z)

#: Alerts handed to the retrain hook (``drift.retrain_hook`` points here).
RECEIVED: list[DriftAlert] = []


def record_alert(alert: DriftAlert) -> None:
    """The retrain hook of these tests."""
    RECEIVED.append(alert)


def _predictions(rng: np.random.Generator, start_ms: int, n: int, shift: float) -> list[dict[str, Any]]:
    return [
        {
            "request_id": f"r{start_ms}-{i}", "model": "ranker", "version": "2", "variant": "primary",
            "entity_ids": {"user_id": f"u{i % 17}"},
            "features": {"user.clicks_1h": float(x), "request.country": "fr"},
            "score": float(s), "event_time_ms": start_ms + i * (W // n),
        }
        for i, (x, s) in enumerate(zip(rng.normal(shift, 1.0, n), rng.beta(2, 5, n)))
    ]


def _config(bootstrap: str, predictions: str, alerts: str) -> RtmlConfig:
    cfg = load_config(env={}, overrides={
        "kafka": {"bootstrap": bootstrap, "alerts_topic": alerts, "fetch_wait_max_ms": 20},
        "learning": {"predictions_topic": predictions, "out_of_orderness_ms": 1_000},
        "pipeline": {"idle_advance": False},
        "drift": {"window_ms": W, "min_samples": 200, "retrain_hook": f"{__name__}:record_alert"},
    })
    ensure_topics(bootstrap, [predictions + cfg.pipeline.dlq_suffix], partitions=1)
    return cfg


def test_shifted_window_alerts_to_the_alerts_topic_and_hook_bad_records_to_dlq(
    stack, unique_topic, tmp_path: Path
) -> None:
    predictions, alerts = unique_topic("predictions", partitions=1), unique_topic("alerts", partitions=1)
    cfg = _config(stack.bootstrap, predictions, alerts)
    rng = np.random.default_rng(5)
    bad = [(b"{not json", "undecodable"), (orjson.dumps({"model": "ranker", "event_time_ms": T0}), "missing_field")]
    first = _predictions(rng, T0, 500, 0.0)
    payloads = produce_events(stack.bootstrap, predictions, [*first[:100], bad[0][0], *first[100:], bad[1][0]])
    RECEIVED.clear()

    # Run 1 (with recovery): the first window closes only once the second one starts, so it
    # is still open at the end of this input; its values must survive in the snapshot.
    recovery = tmp_path / "recovery"
    init_recovery(recovery, 1)
    rc = RecoveryConfig(str(recovery), backup_interval=timedelta(0))

    def run(metrics: DriftMetrics) -> None:
        source = KafkaBatchSource(stack.bootstrap, [predictions], fetch_wait_max_ms=20, metrics=metrics, bounded=True)
        run_main(build_drift_flow(cfg, source, metrics=metrics), epoch_interval=timedelta(milliseconds=200),
                 recovery_config=rc)

    m1 = DriftMetrics()
    run(m1)
    assert m1.registry.get_sample_value("rtml_drift_records_total", {"model": "ranker", "outcome": "monitored"}) == 500
    assert m1.registry.get_sample_value("rtml_drift_windows_skipped_total", {
        "model": "ranker", "feature": "user.clicks_1h", "reason": "reference_pinned"}) is None
    assert RECEIVED == []

    # Run 2 resumes from the snapshot: window 1 (restored) is pinned as the reference when
    # window 2 starts, window 2 (shifted feature) closes on the record past its end.
    second = _predictions(rng, T0 + W, 500, 2.0)
    closer = {**_predictions(rng, T0 + 2 * W + 5_000, 1, 0.0)[0], "request_id": "closer"}
    produce_events(stack.bootstrap, predictions, [*second, closer])
    m2 = DriftMetrics()
    run(m2)
    # Resumed from the snapshot's offsets: run 2 read only the new records, so the pinned
    # reference (500 values, below) came from the restored state.
    assert m2.registry.get_sample_value("rtml_drift_records_total", {"model": "ranker", "outcome": "monitored"}) == 501

    msgs = consume_all(stack.bootstrap, alerts, 3, timeout=30)
    got = [orjson.loads(m.value()) for m in msgs]
    assert all(m.key() == b"ranker" for m in msgs)
    assert sorted(a["statistic"] for a in got) == ["js_distance", "ks_p_value", "psi"]
    for a in got:
        assert (a["kind"], a["model"], a["feature"]) == ("data_drift", "ranker", "user.clicks_1h")
        assert (a["window_start_ms"], a["window_end_ms"]) == (T0 + W, T0 + 2 * W)
        assert a["severity"] in ("warning", "critical") and a["at_ms"] > 0
        assert a["details"]["n_window"] == 500 and a["details"]["n_reference"] == 500
        assert a["details"]["reference"] == f"pinned:{T0}-{T0 + W}"
    psi_alert = next(a for a in got if a["statistic"] == "psi")
    assert psi_alert["value"] > psi_alert["threshold"] == cfg.drift.psi_threshold
    assert psi_alert["details"]["binning"]["method"] == "quantile" and psi_alert["details"]["epsilon"] == 1e-4
    ks = next(a for a in got if a["statistic"] == "ks_p_value")
    assert ks["details"]["ks_method"].startswith("scipy.stats.ks_2samp") and ks["value"] < ks["threshold"]

    # The hook saw the same alerts.
    assert sorted((a.feature, a.statistic, a.value) for a in RECEIVED) == sorted(
        (a["feature"], a["statistic"], a["value"]) for a in got)

    # Metrics: every statistic is a gauge; skipped / tested windows and alerts are counted.
    r = m2.registry
    labels = {"model": "ranker", "feature": "user.clicks_1h"}
    assert r.get_sample_value("rtml_drift_statistic", {**labels, "statistic": "psi"}) == psi_alert["value"]
    assert r.get_sample_value("rtml_drift_statistic", {"model": "ranker", "feature": "score",
                                                       "statistic": "psi"}) is not None
    assert r.get_sample_value("rtml_drift_windows_tested_total", labels) == 1
    assert r.get_sample_value("rtml_drift_windows_skipped_total", {**labels, "reason": "reference_pinned"}) == 1
    assert sum(r.get_sample_value("rtml_drift_alerts_total", {"model": "ranker", "kind": "data_drift",
                                                              "severity": s}) or 0 for s in ("warning", "critical")) == 3
    assert r.get_sample_value("rtml_drift_values_invalid_total", {"model": "ranker", "feature": "request.country",
                                                                  "reason": "non_numeric"}) == 501

    # The malformed records went to <predictions>.dlq with their reasons and original bytes.
    letters = [DeadLetter.from_kafka(m.value(), m.headers()) for m in consume_all(
        stack.bootstrap, predictions + cfg.pipeline.dlq_suffix, 2, timeout=30)]
    assert sorted((dl.reason, dl.original, dl.offset) for dl in letters) == sorted(
        (reason, raw, payloads.index(raw)) for raw, reason in bad)
    assert all(dl.source_topic == predictions for dl in letters)
    assert m1.registry.get_sample_value("rtml_events_invalid_total", {"topic": predictions,
                                                                      "reason": "undecodable"}) == 1


def test_flow_from_env_builds_from_rtml_variables(stack, unique_topic, tmp_path: Path, monkeypatch) -> None:
    from bytewax.dataflow import Dataflow

    import dataflows.drift as drift_flow

    topic = unique_topic("predictions", partitions=2)
    ref = tmp_path / "ref.jsonl"
    ref.write_text('{"user.clicks_1h": 1.0, "score": 0.2}\n')
    for var, value in {"RTML_KAFKA_BOOTSTRAP": stack.bootstrap, "RTML_LEARNING_PREDICTIONS_TOPIC": topic,
                       "RTML_METRICS_DRIFT_PORT": "0", "RTML_DRIFT_REFERENCE": str(ref)}.items():
        monkeypatch.setenv(var, value)
    built: dict[str, Any] = {}
    real = drift_flow.build_drift_flow

    def spy(cfg, source, **kw):
        built.update(cfg=cfg, source=source, **kw)
        return real(cfg, source, **kw)

    monkeypatch.setattr(drift_flow, "build_drift_flow", spy)
    assert isinstance(drift_flow.flow_from_env(), Dataflow)
    assert built["source"].topics == [topic] and built["source"].source_ids() == [(topic, 0), (topic, 1)]
    assert drift_flow.reference_from_config(built["cfg"]).values_for("any", "score").tolist() == [0.2]
