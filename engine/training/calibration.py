"""Downsampling correction and probability calibration (numpy only; the ONNX exporter
re-implements :func:`apply_calibrator` in a graph, so the semantics here are the contract).

A ranker's output becomes a probability in three steps::

    p = sigmoid(logit)
    q = p / (p + (1 - p) / w)        # negative downsampling at rate w (skipped when w == 1)
    out = calibrator(q)              # optional, fit on held-out data after the correction

Calibrators (JSON-serialisable dicts):

* ``{"kind": "platt", "a": a, "b": b}``: ``sigmoid(a * logit(clip(q, 1e-7, 1 - 1e-7)) + b)``,
  fit by Newton's method on the log loss (plain maximum likelihood, no target smoothing);
* ``{"kind": "isotonic", "x": [...], "y": [...]}``: ``np.interp(q, x, y)``, ``x`` strictly
  ascending, values outside ``[x[0], x[-1]]`` take the end values. Fit by
  pool-adjacent-violators (:func:`scipy.optimize.isotonic_regression`); each pooled block
  contributes its smallest and largest score, so the curve is flat within a block and
  linear between blocks.

>>> q = downsampling_correction(np.array([0.5]), 0.25)
>>> round(float(q[0]), 4)
0.2
>>> apply_calibrator({"kind": "platt", "a": 1.0, "b": 0.0}, np.array([0.2])).round(6).tolist()
[0.2]
>>> apply_calibrator({"kind": "isotonic", "x": [0.1, 0.3], "y": [0.0, 1.0]}, np.array([0.0, 0.2, 0.9])).tolist()
[0.0, 0.5, 1.0]
"""

from __future__ import annotations

import logging

from typing import Any

import numpy as np
from scipy.optimize import isotonic_regression

EPS = 1e-7  # clip before logit

log = logging.getLogger(__name__)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically safe logistic function."""
    x = np.asarray(x, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -x))


def logit(q: np.ndarray) -> np.ndarray:
    """``log(q / (1 - q))`` after clipping ``q`` to ``[1e-7, 1 - 1e-7]``."""
    q = np.clip(np.asarray(q, dtype=np.float64), EPS, 1 - EPS)
    return np.log(q) - np.log1p(-q)


def downsampling_correction(p: np.ndarray, w: float) -> np.ndarray:
    """Undo negative downsampling at keep-rate ``w``: ``q = p / (p + (1 - p) / w)``."""
    p = np.asarray(p, dtype=np.float64)
    if w == 1.0:
        return p
    if not 0.0 < w <= 1.0:
        raise ValueError(f"downsample rate must be in (0, 1], got {w}")
    return p / (p + (1.0 - p) / w)


def apply_calibrator(params: dict[str, Any] | None, q: np.ndarray) -> np.ndarray:
    """Calibrated probabilities from corrected scores ``q`` (identity when ``params`` is None)."""
    q = np.asarray(q, dtype=np.float64)
    if params is None:
        return q
    if params["kind"] == "platt":
        return sigmoid(params["a"] * logit(q) + params["b"])
    if params["kind"] == "isotonic":
        return np.interp(q, np.asarray(params["x"], np.float64), np.asarray(params["y"], np.float64))
    raise ValueError(f"unknown calibrator kind {params['kind']!r}")


def fit_platt(scores_q: np.ndarray, labels: np.ndarray, max_iter: int = 100, tol: float = 1e-10) -> dict[str, Any]:
    """Platt scaling ``sigmoid(a * logit(q) + b)`` by Newton's method (maximum likelihood).

    >>> rng = np.random.default_rng(0)
    >>> z = rng.normal(size=20_000)
    >>> y = rng.random(20_000) < sigmoid(2 * z - 1)
    >>> c = fit_platt(sigmoid(z), y)
    >>> round(c["a"], 1), round(c["b"], 1)
    (2.0, -1.0)
    """
    z = logit(scores_q)
    y = np.asarray(labels, dtype=np.float64)
    if z.size == 0 or y.min() == y.max():
        raise ValueError("Platt scaling needs both classes")
    X = np.column_stack([z, np.ones_like(z)])
    theta = np.array([1.0, 0.0])
    for _ in range(max_iter):
        p = sigmoid(X @ theta)
        grad = X.T @ (p - y)
        hess = (X * (p * (1 - p))[:, None]).T @ X + 1e-12 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        # Halve the step while it does not lower the loss (Newton can overshoot on separable data).
        loss = _nll(X @ theta, y)
        t = 1.0
        while t > 1e-6 and _nll(X @ (theta - t * step), y) > loss + 1e-15:
            t /= 2
        theta = theta - t * step
        if np.abs(t * step).max() < tol:
            break
    if theta[0] < 0:
        # A calibrator may rescale scores but never reverse their order. The likelihood is convex,
        # so the best fit with a >= 0 lies on a = 0: the base rate for everyone. A model whose
        # scores anti-correlate with the labels on held-out data is broken; say so.
        rate = float(y.mean())
        log.warning("Platt scaling fitted a negative slope (%.3g): the scores are anti-correlated with the "
                    "held-out labels; calibrating to the base rate %.4g instead", theta[0], rate)
        theta = np.array([0.0, np.log(rate / (1 - rate))])
    return {"kind": "platt", "a": float(theta[0]), "b": float(theta[1])}


def _nll(margin: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum(np.logaddexp(0.0, margin) - y * margin))


def fit_isotonic(scores_q: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Isotonic (non-decreasing) map from ``q`` to the click rate, by pool-adjacent-violators.

    >>> c = fit_isotonic(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0, 1, 0, 1]))
    >>> c["x"], c["y"]
    ([0.1, 0.2, 0.3, 0.4], [0.0, 0.5, 0.5, 1.0])
    """
    q = np.asarray(scores_q, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if q.size == 0:
        raise ValueError("isotonic calibration needs data")
    # Tied scores are one point (their mean label, weighted by count): x is then strictly ascending.
    xs, inverse, counts = np.unique(q, return_inverse=True, return_counts=True)
    means = np.bincount(inverse, weights=y) / counts
    res = isotonic_regression(means, weights=counts.astype(np.float64), increasing=True)
    starts = res.blocks[:-1]
    ends = res.blocks[1:] - 1
    fitted = res.x[starts]
    x = np.column_stack([xs[starts], xs[ends]]).ravel()
    yy = np.repeat(fitted, 2)
    keep = np.ones(x.size, dtype=bool)
    keep[1::2] = ends > starts  # a one-score block contributes one point
    return {"kind": "isotonic", "x": x[keep].tolist(), "y": yy[keep].tolist()}


def fit_calibrator(kind: str | None, scores_q: np.ndarray, labels: np.ndarray) -> dict[str, Any] | None:
    """``fit_platt`` / ``fit_isotonic`` by name; None for ``kind`` None or "none"."""
    if kind in (None, "none"):
        return None
    if kind == "platt":
        return fit_platt(scores_q, labels)
    if kind == "isotonic":
        return fit_isotonic(scores_q, labels)
    raise ValueError(f"unknown calibration {kind!r}")
