"""The demo report: every number in the markdown, plots written, drift delay computed from the true drift."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from engine.demo.report import AlertMark, DemoResults, RpcStats, Table, false_alarms, first_alert_delay, write_report

PNG = b"\x89PNG\r\n\x1a\n"


def _results() -> DemoResults:
    return DemoResults(
        events_per_s=12_345.0,
        freshness_p50_ms=42.25,
        freshness_p99_ms=107.5,
        steady_freshness_p50_ms=30.5,
        steady_freshness_p99_ms=88.25,
        steady_after_s=10.0,
        rpcs=[RpcStats("Recommend", 812.0, 9.4, 31.2), RpcStats("Predict", 2_650.0, 3.1, 12.8)],
        auc={
            "logreg": [(10.0, 0.612), (20.0, 0.701), (30.0, 0.723), (40.0, 0.588), (50.0, 0.655), (60.0, 0.694)],
            "hoeffding": [(10.0, 0.601), (20.0, 0.689), (30.0, 0.699), (40.0, 0.571), (50.0, 0.633), (60.0, 0.677)],
        },
        drift_at_s=30.0,
        alerts=[
            AlertMark(12.0, "data_drift", "user.ctr_1h", "psi", 0.213),
            AlertMark(37.5, "concept_drift", "error", "hddm_a"),
            AlertMark(34.0, "prediction_drift", "score", "js_distance", 0.1375),
        ],
        regret=[(10.0, 3.5), (20.0, 6.0), (30.0, 7.8), (40.0, 15.25), (60.0, 19.9)],
        ab_verdict="B wins: +4.1% CTR (p = 0.003), ship it.",
        ab_table=Table(["variant", "impressions", "clicks", "CTR"], [["A", 10_000, 512, 0.0512], ["B", 10_000, 533, 0.0533]]),
        notes=["ran on 2 cores", "Tansu broker (in-memory)"],
    )


def test_drift_delay_and_false_alarms() -> None:
    alerts = _results().alerts
    assert first_alert_delay(alerts, 30.0) == pytest.approx(4.0)  # the earliest after the drift, not the first listed
    assert first_alert_delay(alerts, 30.0, "concept_drift") == pytest.approx(7.5)
    assert first_alert_delay(alerts, 30.0, "nope") is None
    assert first_alert_delay(alerts, 40.0) is None  # nothing after it
    assert first_alert_delay(alerts, None) is None
    assert first_alert_delay([AlertMark(30.0, "data_drift", "f", "psi")], 30.0) == 0.0  # at the drift counts
    assert false_alarms(alerts, 30.0) == 1
    assert false_alarms(alerts, None) == 3  # without a drift every alert is a false alarm


def test_report_mentions_every_number_and_writes_the_plots(tmp_path: Path) -> None:
    path = write_report(_results(), tmp_path / "out")
    assert path == tmp_path / "out" / "report.md"
    text = path.read_text()
    for needle in (
        "12,345", "42.2 ms", "107.5 ms",  # ingest and freshness
        "feature freshness p50 / p99 after the first 10 s", "30.5 ms / 88.2 ms",
        "Recommend", "812", "9.4 ms", "31.2 ms", "Predict", "2,650", "3.1 ms", "12.8 ms",  # serving
        "True drift at 30.0 s",
        "first AUC", "0.612", "0.723", "0.588", "0.694", "0.601", "0.699", "0.571", "0.677",  # per learner
        "first alert after the drift: +4.0 s", "false alarms (before the drift): 1",
        "first `concept_drift` alert after the drift: +7.5 s", "first `prediction_drift` alert after the drift: +4.0 s",
        "first `data_drift` alert after the drift: none",
        "user.ctr_1h", "psi", "0.213", "hddm_a", "0.1375", "js_distance", "12.0 s", "37.5 s", "34.0 s",
        "19.9 after 60.0 s", "7.8 at the drift",  # regret: final and at the drift
        "B wins: +4.1% CTR (p = 0.003), ship it.", "| A | 10000 | 512 | 0.0512 |", "| B | 10000 | 533 | 0.0533 |",
        "ran on 2 cores", "Tansu broker (in-memory)",
    ):
        assert needle in text, needle
    # Every point of every series is in the (collapsed) series tables.
    for series in (*_results().auc.values(), _results().regret):
        for t, v in series:
            assert re.search(rf"\| {t:.1f} \| {v:.4g} \|", text), (t, v)
    for name in ("auc", "regret", "latency"):
        png = path.parent / f"{name}.png"
        assert f"]({name}.png)" in text
        data = png.read_bytes()
        assert data.startswith(PNG) and len(data) > 5_000, name


def test_a_minimal_report_has_no_empty_plots(tmp_path: Path) -> None:
    path = write_report(DemoResults(events_per_s=800.0), tmp_path)
    text = path.read_text()
    assert "800" in text and "n/a" in text and "No drift was simulated." in text
    assert "first alert after the drift: none" in text
    assert not list(tmp_path.glob("*.png")) and ".png" not in text
    assert "## Serving" not in text and "## Bandit regret" not in text and "## A/B test" not in text


def test_table_rows_must_match_the_columns() -> None:
    with pytest.raises(ValueError, match="expected 2 cells"):
        Table(["a", "b"], [[1, 2, 3]])
