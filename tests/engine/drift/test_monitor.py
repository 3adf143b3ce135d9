"""The windowed drift monitor: windows, references, statistics, bounds and bad values."""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import orjson
import pandas as pd
import pytest

from engine.config import DriftConfig
from engine.drift.binning import quantile_binning, sturges_evidently_binning
from engine.drift.monitor import DriftMonitor, Reference, load_reference
from engine.drift.statistics import js_distance, kll_sketch, ks_exact, ks_kll, psi
from engine.learning.records import PredictionRecord

W = 60_000  # window_ms used throughout


def _records(
    start_ms: int,
    features: dict[str, Sequence[Any]],
    scores: Sequence[Any] | None = None,
    model: str = "ctr",
    variant: str = "primary",
) -> list[PredictionRecord]:
    """One record per position, spread over [start_ms, start_ms + W)."""
    n = len(next(iter(features.values()))) if features else len(scores or [])
    step = max(1, W // max(n, 1))
    return [
        PredictionRecord(
            f"r{start_ms}-{i}", model, "1", variant, start_ms + (i * step) % W,
            score=None if scores is None else scores[i],
            features={name: values[i] for name, values in features.items()},
        )
        for i in range(n)
    ]


def _cfg(**kw: Any) -> DriftConfig:
    return DriftConfig(**{"window_ms": W, "min_samples": 100, **kw})


def _by(stats, feature: str) -> dict[str, Any]:
    return {s.statistic: s for s in stats if s.feature == feature}


def test_same_distribution_windows_raise_no_alert() -> None:
    rng = np.random.default_rng(7)
    ref = Reference({None: {"user.x": rng.normal(size=5000), "score": rng.uniform(size=5000)}})
    mon = DriftMonitor(_cfg(), ref)
    tested = 0
    for k in range(6):
        mon.observe(_records(k * W, {"user.x": rng.normal(size=2000)}, scores=rng.uniform(size=2000)))
        out = mon.advance((k + 1) * W)
        assert out.windows_closed == 1
        assert out.alerts == [], [(a.feature, a.statistic, a.value) for a in out.alerts]
        tested += len(out.stats)
    assert tested == 6 * 2 * 3  # 6 windows x (feature + score) x (psi, js, ks)


def test_shifted_feature_alerts_with_the_values_of_the_statistics_module() -> None:
    rng = np.random.default_rng(1)
    ref_x = rng.normal(size=4000)
    cur_x = rng.normal(0.8, 1.0, size=3000)
    cur_y = rng.normal(size=3000)
    cfg = _cfg()
    mon = DriftMonitor(cfg, Reference({None: {"user.x": ref_x, "user.y": ref_x}}, source="train.parquet"))
    mon.observe(_records(W, {"user.x": cur_x.tolist(), "user.y": cur_y.tolist()}))
    out = mon.advance(2 * W + 5, at_ms=123)

    b = quantile_binning(ref_x, cfg.n_bins, cfg.epsilon)
    want = {
        "psi": psi(ref_x, cur_x, b, cfg.psi_threshold),
        "js_distance": js_distance(ref_x, cur_x, b, cfg.js_threshold),
        "ks_p_value": ks_exact(ref_x, cur_x, cfg.ks_p_value),
    }
    got = _by(out.stats, "user.x")
    assert set(got) == set(want)
    for name, result in want.items():
        assert got[name].value == pytest.approx(result.value, rel=1e-12, abs=1e-300)
        assert got[name].threshold == result.threshold
        assert got[name].result == result  # binning, epsilon, KS method, sample sizes: all the same
        assert got[name].drifted and got[name].kind == "data_drift"

    alerts = {a.statistic: a for a in out.alerts if a.feature == "user.x"}
    assert set(alerts) == {"psi", "js_distance", "ks_p_value"}
    a = alerts["psi"]
    assert (a.kind, a.model, a.window_start_ms, a.window_end_ms, a.at_ms) == ("data_drift", "ctr", W, 2 * W, 123)
    assert a.details["binning"]["method"] == "quantile" and a.details["epsilon"] == cfg.epsilon
    assert a.details["n_window"] == 3000 and a.details["reference"] == "file:train.parquet"
    assert alerts["ks_p_value"].details["ks_method"].startswith("scipy.stats.ks_2samp")
    assert alerts["ks_p_value"].severity == "critical"  # p far below the threshold
    # The unshifted feature is tested but does not alert.
    assert len(_by(out.stats, "user.y")) == 3
    assert not any(a.feature == "user.y" for a in out.alerts)
    orjson.loads(a.to_json())  # the alert serialises (it goes to Kafka as is)


def test_shifted_score_is_prediction_drift() -> None:
    rng = np.random.default_rng(2)
    mon = DriftMonitor(_cfg())  # pinned reference
    mon.observe(_records(0, {"user.x": rng.normal(size=1000)}, scores=rng.beta(2, 5, size=1000)))
    mon.advance(W)
    mon.observe(_records(W, {"user.x": rng.normal(size=1000)}, scores=rng.beta(5, 2, size=1000)))
    out = mon.advance(2 * W)
    kinds = {(a.kind, a.feature) for a in out.alerts}
    assert kinds == {("prediction_drift", "score")}
    assert {a.statistic for a in out.alerts} == {"psi", "js_distance", "ks_p_value"}


def test_windows_below_min_samples_are_skipped_and_counted() -> None:
    rng = np.random.default_rng(3)
    mon = DriftMonitor(_cfg(), Reference({None: {"user.x": rng.normal(size=500)}}))
    mon.observe(_records(0, {"user.x": rng.normal(size=99)}))
    out = mon.advance(W)
    assert out.stats == [] and out.alerts == []
    # score is None in these records: it never gets a sample, so only user.x is reported.
    assert [(s.feature, s.reason, s.n_window) for s in out.skipped] == [("user.x", "min_samples", 99)]
    assert mon.counts.invalid[("ctr", "score", "missing")] == 99


def test_reservoir_keeps_the_window_bounded_and_uniform() -> None:
    cfg = _cfg(max_window_samples=50)
    mon = DriftMonitor(cfg, seed=11)
    n = 20_000
    mon.observe(_records(0, {"user.x": list(range(n))}))
    sample = mon._windows["ctr"][0]["user.x"].values
    assert len(sample) == 50 and len(set(sample)) == 50 and set(sample) <= set(range(n))
    assert max(sample) > 1000  # not simply the first values
    # Uniform: over many windows, the kept values average n/2 (sd of the mean ~ n/sqrt(12*50*40)).
    means = []
    for k in range(40):
        m = DriftMonitor(cfg, seed=k)
        m.observe(_records(0, {"user.x": list(range(n))}))
        means.append(np.mean(m._windows["ctr"][0]["user.x"].values))
    assert abs(np.mean(means) - n / 2) < 0.05 * n

    ref = Reference({None: {"user.x": np.arange(n, dtype=float)}})
    mon = DriftMonitor(cfg, ref)
    mon.observe(_records(0, {"user.x": list(range(n))}))
    [stat] = [s for s in mon.advance(W).stats if s.statistic == "psi"]
    assert stat.n_window == n and stat.result.n_current == 50 and stat.details()["n_window"] == n


def test_pinned_first_window_versus_file_reference(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    first, second = rng.normal(size=400), rng.normal(1.0, 1.0, size=400)

    pinned = DriftMonitor(_cfg())
    pinned.observe(_records(0, {"user.x": rng.normal(size=50)}))  # too small: not pinned
    out0 = pinned.advance(W)
    assert [(s.reason, s.feature) for s in out0.skipped] == [("min_samples", "user.x")]
    pinned.observe(_records(W, {"user.x": first}))
    out1 = pinned.advance(2 * W)
    assert [(s.reason, s.window_start_ms) for s in out1.skipped] == [("reference_pinned", W)]
    assert out1.stats == []
    pinned.observe(_records(2 * W, {"user.x": second}))
    out2 = pinned.advance(3 * W)
    got = _by(out2.stats, "user.x")
    assert got["psi"].reference == f"pinned:{W}-{2 * W}"
    assert got["psi"].value == pytest.approx(psi(first, second, quantile_binning(first)).value)
    # A feature absent from a later window is still reported, as skipped with 0 values.
    pinned.observe(_records(3 * W, {"user.z": rng.normal(size=10)}))
    assert ("user.x", "min_samples", 0) in {(s.feature, s.reason, s.n_window) for s in pinned.advance(4 * W).skipped}

    # The same comparison with the first window given as a file (Parquet and JSONL agree).
    pq_path = tmp_path / "ref.parquet"
    pd.DataFrame({"user.x": first, "model": "ctr"}).to_parquet(pq_path)
    jl_path = tmp_path / "ref.jsonl"
    jl_path.write_bytes(b"\n".join(orjson.dumps({"model": "ctr", "features": {"user.x": float(v)}}) for v in first))
    for path in (pq_path, jl_path):
        ref = load_reference(path)
        assert ref.values_for("ctr", "user.x").tolist() == first.tolist()
        assert ref.values_for("other", "user.x") is None  # model-specific rows serve only that model
        mon = DriftMonitor(_cfg(), ref)
        mon.observe(_records(W, {"user.x": second}, scores=[0.5] * 400))
        out = mon.advance(2 * W)  # tested at once: no window is pinned
        got_file = _by(out.stats, "user.x")
        assert got_file["psi"].value == pytest.approx(got["psi"].value)
        assert got_file["psi"].reference == f"file:{path}"
        assert [(s.feature, s.reason) for s in out.skipped] == [("score", "no_reference")]


def test_garbage_values_are_counted_not_crashing() -> None:
    mon = DriftMonitor(_cfg(min_samples=2))
    recs = [
        PredictionRecord("a", "ctr", "1", "primary", 10, None, {"s": "text", "b": True, "l": [1.0], "n": None}),
        PredictionRecord("b", "ctr", "1", "primary", 20, math.inf, {"f": float("nan"), "ok": 1}),
        PredictionRecord("c", "ctr", "1", "primary", 30, 0.5, {"ok": 2.5, "d": {"x": 1}}),
    ]
    counts = mon.observe(recs)
    assert counts.records == 3
    assert counts.invalid == {
        ("ctr", "s", "non_numeric"): 1, ("ctr", "b", "non_numeric"): 1, ("ctr", "l", "non_numeric"): 1,
        ("ctr", "n", "missing"): 1, ("ctr", "score", "missing"): 1, ("ctr", "score", "non_numeric"): 1,
        ("ctr", "f", "non_numeric"): 1, ("ctr", "d", "non_numeric"): 1,
    }
    out = mon.advance(W)
    assert [(s.feature, s.reason, s.n_window) for s in out.skipped] == [("ok", "reference_pinned", 2),
                                                                         ("score", "min_samples", 1)]


def test_late_and_shadow_records_are_counted_and_left_out() -> None:
    rng = np.random.default_rng(5)
    mon = DriftMonitor(_cfg())
    mon.observe(_records(0, {"user.x": rng.normal(size=200)}))
    assert mon.observe(_records(0, {"user.x": rng.normal(5, 1, size=300)}, variant="shadow")).shadow == 300
    mon.advance(W + 10)
    late = mon.observe(_records(0, {"user.x": rng.normal(size=10)}))
    assert (late.late, late.records) == (10, 0)
    assert mon.counts.late == 10 and mon.counts.shadow == 300 and mon.counts.records == 200
    assert mon.advance(W + 20).windows_closed == 0  # the watermark is monotone per window
    with_shadow = DriftMonitor(_cfg(), include_shadow=True)
    assert with_shadow.observe(_records(0, {"user.x": [1.0]}, variant="shadow")).records == 1


def test_models_are_monitored_separately() -> None:
    rng = np.random.default_rng(6)
    mon = DriftMonitor(_cfg())
    for model, shift in (("a", 0.0), ("b", 0.0)):
        mon.observe(_records(0, {"user.x": rng.normal(shift, 1, size=500)}, model=model))
    mon.advance(W)
    for model, shift in (("a", 0.0), ("b", 2.0)):
        mon.observe(_records(W, {"user.x": rng.normal(shift, 1, size=500)}, model=model))
    out = mon.advance(2 * W)
    assert out.windows_closed == 2
    assert {a.model for a in out.alerts} == {"b"}
    assert {s.model for s in out.stats} == {"a", "b"}


def test_kll_and_evidently_options_match_the_statistics_module() -> None:
    rng = np.random.default_rng(8)
    # At most k = 200 values per sketch: KLL does not compact yet, so its (randomised)
    # compaction cannot make two sketches of the same values differ.
    ref_x, cur_x = rng.normal(size=200), rng.normal(1.0, 1.0, size=200)
    cfg = _cfg(ks_method="kll", binning="evidently")
    mon = DriftMonitor(cfg, Reference({None: {"user.x": ref_x}}))
    mon.observe(_records(0, {"user.x": cur_x}))
    got = _by(mon.advance(W).stats, "user.x")
    assert set(got) == {"psi", "js_distance", "ks_kll_d"}
    b = sturges_evidently_binning(ref_x, cur_x, cfg.epsilon)
    assert got["psi"].result == psi(ref_x, cur_x, b, cfg.psi_threshold)
    assert got["js_distance"].result == js_distance(ref_x, cur_x, b, cfg.js_threshold)
    assert got["psi"].result.binning["method"] == "sturges-evidently"
    want_ks = ks_kll(kll_sketch(ref_x), kll_sketch(cur_x), threshold=cfg.ks_p_value)
    assert got["ks_kll_d"].result == want_ks
    assert got["ks_kll_d"].drifted == want_ks.drifted is True


@pytest.mark.parametrize("ks_method", ["exact", "kll"])
def test_snapshot_pickles_and_restores_to_the_same_results(ks_method: str) -> None:
    rng = np.random.default_rng(9)
    # Windows of at most k = 200 values: KLL compaction is randomised (not by our seed).
    cfg = _cfg(ks_method=ks_method, max_window_samples=100)
    a = DriftMonitor(cfg, seed=3)
    a.observe(_records(0, {"user.x": rng.normal(size=150)}, scores=rng.uniform(size=150)))
    a.advance(W)  # pins the reference
    a.observe(_records(W, {"user.x": rng.normal(1, 1, size=80)}, scores=rng.uniform(size=80)))
    state = pickle.loads(pickle.dumps(a.snapshot()))
    b = DriftMonitor(cfg, seed=99)
    b.restore(state)
    more = _records(W, {"user.x": rng.normal(1, 1, size=80)}, scores=rng.uniform(size=80))
    a.observe(more)
    b.observe(more)  # same reservoir decisions: the RNG state was restored too
    out_a, out_b = a.advance(2 * W, at_ms=1), b.advance(2 * W, at_ms=1)
    assert out_a.stats == out_b.stats and out_a.alerts == out_b.alerts and out_a.alerts
    assert a.counts == b.counts


def test_docs_list_every_drift_metric() -> None:
    from engine.metrics import DriftMetrics, SourceMetrics

    def names(registry) -> set[str]:
        return {f"{m.name}_total" if m.type == "counter" else m.name for m in registry.collect()}

    text = (Path(__file__).resolve().parents[3] / "docs" / "drift.md").read_text()
    own = names(DriftMetrics().registry) - names(SourceMetrics().registry)
    assert len(own) == 10
    assert not [n for n in sorted(own) if f"`{n}{{" not in text and f"`{n}`" not in text]
