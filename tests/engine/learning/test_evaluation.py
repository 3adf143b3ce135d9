"""Progressive metrics equal River's own metrics, and the exact AUC a pairwise count."""

from __future__ import annotations

import numpy as np
import pytest
from river import metrics, utils

from engine.learning.evaluation import ProgressiveValidation, exact_auc


def _pairwise_auc(y: np.ndarray, p: np.ndarray) -> float:
    pos, neg = p[y], p[~y]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (pos.size * neg.size))


def test_exact_auc_matches_pairwise_count_with_ties() -> None:
    rng = np.random.default_rng(3)
    y = rng.random(700) < 0.3
    p = np.round(rng.random(700), 2)  # many ties
    assert exact_auc(y, p) == pytest.approx(_pairwise_auc(y, p), abs=1e-12)


@pytest.mark.parametrize("fold_every", [1, 97, 4096])
def test_metrics_equal_rivers(fold_every: int) -> None:
    rng = np.random.default_rng(7)
    n, window = 3_000, 500
    y = rng.random(n) < 0.4
    p = np.clip(rng.normal(0.4 + 0.2 * y, 0.2), 0, 1)
    p[:5] = [0.0, 1.0, 0.5, 1e-20, 1 - 1e-20]  # clamping and the tie at 0.5
    pv = ProgressiveValidation(window=window, fold_every=fold_every)
    acc, loss, auc = metrics.Accuracy(), metrics.LogLoss(), metrics.ROCAUC()
    r_acc = utils.Rolling(metrics.Accuracy, window_size=window)
    r_loss = utils.Rolling(metrics.LogLoss, window_size=window)
    for yi, pi in zip(y.tolist(), p.tolist()):
        proba = {False: 1 - pi, True: pi}
        decision = max(proba, key=proba.get)
        pv.update(yi, pi, decision)
        acc.update(yi, decision)
        loss.update(yi, proba)
        auc.update(yi, proba)
        r_acc.update(yi, decision)
        r_loss.update(yi, proba)
    report = pv.report()
    assert report["n"] == n
    assert report["accuracy"] == acc.get()
    assert report["log_loss"] == pytest.approx(loss.get(), rel=1e-12)
    assert report["auc_approx"] == pytest.approx(auc.get(), rel=1e-12)
    rolling = report["rolling"]
    assert rolling["n"] == window
    assert rolling["accuracy"] == pytest.approx(r_acc.get(), rel=1e-12)
    assert rolling["log_loss"] == pytest.approx(r_loss.get(), rel=1e-9)
    assert rolling["auc"] == pytest.approx(_pairwise_auc(y[-window:], p[-window:]), abs=1e-12)


def test_empty_and_one_class() -> None:
    pv = ProgressiveValidation(window=10)
    assert pv.report()["accuracy"] is None
    pv.update(True, 0.9)
    report = pv.report()
    assert report["accuracy"] == 1.0 and report["rolling"]["auc"] is None


def test_a_snapshot_with_the_old_pending_buffer_resumes() -> None:
    import pickle

    old = ProgressiveValidation(window=10)
    old.update(True, 0.9)
    state = old.__dict__.copy()
    ys, ps, ds = state.pop("_pending_y"), state.pop("_pending_p"), state.pop("_pending_d")
    state["_pending"] = list(zip(ys, ps, ds))  # how snapshots held it before
    resumed = ProgressiveValidation.__new__(ProgressiveValidation)
    resumed.__setstate__(pickle.loads(pickle.dumps(state)))
    resumed.update(False, 0.2)
    assert resumed.report()["n"] == 2 and resumed.report()["accuracy"] == 1.0
