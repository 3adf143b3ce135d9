"""The demo's starting models, trained on the simulated history it just streamed.

From the history's impressions and clicks (labels: a click within the label window) and the
features dataflow's offline log, one point-in-time data set is built; on it:

* ``ranker``: DeepFM over user and item features plus hashed ``user_id`` / ``item_id``: the
  Recommend funnel's ranker (batched over the candidates of a request);
* ``recs_user`` / ``recs_item``: a two-tower retrieval model over the same features; the item
  tower's vectors are what the FAISS index holds (published on the items topic);
* ``ctr`` version 1 (logistic regression) and version 2 (DeepFM), both on the dense features
  only, so that Predict can fill their inputs from Redis by feature bindings: the A/B test.

Everything is registered through the registry (parity-checked ONNX) into the model
repository that ``rtml serve`` reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import yaml

from engine.config import RtmlConfig

# Features of the data set: what the user and the item did recently (serving reads the same).
FEATURES = (
    "user.impressions_5m", "user.clicks_5m", "user.ctr_5m", "user.impressions_1h", "user.clicks_1h",
    "user.ctr_1h", "item.impressions_5m", "item.clicks_5m", "item.ctr_5m", "item.impressions_1h",
    "item.clicks_1h", "item.ctr_1h",
)
BUCKETS = 4096
RANKER, TOWERS, CTR = "ranker", "recs", "ctr"


@dataclass
class StartingModels:
    """What :func:`train_starting_models` produced."""

    dataset_dir: Path
    examples: int
    two_tower: Any  # TrainingRun (two_tower): encodes new items for the index
    item_layout: dict[str, Any]
    test_auc: dict[str, float]


def _config(kind: str, **extra: Any) -> Any:
    from engine.training.config import TrainConfig

    base: dict[str, Any] = {"kind": kind, "epochs": 3, "batch_size": 1024, "lr": 3e-3, "buckets": BUCKETS,
                            "device": "auto", "quiet": True, "threads": 1, "seed": 0}
    return TrainConfig(**{**base, **extra})


def train_starting_models(cfg: RtmlConfig, examples: pd.DataFrame, run_dir: Path, candidates: int) -> StartingModels:
    """Build the data set, train, register (see the module docstring)."""
    from engine.datasets.build import DatasetManifest, build_from_offline_store
    from engine.registry.export import register_run
    from engine.registry.registry import ModelRegistry
    from engine.rollouts.routing import start_ab
    from engine.training.dataset import load_split_for, train_from_dataset
    from engine.training.metrics import auc

    dataset_dir = run_dir / "dataset"
    build_from_offline_store(cfg, examples, dataset_dir, features=list(FEATURES))
    repo = Path(cfg.learning.model_repository or run_dir / "models")
    registry = ModelRegistry(repo)
    test_auc: dict[str, float] = {}

    def fit(kind: str, name: str, sparse: Sequence[str], **extra: Any) -> Any:
        run = train_from_dataset(dataset_dir, _config(kind, **extra), sparse_columns=sparse)
        valid, test = (load_split_for(run, dataset_dir, split) for split in ("validation", "test"))
        test_auc[f"{name} ({kind})"] = auc(test.label, run.predict_proba(test.dense, test.sparse))
        register_run(registry, run, name, (valid.dense, valid.sparse, valid.label), variants=(),
                     exporter="torchscript", repeats=1)
        return run

    fit("deepfm", RANKER, ("user_id", "item_id"), hidden=(64, 32), calibration="platt")
    # Recommend scores all candidates of a request in one batch.
    _write_model_config(repo / RANKER, {"max_batch_size": candidates, "queue_capacity": candidates * 64})

    fit("lr", CTR, (), calibration="platt")
    fit("deepfm", CTR, (), hidden=(64, 32), calibration="platt")
    _write_model_config(repo / CTR, {"features": {"inputs": {"dense": list(FEATURES)}}, "max_batch_size": 256,
                                     "queue_capacity": 4096})
    start_ab(repo, CTR, "2", control="1", reason="demo: LR (control) vs DeepFM (treatment)", actor="rtml demo")

    two_tower = train_from_dataset(dataset_dir, _config("two_tower", hidden=(64,), out_dim=16, embed_dim=8,
                                                        lr=5e-3, batch_size=512, eval_k=(10,)))
    register_run(registry, two_tower, TOWERS, exporter="torchscript", repeats=1)
    rows = DatasetManifest.load(dataset_dir).rows
    return StartingModels(dataset_dir, rows, two_tower, two_tower.features["item"], test_auc)


def _write_model_config(model_dir: Path, config: dict[str, Any]) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def item_vectors(models: StartingModels, item_ids: Sequence[str], item_features: dict[str, list[Any]]) -> np.ndarray:
    """Item-tower vectors of ``item_ids`` from their current item features (the index's content).

    ``item_features`` maps each item-side dense column to one value per item (None: missing).
    """
    from serving.recommend.inputs import InputLayout

    layout = InputLayout.from_features(models.item_layout)
    columns = {**item_features, "item_id": list(item_ids)}
    dense, sparse = layout.arrays(columns)
    return np.asarray(models.two_tower.encode_items(dense, sparse), dtype=np.float32)
