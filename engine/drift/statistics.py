"""Drift statistics: PSI, Jensen-Shannon distance, exact KS and streaming KS on KLL sketches.

Every function returns a :class:`DriftResult` that records how the number was obtained
(binning + epsilon for PSI/JS, KS method for KS) so alerts from different tools can be compared.

Conventions
-----------
* ``psi = sum((cur - ref) * ln(cur / ref))`` over the binned proportions of
  :func:`engine.drift.binning.histogram` (empty bins = ``epsilon``, no renormalising, as in
  Evidently). Default binning: reference deciles. Drift when ``value >= threshold`` (0.1).
* ``js_distance`` = ``sqrt(JS divergence)`` with the natural log, proportions renormalised to
  sum 1 first -- numerically what ``scipy.spatial.distance.jensenshannon(p, q)`` and Evidently
  report. Drift when ``value >= threshold`` (0.1).
* ``ks_exact`` = ``scipy.stats.ks_2samp(reference, current)`` (two-sided, ``method="auto"``);
  for bounded windows. ``value`` is the **p-value** (Evidently's convention), drift when
  ``value < threshold`` (0.05); the D statistic is in ``ks_statistic``.
* ``ks_kll`` = streaming KS on Apache DataSketches KLL sketches. ``drifted`` is
  ``datasketches.ks_test(sk_ref, sk_cur, p)``. That binding returns only a boolean, so ``value``
  (D) is computed here from the two sketches' CDFs (``get_cdf(..., inclusive=True)``) at the
  union of their retained items -- the same delta as the C++ ``kolmogorov_smirnov::delta`` --
  and ``threshold`` replicates the C++ ``kolmogorov_smirnov::threshold``:
  ``sqrt(-0.5 ln(p/2)) * sqrt((r1 + r2) / (r1 r2)) + eps1 + eps2`` with ``r`` the retained item
  counts and ``eps`` the sketches' normalised rank errors. Drift when ``value > threshold``.
  While neither sketch has compacted (``n <= k``) D equals the exact two-sample D; afterwards it
  is within ``eps1 + eps2`` of it (with high probability).

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> ref, cur = rng.normal(size=2000), rng.normal(0.5, 1.0, size=2000)
>>> r = psi(ref, cur)
>>> r.statistic, r.drifted, r.binning["method"], r.binning["n_bins"], r.epsilon
('psi', True, 'quantile', 10, 0.0001)
>>> ks_exact(ref, ref[::-1]).value
1.0
>>> ks_kll(kll_sketch(ref), kll_sketch(cur)).drifted
True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import datasketches
import numpy as np
from scipy import stats

from engine.drift.binning import Binning, _finite_1d, histogram, quantile_binning

__all__ = [
    "DriftResult",
    "KS_EXACT_METHOD",
    "KS_KLL_METHOD",
    "KllSketch",
    "js_distance",
    "kll_sketch",
    "ks_exact",
    "ks_kll",
    "kll_ks_threshold",
    "kll_ks_statistic",
    "psi",
]

ArrayLike = Sequence[float] | np.ndarray
KllSketch = datasketches.kll_floats_sketch | datasketches.kll_doubles_sketch

KS_EXACT_METHOD = "scipy.stats.ks_2samp(alternative='two-sided', method='auto')"
KS_KLL_METHOD = "datasketches.ks_test(kll) decision; D from sketch CDFs at union of retained items"


@dataclass(frozen=True)
class DriftResult:
    """One drift check, with everything needed to reproduce or compare it.

    ``drifted`` is authoritative. For ``statistic == "ks_pvalue"`` drift means
    ``value < threshold``; for ``"psi"`` and ``"js_distance"`` ``value >= threshold``; for
    ``"ks_kll"`` ``value > threshold``.

    >>> DriftResult("psi", 0.2, 0.1, True, None, 1e-4, None, 10, 10).to_dict()["drifted"]
    True
    """

    statistic: str
    value: float
    threshold: float
    drifted: bool
    binning: dict[str, Any] | None
    epsilon: float | None
    ks_method: str | None
    n_reference: int
    n_current: int
    ks_statistic: float | None = None
    p_value: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for an alert payload)."""
        return asdict(self)


def _binned_result(
    statistic: str, value: float, threshold: float, b: Binning, ref: np.ndarray, cur: np.ndarray
) -> DriftResult:
    """The result of a statistic over binned distributions (drifted when value >= threshold)."""
    return DriftResult(
        statistic=statistic,
        value=value,
        threshold=threshold,
        drifted=bool(value >= threshold),
        binning=b.to_dict(),
        epsilon=b.epsilon,
        ks_method=None,
        n_reference=int(ref.size),
        n_current=int(cur.size),
    )


def _binned(reference: ArrayLike, current: ArrayLike, binning: Binning | None):
    ref, cur = _finite_1d(reference, "reference"), _finite_1d(current, "current")
    b = binning if binning is not None else quantile_binning(ref)
    return ref, cur, b, histogram(ref, b), histogram(cur, b)


def psi(
    reference: ArrayLike, current: ArrayLike, binning: Binning | None = None, threshold: float = 0.1
) -> DriftResult:
    """Population stability index of ``current`` against ``reference``.

    ``binning`` defaults to reference deciles (:func:`~engine.drift.binning.quantile_binning`);
    pass :func:`~engine.drift.binning.sturges_evidently_binning` for Evidently's numbers.

    >>> psi([0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 2.0, 3.0]).value
    0.0
    """
    ref, cur, b, p, q = _binned(reference, current, binning)
    value = float(np.sum((q - p) * np.log(q / p)))
    return _binned_result("psi", value, threshold, b, ref, cur)


def js_distance(
    reference: ArrayLike, current: ArrayLike, binning: Binning | None = None, threshold: float = 0.1
) -> DriftResult:
    """Jensen-Shannon distance (natural log) between the binned distributions.

    >>> from engine.drift.binning import Binning
    >>> b = Binning(edges=(0.0, 1.0, 2.0), method="uniform", epsilon=0.0)
    >>> round(js_distance([0.5], [1.5], b).value ** 2, 6)  # divergence of disjoint = ln 2
    0.693147
    """
    ref, cur, b, p, q = _binned(reference, current, binning)
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_pm = np.where(p > 0, p * np.log(p / m), 0.0)
        kl_qm = np.where(q > 0, q * np.log(q / m), 0.0)
    divergence = max(0.5 * float(np.sum(kl_pm) + np.sum(kl_qm)), 0.0)
    value = float(np.sqrt(divergence))
    return _binned_result("js_distance", value, threshold, b, ref, cur)


def ks_exact(reference: ArrayLike, current: ArrayLike, threshold: float = 0.05) -> DriftResult:
    """Exact two-sample KS (``scipy.stats.ks_2samp``) for bounded windows.

    ``value`` is the p-value, ``ks_statistic`` the D statistic.

    >>> r = ks_exact([0.0, 1.0, 2.0], [10.0, 11.0, 12.0])
    >>> r.ks_statistic, round(r.value, 3), r.drifted
    (1.0, 0.1, False)
    """
    ref, cur = _finite_1d(reference, "reference"), _finite_1d(current, "current")
    res = stats.ks_2samp(ref, cur, alternative="two-sided", method="auto")
    p = float(res.pvalue)
    return DriftResult(
        statistic="ks_pvalue",
        value=p,
        threshold=threshold,
        drifted=bool(p < threshold),
        binning=None,
        epsilon=None,
        ks_method=KS_EXACT_METHOD,
        n_reference=int(ref.size),
        n_current=int(cur.size),
        ks_statistic=float(res.statistic),
        p_value=p,
    )


def kll_sketch(values: ArrayLike | None = None, k: int = 200, doubles: bool = True) -> KllSketch:
    """A KLL sketch (doubles by default), optionally pre-filled with ``values``.

    Keep one per feature and window and ``update`` it per event; merge sketches with ``merge``.

    >>> s = kll_sketch([3.0, 1.0, 2.0])
    >>> s.n, s.get_quantile(0.5)
    (3, 2.0)
    """
    sk = datasketches.kll_doubles_sketch(k) if doubles else datasketches.kll_floats_sketch(k)
    if values is not None:
        arr = _finite_1d(values, "values")
        sk.update(arr if doubles else arr.astype(np.float32))
    return sk


def kll_ks_statistic(sketch1: KllSketch, sketch2: KllSketch) -> float:
    """KS D between two KLL sketches: max CDF gap at the union of their retained items.

    >>> kll_ks_statistic(kll_sketch([0.0, 1.0]), kll_sketch([2.0, 3.0]))
    1.0
    """
    if sketch1.is_empty() or sketch2.is_empty():
        raise ValueError("KS needs two non-empty sketches")
    points = np.unique(np.fromiter((item for s in (sketch1, sketch2) for item, _ in s), dtype=np.float64))
    split = points.tolist()
    if isinstance(sketch1, datasketches.kll_floats_sketch):
        split = np.unique(points.astype(np.float32)).tolist()
    # get_cdf returns len(split) + 1 values; the last is always 1.
    f1 = np.asarray(sketch1.get_cdf(split, inclusive=True))[:-1]
    f2 = np.asarray(sketch2.get_cdf(split, inclusive=True))[:-1]
    return float(np.max(np.abs(f1 - f2)))


def kll_ks_threshold(sketch1: KllSketch, sketch2: KllSketch, p: float) -> float:
    """The C++ ``kolmogorov_smirnov::threshold`` that ``datasketches.ks_test`` compares D with.

    >>> s = kll_sketch(range(100))
    >>> round(kll_ks_threshold(s, s, 0.05), 4) > 0.19
    True
    """
    r1, r2 = float(sketch1.num_retained), float(sketch2.num_retained)
    area = np.sqrt(-0.5 * np.log(0.5 * p)) * np.sqrt((r1 + r2) / (r1 * r2))
    return float(area + sketch1.normalized_rank_error(False) + sketch2.normalized_rank_error(False))


def ks_kll(
    reference: KllSketch | ArrayLike, current: KllSketch | ArrayLike, threshold: float = 0.05, k: int = 200
) -> DriftResult:
    """Streaming two-sample KS on KLL sketches (arrays are sketched with ``k`` first).

    ``threshold`` is the test's p (significance); the result's ``threshold`` field holds the D
    threshold that ``datasketches.ks_test`` used, and ``p_value`` is ``None`` (not available).

    >>> r = ks_kll([0.0, 1.0, 2.0], [0.0, 1.0, 2.0])
    >>> r.value, r.drifted, r.ks_method.startswith("datasketches.ks_test")
    (0.0, False, True)
    """
    sk1 = reference if isinstance(reference, KllSketch) else kll_sketch(reference, k=k)
    sk2 = current if isinstance(current, KllSketch) else kll_sketch(current, k=k)
    if type(sk1) is not type(sk2):
        raise TypeError("both sketches must be of the same KLL type")
    d = kll_ks_statistic(sk1, sk2)
    drifted = bool(datasketches.ks_test(sk1, sk2, threshold))
    return DriftResult(
        statistic="ks_kll",
        value=d,
        threshold=kll_ks_threshold(sk1, sk2, threshold),
        drifted=drifted,
        binning=None,
        epsilon=None,
        ks_method=f"{KS_KLL_METHOD}; k={sk1.k}, p={threshold}",
        n_reference=int(sk1.n),
        n_current=int(sk2.n),
        ks_statistic=d,
    )
