"""Synthetic data with a known truth: a Criteo-shaped click world and an interactions world.

A *world* (hidden weights) is fixed by ``world_seed``; each :meth:`sample` draws fresh rows
with its own ``seed``, so train / validation / test come from one world and differ only by
sample seed::

    world = CriteoLike(world_seed=0)
    train, valid, test = world.sample(400_000, seed=1), world.sample(100_000, seed=2), ...

Click world: the hidden logit is ``bias + dense part + first-order field effects +
pairwise interactions`` (inner products of hidden per-value vectors for every pair of a
random subset of fields), so a factorisation model can beat a linear one. Categorical values follow a
Zipf law per field (a few values dominate, a long tail is rare), a few percent of values
are null (bucket 0), and numeric features are log-normal counts. ``true_p`` is the exact
click probability each label was drawn from.

>>> d = CriteoLike(world_seed=0).sample(20_000, seed=1)
>>> d.dense.shape, d.sparse.shape, 0.02 < d.ctr < 0.07
((20000, 13), (20000, 26), True)
>>> abs(float(d.true_p.mean()) - 0.04) < 0.005
True
"""

from __future__ import annotations

import numpy as np

from engine.training.data import ClickData, PairData


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _zipf_cdf(rng: np.random.Generator, vocab: int, exponent: float) -> np.ndarray:
    w = 1.0 / np.arange(1, vocab + 1) ** exponent
    return np.cumsum(w / w.sum())


class CriteoLike:
    """A click world with ``n_fields`` hashed categorical and ``n_dense`` numeric features."""

    def __init__(self, world_seed: int = 0, n_dense: int = 13, n_fields: int = 26, buckets: int = 1000,
                 base_ctr: float = 0.04, n_interacting: int = 10, latent_dim: int = 4,
                 interaction_scale: float = 1.0, null_rate: float = 0.03) -> None:
        rng = np.random.default_rng(world_seed)
        self.n_dense, self.n_fields, self.buckets, self.null_rate = n_dense, n_fields, buckets, null_rate
        self.field_dims = [buckets] * n_fields
        # Vocabulary sizes spread log-uniformly (a few tiny fields, some near the bucket count).
        self.vocab = np.exp(rng.uniform(np.log(4), np.log(buckets - 1), n_fields)).astype(int)
        self.cdfs = [_zipf_cdf(rng, v, rng.uniform(1.0, 1.4)) for v in self.vocab]
        # Frequency rank -> bucket: a random injection into [1, buckets), like hashing would do.
        self.to_bucket = [1 + rng.permutation(buckets - 1)[:v] for v in self.vocab]
        self.dense_mu = rng.uniform(0.0, 3.0, n_dense)
        self.dense_sigma = rng.uniform(0.5, 1.5, n_dense)
        # Scales chosen so the parts' logit standard deviations are about 0.5 (dense),
        # 0.8 (first order) and interaction_scale (pairs).
        self.w_dense = rng.normal(0, 0.5 / np.sqrt(max(n_dense, 1)), n_dense)
        self.w_first = rng.normal(0, 0.8 / np.sqrt(max(n_fields, 1)), (n_fields, buckets))
        # Every pair among n_interacting random fields interacts through one latent vector per
        # value: a factorisation machine restricted to those fields, which FM models can learn.
        inter = np.sort(rng.choice(n_fields, min(n_interacting, n_fields), replace=False))
        self.pairs = [(int(f), int(g)) for i, f in enumerate(inter) for g in inter[i + 1:]]
        # A product of two N(0, s^2) latent sums has variance latent_dim * s^4 per pair.
        s = (interaction_scale**2 / (max(len(self.pairs), 1) * latent_dim)) ** 0.25
        self.latent = rng.normal(0, s, (n_fields, buckets, latent_dim))
        self.bias = 0.0
        ref = self._logit(*self._features(np.random.default_rng(world_seed + 10_007), 50_000))
        lo, hi = -15.0, 5.0  # bisection so the mean click probability is base_ctr
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if _sigmoid(ref + mid).mean() < base_ctr else (lo, mid)
        self.bias = (lo + hi) / 2

    def _features(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        dense = np.floor(np.exp(rng.normal(self.dense_mu, self.dense_sigma, (n, self.n_dense)))).astype(np.float32)
        sparse = np.empty((n, self.n_fields), dtype=np.int64)
        for f in range(self.n_fields):
            rank = np.minimum(np.searchsorted(self.cdfs[f], rng.random(n)), self.vocab[f] - 1)
            sparse[:, f] = self.to_bucket[f][rank]
        sparse[rng.random((n, self.n_fields)) < self.null_rate] = 0
        return dense, sparse

    def _logit(self, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        z = (np.log1p(dense) - self.dense_mu) / self.dense_sigma
        logit = self.bias + z @ self.w_dense
        cols = np.arange(self.n_fields)
        logit += self.w_first[cols, sparse].sum(axis=1)
        for f, g in self.pairs:
            logit += np.einsum("nk,nk->n", self.latent[f, sparse[:, f]], self.latent[g, sparse[:, g]])
        return logit

    def sample(self, n: int, seed: int) -> ClickData:
        """``n`` rows drawn with ``seed``; labels ~ Bernoulli(true_p)."""
        rng = np.random.default_rng([seed, 1])
        dense, sparse = self._features(rng, n)
        p = _sigmoid(self._logit(dense, sparse))
        label = (rng.random(n) < p).astype(np.float32)
        return ClickData(dense, sparse, label, p, [f"dense_{i}" for i in range(self.n_dense)])


def criteo_like(n: int, seed: int, n_dense: int = 13, n_fields: int = 26, buckets: int = 1000,
                base_ctr: float = 0.04, world_seed: int = 0) -> ClickData:
    """``CriteoLike(world_seed, ...).sample(n, seed)`` in one call."""
    return CriteoLike(world_seed, n_dense, n_fields, buckets, base_ctr).sample(n, seed)


class InteractionWorld:
    """Users and items with hidden vectors; a user picks item i with probability
    proportional to ``popularity_i ** skew * exp(sharpness * <u, v_i>)``.

    User tower inputs: sparse (user id, segment), dense (4 noisy views of the hidden
    vector). Item tower inputs: sparse (item id, category), dense (log popularity and
    4 noisy views). Ids are buckets ``1 + index`` (0 stays the null bucket).

    >>> w = InteractionWorld(world_seed=0, n_users=50, n_items=40)
    >>> d = w.sample(1_000, seed=1)
    >>> len(d), d.user_sparse.shape[1], d.item_dense.shape[1], w.user_field_dims, w.item_field_dims
    (1000, 2, 5, [51, 17], [41, 33])
    """

    def __init__(self, world_seed: int = 0, n_users: int = 2_000, n_items: int = 1_000, dim: int = 8,
                 skew: float = 0.8, sharpness: float = 3.0, n_segments: int = 16, n_categories: int = 32) -> None:
        rng = np.random.default_rng(world_seed)
        self.n_users, self.n_items, self.skew, self.sharpness = n_users, n_items, skew, sharpness
        self.u = rng.normal(0, 1 / np.sqrt(dim), (n_users, dim))
        self.v = rng.normal(0, 1 / np.sqrt(dim), (n_items, dim))
        self.popularity = 1.0 / np.arange(1, n_items + 1)[rng.permutation(n_items)]
        seg_c, cat_c = rng.normal(size=(n_segments, dim)), rng.normal(size=(n_categories, dim))
        self.segment = np.argmax(self.u @ seg_c.T, axis=1)
        self.category = np.argmax(self.v @ cat_c.T, axis=1)
        proj = rng.normal(size=(dim, 4))
        self.user_dense = (self.u @ proj + rng.normal(0, 0.3, (n_users, 4))).astype(np.float32)
        self.item_dense = np.column_stack([np.log(self.popularity),
                                           self.v @ proj + rng.normal(0, 0.3, (n_items, 4))]).astype(np.float32)
        logits = sharpness * (self.u @ self.v.T) + skew * np.log(self.popularity)
        choice = np.exp(logits - logits.max(axis=1, keepdims=True))
        cdf = np.cumsum(choice / choice.sum(axis=1, keepdims=True), axis=1)
        cdf[:, -1] = 1.0
        self._flat_cdf = (cdf + np.arange(n_users)[:, None]).ravel()
        self.user_field_dims = [n_users + 1, n_segments + 1]
        self.item_field_dims = [n_items + 1, n_categories + 1]

    def sample(self, n: int, seed: int) -> PairData:
        """``n`` interactions (users uniform, items from each user's choice distribution)."""
        rng = np.random.default_rng([seed, 2])
        users = rng.integers(0, self.n_users, n)
        # Inverse-CDF draw: user u's CDF lives in [u, u + 1) of one flat ascending array.
        draw = users + rng.random(n) * (1 - 1e-12)
        items = (np.searchsorted(self._flat_cdf, draw, side="right") - users * self.n_items).clip(0, self.n_items - 1)
        user_sparse = np.column_stack([users + 1, self.segment[users] + 1])
        item_sparse = np.column_stack([items + 1, self.category[items] + 1])
        return PairData(self.user_dense[users], user_sparse, self.item_dense[items], item_sparse, users, items)
