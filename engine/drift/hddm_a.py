"""HDDM_A's test for a rise of the mean, at a learner's per-example budget.

River's ``river.drift.binary.HDDMA`` (Frías-Blanco et al., 2014; MOA's implementation)
costs ~2 µs an update in Python: three ``stats.Mean`` objects, a clone on every new cut
point, the warning test and the bound recomputed with ``math.log`` each time. A learner
pays that on every example, next to a ~15 µs model update. :class:`HDDMAIncrease` keeps
the same state as four numbers and makes the *same floating-point operations in the same
order* as River's one-sided test (``two_sided_test=False``), so its drift decisions are
River's, bit for bit (tests/engine/drift/test_hddm_a.py compares them on random streams
with drifts); it skips what a drift alert does not need (the warning state).

Like River's detector, the state restarts on the update *after* a detection.

>>> det = HDDMAIncrease()
>>> hits = [i for i, e in enumerate([0] * 500 + [1] * 100) if det.update(e)]
>>> hits[0] >= 500
True
"""

from __future__ import annotations

import math

__all__ = ["HDDMAIncrease"]


class HDDMAIncrease:
    """One-sided HDDM_A (an increase of the mean of a 0/1 stream), River's decisions.

    Args:
        drift_confidence: River's ``drift_confidence`` (default 0.001).
    """

    __slots__ = ("drift_confidence", "_log_inv", "_log_two_inv", "_n", "_mean", "_n_min", "_mean_min",
                 "drift_detected")

    def __init__(self, drift_confidence: float = 0.001) -> None:
        if not 0.0 < drift_confidence < 1.0:
            raise ValueError("drift_confidence must be in (0, 1)")
        self.drift_confidence = drift_confidence
        # River evaluates these logs on every call; they are constants.
        self._log_inv = math.log(1.0 / drift_confidence)
        self._log_two_inv = math.log(2.0 / drift_confidence)
        self.drift_detected = False
        self._restart()

    def _restart(self) -> None:
        self._n = 0.0  # River's Mean counts in floats
        self._mean = 0.0
        self._n_min = 0.0  # the cut point: count and mean where mean + bound was lowest
        self._mean_min = 0.0

    def update(self, x: int | float) -> bool:
        """Feed one value (1 = error); True iff a rise of the mean is detected now."""
        if self.drift_detected:
            self._restart()
        n = self._n + 1.0
        mean = self._mean + (1.0 / n) * (x - self._mean)
        self._n, self._mean = n, mean
        n_min = self._n_min
        if n_min == 0.0:
            n_min, mean_min = n, mean
        else:
            mean_min = self._mean_min
        log_inv = self._log_inv
        if mean_min + math.sqrt(1.0 / (2 * n_min) * log_inv) >= mean + math.sqrt(1.0 / (2 * n) * log_inv):
            n_min, mean_min = n, mean
        self._n_min, self._mean_min = n_min, mean_min
        if n_min == n:
            self.drift_detected = False
            return False
        m = (n - n_min) / n_min * (1.0 / n)
        self.drift_detected = mean - mean_min >= math.sqrt(m / 2 * self._log_two_inv)
        return self.drift_detected

    def __repr__(self) -> str:
        return f"HDDMAIncrease(drift_confidence={self.drift_confidence})"
