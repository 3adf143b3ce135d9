"""The lean HDDM_A makes River's decisions, update for update."""

from __future__ import annotations

import numpy as np
import pytest
from river.drift.binary import HDDMA

from engine.drift.hddm_a import HDDMAIncrease


def _stream(seed: int, n: int = 20_000) -> list[int]:
    """0/1 errors whose rate falls and rises every 2,000 updates."""
    rng = np.random.default_rng(seed)
    rates = rng.uniform(0.02, 0.2, size=n // 2_000 + 1)
    rates[1::2] += rng.uniform(0.2, 0.5, size=rates[1::2].size)
    rate = np.repeat(rates, 2_000)[:n]
    return (rng.random(n) < rate).astype(int).tolist()


@pytest.mark.parametrize("confidence", [0.001, 0.01, 0.0001])
@pytest.mark.parametrize("seed", range(6))
def test_decisions_equal_rivers_on_streams_with_drifts(seed: int, confidence: float) -> None:
    river, lean = HDDMA(drift_confidence=confidence), HDDMAIncrease(confidence)
    ours, theirs = [], []
    for i, e in enumerate(_stream(seed)):
        river.update(e)
        if river.drift_detected:
            theirs.append(i)
        if lean.update(e):
            ours.append(i)
        assert lean.drift_detected == river.drift_detected
    assert ours == theirs
    assert len(theirs) >= 2  # the streams do drift, and detection restarts the state


def test_a_falling_error_is_not_a_drift() -> None:
    det = HDDMAIncrease()
    assert not any(det.update(e) for e in [1] * 1_000 + [0] * 1_000)


def test_confidence_is_checked() -> None:
    with pytest.raises(ValueError):
        HDDMAIncrease(0.0)


@pytest.mark.parametrize("seed", range(3))
def test_batches_detect_where_single_updates_do(seed: int) -> None:
    stream = _stream(seed)
    single = HDDMAIncrease()
    expected = [i for i, e in enumerate(stream) if single.update(e)]
    batched, found = HDDMAIncrease(), []
    for lo in range(0, len(stream), 777):
        chunk, at = stream[lo:lo + 777], 0
        while (k := batched.first_detection(chunk, at)) is not None:
            found.append(lo + k)
            at = k + 1
    assert found == expected


def test_rivers_state_carries_over() -> None:
    """An old snapshot's River detector continues as the lean one, decision for decision."""
    stream = _stream(1)
    river = HDDMA()
    for e in stream[:7_000]:
        river.update(e)
    lean = HDDMAIncrease.from_river(river)
    for e in stream[7_000:]:
        river.update(e)
        assert lean.update(e) == river.drift_detected
