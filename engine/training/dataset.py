"""Training arrays from a data set written by ``rtml dataset build`` (docs/datasets.md).

The directory holds ``train.parquet``, ``validation.parquet``, ``test.parquet`` and
``manifest.json``; the manifest is read as a plain dict (``features``: ``{"name", "dtype"}``
entries, ``splits``: ``{name: {"file": ...}}``, ``label_column``). Column roles:

* rankers: numeric features (``int``, ``float``, ``bool``) are dense, ``str`` features are
  hashed sparse fields, and the ``sparse_columns`` asked for (entity keys such as
  ``user_id``, ``item_id``) are hashed sparse fields too;
* two-tower: only positive rows (``label > 0``) are pairs; the user tower gets the
  ``user.*`` features plus the hashed user column, the item tower the ``item.*`` features
  plus the hashed item column (the prefix is the entity column without ``_id``).

The chosen layout is kept in the run (``TrainingRun.features``), so evaluation rebuilds the
same arrays from any split.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from engine.datasets.build import MANIFEST
from engine.training.config import TrainConfig
from engine.training.data import ClickData, PairData, hash_column
from engine.training.run import TrainingRun

_KEY_BUCKETS = 1 << 62  # identities (log-Q, evaluation): wide enough that collisions do not matter


def read_manifest(dataset_dir: str | Path) -> dict[str, Any]:
    """``manifest.json`` as a dict."""
    return json.loads((Path(dataset_dir) / MANIFEST).read_text())


def read_split(dataset_dir: str | Path, split: str, manifest: dict[str, Any] | None = None) -> pd.DataFrame:
    """One split's frame (file name from the manifest, else ``<split>.parquet``)."""
    manifest = manifest if manifest is not None else read_manifest(dataset_dir)
    file = manifest.get("splits", {}).get(split, {}).get("file", f"{split}.parquet")
    return pd.read_parquet(Path(dataset_dir) / file)


def _is_sparse(dtype: str) -> bool:
    return dtype.lower() in ("str", "string", "object", "category")


def ranker_features(manifest: dict[str, Any], cfg: TrainConfig, sparse_columns: Sequence[str] = ()) -> dict[str, Any]:
    """The ranker input layout of a data set (stored as ``TrainingRun.features``).

    >>> m = {"features": [{"name": "user.clicks_1h", "dtype": "int"}, {"name": "item.category", "dtype": "str"}]}
    >>> f = ranker_features(m, TrainConfig(buckets=1000), ["item_id"])
    >>> f["dense"], f["sparse"], f["buckets"]
    (['user.clicks_1h'], ['item.category', 'item_id'], 1000)
    """
    feats = manifest.get("features", [])
    return {
        "dense": [f["name"] for f in feats if not _is_sparse(f["dtype"])],
        "sparse": [f["name"] for f in feats if _is_sparse(f["dtype"])] + list(sparse_columns),
        "buckets": cfg.buckets,
        "null_indicators": cfg.null_indicators,
        "label": manifest.get("label_column", "label"),
    }


def pair_features(manifest: dict[str, Any], cfg: TrainConfig, user_column: str = "user_id",
                  item_column: str = "item_id") -> dict[str, Any]:
    """The two-tower input layout: one ranker-like layout per side plus its key column."""
    feats = manifest.get("features", [])

    def side(column: str) -> dict[str, Any]:
        prefix = column.removesuffix("_id") + "."
        mine = [f for f in feats if f["name"].startswith(prefix)]
        return {"key": column, "dense": [f["name"] for f in mine if not _is_sparse(f["dtype"])],
                "sparse": [column] + [f["name"] for f in mine if _is_sparse(f["dtype"])],
                "buckets": cfg.buckets, "null_indicators": cfg.null_indicators}

    return {"user": side(user_column), "item": side(item_column), "label": manifest.get("label_column", "label")}


def click_data(frame: pd.DataFrame, features: dict[str, Any]) -> ClickData:
    """A frame as :class:`ClickData` with a ranker layout from :func:`ranker_features`."""
    return ClickData.from_frame(frame, features["dense"], features["sparse"], features["buckets"],
                                features.get("label", "label"), features["null_indicators"])


def pair_data(frame: pd.DataFrame, features: dict[str, Any]) -> PairData:
    """The positive rows of a frame as :class:`PairData` with a layout from :func:`pair_features`."""
    label = features.get("label", "label")
    if label in frame:
        frame = frame[frame[label] > 0]
    u, i = features["user"], features["item"]
    users = ClickData.from_frame(frame, u["dense"], u["sparse"], u["buckets"], label, u["null_indicators"])
    items = ClickData.from_frame(frame, i["dense"], i["sparse"], i["buckets"], label, i["null_indicators"])
    return PairData(users.dense, users.sparse, items.dense, items.sparse,
                    hash_column(frame[u["key"]], _KEY_BUCKETS, "key:" + u["key"]),
                    hash_column(frame[i["key"]], _KEY_BUCKETS, "key:" + i["key"]))


def load_split_for(run: TrainingRun, dataset_dir: str | Path, split: str) -> ClickData | PairData:
    """A split with the layout ``run`` was trained on."""
    if run.features is None:
        raise ValueError("this run was not trained on a data set: it records no feature layout")
    frame = read_split(dataset_dir, split)
    return pair_data(frame, run.features) if run.kind == "two_tower" else click_data(frame, run.features)


def train_from_dataset(dataset_dir: str | Path, cfg: TrainConfig, sparse_columns: Sequence[str] = (),
                       user_column: str = "user_id", item_column: str = "item_id") -> TrainingRun:
    """Train ``cfg.kind`` on a built data set's train split, validating on ``validation``.

    ``sparse_columns``: extra columns hashed as sparse fields of a ranker (e.g. entity keys).
    The manifest is stored in the run (``dataset_manifest``).
    """
    from engine.training.train import train_ranker, train_two_tower

    manifest = read_manifest(dataset_dir)
    train_df, valid_df = read_split(dataset_dir, "train", manifest), read_split(dataset_dir, "validation", manifest)
    if cfg.kind == "two_tower":
        feats = pair_features(manifest, cfg, user_column, item_column)
        dims = {s: [cfg.buckets] * len(feats[s]["sparse"]) for s in ("user", "item")}
        return train_two_tower(pair_data(train_df, feats), pair_data(valid_df, feats), cfg, manifest, feats,
                               dims["user"], dims["item"])
    feats = ranker_features(manifest, cfg, sparse_columns)
    return train_ranker(click_data(train_df, feats), click_data(valid_df, feats), cfg, manifest, feats,
                        [cfg.buckets] * len(feats["sparse"]))
