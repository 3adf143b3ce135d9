"""Metrics against scikit-learn and brute-force definitions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import ndcg_score, roc_auc_score

from engine.training.metrics import (auc, calibration_ratio, classification_report, ece, log_loss, map_at_k,
                                     ndcg_at_k, recall_at_k, reliability)


def test_auc_and_log_loss_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(5_000) < 0.1
    p = np.clip(np.round(rng.beta(1, 9, 5_000) + 0.05 * y, 3), 1e-6, 1 - 1e-6)  # ties included
    assert auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert log_loss(y, p) == pytest.approx(sk_log_loss(y, p), rel=1e-9)
    assert auc(np.ones(3), np.array([0.1, 0.2, 0.3])) is None


def test_ece_and_reliability_by_definition() -> None:
    rng = np.random.default_rng(1)
    p = rng.random(10_000) ** 3
    y = rng.random(p.size) < p * 0.8
    total = 0.0
    for b in range(20):
        m = (p >= b / 20) & (p < (b + 1) / 20) if b < 19 else p >= 19 / 20
        if m.any():
            total += m.sum() * abs(p[m].mean() - y[m].mean())
    assert ece(y, p, n_bins=20) == pytest.approx(total / p.size, rel=1e-9)
    r = reliability(y, p, n_bins=20)
    assert sum(r["count"]) == p.size and len(r["lower"]) == 20
    assert ece(y, np.full(p.size, y.mean())) == pytest.approx(0.0, abs=1e-12)
    assert calibration_ratio(y, p) == pytest.approx(p.mean() / y.mean())
    rep = classification_report(y, p)
    assert rep["ece_bins"] == 100 and rep["n"] == p.size


def _brute(ranked: list[list[int]], relevant: list[set[int]], k: int) -> tuple[float, float, float]:
    rec, nd, ap = [], [], []
    for row, rel in zip(ranked, relevant):
        if not rel:
            continue
        top = row[:k]
        h = [1.0 if i in rel else 0.0 for i in top]
        rec.append(sum(h) / len(rel))
        dcg = sum(v / np.log2(j + 2) for j, v in enumerate(h))
        idcg = sum(1 / np.log2(j + 2) for j in range(min(k, len(rel))))
        nd.append(dcg / idcg)
        prec = [sum(h[: j + 1]) / (j + 1) for j in range(len(h))]
        ap.append(sum(pr * v for pr, v in zip(prec, h)) / min(k, len(rel)))
    return float(np.mean(rec)), float(np.mean(nd)), float(np.mean(ap))


def test_topk_metrics_by_definition_and_against_sklearn_ndcg() -> None:
    rng = np.random.default_rng(2)
    n_users, n_items = 60, 40
    scores = rng.random((n_users, n_items))
    truth = rng.random((n_users, n_items)) < 0.1
    truth[0] = False  # a user with nothing relevant is skipped
    ranked = np.argsort(-scores, axis=1)
    relevant = [set(np.flatnonzero(t).tolist()) for t in truth]
    for k in (1, 5, 10, 40):
        r, n, m = _brute(ranked.tolist(), relevant, k)
        assert recall_at_k(ranked, relevant, k) == pytest.approx(r)
        assert ndcg_at_k(ranked, relevant, k) == pytest.approx(n)
        assert map_at_k(ranked, relevant, k) == pytest.approx(m)
        keep = truth.any(axis=1)
        assert ndcg_at_k(ranked, relevant, k) == pytest.approx(ndcg_score(truth[keep], scores[keep], k=k))


def test_perfect_and_worst_rankings() -> None:
    relevant = [{0, 1}, {5}]
    best = [[0, 1, 2, 3], [5, 0, 1, 2]]
    assert recall_at_k(best, relevant, 2) == ndcg_at_k(best, relevant, 2) == map_at_k(best, relevant, 2) == 1.0
    worst = [[2, 3, 0, 1], [0, 1, 2, 5]]
    assert recall_at_k(worst, relevant, 2) == ndcg_at_k(worst, relevant, 2) == map_at_k(worst, relevant, 2) == 0.0
    with pytest.raises(ValueError):
        recall_at_k(best, relevant[:1], 2)
