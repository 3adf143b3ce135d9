"""Export a training run (:class:`engine.training.run.TrainingRun`) to ONNX, behind the parity gate.

* Rankers (``lr``, ``deepfm``): one graph, inputs ``dense`` float32 [batch, n_dense] and
  ``sparse`` int64 [batch, n_fields] (an input with no columns is left out), outputs
  ``probability`` float32 [batch, 1] (first: serving's score) and ``logit`` float32
  [batch, 1]. ``probability`` reproduces ``run.predict_proba``: sigmoid, downsampling
  correction, calibrator, in the graph (:mod:`engine.export.postprocess`).
* ``two_tower``: two graphs, ``user`` and ``item``, each with the same inputs (the tower's
  own ``n_dense``/``field_dims``) and one output ``embedding`` float32 [batch, dim].

Each graph is checked against torch (:func:`engine.export.parity.check_outputs`: the
run's ``predict_proba`` for rankers, ``encode_users``/``encode_items`` for towers) on seeded
random rows plus any validation rows, at batch 1 and at ≥ 257 rows. A difference above
``tolerance`` raises :class:`~engine.export.parity.ParityError` before anything is written.

The model is exported from a CPU copy: the same ``model.onnx`` runs on ORT's CPU and CUDA
providers.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx
import torch

from engine.export.parity import DEFAULT_TOLERANCE, MIN_ROWS, check_outputs, sample_inputs
from engine.export.postprocess import LOGIT, PROBABILITY, attach_postprocess
from engine.export.torch_export import Exporter, OnnxGraph, export_module
from engine.training.run import TrainingRun

EMBEDDING = "embedding"
RANKER_KINDS = ("lr", "deepfm")
TOWERS = ("user", "item")


@dataclass
class ExportedModel:
    """One exported graph that passed the parity gate.

    ``core`` is the graph as exported (output ``logit`` for rankers, where ``model`` adds the
    post-processing; the same graph for towers). ``parity`` maps each checked output to its
    max absolute difference from torch.
    """

    role: str  # "ranker" | "user" | "item"
    graph: OnnxGraph
    model: onnx.ModelProto
    n_dense: int
    field_dims: list[int]
    tolerance: float
    parity: dict[str, float]
    parity_rows: int

    @property
    def core(self) -> onnx.ModelProto:
        return self.graph.model

    def info(self) -> dict[str, Any]:
        """The ``export`` section of the registry metadata."""
        def tensors(values: Sequence[onnx.ValueInfoProto]) -> list[dict[str, Any]]:
            out = []
            for v in values:
                t = v.type.tensor_type
                dims = [d.dim_param or d.dim_value for d in t.shape.dim]
                out.append({"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                            "shape": dims})
            return out

        return {
            "role": self.role,
            "exporter": self.graph.exporter,
            "opset": self.graph.opset,
            "torch_version": torch.__version__,
            "onnx_version": onnx.__version__,
            "inputs": tensors(self.model.graph.input),
            "outputs": tensors(self.model.graph.output),
            "n_dense": self.n_dense,
            "field_dims": list(self.field_dims),
            "parity_max_abs_diff": self.parity,
            "parity_tolerance": self.tolerance,
            "parity_rows": self.parity_rows,
        }

    def save(self, path: str | Path) -> Path:
        """Write the complete graph to ``path``."""
        onnx.save(self.model, str(path))
        return Path(path)


def _cpu_copy(module: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(module).cpu().eval()


def _gate(model: onnx.ModelProto, checks: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]],
          tolerances: dict[str, float], dense: np.ndarray, sparse: np.ndarray) -> dict[str, float]:
    return check_outputs(model.SerializeToString(), {out: (ref, tolerances[out]) for out, ref in checks.items()},
                         dense, sparse)


def export_ranker(
    run: TrainingRun,
    path: str | Path | None = None,
    *,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    exporter: Exporter = "auto",
    sample_rows: int = MIN_ROWS,
    seed: int = 0,
) -> ExportedModel:
    """Export a ranker run, check parity, and (when ``path`` is given) write the graph there.

    ``validation`` is ``(dense, sparse)`` of real rows added to the parity sample. The gate
    is on ``probability`` (``tolerance``, absolute); the ``logit`` difference is recorded
    but not gated (logits are unbounded: their float32 rounding scales with magnitude).
    """
    if run.kind not in RANKER_KINDS:
        raise ValueError(f"export_ranker exports rankers ({', '.join(RANKER_KINDS)}), not {run.kind!r}")
    graph = export_module(_cpu_copy(run.model), n_dense=run.n_dense, n_fields=len(run.field_dims), output=LOGIT,
                          exporter=exporter)
    model = attach_postprocess(graph.model, downsample_rate=run.downsample_rate, calibrator=run.calibrator)
    dense, sparse = sample_inputs(run.n_dense, run.field_dims, rows=sample_rows, seed=seed, validation=validation)
    parity = _gate(model, {PROBABILITY: run.predict_proba, LOGIT: run.predict_logit},
                   {PROBABILITY: tolerance, LOGIT: math.inf}, dense, sparse)
    exported = ExportedModel("ranker", graph, model, run.n_dense, list(run.field_dims), tolerance, parity, len(dense))
    if path is not None:
        exported.save(path)
    return exported


def export_towers(
    run: TrainingRun,
    *,
    validation: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    exporter: Exporter = "auto",
    sample_rows: int = MIN_ROWS,
    seed: int = 0,
) -> dict[str, ExportedModel]:
    """Export a two-tower run as ``{"user": ..., "item": ...}``, each parity-checked on ``embedding``.

    ``validation`` optionally maps a tower to ``(dense, sparse)`` rows of its own inputs.
    """
    if run.kind != "two_tower":
        raise ValueError(f"export_towers exports two_tower runs, not {run.kind!r}")
    sides = {
        "user": (run.model.user_tower, run.n_dense, list(run.field_dims), run.encode_users),
        "item": (run.model.item_tower, run.item_n_dense, list(run.item_field_dims), run.encode_items),
    }
    out: dict[str, ExportedModel] = {}
    for side, (tower, n_dense, field_dims, reference) in sides.items():
        graph = export_module(_cpu_copy(tower), n_dense=n_dense, n_fields=len(field_dims), output=EMBEDDING,
                              as_column=False, exporter=exporter)
        rows = (validation or {}).get(side)
        dense, sparse = sample_inputs(n_dense, field_dims, rows=sample_rows, seed=seed, validation=rows)
        parity = _gate(graph.model, {EMBEDDING: reference}, {EMBEDDING: tolerance}, dense, sparse)
        out[side] = ExportedModel(side, graph, graph.model, n_dense, field_dims, tolerance, parity, len(dense))
    return out
