"""The synthetic worlds: fixed by the world seed, sampled by the sample seed, with the promised shape."""

from __future__ import annotations

import numpy as np

from engine.training.synthetic import CriteoLike, InteractionWorld, criteo_like


def test_world_seed_fixes_weights_sample_seed_fixes_rows() -> None:
    a, b = CriteoLike(world_seed=1), CriteoLike(world_seed=1)
    d1, d2 = a.sample(5_000, seed=7), b.sample(5_000, seed=7)
    np.testing.assert_array_equal(d1.sparse, d2.sparse)
    np.testing.assert_array_equal(d1.true_p, d2.true_p)
    other = a.sample(5_000, seed=8)
    assert not np.array_equal(other.sparse, d1.sparse)
    c = CriteoLike(world_seed=2)
    assert not np.allclose(c.w_first, a.w_first)
    np.testing.assert_array_equal(criteo_like(100, seed=3, world_seed=1).sparse, a.sample(100, seed=3).sparse)


def test_criteo_shape_ctr_heavy_tails_and_truth() -> None:
    world = CriteoLike(world_seed=0, base_ctr=0.05)
    d = world.sample(100_000, seed=1)
    assert d.dense.shape == (100_000, 13) and d.sparse.shape == (100_000, 26)
    assert abs(d.true_p.mean() - 0.05) < 0.004 and abs(d.ctr - d.true_p.mean()) < 0.004
    assert (d.sparse >= 0).all() and (d.sparse < 1000).all() and (d.sparse == 0).any()  # nulls in bucket 0
    big = int(np.argmax(world.vocab))
    counts = np.sort(np.bincount(d.sparse[:, big]))[::-1]
    assert counts[0] > 20 * np.median(counts[counts > 0])  # Zipf: a few values dominate
    assert (d.dense >= 0).all() and np.median(d.dense.max(axis=0) / (np.median(d.dense, axis=0) + 1)) > 10
    # Interactions matter: the logit without them is a clearly worse predictor of true_p.
    no_pairs = CriteoLike(world_seed=0, base_ctr=0.05, interaction_scale=0.0).sample(100_000, seed=1)
    assert np.corrcoef(no_pairs.true_p, d.true_p)[0, 1] < 0.9


def test_interaction_world_follows_user_preferences_and_popularity() -> None:
    world = InteractionWorld(world_seed=0, n_users=200, n_items=100)
    d = world.sample(100_000, seed=1)
    # Popular items are chosen more often.
    freq = np.bincount(d.item_key, minlength=100)
    assert np.corrcoef(np.log(world.popularity), np.log(freq + 1))[0, 1] > 0.5
    # Empirical choices of one user match the world's choice distribution.
    u = 3
    logits = world.sharpness * world.u[u] @ world.v.T + world.skew * np.log(world.popularity)
    pr = np.exp(logits - logits.max())
    pr /= pr.sum()
    emp = np.bincount(d.item_key[d.user_key == u], minlength=100)
    assert np.corrcoef(pr, emp)[0, 1] > 0.9
    assert d.user_sparse[:, 0].tolist() == (d.user_key + 1).tolist()
