"""Statistics of an A/B test on click-through rates: intervals, tests, sample sizes.

Everything here takes counts (clicks ``k`` out of impressions ``n`` per arm; arm 1 is the
control, arm 2 the treatment) and uses the normal approximation (the counts of an online
experiment are large). Formulas are in ``docs/rollouts.md``.

* :func:`wilson_interval` - a CTR's confidence interval (Wilson score: stays inside [0, 1]
  and keeps its coverage for small counts, unlike the Wald interval);
* :func:`two_proportion_ztest` - the fixed-horizon test: pooled z statistic, two-sided p,
  the difference with its (unpooled Wald) interval and the relative lift with a log-ratio
  (delta method) interval;
* :func:`msprt` - the sequential option: a mixture sequential probability ratio test
  (Johari, Pekelis & Walsh, "Always valid inference", 2017) with a normal mixture
  ``N(0, tau^2)`` on the difference. Its p-value is valid at any stopping time, so looking
  at the test after every batch of traffic and stopping the first time ``p < alpha`` keeps
  the false-positive rate below ``alpha``, which the repeated fixed-horizon z-test does not;
* :func:`sample_size_per_arm` - impressions per arm to detect a relative lift.

>>> t = two_proportion_ztest(100, 1000, 130, 1000)
>>> round(t.z, 3), round(t.p_value, 4), round(t.lift, 2)
(2.103, 0.0355, 0.3)
>>> [round(x, 4) for x in wilson_interval(100, 1000)]
[0.0829, 0.1202]
>>> sample_size_per_arm(0.10, 0.10)  # 10% -> 11% CTR at alpha 0.05, power 0.8
14751
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

_NORMAL = NormalDist()


def z_quantile(p: float) -> float:
    """The standard normal quantile (``z_quantile(0.975)`` = 1.96)."""
    return _NORMAL.inv_cdf(p)


def two_sided_p(z: float) -> float:
    """Two-sided p-value of a standard normal statistic."""
    return math.erfc(abs(z) / math.sqrt(2))


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of the proportion ``k / n``; ``(0, 1)`` when ``n == 0``."""
    if n <= 0:
        return (0.0, 1.0)
    z = z_quantile(0.5 + confidence / 2)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True, slots=True)
class ProportionTest:
    """A treatment-vs-control comparison.

    ``diff`` = CTR(treatment) - CTR(control) with interval ``diff_ci``; ``lift`` = relative
    change ``CTR(t) / CTR(c) - 1`` with ``lift_ci`` (None when the control has no clicks);
    ``p_value`` two-sided; ``significant`` = ``p_value < alpha``.
    """

    z: float
    p_value: float
    diff: float
    diff_ci: tuple[float, float]
    lift: float | None
    lift_ci: tuple[float, float] | None
    significant: bool


def _rates(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float]:
    if n1 <= 0 or n2 <= 0:
        raise ValueError(f"both arms need impressions, got {n1} and {n2}")
    if not (0 <= k1 <= n1 and 0 <= k2 <= n2):
        raise ValueError(f"clicks must be between 0 and the impressions: {k1}/{n1}, {k2}/{n2}")
    return k1 / n1, k2 / n2


def lift_interval(k1: int, n1: int, k2: int, n2: int, confidence: float = 0.95) -> tuple[float, float] | None:
    """Interval of the relative lift ``p2 / p1 - 1`` from the log of the ratio (delta method).

    ``Var(log(p2/p1)) ~ (1 - p1) / k1 + (1 - p2) / k2``; None when either arm has no clicks.
    """
    p1, p2 = _rates(k1, n1, k2, n2)
    if k1 == 0 or k2 == 0:
        return None
    se = math.sqrt((1 - p1) / k1 + (1 - p2) / k2)
    z = z_quantile(0.5 + confidence / 2)
    log_ratio = math.log(p2 / p1)
    return (math.exp(log_ratio - z * se) - 1, math.exp(log_ratio + z * se) - 1)


def two_proportion_ztest(k1: int, n1: int, k2: int, n2: int, alpha: float = 0.05) -> ProportionTest:
    """Pooled two-proportion z-test of arm 2 against arm 1 (two-sided).

    ``z = (p2 - p1) / sqrt(p (1 - p) (1/n1 + 1/n2))`` with the pooled ``p = (k1 + k2) / (n1 + n2)``.
    """
    p1, p2 = _rates(k1, n1, k2, n2)
    pooled = (k1 + k2) / (n1 + n2)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    diff = p2 - p1
    z = diff / se0 if se0 > 0 else 0.0
    p_value = two_sided_p(z) if se0 > 0 else 1.0
    zc = z_quantile(1 - alpha / 2)
    se = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    lift = p2 / p1 - 1 if k1 > 0 else None
    return ProportionTest(z, p_value, diff, (diff - zc * se, diff + zc * se), lift,
                      lift_interval(k1, n1, k2, n2, 1 - alpha), p_value < alpha)


def msprt(k1: int, n1: int, k2: int, n2: int, alpha: float = 0.05, mixture_lift: float = 0.05) -> ProportionTest:
    """Always-valid test of arm 2 against arm 1: mSPRT with a normal mixture on the difference.

    With ``theta = p2 - p1`` estimated by ``d`` with variance ``V`` (pooled under the null
    for the statistic, unpooled for the interval) and the mixture ``theta ~ N(0, tau^2)``::

        Lambda = sqrt(V / (V + tau^2)) * exp(tau^2 d^2 / (2 V (V + tau^2)))

    ``p_value = min(1, 1 / Lambda)``; ``significant`` when ``Lambda >= 1 / alpha``. By Ville's
    inequality the probability that Lambda *ever* reaches ``1/alpha`` under the null is at most
    ``alpha``, whatever the number of looks. The interval is the confidence sequence
    ``d +- sqrt(V (V + tau^2) / tau^2 * (2 log(1/alpha) + log((V + tau^2) / V)))``.
    ``tau = mixture_lift * pooled CTR``: the test is most powerful for effects of about that
    relative size. ``z`` holds ``log(Lambda)``. The lift interval divides the difference's
    interval by the control's CTR (approximate).
    """
    p1, p2 = _rates(k1, n1, k2, n2)
    pooled = (k1 + k2) / (n1 + n2)
    diff = p2 - p1
    v0 = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    tau2 = (mixture_lift * pooled) ** 2
    if v0 <= 0 or tau2 <= 0:
        return ProportionTest(0.0, 1.0, diff, (-1.0, 1.0), None, None, False)
    log_lambda = 0.5 * math.log(v0 / (v0 + tau2)) + tau2 * diff * diff / (2 * v0 * (v0 + tau2))
    p_value = min(1.0, math.exp(-log_lambda))
    v = max(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2, 1e-300)
    half = math.sqrt(v * (v + tau2) / tau2 * (2 * math.log(1 / alpha) + math.log((v + tau2) / v)))
    ci = (diff - half, diff + half)
    lift = p2 / p1 - 1 if k1 > 0 else None
    lift_ci = (ci[0] / p1, ci[1] / p1) if k1 > 0 else None
    return ProportionTest(log_lambda, p_value, diff, ci, lift, lift_ci, log_lambda >= math.log(1 / alpha))


def sample_size_per_arm(p1: float, relative_lift: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Impressions per arm for a two-sided z-test to detect CTR ``p1 -> p1 * (1 + relative_lift)``.

    ``n = (z_{1-a/2} sqrt(2 q (1 - q)) + z_{power} sqrt(p1 (1 - p1) + p2 (1 - p2)))^2 / (p2 - p1)^2``
    with ``q = (p1 + p2) / 2``.
    """
    p2 = p1 * (1 + relative_lift)
    if not (0 < p1 < 1 and 0 < p2 < 1) or relative_lift == 0:
        raise ValueError(f"need 0 < CTR < 1 before and after the lift, got {p1} -> {p2}")
    q = (p1 + p2) / 2
    numerator = (z_quantile(1 - alpha / 2) * math.sqrt(2 * q * (1 - q))
                 + z_quantile(power) * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2)))
    return math.ceil(numerator ** 2 / (p2 - p1) ** 2)
