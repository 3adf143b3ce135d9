"""Re-ranking and slot placement against orders computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from serving.recommend.exploration import cold_mask, place
from serving.recommend.rerank import freshness_factor, select


def test_plain_order_is_by_score_with_ties_to_the_better_ranked() -> None:
    assert select(np.array([0.2, 0.9, 0.9, 0.5]), 3).tolist() == [1, 2, 3]
    assert select(np.array([0.2, 0.9]), 5).tolist() == [1, 0]  # fewer candidates than k
    assert select(np.array([]), 3).tolist() == []


def test_mmr_by_hand() -> None:
    # Items 0 and 1 point the same way; 2 is orthogonal; 3 is in between (cos 0.6 / 0.8).
    scores = np.array([1.0, 0.95, 0.6, 0.7])
    vectors = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    # lambda 0.5. Pick 1: argmax 0.5*s -> item 0 (0.5).
    # Pick 2: 0.5*s - 0.5*sim(., 0): item1 0.475-0.5=-0.025, item2 0.3-0=0.3, item3 0.35-0.3=0.05 -> 2.
    # Pick 3: max sims: item1 max(1, 0)=1 -> -0.025; item3 max(0.6, 0.8)=0.8 -> 0.35-0.4=-0.05 -> 1.
    assert select(scores, 3, vectors=vectors, mmr_lambda=0.5).tolist() == [0, 2, 1]
    # lambda 1 is the plain order; lambda 0 only spreads (after the first, by least similarity).
    assert select(scores, 4, vectors=vectors, mmr_lambda=1.0).tolist() == [0, 1, 3, 2]
    assert select(scores, 2, vectors=vectors, mmr_lambda=0.0).tolist() == [0, 2]


def test_category_caps_by_hand() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    cats = ["a", "a", "a", "b", "b", None]
    # shoes-style named cap for "a" (1), default 1 for the others (None counts as its own category).
    assert select(scores, 4, categories=cats, category_caps={"a": 1, "default": 1}).tolist() == [0, 3, 5, 1]
    # Only "a" capped: b and None are free.
    assert select(scores, 4, categories=cats, category_caps={"a": 2}).tolist() == [0, 1, 3, 4]
    # Caps combine with MMR: the capped item is skipped whatever its objective.
    vectors = np.eye(6)
    assert select(scores, 3, vectors=vectors, mmr_lambda=0.5, categories=cats,
                  category_caps={"default": 1}).tolist() == [0, 3, 5]


def test_freshness_boost_by_hand() -> None:
    hour = 3_600_000
    factor = freshness_factor(np.array([0, hour, 2 * hour, -1]), half_life_ms=hour, boost=0.4)
    assert factor.tolist() == pytest.approx([1.4, 1.2, 1.1, 1.0])
    # A fresh item overtakes an older, slightly better one.
    scores = np.array([0.5, 0.45]) * freshness_factor(np.array([10 * hour, 0]), half_life_ms=hour, boost=0.4)
    assert select(scores, 2).tolist() == [1, 0]


def test_slots_placement() -> None:
    assert place(["a", "b", "c"], ["x"], [0], 3) == [("x", True), ("a", False), ("b", False)]
    assert place(["a", "b"], ["x", "y"], [1, 9], 4) == [("a", False), ("x", True), ("b", False)]  # 9 >= k: unused
    assert place(["a"], ["x", "y"], [2, 3], 5) == [("a", False), ("x", True), ("y", True)]  # slots move up
    assert place([], [], [2], 3) == []


def test_cold_definition() -> None:
    now = 100_000
    created = np.array([99_000, 10_000, 10_000, -1])
    shown = np.array([1000.0, 5.0, 1000.0, np.nan])
    assert cold_mask(created, shown, now_ms=now, max_age_ms=5_000, max_impressions=10).tolist() == [
        True, True, False, True]
    assert cold_mask(created, shown, now_ms=now, max_age_ms=None, max_impressions=None).tolist() == [False] * 4


def test_mmr_pool_limits_the_candidates_to_the_head() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.1])
    vectors = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # Without a pool the orthogonal low scorer is pulled up; with pool 3 it is out of reach.
    assert select(scores, 2, vectors=vectors, mmr_lambda=0.3).tolist() == [0, 3]
    assert select(scores, 2, vectors=vectors, mmr_lambda=0.3, pool=3).tolist() == [0, 1]
