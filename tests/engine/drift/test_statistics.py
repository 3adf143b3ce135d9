"""PSI / JS / KS against independent computations (numpy bins built here, scipy)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from scipy.spatial import distance

from engine.drift import (
    Binning,
    histogram,
    js_distance,
    kll_sketch,
    ks_exact,
    ks_kll,
    psi,
    quantile_binning,
    sturges_evidently_binning,
)
from engine.drift.statistics import kll_ks_threshold

EPS = 1e-4


def _cases():
    rng = np.random.default_rng(42)
    yield "same-normal", rng.normal(size=3000), rng.normal(size=2000)
    yield "shifted-normal", rng.normal(size=3000), rng.normal(0.3, 1.2, size=2500)
    yield "exp-vs-lognormal", rng.exponential(size=1000), rng.lognormal(size=1500)
    # current entirely above the reference: most quantile bins empty in current
    yield "disjoint-empty-bins", rng.uniform(0, 1, size=800), rng.uniform(5, 6, size=700)
    # discrete data: repeated quantile edges, many empty bins
    yield "poisson-discrete", rng.poisson(2, size=2000).astype(float), rng.poisson(4, size=2000).astype(float)


CASES = list(_cases())
IDS = [c[0] for c in CASES]


def _props(x, edges, clip):
    # independent re-implementation: np.histogram semantics, zeros -> EPS, no renormalising
    x = np.clip(x, edges[0], edges[-1]) if clip else x
    c = np.histogram(x, bins=edges)[0]
    p = c / len(x)
    return np.where(c == 0, EPS, p)


def _decile_edges(ref):
    return np.unique(np.quantile(ref, [i / 10 for i in range(11)]))


@pytest.mark.parametrize("name,ref,cur", CASES, ids=IDS)
def test_psi_deciles_matches_numpy(name, ref, cur):
    edges = _decile_edges(ref)
    p, q = _props(ref, edges, True), _props(cur, edges, True)
    expected = np.sum((q - p) * np.log(q / p))
    r = psi(ref, cur)
    assert r.value == pytest.approx(expected, abs=1e-9)
    assert r.binning["method"] == "quantile" and r.epsilon == EPS
    assert r.binning["edges"] == pytest.approx(list(edges), abs=1e-12)
    assert (r.n_reference, r.n_current) == (len(ref), len(cur))


@pytest.mark.parametrize("name,ref,cur", CASES, ids=IDS)
def test_psi_and_js_evidently_binning_match_numpy_and_scipy(name, ref, cur):
    # Evidently: Sturges bins over reference+current, empty bins = 1e-4, JS via scipy (natural log)
    edges = np.histogram_bin_edges(np.concatenate([ref, cur]), bins="sturges")
    p, q = _props(ref, edges, False), _props(cur, edges, False)
    b = sturges_evidently_binning(ref, cur)
    assert b.edges == pytest.approx(tuple(edges), abs=1e-12)
    assert psi(ref, cur, b).value == pytest.approx(np.sum((p - q) * np.log(p / q)), abs=1e-9)
    r = js_distance(ref, cur, b)
    assert r.value == pytest.approx(distance.jensenshannon(p, q), abs=1e-9)
    assert r.binning["method"] == "sturges-evidently" and r.epsilon == EPS


@pytest.mark.parametrize("name,ref,cur", CASES, ids=IDS)
def test_js_deciles_matches_scipy(name, ref, cur):
    edges = _decile_edges(ref)
    p, q = _props(ref, edges, True), _props(cur, edges, True)
    assert js_distance(ref, cur).value == pytest.approx(distance.jensenshannon(p, q), abs=1e-9)


@pytest.mark.parametrize("name,ref,cur", CASES, ids=IDS)
def test_ks_exact_matches_scipy(name, ref, cur):
    expected = stats.ks_2samp(ref, cur)
    r = ks_exact(ref, cur)
    assert r.ks_statistic == pytest.approx(expected.statistic, abs=1e-9)
    assert r.value == pytest.approx(expected.pvalue, abs=1e-9)
    assert r.drifted == (expected.pvalue < 0.05)
    assert r.ks_method.startswith("scipy.stats.ks_2samp") and r.binning is None


def test_empty_bins_get_epsilon_and_drift_flags():
    ref, cur = np.arange(100.0), np.full(50, 1000.0)
    b = quantile_binning(ref)
    h = histogram(cur, b)
    assert h[-1] == 1.0 and np.all(h[:-1] == EPS)
    assert psi(ref, cur).drifted and js_distance(ref, cur).drifted and ks_exact(ref, cur).drifted
    assert not psi(ref, ref).drifted and psi(ref, ref).value == 0.0


def test_custom_epsilon_recorded():
    b = Binning(edges=(0.0, 1.0, 2.0), method="uniform", epsilon=1e-3)
    r = psi([0.5, 1.5], [0.5, 0.5], b)
    assert r.epsilon == 1e-3 and r.binning["epsilon"] == 1e-3
    assert r.value == pytest.approx((1.0 - 0.5) * np.log(2.0) + (1e-3 - 0.5) * np.log(1e-3 / 0.5))


@pytest.mark.parametrize("shift,doubles", [(0.0, True), (0.05, True), (0.3, False)])
def test_kll_ks_close_to_exact_on_20k(shift, doubles):
    # Tolerance: each sketch CDF is within its normalised rank error eps (k=200: ~0.0133) of the
    # exact ECDF, so |D_kll - D_exact| <= eps1 + eps2 (~0.027); we assert that bound.
    rng = np.random.default_rng(7)
    ref, cur = rng.normal(size=20_000), rng.normal(shift, 1.0, size=20_000)
    if not doubles:
        ref, cur = ref.astype(np.float32), cur.astype(np.float32)
    s1, s2 = kll_sketch(ref, doubles=doubles), kll_sketch(cur, doubles=doubles)
    r = ks_kll(s1, s2)
    exact = stats.ks_2samp(ref, cur).statistic
    tol = s1.normalized_rank_error(False) + s2.normalized_rank_error(False)
    assert abs(r.value - exact) <= tol
    assert r.drifted == (r.value > kll_ks_threshold(s1, s2, 0.05))
    assert r.drifted == (shift >= 0.3)
    assert (r.n_reference, r.n_current) == (20_000, 20_000) and "k=200" in r.ks_method


def test_kll_ks_exact_before_compaction():
    rng = np.random.default_rng(3)
    ref, cur = rng.normal(size=150), rng.normal(0.2, 1.0, size=120)
    r = ks_kll(ref, cur)  # n <= k: sketches hold every item
    assert r.value == pytest.approx(stats.ks_2samp(ref, cur).statistic, abs=1e-12)


def test_kll_streaming_updates_equal_batch():
    rng = np.random.default_rng(5)
    x = rng.normal(size=500)
    s = kll_sketch()
    for v in x:
        s.update(float(v))
    cur = kll_sketch(x + 0.1)
    r = ks_kll(s, cur)
    tol = s.normalized_rank_error(False) + cur.normalized_rank_error(False)
    assert s.n == 500 and abs(r.value - stats.ks_2samp(x, x + 0.1).statistic) <= tol
