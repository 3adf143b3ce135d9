"""Progressive validation: every example is scored by the model *before* it learns from it.

Metrics kept per learner (each over the whole stream and over the last ``window`` examples):

* ``auc`` -- exact ROC AUC (Mann-Whitney with tied scores counted half) over the rolling
  window, computed from the stored window at report time, so the per-example cost is one
  deque append (a whole-stream exact AUC would have to keep every score);
* ``auc_approx`` -- River's :class:`river.metrics.ROCAUC` (same 10-threshold grid, same
  formula, computed here in numpy), an approximation that reads 0.002-0.02 below the exact
  value (FIELD-NOTES); reported under this name so nobody mistakes it for the exact one.
  Whole stream only;
* ``log_loss`` (clamped as River does) and ``accuracy`` (the decision is the most probable
  class, as ``predict_one`` gives).

>>> pv = ProgressiveValidation(window=4)
>>> for y, p in [(True, 0.9), (False, 0.2), (True, 0.6), (False, 0.7), (True, 0.8)]:
...     pv.update(y, p)
>>> r = pv.report()
>>> r["n"], r["accuracy"], r["rolling"]["auc"]
(5, 0.8, 0.75)
"""

from __future__ import annotations

from typing import Any

import numpy as np


def exact_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC from ranks (ties get the average rank); None without both classes.

    >>> exact_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    0.75
    >>> exact_auc(np.array([1, 1]), np.array([0.2, 0.3])) is None
    True
    """
    labels = np.asarray(labels, dtype=bool)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, dtype=np.float64)
    # Average ranks over runs of equal scores.
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [scores.size]))
    avg = (starts + ends + 1) / 2.0  # 1-based average rank of each run
    ranks[order] = np.repeat(avg, ends - starts)
    rank_sum = float(ranks[labels].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


# River's ROCAUC grid (metrics/roc_auc.py, n_thresholds=10), reproduced so the value is River's.
_RIVER_THRESHOLDS = np.array([i / 9 for i in range(10)])
_RIVER_THRESHOLDS[0] -= 1e-7
_RIVER_THRESHOLDS[-1] += 1e-7
_CLAMP = 1e-15  # River clamps probabilities to [1e-15, 1 - 1e-15] in LogLoss


def _log_losses(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _CLAMP, 1 - _CLAMP)
    return -np.log(np.where(y, p, 1 - p))


def river_roc_auc(counts: np.ndarray) -> float:
    """River's approximate ROCAUC from per-threshold (tp, fn, fp, tn) counts (shape 10 x 4)."""
    tp, fn, fp, tn = counts.T
    with np.errstate(divide="ignore", invalid="ignore"):
        tpr = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        fpr = np.where(fp + tn > 0, fp / (fp + tn), 0.0)
    return float(-np.trapezoid(y=tpr, x=fpr))


class ProgressiveValidation:
    """Whole-stream and rolling metrics of a binary classifier's pre-learning predictions.

    :meth:`update_many` only extends buffers (a learner's per-example budget is a few
    microseconds); they are folded into the metrics with numpy every ``fold_every``
    examples and at :meth:`report`.
    """

    def __init__(self, window: int = 5_000, fold_every: int = 4_096) -> None:
        self.window = window
        self.fold_every = fold_every
        self.n = 0
        self._correct = 0
        self._log_loss_sum = 0.0
        self._roc_counts = np.zeros((len(_RIVER_THRESHOLDS), 4), dtype=np.float64)  # tp, fn, fp, tn
        # Not yet folded: labels, P(True), decisions.
        self._pending_y: list[bool] = []
        self._pending_p: list[float] = []
        self._pending_d: list[bool] = []
        # The last ``window`` examples, as a ring.
        self._ring_y = np.zeros(window, dtype=bool)
        self._ring_p = np.zeros(window, dtype=np.float64)
        self._ring_d = np.zeros(window, dtype=bool)
        self._ring_at = 0
        self._ring_len = 0

    def update(self, y_true: bool, proba_true: float, y_pred: bool | None = None) -> None:
        """Record one example: the label, P(True) before learning, and the decision made.

        ``y_pred`` defaults to ``proba_true > 0.5`` (a tie goes to False, as River's
        ``predict_one`` picks the first of equal classes).
        """
        self.update_many([y_true], [proba_true], [proba_true > 0.5 if y_pred is None else y_pred])

    def update_many(self, y_true: list[bool], proba_true: list[float], y_pred: list[bool]) -> None:
        """Record examples in order (three columns of equal length, as :meth:`update` takes)."""
        self._pending_y += y_true
        self._pending_p += proba_true
        self._pending_d += y_pred
        if len(self._pending_y) >= self.fold_every:
            self._fold()

    def __setstate__(self, state: dict[str, Any]) -> None:
        pending = state.pop("_pending", None)
        self.__dict__.update(state)
        if pending is not None:  # a recovery snapshot from before the buffer became columns
            self._pending_y = [y for y, _, _ in pending]
            self._pending_p = [p for _, p, _ in pending]
            self._pending_d = [d for _, _, d in pending]

    def _fold(self) -> None:
        if not self._pending_y:
            return
        y = np.array(self._pending_y, dtype=bool)
        p = np.array(self._pending_p, dtype=np.float64)
        d = np.array(self._pending_d, dtype=bool)
        self._pending_y, self._pending_p, self._pending_d = [], [], []
        self.n += y.size
        self._correct += int((y == d).sum())
        self._log_loss_sum += float(_log_losses(y, p).sum())
        above = p[:, None] > _RIVER_THRESHOLDS[None, :]
        pos = y[:, None]
        self._roc_counts += np.stack(
            [(above & pos).sum(0), (~above & pos).sum(0), (above & ~pos).sum(0), (~above & ~pos).sum(0)], axis=1
        )
        # Into the ring: only the newest ``window`` matter.
        y, p, d = y[-self.window :], p[-self.window :], d[-self.window :]
        idx = (self._ring_at + np.arange(y.size)) % self.window
        self._ring_y[idx], self._ring_p[idx], self._ring_d[idx] = y, p, d
        self._ring_at = int((self._ring_at + y.size) % self.window)
        self._ring_len = min(self.window, self._ring_len + y.size)

    def report(self) -> dict[str, Any]:
        """Every metric now (``None`` where undefined, e.g. AUC with one class seen)."""
        self._fold()
        n, k = self.n, self._ring_len
        wy, wp, wd = self._ring_y[:k], self._ring_p[:k], self._ring_d[:k]  # order does not matter
        return {
            "n": n,
            "accuracy": self._correct / n if n else None,
            "log_loss": self._log_loss_sum / n if n else None,
            "auc_approx": river_roc_auc(self._roc_counts) if n else None,
            "rolling": {
                "window": self.window,
                "n": k,
                "accuracy": float((wy == wd).mean()) if k else None,
                "log_loss": float(_log_losses(wy, wp).mean()) if k else None,
                "auc": exact_auc(wy, wp),
            },
        }
