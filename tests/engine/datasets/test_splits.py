"""Time-based splits: contiguous in time, no time in two splits."""

from __future__ import annotations

import numpy as np
import pytest

from engine.datasets.splits import SplitSpec, split_by_time


@pytest.mark.parametrize("seed", range(5))
def test_fraction_splits_never_share_a_time(seed: int) -> None:
    rng = np.random.default_rng(seed)
    times = rng.integers(0, 50, 1_000)  # many equal times
    part = split_by_time(times, SplitSpec((0.8, 0.1, 0.1)))
    assert set(np.unique(part)) <= {0, 1, 2}
    sets = [set(times[part == k].tolist()) for k in range(3)]
    assert not (sets[0] & sets[1]) and not (sets[1] & sets[2]) and not (sets[0] & sets[2])
    for a, b in ((0, 1), (1, 2), (0, 2)):
        if sets[a] and sets[b]:
            assert max(sets[a]) < min(sets[b])
    # Close to the fractions: one boundary time (~2% of rows) at most moves.
    assert abs((part == 0).mean() - 0.8) < 0.05


def test_distinct_times_split_exactly() -> None:
    times = np.random.default_rng(1).permutation(1_000)
    part = split_by_time(times, SplitSpec((0.7, 0.2, 0.1)))
    assert np.bincount(part).tolist() == [700, 200, 100]
    assert times[part == 0].max() < times[part == 1].min()


def test_explicit_cuts_and_edges() -> None:
    times = np.array([1, 2, 3, 4, 5])
    assert split_by_time(times, SplitSpec(cuts=(3, 5))).tolist() == [0, 0, 1, 1, 2]
    assert split_by_time(times, SplitSpec((1.0, 0.0, 0.0))).tolist() == [0] * 5
    assert split_by_time(times, SplitSpec((0.0, 0.0, 1.0))).tolist() == [2] * 5
    assert split_by_time(np.array([], dtype=np.int64), SplitSpec()).tolist() == []
    assert split_by_time(np.array([7, 7, 7]), SplitSpec()).tolist() == [0, 0, 0]
    # The tied group at the 80% quantile mostly lies before it: it stays in train.
    assert split_by_time(np.array([1, 2, 3, 3, 3, 3, 3, 3, 3, 9]), SplitSpec()).tolist() == [0] * 9 + [2]
    assert SplitSpec(cuts=(1, 2)).method == "cuts" and SplitSpec().method == "fractions"


def test_invalid_specs() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        SplitSpec((0.5, 0.1, 0.1))
    with pytest.raises(ValueError, match="T1 <= T2"):
        SplitSpec(cuts=(5, 1))
    with pytest.raises(ValueError, match="three"):
        SplitSpec((0.5, 0.5))  # type: ignore[arg-type]
