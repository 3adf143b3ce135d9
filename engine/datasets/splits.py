"""Time-based train / validation / test splits.

Splits are contiguous in event time: every example of the validation split is at or after
every training example, and so on, so no model is evaluated on its past. Two cut times
``c1 <= c2`` give train ``t < c1``, validation ``c1 <= t < c2`` and test ``t >= c2``.
Fractions are turned into cut times at the event-time quantiles. The rows sharing the time
at a quantile all go to one side -- the side where fewer of them have to move, the later one
on a tie -- so no example time is in two splits (with many equal times the counts can
therefore differ from the fractions).

>>> times = np.array([5, 1, 2, 3, 4, 6, 7, 8, 9, 10])
>>> spec = SplitSpec(fractions=(0.8, 0.1, 0.1))
>>> spec.cut_times(times)
(9, 10)
>>> split_by_time(times, spec).tolist()
[0, 0, 0, 0, 0, 0, 0, 0, 1, 2]
>>> split_by_time(times, SplitSpec(cuts=(3, 3))).tolist()
[2, 0, 0, 2, 2, 2, 2, 2, 2, 2]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SPLIT_NAMES = ("train", "validation", "test")


@dataclass(frozen=True)
class SplitSpec:
    """Either ``fractions`` (train, validation, test; summing to 1) or explicit ``cuts`` (ms)."""

    fractions: tuple[float, float, float] | None = (0.8, 0.1, 0.1)
    cuts: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.cuts is not None:
            object.__setattr__(self, "fractions", None)  # explicit cuts win over the default
            if len(self.cuts) != 2 or self.cuts[0] > self.cuts[1]:
                raise ValueError(f"split cut times must be two times T1 <= T2, got {self.cuts}")
            return
        if self.fractions is None or len(self.fractions) != 3:
            raise ValueError(f"split fractions must be three numbers (train, validation, test), got {self.fractions}")
        if any(f < 0 for f in self.fractions) or not math.isclose(sum(self.fractions), 1.0, abs_tol=1e-6):
            raise ValueError(f"split fractions must be >= 0 and sum to 1, got {self.fractions}")

    @property
    def method(self) -> str:
        """``"cuts"`` or ``"fractions"``."""
        return "cuts" if self.cuts is not None else "fractions"

    def cut_times(self, times: np.ndarray) -> tuple[int, int]:
        """The two cut times for these example times (the explicit ones, or from quantiles)."""
        if self.cuts is not None:
            return int(self.cuts[0]), int(self.cuts[1])
        assert self.fractions is not None
        ordered = np.sort(np.asarray(times, dtype=np.int64))
        n = len(ordered)
        cuts = []
        for share in (self.fractions[0], self.fractions[0] + self.fractions[1]):
            k = int(round(share * n))
            if k >= n:
                cuts.append(_after(ordered))
                continue
            # The rows at the k-th smallest time move together, to the side that needs
            # fewer of them moved (the later one on a tie).
            value = ordered[k]
            lo, hi = np.searchsorted(ordered, value, "left"), np.searchsorted(ordered, value, "right")
            cuts.append(int(value) if k - lo <= hi - k else (int(ordered[hi]) if hi < n else _after(ordered)))
        return cuts[0], cuts[1]


def _after(ordered: np.ndarray) -> int:
    """A cut past every time (empty later splits)."""
    return int(ordered[-1]) + 1 if len(ordered) else 0


def split_by_time(times: np.ndarray, spec: SplitSpec) -> np.ndarray:
    """Split index per row: 0 train, 1 validation, 2 test (see :data:`SPLIT_NAMES`)."""
    t = np.asarray(times, dtype=np.int64)
    return assign_splits(t, *spec.cut_times(t))


def assign_splits(times: np.ndarray, c1: int, c2: int) -> np.ndarray:
    """Split index per row for cut times ``c1 <= c2`` (see :func:`split_by_time`)."""
    t = np.asarray(times, dtype=np.int64)
    return (t >= c1).astype(np.int8) + (t >= c2).astype(np.int8)
