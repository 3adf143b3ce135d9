"""INT8 / FP16 variants: real quantisation, measurements, INT8 recalibration."""

from __future__ import annotations

import numpy as np
import pytest

from engine.export.postprocess import PREFIX
from engine.export.ranker import export_ranker
from engine.export.variants import build_variants, convert_fp16, quantize_int8
from engine.training.calibration import apply_calibrator, downsampling_correction, sigmoid
from serving.onnx_session import CPU, load_onnx
from tests.engine.export.runs import make_run, make_validation


@pytest.fixture(scope="module")
def exported_deepfm():  # type: ignore[no-untyped-def]
    # A stale calibrator (fit for another model) and downsampling: fp32 is off on average
    # too, so "recalibration fixes the mean" is not a no-op.
    run = make_run("deepfm", 3, downsample_rate=0.2, calibrator={"kind": "platt", "a": 0.8, "b": 0.3}, seed=2)
    validation = make_validation(run, rows=3000, seed=5)
    return run, validation, export_ranker(run)  # the default exporter (dynamo here)


def test_precisions_really_change_the_graph(exported_deepfm) -> None:  # type: ignore[no-untyped-def]
    _, _, exported = exported_deepfm
    int8_ops = {n.op_type for n in quantize_int8(exported.core).graph.node}
    assert int8_ops & {"MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul"}
    fp16 = convert_fp16(exported.core)
    assert any(t.data_type == 10 for t in fp16.graph.initializer)  # FLOAT16 weights
    assert fp16.graph.input[0].type.tensor_type.elem_type == 1  # float32 inputs kept


def test_variants_are_measured_and_int8_is_recalibrated(exported_deepfm) -> None:  # type: ignore[no-untyped-def]
    run, validation, exported = exported_deepfm
    dense, sparse, label = validation
    variants = build_variants(exported.core, downsample_rate=run.downsample_rate, calibrator=run.calibrator,
                              validation=validation, repeats=3)
    assert list(variants) == ["fp32", "int8", "fp16"]
    fp32 = variants["fp32"].report
    assert fp32 is not None and fp32.auc_change == 0.0 and fp32.speedup == {1: 1.0, 64: 1.0}
    np.testing.assert_allclose(fp32.mean_prediction, run.predict_proba(dense, sparse).mean(), rtol=1e-5)
    for precision in ("int8", "fp16"):
        report = variants[precision].report
        assert report is not None and report.rows == len(label)
        assert abs(report.auc_change) < 0.02  # measured, small on this model
        assert set(report.latency_ms) == {1, 64} and all(v > 0 for v in report.latency_ms.values())
        assert report.providers[-1] == CPU
        assert report.to_dict()["speedup"].keys() == {"1", "64"}
    # fp16 keeps the run's calibrator; int8 gets one refit on its own corrected scores.
    assert variants["fp16"].calibrator == run.calibrator
    recal = variants["int8"].report.recalibration
    assert recal is not None and variants["int8"].calibrator == recal.calibrator != run.calibrator
    assert abs(recal.mean_shift_after) < abs(recal.mean_shift_before)
    assert abs(recal.mean_shift_after) < 2e-3  # Platt's fitted intercept matches the mean

    # The registered INT8 graph applies exactly the refit calibrator to its own logits.
    session = load_onnx(variants["int8"].model.SerializeToString(), providers=[CPU])
    out = session.run({"dense": dense, "sparse": sparse})
    q = downsampling_correction(sigmoid(out["logit"][:, 0].astype(np.float64)), run.downsample_rate)
    np.testing.assert_allclose(out["probability"][:, 0], apply_calibrator(recal.calibrator, q), atol=1e-6)
    assert sum(n.name.startswith(PREFIX) for n in variants["int8"].model.graph.node) > 0


def test_without_validation_nothing_is_measured(exported_deepfm) -> None:  # type: ignore[no-untyped-def]
    run, _, exported = exported_deepfm
    variants = build_variants(exported.core, downsample_rate=run.downsample_rate, calibrator=run.calibrator,
                              validation=None, precisions=["int8"])
    assert list(variants) == ["fp32", "int8"]
    assert variants["int8"].report is None and variants["int8"].calibrator == run.calibrator
    with pytest.raises(ValueError, match="unknown precision"):
        build_variants(exported.core, downsample_rate=1.0, calibrator=None, validation=None, precisions=["bf16"])
