"""Offline metrics in numpy: ranking quality, calibration, and top-K retrieval.

Definitions:

* :func:`auc`: exact ROC AUC, tied scores counted half (shared with the online learners:
  :func:`engine.learning.evaluation.exact_auc`).
* :func:`log_loss`: mean negative log-likelihood, probabilities clipped to ``[1e-15, 1 - 1e-15]``.
* :func:`ece`: expected calibration error over ``n_bins`` equal-width bins of ``[0, 1]``:
  ``sum_b n_b / n * |mean(p in b) - mean(y in b)|``. The default is **100 bins**, not the
  usual 15: click probabilities sit mostly below 0.1, and with 15 bins nearly every
  prediction would share one bin, hiding miscalibration across the range that matters.
  ECE has a noise floor of roughly ``sqrt(ctr / n)``: compare models on the same, large set.
* :func:`calibration_ratio`: mean prediction / mean label (1 is calibrated on average).
* Top-K metrics take, per user, a ranked list of item ids and the set of relevant ids
  (binary relevance); users with no relevant item are skipped, and the metric is the mean
  over the other users:

  - ``recall@K = |top K ∩ relevant| / |relevant|``;
  - ``NDCG@K = DCG@K / IDCG@K`` with ``DCG@K = sum_{j<K} rel_j / log2(j + 2)`` and the ideal
    ranking's ``IDCG@K`` (``min(K, |relevant|)`` hits first);
  - ``MAP@K = sum_{j<K} precision@(j+1) * rel_j / min(K, |relevant|)``.

>>> y = np.array([0, 1, 1, 0]); p = np.array([0.1, 0.8, 0.6, 0.3])
>>> auc(y, p), round(log_loss(y, p), 4), calibration_ratio(y, p)
(1.0, 0.299, 0.9)
>>> recall_at_k([[3, 1, 2]], [{1, 9}], 2), map_at_k([[3, 1, 2]], [{1, 9}], 2)
(0.5, 0.25)
"""

from __future__ import annotations

from typing import Any, Collection, Sequence

import numpy as np

from engine.learning.evaluation import exact_auc

_CLIP = 1e-15


def auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Exact ROC AUC; None when only one class is present."""
    return exact_auc(np.asarray(labels), np.asarray(scores))


def log_loss(labels: np.ndarray, p: np.ndarray) -> float:
    """Mean binary log loss."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(p, dtype=np.float64), _CLIP, 1 - _CLIP)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def calibration_ratio(labels: np.ndarray, p: np.ndarray) -> float:
    """Mean prediction over mean label."""
    return float(np.mean(p) / np.mean(labels))


def reliability(labels: np.ndarray, p: np.ndarray, n_bins: int = 100) -> dict[str, list]:
    """Per equal-width bin: lower edge, count, mean prediction and click rate (None if empty).

    >>> r = reliability(np.array([0, 1, 1]), np.array([0.05, 0.95, 0.9]), n_bins=2)
    >>> r["count"], r["mean_pred"], r["mean_label"]
    ([1, 2], [0.05, 0.925], [0.0, 1.0])
    """
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    b = np.clip((p * n_bins).astype(np.int64), 0, n_bins - 1)
    count = np.bincount(b, minlength=n_bins)
    sum_p = np.bincount(b, weights=p, minlength=n_bins)
    sum_y = np.bincount(b, weights=y, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mp, my = sum_p / count, sum_y / count
    return {
        "lower": (np.arange(n_bins) / n_bins).tolist(),
        "count": count.tolist(),
        "mean_pred": [float(round(v, 12)) if c else None for v, c in zip(mp, count)],
        "mean_label": [float(round(v, 12)) if c else None for v, c in zip(my, count)],
    }


def ece(labels: np.ndarray, p: np.ndarray, n_bins: int = 100) -> float:
    """Expected calibration error (see the module docstring)."""
    r = reliability(labels, p, n_bins)
    n = sum(r["count"])
    return float(sum(c * abs(mp - my) for c, mp, my in zip(r["count"], r["mean_pred"], r["mean_label"]) if c) / n)


def _hits(ranked: Sequence[Sequence[int]] | np.ndarray, relevant: Sequence[Collection[int]], k: int
          ) -> tuple[np.ndarray, np.ndarray]:
    """``hits[u, j]``: the j-th ranked item of user u is relevant (j < k); and ``|relevant_u|``."""
    if len(ranked) != len(relevant):
        raise ValueError("ranked and relevant must have one entry per user")
    hits = np.zeros((len(ranked), k), dtype=bool)
    n_rel = np.array([len(r) for r in relevant], dtype=np.int64)
    for u, (row, rel) in enumerate(zip(ranked, relevant)):
        top = np.asarray(row)[:k]
        hits[u, : top.size] = np.isin(top, np.fromiter(rel, dtype=np.int64, count=len(rel)))
    keep = n_rel > 0
    return hits[keep], n_rel[keep]


def recall_at_k(ranked: Sequence[Sequence[int]] | np.ndarray, relevant: Sequence[Collection[int]], k: int) -> float:
    """Mean over users of the share of relevant items in the top ``k``."""
    return _recall(*_hits(ranked, relevant, k))


def ndcg_at_k(ranked: Sequence[Sequence[int]] | np.ndarray, relevant: Sequence[Collection[int]], k: int) -> float:
    """Mean NDCG@k with binary relevance.

    >>> round(ndcg_at_k([[3, 1, 2]], [{1, 2}], 3), 4)
    0.6934
    """
    return _ndcg(*_hits(ranked, relevant, k), k)


def map_at_k(ranked: Sequence[Sequence[int]] | np.ndarray, relevant: Sequence[Collection[int]], k: int) -> float:
    """Mean average precision at k, normalised by ``min(k, |relevant|)``."""
    return _map(*_hits(ranked, relevant, k), k)


def ranking_metrics(ranked: Sequence[Sequence[int]] | np.ndarray, relevant: Sequence[Collection[int]],
                    ks: Sequence[int]) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """``recall@k``, ``ndcg@k`` and ``map@k`` for every k in ``ks``, from one pass over the users;
    also that pass's ``hits`` (up to max(ks)) and ``|relevant|`` per user.

    >>> m, hits, n_rel = ranking_metrics([[3, 1, 2]], [{1, 2}], [1, 3])
    >>> m["recall@3"], round(m["ndcg@3"], 4), hits.shape
    (1.0, 0.6934, (1, 3))
    """
    hits, n_rel = _hits(ranked, relevant, max(ks))
    out: dict[str, float] = {}
    for k in ks:
        top = hits[:, :k]
        out[f"recall@{k}"] = _recall(top, n_rel)
        out[f"ndcg@{k}"] = _ndcg(top, n_rel, k)
        out[f"map@{k}"] = _map(top, n_rel, k)
    return out, hits, n_rel


def _recall(hits: np.ndarray, n_rel: np.ndarray) -> float:
    return float(np.mean(hits.sum(1) / n_rel)) if n_rel.size else float("nan")


def _ndcg(hits: np.ndarray, n_rel: np.ndarray, k: int) -> float:
    if not n_rel.size:
        return float("nan")
    disc = 1.0 / np.log2(np.arange(k) + 2.0)
    dcg = hits @ disc
    idcg = np.cumsum(disc)[np.minimum(n_rel, k) - 1]
    return float(np.mean(dcg / idcg))


def _map(hits: np.ndarray, n_rel: np.ndarray, k: int) -> float:
    if not n_rel.size:
        return float("nan")
    precision = np.cumsum(hits, axis=1) / np.arange(1, k + 1)
    return float(np.mean((precision * hits).sum(1) / np.minimum(n_rel, k)))


def classification_report(labels: np.ndarray, p: np.ndarray, n_bins: int = 100) -> dict[str, Any]:
    """AUC, log loss, ECE, calibration ratio, mean prediction and label rate, in one dict."""
    return {
        "n": int(len(labels)),
        "auc": auc(labels, p),
        "log_loss": log_loss(labels, p),
        "ece": ece(labels, p, n_bins),
        "ece_bins": n_bins,
        "calibration_ratio": calibration_ratio(labels, p),
        "mean_prediction": float(np.mean(p)),
        "label_rate": float(np.mean(labels)),
    }
