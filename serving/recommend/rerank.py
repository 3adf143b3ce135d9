"""Re-ranking of ranked candidates: freshness boost, then a greedy pick with MMR and category caps.

Pure functions over numpy arrays (no I/O), shared by serving and the offline evaluation.

* **Freshness** (:func:`freshness_factor`): ``score * (1 + boost * 2^(-age / half_life))``,
  so a brand-new item gets ``1 + boost`` and one a half-life old ``1 + boost / 2``; items of
  unknown age get no boost.
* **Selection** (:func:`select`): ``k`` picks, one at a time, among the candidates whose
  category is not full yet (``category_caps``: ``{category: cap}``, ``"default"`` for every
  other category; items without a category count under ``default`` too). With ``mmr_lambda``
  the pick maximises Maximal Marginal Relevance (Carbonell & Goldstein 1998)::

      lambda * score - (1 - lambda) * max cosine similarity to the items already picked

  else the best remaining score. When every remaining candidate is capped and fewer than
  ``k`` were picked, the caps are lifted for the rest (a full list beats a strict cap).
* **Filters** are applied before: already-seen and blocked items never reach :func:`select`.

>>> scores = np.array([0.9, 0.85, 0.5, 0.4])
>>> vecs = np.array([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.7, 0.7]])
>>> select(scores, 3).tolist()
[0, 1, 2]
>>> select(scores, 3, vectors=vecs, mmr_lambda=0.3).tolist()  # item 1 is a near-copy of item 0
[0, 2, 3]
>>> select(scores, 3, categories=["a", "a", "a", "b"], category_caps={"default": 2}).tolist()
[0, 1, 3]
>>> freshness_factor(np.array([0, 3_600_000, -1]), half_life_ms=3_600_000, boost=0.5).tolist()
[1.5, 1.25, 1.0]
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

DEFAULT_CAP = "default"


def freshness_factor(age_ms: np.ndarray, *, half_life_ms: float, boost: float) -> np.ndarray:
    """Per-item multiplier ``1 + boost * 2^(-age / half_life)``; a negative age means unknown (1.0)."""
    age = np.asarray(age_ms, dtype=np.float64)
    known = age >= 0
    factor = np.ones(len(age))
    factor[known] = 1.0 + boost * np.exp2(-age[known] / half_life_ms)
    return factor


def _unit(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float64)
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.where(norm > 0, norm, 1.0)


def _limit(category: str | None, caps: Mapping[str, int]) -> int | None:
    """The cap of one category: its own, else ``default`` (each category its own budget)."""
    if category is not None and category != DEFAULT_CAP and category in caps:
        return int(caps[category])
    default = caps.get(DEFAULT_CAP)
    return None if default is None else int(default)


def select(
    scores: np.ndarray,
    k: int,
    *,
    vectors: np.ndarray | None = None,
    mmr_lambda: float | None = None,
    categories: Sequence[str | None] | None = None,
    category_caps: Mapping[str, int] | None = None,
    pool: int | None = None,
) -> np.ndarray:
    """Indices of ``k`` (or all, if fewer) candidates in display order (module docstring).

    ``pool``: with MMR, only the best ``pool`` candidates by score are considered (MMR
    reorders the head of the list; its cost grows with ``k * candidates``).
    """
    scores = np.asarray(scores, dtype=np.float64)
    n = len(scores)
    if pool is not None and mmr_lambda is not None and vectors is not None and n > pool:
        head = np.argsort(-scores, kind="stable")[:pool]
        cats = [categories[i] for i in head] if categories is not None else None
        picked = select(scores[head], k, vectors=np.asarray(vectors)[head], mmr_lambda=mmr_lambda,
                        categories=cats, category_caps=category_caps)
        return head[picked]
    k = min(k, n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    use_mmr = mmr_lambda is not None and vectors is not None and mmr_lambda < 1.0
    if not use_mmr and not category_caps:
        return np.argsort(-scores, kind="stable")[:k]
    sim_max = np.zeros(n)
    unit = _unit(vectors) if use_mmr else None
    cats = list(categories) if categories is not None else [None] * n
    counts: dict[str | None, int] = {}
    remaining = np.ones(n, dtype=bool)
    capped = np.zeros(n, dtype=bool)
    picked: list[int] = []
    while len(picked) < k:
        objective = mmr_lambda * scores - (1.0 - mmr_lambda) * sim_max if use_mmr else scores.copy()
        allowed = remaining & ~capped
        if not allowed.any():
            allowed = remaining  # caps lifted: fewer uncapped candidates than k
        objective[~allowed] = -np.inf
        i = int(objective.argmax())  # first index among ties: the better-ranked candidate
        picked.append(i)
        remaining[i] = False
        if use_mmr:
            assert unit is not None
            sim_max = np.maximum(sim_max, unit @ unit[i])
        if category_caps:
            c = cats[i]
            counts[c] = counts.get(c, 0) + 1
            limit = _limit(c, category_caps)
            if limit is not None and counts[c] >= limit:
                capped |= np.array([x == c for x in cats])
    return np.asarray(picked, dtype=np.int64)
