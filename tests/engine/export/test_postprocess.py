"""Post-processing nodes equal the trainer's numpy reference (engine.training.calibration)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from engine.export.postprocess import attach_postprocess, check_calibrator, strip_postprocess
from engine.training.calibration import apply_calibrator, downsampling_correction, sigmoid

# Logits from the far tails (past the 1e-7 clip), through the bulk, to exact zero.
LOGITS = np.concatenate([
    np.array([-40.0, -17.0, -16.2, -16.0, -5.0, -1e-3, 0.0, 1e-3, 5.0, 16.0, 16.2, 17.0, 40.0]),
    np.random.default_rng(3).normal(0, 3, 500),
]).astype(np.float32)


def identity_core(opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["logit"])], "core",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["batch", 1])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def run(model: onnx.ModelProto, logits: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"x": logits.reshape(-1, 1)})))


def reference(logits: np.ndarray, w: float, calibrator: dict[str, Any] | None) -> np.ndarray:
    q = downsampling_correction(sigmoid(logits.astype(np.float64)), w)
    return apply_calibrator(calibrator, q)


@pytest.mark.parametrize("w", [1.0, 0.1, 0.013])
@pytest.mark.parametrize("calibrator", [
    None,
    {"kind": "platt", "a": 1.3, "b": -0.4},
    {"kind": "platt", "a": -0.7, "b": 2.5},
    {"kind": "isotonic", "x": [0.01, 0.05, 0.2, 0.21, 0.6, 0.9], "y": [0.0, 0.02, 0.1, 0.4, 0.45, 0.97]},
])
def test_graph_equals_numpy_reference(w: float, calibrator: dict[str, Any] | None) -> None:
    out = run(attach_postprocess(identity_core(), downsample_rate=w, calibrator=calibrator), LOGITS)
    expected = reference(LOGITS, w, calibrator)
    assert out["probability"].shape == (len(LOGITS), 1) and out["probability"].dtype == np.float32
    np.testing.assert_allclose(out["probability"][:, 0], expected, rtol=0, atol=2e-7)
    np.testing.assert_array_equal(out["logit"][:, 0], LOGITS)


def test_isotonic_on_knots_and_outside_the_range() -> None:
    # Knots at exactly the q of some inputs (w = 1: q = sigmoid(logit)), others fall
    # between, below and above them; steep segments stress the ramp sum.
    logits = np.array([-6.0, -2.0, -1.0, -0.5, 0.0, 0.25, 0.5, 3.0, 8.0], np.float32)
    q = sigmoid(logits.astype(np.float64))
    calibrator = {"kind": "isotonic", "x": [q[1], q[2], q[4], q[4] + 1e-9, q[6]], "y": [0.05, 0.1, 0.3, 0.8, 0.9]}
    out = run(attach_postprocess(identity_core(), calibrator=calibrator), logits)["probability"][:, 0]
    expected = np.interp(q, calibrator["x"], calibrator["y"])
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-7)
    assert out[0] == np.float32(0.05) and out[-1] == np.float32(0.9)  # clamped at both ends
    assert out[2] == pytest.approx(0.1, abs=1e-7) and out[6] == pytest.approx(0.9, abs=1e-7)


def test_single_knot_isotonic_is_constant() -> None:
    out = run(attach_postprocess(identity_core(), calibrator={"kind": "isotonic", "x": [0.3], "y": [0.07]}), LOGITS)
    np.testing.assert_allclose(out["probability"][:, 0], 0.07, rtol=0, atol=1e-8)


def test_calibrator_swaps_without_re_export() -> None:
    platt = {"kind": "platt", "a": 0.8, "b": 0.1}
    first = attach_postprocess(identity_core(), downsample_rate=0.5, calibrator=platt)
    core = strip_postprocess(first)
    assert [o.name for o in core.graph.output] == ["logit"]
    assert not [i for i in core.graph.initializer if i.name.startswith("rtml_post/")]
    onnx.checker.check_model(core)
    iso = {"kind": "isotonic", "x": [0.1, 0.5], "y": [0.2, 0.6]}
    second = attach_postprocess(core, downsample_rate=0.5, calibrator=iso)
    np.testing.assert_allclose(run(second, LOGITS)["probability"][:, 0], reference(LOGITS, 0.5, iso), atol=2e-7)
    with pytest.raises(ValueError, match="already post-processed"):
        attach_postprocess(first)


@pytest.mark.parametrize(("calibrator", "fragment"), [
    ({"kind": "isotonic", "x": [0.2, 0.1], "y": [0, 1]}, "strictly ascending"),
    ({"kind": "isotonic", "x": [0.2, 0.3], "y": [0]}, "same length"),
    ({"kind": "platt", "a": float("nan"), "b": 0}, "finite"),
    ({"kind": "beta"}, "unknown calibrator kind"),
])
def test_bad_calibrators_are_refused(calibrator: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        check_calibrator(calibrator)


def test_bad_graphs_and_rates_are_refused() -> None:
    with pytest.raises(ValueError, match="downsample_rate"):
        attach_postprocess(identity_core(), downsample_rate=0.0)
    with pytest.raises(ValueError, match="opset 11"):
        attach_postprocess(identity_core(opset=11))
    renamed = identity_core()
    renamed.graph.output[0].name = "score"
    with pytest.raises(ValueError, match="no output 'logit'"):
        attach_postprocess(renamed)
