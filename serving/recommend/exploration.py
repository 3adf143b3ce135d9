"""Exploration slots: which candidates are cold, and where the chosen ones go in the list.

*Cold* (:func:`cold_mask`): an item created less than ``max_age`` ago, or shown fewer than
``max_impressions`` times (its ``item.impressions_24h`` feature; a missing value counts as
never shown). Cold items are taken from the request's retrieved candidates -- relevant to
the user by the two-tower score, but without the history the ranker needs -- and the
exploration bandit (:class:`engine.bandits.dynamic.DynamicThompson`, one Beta posterior per
item, rewarded by clicks through the learning dataflow) picks ``slots`` of them.

*Placement* (:func:`place`): the explored items go to the configured 0-based positions
(default 2, 7, 12, ...: never the top slot, which carries most clicks), the ranked items fill
every other position in order; a slot beyond ``k`` is not used, and an explored item is never
shown twice.

>>> place(["a", "b", "c", "d"], ["x", "y"], [1, 3], 5)
[('a', False), ('x', True), ('b', False), ('y', True), ('c', False)]
>>> place(["a", "x", "b"], ["x"], [0], 2)
[('x', True), ('a', False)]
>>> cold_mask(np.array([0, 9_000, -1]), np.array([500.0, 500.0, np.nan]), now_ms=10_000,
...           max_age_ms=5_000, max_impressions=100).tolist()
[False, True, True]
"""

from __future__ import annotations

from typing import Hashable, Sequence, TypeVar

import numpy as np

T = TypeVar("T", bound=Hashable)


def cold_mask(
    created_ms: np.ndarray,
    impressions: np.ndarray,
    *,
    now_ms: int,
    max_age_ms: int | None,
    max_impressions: int | None,
) -> np.ndarray:
    """Per candidate: cold (young or rarely shown). ``created_ms < 0`` is unknown; nan impressions are 0."""
    created = np.asarray(created_ms, dtype=np.int64)
    cold = np.zeros(len(created), dtype=bool)
    if max_age_ms is not None:
        cold |= (created >= 0) & (now_ms - created < max_age_ms)
    if max_impressions is not None:
        shown = np.nan_to_num(np.asarray(impressions, dtype=np.float64), nan=0.0)
        cold |= shown < max_impressions
    return cold


def place(ranked: Sequence[T], explored: Sequence[T], positions: Sequence[int], k: int) -> list[tuple[T, bool]]:
    """The first ``k`` of ``ranked`` with ``explored`` at ``positions``; ``(item, explored?)`` pairs."""
    slots = dict(zip(sorted(p for p in positions if p < k), explored))
    chosen = set(slots.values())
    rest = iter(x for x in ranked if x not in chosen)
    out: list[tuple[T, bool]] = []
    for pos in range(k):
        if pos in slots:
            out.append((slots[pos], True))
            continue
        item = next(rest, None)
        if item is None:
            # Fewer ranked items than positions: later slots move up, nothing is left empty.
            out.extend((slots[p], True) for p in sorted(slots) if p > pos)
            break
        out.append((item, False))
    return out
