"""Exact top-K retrieval with a two-tower run, and its Recall/NDCG/MAP@K on held-out pairs.

Queries are the distinct users of the evaluation pairs, the catalog the distinct items
(:meth:`PairData.queries`, :meth:`PairData.catalog`); an item is relevant to a user when
the pair occurs. Scores are exact dot products (no approximate index), in user chunks.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from engine.training.data import PairData
from engine.training.metrics import ranking_metrics


def top_k(user_vecs: np.ndarray, item_vecs: np.ndarray, k: int, chunk: int = 4_096) -> np.ndarray:
    """Indices of each user's ``k`` best items by dot product, best first.

    >>> top_k(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[0.9, 0.1], [0.1, 0.8], [0.5, 0.5]]), 2).tolist()
    [[0, 2], [1, 2]]
    """
    k = min(k, len(item_vecs))
    out = np.empty((len(user_vecs), k), dtype=np.int64)
    for s in range(0, len(user_vecs), chunk):
        scores = user_vecs[s:s + chunk] @ item_vecs.T
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
        out[s:s + chunk] = np.take_along_axis(part, order, axis=1)
    return out


def retrieval_report(run: Any, data: PairData, ks: Sequence[int]) -> dict[str, Any]:
    """Recall@K, NDCG@K and MAP@K of ``run`` (a two-tower :class:`TrainingRun`) on ``data``;
    also the full recall curve for K = 1..max(ks) under ``recall_curve``."""
    _, ud, us, relevant = data.queries()
    item_keys, idn, isp = data.catalog()
    ranked = item_keys[top_k(run.encode_users(ud, us), run.encode_items(idn, isp), max(ks))]
    report: dict[str, Any] = {"users": len(relevant), "items": len(item_keys), "pairs": len(data)}
    metrics, hits, n_rel = ranking_metrics(ranked, relevant, ks)
    report |= metrics
    report["recall_curve"] = (np.cumsum(hits, axis=1) / n_rel[:, None]).mean(0).tolist() if len(n_rel) else []
    return report
