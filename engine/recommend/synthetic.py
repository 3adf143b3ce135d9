"""A small recommendation world with trained, registered models -- for tests, evaluation, benchmarks.

Built on :class:`engine.training.synthetic.InteractionWorld` (users pick items by hidden
vectors and popularity). Its per-user and per-item dense views are stored as online
features under real feature-view columns of the packaged specs, so serving reads them
exactly as it reads live features:

* users ``u<k>``: ``user.clicks_1h``, ``user.impressions_1h``, ``user.ctr_1h``,
  ``user.clicks_24h`` (the world's 4 noisy views of the user's vector);
* items ``i<k>``: ``item.clicks_24h`` (log popularity: what the popular fallback ranks by),
  ``item.clicks_1h``, ``item.impressions_1h``, ``item.ctr_1h``, ``item.distinct_users_1h``.

:func:`train_models` trains a two-tower model (user tower: those user columns + hashed
``user_id``; item tower: item columns + ``item_id``) and a DeepFM ranker on clicks (positives:
the world's interactions; negatives: random items) over the same columns plus both ids, then
registers all three with :func:`engine.registry.register_run` into a model repository, so
their ``metadata.json`` carries the input layouts serving rebuilds inputs from. A few
seconds on 2 CPU cores at the default sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.events.schemas import ItemUpdate
from engine.training.synthetic import InteractionWorld

USER_COLUMNS = ("user.clicks_1h", "user.impressions_1h", "user.ctr_1h", "user.clicks_24h")
ITEM_COLUMNS = ("item.clicks_24h", "item.clicks_1h", "item.impressions_1h", "item.ctr_1h", "item.distinct_users_1h")
BUCKETS = 4096


@dataclass
class RecWorld:
    """The world, its ids and frames of interactions (one row per user-item event)."""

    world: InteractionWorld
    users: list[str]
    items: list[str]
    categories: list[str]
    train: pd.DataFrame
    test: pd.DataFrame

    def user_row(self, u: int) -> dict[str, float]:
        return dict(zip(USER_COLUMNS, self.world.user_dense[u].astype(float).tolist()))

    def item_row(self, i: int) -> dict[str, float]:
        return dict(zip(ITEM_COLUMNS, self.world.item_dense[i].astype(float).tolist()))

    def frame(self, users: np.ndarray, items: np.ndarray, label: np.ndarray) -> pd.DataFrame:
        """Rows as a training frame: ids, the feature columns, ``label``."""
        df = pd.DataFrame({"user_id": [self.users[u] for u in users], "item_id": [self.items[i] for i in items]})
        for j, c in enumerate(USER_COLUMNS):
            df[c] = self.world.user_dense[users, j].astype(np.float64)
        for j, c in enumerate(ITEM_COLUMNS):
            df[c] = self.world.item_dense[items, j].astype(np.float64)
        df["label"] = label.astype(np.float32)
        return df

    def hashes(self, prefix: str, now_ms: int) -> dict[str, dict[str, Any]]:
        """Online feature hashes ``{key: {column: value, "_t": now}}`` (Redis layout)."""
        out: dict[str, dict[str, Any]] = {}
        for u, uid in enumerate(self.users):
            row = {c.split(".", 1)[1]: repr(v) for c, v in self.user_row(u).items()}
            out[f"{prefix}:user:{uid}"] = {**row, "_t": str(now_ms)}
        for i, iid in enumerate(self.items):
            row = {c.split(".", 1)[1]: repr(v) for c, v in self.item_row(i).items()}
            # Established items: shown often (so they are not cold-start).
            out[f"{prefix}:item:{iid}"] = {**row, "impressions_24h": "1000", "_t": str(now_ms)}
        return out

    def item_updates(self, vectors: np.ndarray, event_ms: int) -> list[ItemUpdate]:
        """One ItemUpdate per item with its item-tower vector (the items topic's content)."""
        return [ItemUpdate(iid, event_ms, category=self.categories[i], embedding=vectors[i].astype(float).tolist())
                for i, iid in enumerate(self.items)]


def build_world(n_users: int = 300, n_items: int = 400, n_train: int = 20_000, n_test: int = 3_000,
                seed: int = 0) -> RecWorld:
    """A world and its train / test interactions (all positives)."""
    world = InteractionWorld(world_seed=seed, n_users=n_users, n_items=n_items, dim=8, n_categories=12)
    users = [f"u{k}" for k in range(n_users)]
    items = [f"i{k}" for k in range(n_items)]
    cats = [f"c{int(c)}" for c in world.category]

    def pairs(n: int, s: int) -> pd.DataFrame:
        d = world.sample(n, seed=s)
        rw = RecWorld(world, users, items, cats, pd.DataFrame(), pd.DataFrame())
        return rw.frame(d.user_key, d.item_key, np.ones(len(d)))

    return RecWorld(world, users, items, cats, pairs(n_train, seed + 1), pairs(n_test, seed + 2))


def layouts() -> tuple[dict[str, Any], dict[str, Any]]:
    """``(two-tower features, ranker features)`` as :mod:`engine.training.dataset` records them."""
    side = {"buckets": BUCKETS, "null_indicators": False}
    tower = {"user": {"key": "user_id", "dense": list(USER_COLUMNS), "sparse": ["user_id"], **side},
             "item": {"key": "item_id", "dense": list(ITEM_COLUMNS), "sparse": ["item_id"], **side},
             "label": "label"}
    ranker = {"dense": [*USER_COLUMNS, *ITEM_COLUMNS], "sparse": ["user_id", "item_id"], "label": "label", **side}
    return tower, ranker


def ranker_frame(rw: RecWorld, positives: pd.DataFrame, negatives_per_positive: int, seed: int) -> pd.DataFrame:
    """Positives plus random (user, item) negatives, shuffled."""
    rng = np.random.default_rng(seed)
    u = np.array([int(x[1:]) for x in positives["user_id"]])
    n_neg = len(u) * negatives_per_positive
    neg = rw.frame(np.repeat(u, negatives_per_positive), rng.integers(0, len(rw.items), n_neg), np.zeros(n_neg))
    df = pd.concat([positives, neg], ignore_index=True)
    return df.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def train_models(rw: RecWorld, repository: str | Path, *, name: str = "recs", ranker: str = "ranker",
                 epochs: int = 3, seed: int = 0, ranker_batch: int = 1024) -> dict[str, Any]:
    """Train and register ``<name>_user`` / ``<name>_item`` and ``ranker``; returns the runs and refs.

    The ranker's ``config.yaml`` sets ``max_batch_size: ranker_batch`` (a Recommend call scores
    all its candidates in one batch).
    """
    from engine.registry.export import register_run
    from engine.registry.registry import ModelRegistry
    from engine.training.config import TrainConfig
    from engine.training.data import ClickData
    from engine.training.dataset import click_data, pair_data
    from engine.training.train import train_ranker, train_two_tower

    tower_layout, ranker_layout = layouts()
    cut = int(len(rw.train) * 0.9)
    tr, va = rw.train.iloc[:cut], rw.train.iloc[cut:]
    tt_cfg = TrainConfig(kind="two_tower", epochs=epochs, batch_size=512, lr=5e-3, hidden=(64,), out_dim=16,
                         embed_dim=8, buckets=BUCKETS, seed=seed, device="cpu", quiet=True, eval_k=(10,))
    dims = [BUCKETS]
    two_tower = train_two_tower(pair_data(tr, tower_layout), pair_data(va, tower_layout), tt_cfg, None, tower_layout,
                                dims, dims)
    rk_cfg = TrainConfig(kind="deepfm", epochs=epochs, batch_size=1024, lr=3e-3, hidden=(64, 32), buckets=BUCKETS,
                         seed=seed, device="cpu", quiet=True, calibration=None)
    rtr, rva = ranker_frame(rw, tr, 3, seed), ranker_frame(rw, va, 3, seed + 1)
    train_c: ClickData = click_data(rtr, ranker_layout)
    valid_c: ClickData = click_data(rva, ranker_layout)
    rank_run = train_ranker(train_c, valid_c, rk_cfg, None, ranker_layout, [BUCKETS, BUCKETS])
    registry = ModelRegistry(repository)
    towers = register_run(registry, two_tower, name, exporter="torchscript")
    ranked = register_run(registry, rank_run, ranker, (valid_c.dense, valid_c.sparse, valid_c.label),
                          variants=(), exporter="torchscript", repeats=1)
    (Path(repository) / ranker / "config.yaml").write_text(
        f"max_batch_size: {ranker_batch}\nqueue_capacity: {ranker_batch * 16}\n")
    return {"two_tower": two_tower, "ranker_run": rank_run, "user_tower": towers.towers["user"],
            "item_tower": towers.towers["item"], "ranker": ranked}


def item_vectors(rw: RecWorld, two_tower: Any) -> np.ndarray:
    """Item-tower vectors of every item (float32 ``[n_items, dim]``), from the item layout."""
    from serving.recommend.inputs import InputLayout

    layout = InputLayout.from_features(layouts()[0]["item"])
    cols: dict[str, list[Any]] = {c: [rw.item_row(i)[c] for i in range(len(rw.items))] for c in ITEM_COLUMNS}
    cols["item_id"] = list(rw.items)
    dense, sparse = layout.arrays(cols)
    return np.asarray(two_tower.encode_items(dense, sparse), dtype=np.float32)
