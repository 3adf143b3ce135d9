"""Bin edges and epsilon-filled histograms for binned drift statistics (PSI, JS).

Three ways to build a :class:`Binning`:

* :func:`quantile_binning` -- quantiles of the *reference* only (deciles by default), the usual
  PSI binning. The outer bins are open: current values below the reference minimum count in the
  first bin, values above the maximum in the last, so nothing is dropped.
* :func:`uniform_binning` -- ``n_bins`` equal-width bins over the reference range (open ends too).
* :func:`sturges_evidently_binning` -- the Evidently-compatible option: Sturges bins
  (``numpy.histogram_bin_edges(..., bins="sturges")``) over reference **and** current
  concatenated, closed ends (every value is in range by construction). Together with the default
  epsilon ``1e-4`` this reproduces Evidently's ``get_binned_data(..., feel_zeroes=True)``, so PSI
  and JS numbers can be compared with that tool.

:func:`histogram` follows ``numpy.histogram`` semantics (bins ``[a, b)``, the last one
``[a, b]``) and, like Evidently, replaces empty-bin proportions by ``epsilon`` *without*
renormalising.

>>> import numpy as np
>>> ref = np.arange(10.0)
>>> b = quantile_binning(ref, n_bins=2)
>>> b.edges, b.method
((0.0, 4.5, 9.0), 'quantile')
>>> histogram([-5.0, 1.0, 100.0, 100.0], b).tolist()
[0.5, 0.5]
>>> histogram([1.0, 2.0], b).tolist()
[1.0, 0.0001]
>>> sturges_evidently_binning([0.0, 1.0], [2.0, 3.0]).edges
(0.0, 1.0, 2.0, 3.0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np

__all__ = [
    "Binning",
    "BinningMethod",
    "DEFAULT_EPSILON",
    "histogram",
    "quantile_binning",
    "sturges_evidently_binning",
    "uniform_binning",
]

BinningMethod = Literal["quantile", "uniform", "sturges-evidently"]

#: Proportion given to empty bins (Evidently's value).
DEFAULT_EPSILON = 1e-4

ArrayLike = Sequence[float] | np.ndarray


@dataclass(frozen=True)
class Binning:
    """Bin edges plus how they were made.

    Attributes:
        edges: strictly increasing edges, ``len(edges) - 1`` bins.
        method: ``"quantile"``, ``"uniform"`` or ``"sturges-evidently"``.
        epsilon: proportion that replaces an empty bin's 0 (keeps logs finite).
        open_ends: when true, values outside ``[edges[0], edges[-1]]`` go to the outer bins.

    >>> Binning(edges=(0.0, 1.0), method="uniform").to_dict()
    {'method': 'uniform', 'edges': [0.0, 1.0], 'n_bins': 1, 'epsilon': 0.0001, 'open_ends': True}
    """

    edges: tuple[float, ...]
    method: BinningMethod
    epsilon: float = DEFAULT_EPSILON
    open_ends: bool = True

    def __post_init__(self) -> None:
        if len(self.edges) < 2:
            raise ValueError("a binning needs at least two edges")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:])):
            raise ValueError("edges must be strictly increasing")
        if not 0.0 <= self.epsilon < 1.0:
            raise ValueError("epsilon must be in [0, 1)")

    @property
    def n_bins(self) -> int:
        """Number of bins."""
        return len(self.edges) - 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly record of the binning (goes into every alert)."""
        return {
            "method": self.method,
            "edges": [float(e) for e in self.edges],
            "n_bins": self.n_bins,
            "epsilon": self.epsilon,
            "open_ends": self.open_ends,
        }


def _finite_1d(values: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _dedupe(edges: np.ndarray) -> tuple[float, ...]:
    edges = np.unique(edges)
    if edges.size < 2:  # constant data: one bin around the value
        v = float(edges[0])
        return (v - 0.5, v + 0.5)
    return tuple(float(e) for e in edges)


def quantile_binning(reference: ArrayLike, n_bins: int = 10, epsilon: float = DEFAULT_EPSILON) -> Binning:
    """Quantile bins of the reference (deciles by default), open outer ends.

    Edges are ``numpy.quantile(reference, linspace(0, 1, n_bins + 1))`` (linear
    interpolation); repeated edges (discrete data) are merged, so there can be fewer bins.

    >>> quantile_binning([1.0, 1.0, 1.0, 2.0], n_bins=4).edges
    (1.0, 1.25, 2.0)
    """
    ref = _finite_1d(reference, "reference")
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    edges = np.quantile(ref, np.linspace(0.0, 1.0, n_bins + 1))
    return Binning(edges=_dedupe(edges), method="quantile", epsilon=epsilon, open_ends=True)


def uniform_binning(reference: ArrayLike, n_bins: int = 10, epsilon: float = DEFAULT_EPSILON) -> Binning:
    """``n_bins`` equal-width bins over the reference range, open outer ends.

    >>> uniform_binning([0.0, 4.0], n_bins=4).edges
    (0.0, 1.0, 2.0, 3.0, 4.0)
    """
    ref = _finite_1d(reference, "reference")
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    edges = np.linspace(ref.min(), ref.max(), n_bins + 1)
    return Binning(edges=_dedupe(edges), method="uniform", epsilon=epsilon, open_ends=True)


def sturges_evidently_binning(
    reference: ArrayLike, current: ArrayLike, epsilon: float = DEFAULT_EPSILON
) -> Binning:
    """Evidently-compatible bins: Sturges over reference + current, closed ends.

    Same as Evidently's ``np.histogram_bin_edges(pd.concat([reference, current]), bins="sturges")``.
    The binning depends on the current window, so it is recomputed for every comparison.

    >>> b = sturges_evidently_binning([0.0, 1.0, 2.0], [3.0])
    >>> b.n_bins, b.method, b.open_ends
    (3, 'sturges-evidently', False)
    """
    both = np.concatenate([_finite_1d(reference, "reference"), _finite_1d(current, "current")])
    edges = np.histogram_bin_edges(both, bins="sturges")
    return Binning(edges=_dedupe(edges), method="sturges-evidently", epsilon=epsilon, open_ends=False)


def histogram(values: ArrayLike, binning: Binning) -> np.ndarray:
    """Proportion of ``values`` per bin; empty bins get ``binning.epsilon`` (no renormalising).

    With closed ends, values outside the edges are not counted (as in ``numpy.histogram``) but
    still count in the denominator ``len(values)``.

    >>> b = Binning(edges=(0.0, 1.0, 2.0, 3.0), method="uniform", epsilon=0.01)
    >>> histogram([0.5, 0.5, 3.0, 9.0], b).tolist()
    [0.5, 0.01, 0.5]
    """
    arr = _finite_1d(values, "values")
    edges = np.asarray(binning.edges, dtype=np.float64)
    if binning.open_ends:
        arr = np.clip(arr, edges[0], edges[-1])
    counts, _ = np.histogram(arr, bins=edges)
    props = counts.astype(np.float64) / arr.size
    props[counts == 0] = binning.epsilon
    return props
