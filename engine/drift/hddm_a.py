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
from typing import Any, Sequence

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
        self._n = 0.0  # River's Mean counts in floats
        self._mean = 0.0
        self._n_min = 0.0  # the cut point: count and mean where mean + bound was lowest
        self._mean_min = 0.0

    @classmethod
    def from_river(cls, detector: Any) -> "HDDMAIncrease":
        """The same state as a ``river.drift.binary.HDDMA`` (one-sided), e.g. from an old snapshot."""
        lean = cls(detector.drift_confidence)
        lean._n, lean._mean = float(detector._z.n), detector._z._mean
        lean._n_min, lean._mean_min = float(detector._x_min.n), detector._x_min._mean
        lean.drift_detected = bool(detector.drift_detected)
        return lean

    def update(self, x: int | float) -> bool:
        """Feed one value (1 = error); True iff a rise of the mean is detected now."""
        return self.first_detection((x,)) is not None

    def first_detection(self, xs: Sequence[int | float], start: int = 0) -> int | None:
        """:meth:`update` with ``xs[start]``, ``xs[start + 1]``, ... until one is detected.

        Returns that value's index, or None once all were fed. One call per batch keeps the
        per-value cost to the arithmetic.
        """
        n, mean, n_min, mean_min = self._n, self._mean, self._n_min, self._mean_min
        log_inv, log_two_inv = self._log_inv, self._log_two_inv
        detected = self.drift_detected
        sqrt = math.sqrt
        found = None
        for i in range(start, len(xs)):
            if detected:  # River restarts on the update after a detection
                n = mean = n_min = mean_min = 0.0
                detected = False
            n += 1.0
            mean = mean + (1.0 / n) * (xs[i] - mean)
            if n_min == 0.0:
                n_min, mean_min = n, mean
            if mean_min + sqrt(1.0 / (2 * n_min) * log_inv) >= mean + sqrt(1.0 / (2 * n) * log_inv):
                n_min, mean_min = n, mean
            if n_min != n and mean - mean_min >= sqrt((n - n_min) / n_min * (1.0 / n) / 2 * log_two_inv):
                detected = True
                found = i
                break
        self._n, self._mean, self._n_min, self._mean_min = n, mean, n_min, mean_min
        self.drift_detected = detected
        return found

    def __repr__(self) -> str:
        return f"HDDMAIncrease(drift_confidence={self.drift_confidence})"
