"""Exported models' speed: ONNX Runtime vs torch, and what INT8 / FP16 buy and cost.

``python -m benchmarks.offline_models`` prints one JSON object; :func:`run_models` returns it
(``benchmarks.offline`` includes it as a section).

The model is a DeepFM-sized ranker (the paper's Criteo setting: 13 dense inputs, 26 sparse
fields, here of 1,000 buckets, 10-dim embeddings, MLP 400-400-400) *trained* briefly (:func:`engine.training.train.train_ranker`)
on the synthetic Criteo-like world (:func:`engine.training.synthetic.criteo_like`) with Platt
calibration, so AUC changes are measured on a model that has learnt something. Then:

* **torch vs ORT**: rows/s at batch 1 and 64, median of ``repeats`` calls each, one thread
  on both sides (``torch.set_num_threads(1)``, ORT ``intra_op_num_threads=1`` as in
  serving). torch runs the module's logit (no post-processing); ORT runs the exported graph
  with its post-processing (a few element-wise ops). ``ort_over_torch`` = ORT rows/s /
  torch rows/s.
* **variants** (:func:`engine.export.variants.build_variants` on the validation rows): per
  precision, the speed-up over fp32 ORT at batch 1 and 64, the AUC change, the mean shift vs
  fp32 (INT8: before its recalibration, and the calibration ratio before / after).

Timings swing 2–3x on shared machines: compare ratios from one run.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

import numpy as np
import torch

from engine.export.ranker import export_ranker
from engine.export.variants import BATCH_SIZES, build_variants
from engine.training.config import TrainConfig
from engine.training.synthetic import criteo_like
from engine.training.train import torch_threads, train_ranker


def _torch_latency_s(model: torch.nn.Module, dense: np.ndarray, sparse: np.ndarray, batch: int, repeats: int) -> float:
    idx = np.arange(batch) % len(dense)
    d, s = torch.from_numpy(dense[idx]), torch.from_numpy(sparse[idx])
    times = []
    with torch.no_grad():
        for _ in range(3):
            model(d, s)
        for _ in range(repeats):
            start = time.perf_counter()
            model(d, s)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_models(train_rows: int = 200_000, valid_rows: int = 50_000, epochs: int = 2, repeats: int = 300,
               embed_dim: int = 10, hidden: tuple[int, ...] = (400, 400, 400), seed: int = 0) -> dict[str, Any]:
    """Train, export, measure (module docstring); returns a JSON-ready dict."""
    train = criteo_like(train_rows, seed=seed + 1)
    valid = criteo_like(valid_rows, seed=seed + 2)
    cfg = TrainConfig(kind="deepfm", epochs=epochs, embed_dim=embed_dim, hidden=hidden, calibration="platt",
                      device="cpu", quiet=True, seed=seed)
    started = time.perf_counter()
    run = train_ranker(train, valid, cfg, field_dims=[1000] * train.n_fields)
    train_s = time.perf_counter() - started

    started = time.perf_counter()
    exported = export_ranker(run, validation=(valid.dense[:2000], valid.sparse[:2000]))
    export_s = time.perf_counter() - started
    started = time.perf_counter()
    variants = build_variants(exported.core, downsample_rate=run.downsample_rate, calibrator=run.calibrator,
                              validation=(valid.dense, valid.sparse, valid.label), repeats=repeats)
    variants_s = time.perf_counter() - started

    model = run.model.cpu().eval()
    with torch_threads(1):
        torch_lat = {b: _torch_latency_s(model, valid.dense, valid.sparse, b, repeats) for b in BATCH_SIZES}
    # build_variants timed the fp32 graph already (1 thread, the same batches and repeats).
    fp32 = variants["fp32"].report
    assert fp32 is not None
    ort_lat = {b: fp32.latency_ms[b] / 1e3 for b in BATCH_SIZES}

    inference = {}
    for b in BATCH_SIZES:
        torch_rps, ort_rps = b / torch_lat[b], b / ort_lat[b]
        inference[f"batch_{b}"] = {"torch_rows_per_s": round(torch_rps), "ort_rows_per_s": round(ort_rps),
                                   "ort_over_torch": round(ort_rps / torch_rps, 2)}
    precisions: dict[str, Any] = {}
    for precision, variant in variants.items():
        r = variant.report
        assert r is not None
        entry: dict[str, Any] = {
            "auc": round(r.auc, 5) if r.auc is not None else None,
            "auc_change": None if r.auc_change is None else round(r.auc_change, 5),
            **{f"speedup_batch_{b}": round(r.speedup[b], 2) for b in BATCH_SIZES},
            "mean_shift_vs_fp32": round(r.mean_shift_vs_fp32, 5),
            "calibration_ratio": round(r.calibration_ratio, 4),
            "ece_change": round(r.ece_change, 5),
        }
        if r.recalibration is not None:
            rc = r.recalibration
            entry.update({
                "mean_shift_vs_fp32_before_recalibration": round(rc.mean_shift_vs_fp32_before, 5),
                "calibration_ratio_before_recalibration": round(rc.calibration_ratio_before, 4),
                "calibration_ratio_after_recalibration": round(rc.calibration_ratio_after, 4),
            })
        precisions[precision] = entry
    return {
        "model": {"kind": "deepfm", "n_dense": run.n_dense, "fields": len(run.field_dims), "buckets": 1000,
                  "embed_dim": embed_dim, "hidden": list(hidden), "train_rows": train_rows, "valid_rows": valid_rows,
                  "valid_ctr": round(valid.ctr, 4)},
        "export": {"exporter": exported.graph.exporter, "opset": exported.graph.opset,
                   "parity_max_abs_diff": exported.parity["probability"]},
        "seconds": {"train": round(train_s, 1), "export_and_parity": round(export_s, 2),
                    "variants_and_measurements": round(variants_s, 2)},
        "threads": 1,
        "providers": variants["fp32"].report.providers if variants["fp32"].report else None,
        "inference": inference,
        # The floor is torch running the same model: ONNX Runtime rows/s over torch's at batch 64.
        "ratio_to_floor": inference["batch_64"]["ort_over_torch"],
        "variants": precisions,
    }


if __name__ == "__main__":
    print(json.dumps(run_models(), indent=2))
