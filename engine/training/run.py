"""A trained model and everything needed to use it: the artefact ``rtml train`` writes.

On disk a run is a directory::

    RUN_DIR/model.pt   the model's state_dict (tensors only; loaded with weights_only=True)
    RUN_DIR/run.json   every other field of :class:`TrainingRun` (plain JSON)

For ``two_tower`` runs ``n_dense`` / ``field_dims`` describe the **user** tower and
``item_n_dense`` / ``item_field_dims`` the item tower; rankers leave the item fields empty.
``features`` (optional) records how inputs were built from a dataset frame: ``{"dense":
[...], "sparse": [...], "buckets": int, "null_indicators": bool}`` for rankers, and
``{"user": {...}, "item": {...}}`` of the same shape for two-tower runs, so evaluation and
serving rebuild identical arrays (hashing: :func:`engine.training.data.hash_column`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.training.calibration import apply_calibrator, downsampling_correction, sigmoid
from engine.training.models import build_model

_WEIGHTS, _META = "model.pt", "run.json"
PREDICT_BATCH = 65_536  # rows per forward pass at prediction time


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class TrainingRun:
    """A trained ranker or two-tower model (see the module docstring)."""

    kind: str
    model: torch.nn.Module
    n_dense: int
    field_dims: list[int]
    downsample_rate: float
    calibrator: dict | None
    metrics: dict
    params: dict
    dataset_manifest: dict | None
    created_ms: int = field(default_factory=_now_ms)
    item_n_dense: int = 0
    item_field_dims: list[int] = field(default_factory=list)
    features: dict | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def predict_logit(self, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        """Raw model logits (float64 numpy), in batches, in eval mode."""
        if self.kind == "two_tower":
            raise ValueError("a two-tower run scores pairs by dot product: use encode_users / encode_items")
        return _forward(self.model, dense, sparse, self.device).reshape(-1)

    def predict_corrected(self, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        """sigmoid(logit) -> downsampling correction: probabilities before calibration."""
        return downsampling_correction(sigmoid(self.predict_logit(dense, sparse)), self.downsample_rate)

    def predict_proba(self, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        """sigmoid(logit) -> downsampling correction -> calibrator."""
        return apply_calibrator(self.calibrator, self.predict_corrected(dense, sparse))

    def encode_users(self, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        """User-tower vectors (two-tower runs)."""
        return _forward(self.model.user_tower, dense, sparse, self.device)

    def encode_items(self, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        """Item-tower vectors (two-tower runs)."""
        return _forward(self.model.item_tower, dense, sparse, self.device)

    def save(self, path: str | Path) -> None:
        """Write ``model.pt`` and ``run.json`` into the directory ``path`` (created if needed)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        torch.save(state, path / _WEIGHTS)
        meta = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "model"}
        (path / _META).write_text(json.dumps(_jsonable(meta), indent=2, allow_nan=True))

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "TrainingRun":
        """Read a run saved by :meth:`save`; the model is rebuilt from its shapes and params."""
        path = Path(path)
        meta = json.loads((path / _META).read_text())
        model = build_model(meta["kind"], meta["n_dense"], meta["field_dims"], meta["params"],
                            meta.get("item_n_dense", 0), meta.get("item_field_dims", []))
        model.load_state_dict(torch.load(path / _WEIGHTS, map_location="cpu", weights_only=True))
        model.to(device).eval()
        return cls(model=model, **meta)


def _forward(module: torch.nn.Module, dense: np.ndarray, sparse: np.ndarray, device: torch.device) -> np.ndarray:
    module.eval()
    dense = np.ascontiguousarray(dense, dtype=np.float32)
    sparse = np.ascontiguousarray(sparse, dtype=np.int64)
    out = []
    with torch.no_grad():
        for s in range(0, len(dense), PREDICT_BATCH):
            d = torch.from_numpy(dense[s:s + PREDICT_BATCH]).to(device)
            x = torch.from_numpy(sparse[s:s + PREDICT_BATCH]).to(device)
            out.append(module(d, x).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x

