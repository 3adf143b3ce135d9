"""Small real training runs (engine.training models, random weights) for export and registry tests."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from engine.export.parity import sample_inputs
from engine.training.models import build_model
from engine.training.run import TrainingRun

FIELD_DIMS = [7, 30, 5, 100]
PARAMS = {"embed_dim": 4, "hidden": [16, 8], "out_dim": 6}


def make_run(
    kind: str = "deepfm",
    n_dense: int = 3,
    field_dims: list[int] | None = None,
    *,
    downsample_rate: float = 1.0,
    calibrator: dict[str, Any] | None = None,
    seed: int = 0,
) -> TrainingRun:
    """A run with seeded random weights: embeddings large enough that every field matters."""
    dims = list(FIELD_DIMS if field_dims is None else field_dims)
    torch.manual_seed(seed)
    item = {"item_n_dense": 2, "item_field_dims": [11, 4]} if kind == "two_tower" else {}
    model = build_model(kind, n_dense, dims, PARAMS, item.get("item_n_dense", 0), item.get("item_field_dims", []))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "table" in name:
                p.normal_(0, 0.5)
    return TrainingRun(kind=kind, model=model.eval(), n_dense=n_dense, field_dims=dims,
                       downsample_rate=downsample_rate, calibrator=calibrator, metrics={"auc": 0.5},
                       params=dict(PARAMS), dataset_manifest={"rows": 123, "sha256": "ab" * 32}, **item)


def make_validation(run: TrainingRun, rows: int = 2000, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows with labels drawn from the run's own probabilities (a calibrated fp32 model)."""
    dense, sparse = sample_inputs(run.n_dense, run.field_dims, rows=rows, seed=seed)
    p = run.predict_proba(dense, sparse)
    label = (np.random.default_rng(seed).random(rows) < p).astype(np.float32)
    return dense, sparse, label
