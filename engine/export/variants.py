"""Reduced-precision variants of an exported ranker, each with its measured effect.

* **int8**: :func:`onnxruntime.quantization.quantize_dynamic` on the *core* graph (weights
  of MatMul/Gemm/Gather to int8, activations quantised per call). Dynamic quantisation
  moves the mean prediction (−1.3% on a DeepFM-sized ranker in the field notes), so the
  INT8 variant is *recalibrated*: the run's calibrator kind (Platt when it had none) is
  refit on the INT8 core's corrected scores ``q`` against the validation labels, and the
  post-processing is rebuilt with the new parameters (no re-export). The fit and the
  before/after numbers use the same validation rows (in-sample, like the fp32
  calibrator's own fit on held-out data).
* **fp16**: ``onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True)``
  on the core graph: weights and activations in float16, inputs and the ``logit`` output
  stay float32. It gives no speed-up on a CPU (MLAS has no fp16 GEMM there); it exists for
  GPUs.

In both, the post-processing (:mod:`engine.export.postprocess`) stays float64/float32.

Measurements (:class:`VariantReport`), on the validation rows: AUC and its change vs fp32,
mean prediction / mean label (calibration ratio) and the mean shift vs fp32, ECE (100 bins,
:func:`engine.training.metrics.ece`) and its change, and latency at batch 1 and 64: median
of ``repeats`` timed calls of one ORT session per variant, 1 intra-op thread each (same
options as serving; CUDA when the process has it, see :mod:`serving.onnx_session`).
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np
import onnx

from engine.export.postprocess import PROBABILITY, attach_postprocess
from engine.export.torch_export import feeds
from engine.training.calibration import downsampling_correction, fit_calibrator, sigmoid
from engine.training.metrics import auc, calibration_ratio, ece
from serving.onnx_session import load_onnx

Precision = Literal["fp32", "int8", "fp16"]
PRECISIONS: tuple[str, ...] = ("fp32", "int8", "fp16")
BATCH_SIZES = (1, 64)


def quantize_int8(core: onnx.ModelProto) -> onnx.ModelProto:
    """Dynamic INT8 quantisation of a graph (ORT's defaults: per-tensor, unsigned activations)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = copy.deepcopy(core)
    # The dynamo exporter records every value's shape, initialisers included; the quantiser
    # transposes Gemm weights and its shape inference then fails on the stale entries.
    del graph.graph.value_info[:]
    with tempfile.TemporaryDirectory(prefix="rtml-int8-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(graph, src)
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
        return onnx.load(dst)


def convert_fp16(core: onnx.ModelProto) -> onnx.ModelProto:
    """Float16 weights and compute; float32 inputs and outputs (cast at the edges)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(core, keep_io_types=True)


def reduce_precision(core: onnx.ModelProto, precision: str) -> onnx.ModelProto:
    """The core graph at ``precision`` ("fp32" returns it unchanged)."""
    if precision == "fp32":
        return core
    if precision == "int8":
        return quantize_int8(core)
    if precision == "fp16":
        return convert_fp16(core)
    raise ValueError(f"unknown precision {precision!r} (expected one of {', '.join(PRECISIONS)})")


def latency_s(model: bytes, dense: np.ndarray, sparse: np.ndarray, *, batch_sizes: Sequence[int] = BATCH_SIZES,
              repeats: int = 50, threads: int = 1) -> dict[int, float]:
    """Median seconds per ORT call at each batch size (rows cycled from ``dense``/``sparse``)."""
    session = load_onnx(model, intra_op_threads=threads)
    names = [s.name for s in session.inputs]
    out: dict[int, float] = {}
    for batch in batch_sizes:
        idx = np.arange(batch) % len(dense)
        f = feeds(dense[idx], sparse[idx], names)
        for _ in range(3):  # warm-up: first calls allocate
            session.run(f)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            session.run(f)
            times.append(time.perf_counter() - start)
        out[batch] = statistics.median(times)
    return out


@dataclass
class Recalibration:
    """An INT8 variant's refit calibrator and the mean shift it removed (in-sample)."""

    calibrator: dict[str, Any]
    rows: int
    mean_shift_vs_fp32_before: float  # the quantisation's own shift: INT8 / fp32 mean − 1
    calibration_ratio_before: float
    calibration_ratio_after: float
    ece_before: float
    ece_after: float

    @property
    def mean_shift_before(self) -> float:
        """Mean prediction / mean label − 1 before the refit."""
        return self.calibration_ratio_before - 1.0

    @property
    def mean_shift_after(self) -> float:
        """Mean prediction / mean label − 1 after the refit."""
        return self.calibration_ratio_after - 1.0


@dataclass
class VariantReport:
    """What one precision does to the model, vs the fp32 graph, on the validation rows."""

    precision: str
    rows: int
    auc: float | None
    auc_change: float | None
    mean_prediction: float
    mean_label: float
    calibration_ratio: float
    mean_shift_vs_fp32: float
    ece: float
    ece_change: float
    latency_ms: dict[int, float]
    speedup: dict[int, float]
    providers: list[str]
    recalibration: Recalibration | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (batch sizes become string keys)."""
        d = asdict(self)
        d["latency_ms"] = {str(k): v for k, v in self.latency_ms.items()}
        d["speedup"] = {str(k): v for k, v in self.speedup.items()}
        if self.recalibration is not None:
            d["recalibration"]["mean_shift_before"] = self.recalibration.mean_shift_before
            d["recalibration"]["mean_shift_after"] = self.recalibration.mean_shift_after
        return d


@dataclass
class Variant:
    """A complete model (core at ``precision`` + post-processing) and its measurements."""

    precision: str
    model: onnx.ModelProto
    calibrator: dict[str, Any] | None
    report: VariantReport | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _predict(model: bytes, dense: np.ndarray, sparse: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Probabilities, logits and the session's providers."""
    session = load_onnx(model)
    out = session.run(feeds(dense, sparse, [s.name for s in session.inputs]))
    prob, logit = (out[name].reshape(-1).astype(np.float64) for name in (PROBABILITY, "logit"))
    return prob, logit, session.providers


def build_variants(
    core: onnx.ModelProto,
    *,
    downsample_rate: float,
    calibrator: Mapping[str, Any] | None,
    validation: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    precisions: Sequence[str] = PRECISIONS,
    recalibrate_int8: bool = True,
    repeats: int = 50,
) -> dict[str, Variant]:
    """Each precision of ``core`` with post-processing; measured when ``validation`` is given.

    ``validation`` is ``(dense, sparse, label)``. fp32 is always built (it is the
    baseline). Without validation data nothing is measured and INT8 keeps the run's
    calibrator (recalibration needs labels).
    """
    unknown = sorted(set(precisions) - set(PRECISIONS))
    if unknown:
        raise ValueError(f"unknown precision(s) {', '.join(unknown)} (expected {', '.join(PRECISIONS)})")
    cal = dict(calibrator) if calibrator is not None else None
    wanted = ["fp32", *[p for p in precisions if p != "fp32"]]
    variants: dict[str, Variant] = {}
    # Validation predictions of the final graphs, computed once: recalibration and measuring share them.
    predicted: dict[str, tuple[np.ndarray, list[str]]] = {}

    def prediction(precision: str) -> tuple[np.ndarray, list[str]]:
        assert validation is not None
        if precision not in predicted:
            prob, _, providers = _predict(variants[precision].model.SerializeToString(), *validation[:2])
            predicted[precision] = prob, providers
        return predicted[precision]

    for precision in wanted:
        reduced = reduce_precision(core, precision)
        variants[precision] = Variant(
            precision, attach_postprocess(reduced, downsample_rate=downsample_rate, calibrator=cal), cal
        )
        if validation is not None and precision == "int8" and recalibrate_int8:
            variants[precision], predicted[precision] = _recalibrated(
                variants[precision], reduced, downsample_rate, cal, validation, prediction("fp32")[0]
            )
    if validation is not None:
        _measure(variants, validation, repeats, prediction)
    return variants


def _recalibrated(variant: Variant, reduced: onnx.ModelProto, downsample_rate: float,
                  calibrator: dict[str, Any] | None, validation: tuple[np.ndarray, np.ndarray, np.ndarray],
                  baseline: np.ndarray) -> tuple[Variant, tuple[np.ndarray, list[str]]]:
    """The variant with a calibrator refit on its own scores; and its validation predictions."""
    dense, sparse, label = validation
    before, logit, _ = _predict(variant.model.SerializeToString(), dense, sparse)
    q = downsampling_correction(sigmoid(logit), downsample_rate)
    refit = fit_calibrator(calibrator["kind"] if calibrator else "platt", q, label)
    model = attach_postprocess(reduced, downsample_rate=downsample_rate, calibrator=refit)
    after, _, providers = _predict(model.SerializeToString(), dense, sparse)
    recal = Recalibration(refit, len(label), float(before.mean() / baseline.mean() - 1.0), calibration_ratio(label, before), calibration_ratio(label, after),
                          ece(label, before), ece(label, after))
    return Variant(variant.precision, model, refit, extra={"recalibration": recal}), (after, providers)


def _measure(variants: dict[str, Variant], validation: tuple[np.ndarray, np.ndarray, np.ndarray], repeats: int,
             prediction: Callable[[str], tuple[np.ndarray, list[str]]]) -> None:
    dense, sparse, label = validation
    label = np.asarray(label, np.float64).reshape(-1)
    base: VariantReport | None = None
    for precision, variant in variants.items():
        data = variant.model.SerializeToString()
        p, providers = prediction(precision)
        lat = latency_s(data, dense, sparse, repeats=repeats)
        a, e = auc(label, p), ece(label, p)
        base_auc = a if base is None else base.auc  # fp32 comes first: its changes are 0
        report = VariantReport(
            precision=precision,
            rows=len(label),
            auc=a,
            auc_change=None if a is None or base_auc is None else a - base_auc,
            mean_prediction=float(p.mean()),
            mean_label=float(label.mean()),
            calibration_ratio=calibration_ratio(label, p),
            mean_shift_vs_fp32=0.0 if base is None else float(p.mean()) / base.mean_prediction - 1.0,
            ece=e,
            ece_change=0.0 if base is None else e - base.ece,
            latency_ms={b: t * 1e3 for b, t in lat.items()},
            speedup={b: 1.0 if base is None else base.latency_ms[b] / (t * 1e3) for b, t in lat.items()},
            providers=providers,
            recalibration=variant.extra.get("recalibration"),
        )
        if base is None:
            base = report
        variant.report = report
