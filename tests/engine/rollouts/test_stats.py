"""The A/B statistics against independent formulas (scipy) and by simulation: false positives
stay near alpha, peeking is safe only with the sequential test, real effects are found."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from engine.rollouts.stats import lift_interval, msprt, sample_size_per_arm, two_proportion_ztest, wilson_interval

CASES = [(100, 1000, 130, 1000), (2_000, 20_000, 2_100, 20_000), (51, 900, 40, 1100), (7, 80, 15, 95)]


@pytest.mark.parametrize("k1,n1,k2,n2", CASES)
def test_ztest_matches_scipy(k1: int, n1: int, k2: int, n2: int) -> None:
    result = two_proportion_ztest(k1, n1, k2, n2)
    p1, p2, pooled = k1 / n1, k2 / n2, (k1 + k2) / (n1 + n2)
    z = (p2 - p1) / math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    assert result.z == pytest.approx(z, rel=1e-12)
    assert result.p_value == pytest.approx(2 * sps.norm.sf(abs(z)), rel=1e-9)
    # The pooled z-test is the chi-square test of the 2x2 table without continuity correction.
    chi2 = sps.chi2_contingency([[k1, n1 - k1], [k2, n2 - k2]], correction=False)
    assert result.p_value == pytest.approx(chi2.pvalue, rel=1e-9)
    half = sps.norm.ppf(0.975) * math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    assert result.diff_ci == pytest.approx((p2 - p1 - half, p2 - p1 + half), rel=1e-9)
    assert result.lift == pytest.approx(p2 / p1 - 1)
    assert result.significant == (result.p_value < 0.05)


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (100, 1000), (999, 1000), (1234, 56789)])
def test_wilson_matches_scipy(k: int, n: int) -> None:
    ci = sps.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_lift_interval_covers_the_true_lift() -> None:
    rng = np.random.default_rng(7)
    p1, p2, n = 0.05, 0.06, 20_000
    k1 = rng.binomial(n, p1, 1_000)
    k2 = rng.binomial(n, p2, 1_000)
    covered = 0
    for a, b in zip(k1, k2):
        lo, hi = lift_interval(int(a), n, int(b), n)
        covered += lo <= p2 / p1 - 1 <= hi
    assert 0.93 <= covered / 1_000 <= 0.97


def test_sample_size_gives_the_promised_power() -> None:
    n = sample_size_per_arm(0.10, 0.20, alpha=0.05, power=0.8)
    assert 3_700 < n < 4_000  # 10% -> 12%: the textbook figure is ~3,840 per arm
    rng = np.random.default_rng(11)
    k1 = rng.binomial(n, 0.10, 2_000)
    k2 = rng.binomial(n, 0.12, 2_000)
    power = np.mean([two_proportion_ztest(int(a), n, int(b), n).significant for a, b in zip(k1, k2)])
    assert 0.76 <= power <= 0.84


def test_aa_false_positive_rate_is_near_alpha() -> None:
    rng = np.random.default_rng(3)
    n, p = 5_000, 0.05
    k1 = rng.binomial(n, p, 4_000)
    k2 = rng.binomial(n, p, 4_000)
    rate = np.mean([two_proportion_ztest(int(a), n, int(b), n).significant for a, b in zip(k1, k2)])
    assert 0.035 <= rate <= 0.065


def _peek(rng: np.random.Generator, p1: float, p2: float, looks: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative clicks of both arms at each look (impressions = step * look)."""
    return np.cumsum(rng.binomial(step, p1, looks)), np.cumsum(rng.binomial(step, p2, looks))


def test_peeking_inflates_the_naive_test_but_not_the_sequential_one() -> None:
    rng = np.random.default_rng(5)
    looks, step, sims, alpha = 20, 250, 500, 0.05
    naive = sequential = 0
    for _ in range(sims):
        c1, c2 = _peek(rng, 0.1, 0.1, looks, step)
        seen = [(int(a), step * (i + 1), int(b), step * (i + 1)) for i, (a, b) in enumerate(zip(c1, c2))]
        # Stop at the first look that says "significant": what an impatient experimenter does.
        naive += any(two_proportion_ztest(*s, alpha=alpha).significant for s in seen)
        sequential += any(msprt(*s, alpha=alpha).significant for s in seen)
    assert naive / sims > 2 * alpha  # 20 looks at a fixed-horizon test: far above alpha
    assert sequential / sims <= alpha


def test_a_real_effect_is_detected_by_both_tests() -> None:
    rng = np.random.default_rng(9)
    looks, step, sims = 20, 500, 100
    found_fixed = found_sequential = 0
    for _ in range(sims):
        c1, c2 = _peek(rng, 0.10, 0.12, looks, step)
        n = looks * step
        found_fixed += two_proportion_ztest(int(c1[-1]), n, int(c2[-1]), n).significant
        found_sequential += any(msprt(int(a), step * (i + 1), int(b), step * (i + 1)).significant
                                for i, (a, b) in enumerate(zip(c1, c2)))
    assert found_fixed / sims >= 0.95
    assert found_sequential / sims >= 0.8
    t = msprt(1_000, 10_000, 1_200, 10_000)
    assert t.significant and t.diff_ci[0] > 0 and t.lift == pytest.approx(0.2)
    assert t.lift_ci[0] < 0.2 < t.lift_ci[1]


def test_msprt_p_value_and_interval_agree() -> None:
    for args in CASES:
        t = msprt(*args, alpha=0.05)
        assert 0 < t.p_value <= 1
        assert t.significant == (t.p_value <= 0.05)
        # The confidence sequence is wider than the fixed-horizon interval at the same data.
        fixed = two_proportion_ztest(*args)
        assert t.diff_ci[0] < fixed.diff_ci[0] and t.diff_ci[1] > fixed.diff_ci[1]


def test_bad_counts_are_refused() -> None:
    for args in [(1, 0, 1, 10), (11, 10, 1, 10), (-1, 10, 1, 10)]:
        with pytest.raises(ValueError):
            two_proportion_ztest(*args)
    with pytest.raises(ValueError):
        sample_size_per_arm(0.0, 0.1)
