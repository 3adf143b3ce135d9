"""The score post-processing of a ranker as ONNX nodes appended to its exported logit graph.

A trained ranker scores ``logit -> p = sigmoid(logit) -> q`` (negative-downsampling
correction at rate ``w``: ``q = p / (p + (1 - p) / w)``) ``-> calibrator(q)``. The exported
*core* graph ends at ``logit`` [batch, 1]; :func:`attach_postprocess` appends the rest, so the
served model answers calibrated probabilities by itself. The nodes are named ``rtml_post/*``
and :func:`strip_postprocess` removes them again: the calibrator can be swapped (INT8
recalibration) without exporting the torch model again.

Numerics. Everything after ``logit`` is computed in float64 and cast to float32 at the end,
and in logit space where that is exact: ``logit(q) = logit + ln(w)``, and clipping ``q`` to
``[1e-7, 1 - 1e-7]`` before Platt's ``logit`` equals clipping ``logit(q)`` to
``±ln((1 - 1e-7) / 1e-7)``. Isotonic interpolation (``np.interp(q, x, y)``, clamped at the
ends) is the exact sum of clamped ramps ``y0 + Σ slope_i · (clip(q, x_i, x_i+1) − x_i)``.

>>> import numpy as np, onnxruntime as ort
>>> from onnx import TensorProto, helper
>>> core = helper.make_model(helper.make_graph(
...     [helper.make_node("Identity", ["x"], ["logit"])], "core",
...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])],
...     [helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["batch", 1])]),
...     opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
>>> iso = {"kind": "isotonic", "x": [0.2, 0.5, 0.8], "y": [0.1, 0.3, 0.9]}
>>> model = attach_postprocess(core, downsample_rate=0.5, calibrator=iso)
>>> sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
>>> [o.name for o in sess.get_outputs()]
['probability', 'logit']
>>> logit = np.array([[-3.0], [0.0], [0.7], [5.0]], np.float32)
>>> q = 1 / (1 + np.exp(-(logit.astype(np.float64) + np.log(0.5))))
>>> got = sess.run(None, {"x": logit})[0]
>>> bool(np.allclose(got, np.interp(q, iso["x"], iso["y"]), atol=1e-7))
True
>>> [n.op_type for n in strip_postprocess(model).graph.node]
['Identity']
"""

from __future__ import annotations

import copy
import math
from typing import Any, Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

PREFIX = "rtml_post/"
LOGIT = "logit"
PROBABILITY = "probability"
EPS = 1e-7  # q is clipped to [EPS, 1 - EPS] before Platt's logit (the trainer's convention)
# Minimum default-domain opset: ReduceSum takes its axes as an input from 13 on.
MIN_OPSET = 13


def check_calibrator(calibrator: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Validate a calibrator dict and return a plain copy (None stays None).

    >>> check_calibrator({"kind": "platt", "a": 1.2, "b": -0.3})
    {'kind': 'platt', 'a': 1.2, 'b': -0.3}
    >>> check_calibrator({"kind": "isotonic", "x": [0.5, 0.5], "y": [0, 1]})
    Traceback (most recent call last):
    ...
    ValueError: isotonic calibrator: x must be strictly ascending
    """
    if calibrator is None:
        return None
    kind = calibrator.get("kind")
    if kind == "platt":
        a, b = float(calibrator["a"]), float(calibrator["b"])
        if not (math.isfinite(a) and math.isfinite(b)):
            raise ValueError(f"platt calibrator: a and b must be finite, got {a}, {b}")
        return {"kind": "platt", "a": a, "b": b}
    if kind == "isotonic":
        x = np.asarray(calibrator["x"], np.float64)
        y = np.asarray(calibrator["y"], np.float64)
        if x.ndim != 1 or x.shape != y.shape or len(x) == 0:
            raise ValueError("isotonic calibrator: x and y must be non-empty lists of the same length")
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
            raise ValueError("isotonic calibrator: x and y must be finite")
        if np.any(np.diff(x) <= 0):
            raise ValueError("isotonic calibrator: x must be strictly ascending")
        return {"kind": "isotonic", "x": x.tolist(), "y": y.tolist()}
    raise ValueError(f"unknown calibrator kind {kind!r} (expected 'platt' or 'isotonic')")


def _const(name: str, value: np.ndarray | float) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float64), PREFIX + name)


def _post_nodes(
    downsample_rate: float, calibrator: dict[str, Any] | None
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes from ``logit`` (float32 [batch, 1]) to ``probability`` (float32 [batch, 1])."""
    p = PREFIX
    nodes = [helper.make_node("Cast", [LOGIT], [p + "z"], to=TensorProto.DOUBLE, name=p + "cast_in")]
    inits: list[onnx.TensorProto] = []
    z = p + "z"
    if downsample_rate != 1.0:
        # logit(q) = logit(p) + ln(w): the downsampling correction, exact in logit space.
        inits.append(_const("log_w", math.log(downsample_rate)))
        nodes.append(helper.make_node("Add", [z, p + "log_w"], [p + "zq"], name=p + "downsampling"))
        z = p + "zq"
    out = p + "out64"
    if calibrator is None:
        nodes.append(helper.make_node("Sigmoid", [z], [out], name=p + "sigmoid"))
    elif calibrator["kind"] == "platt":
        bound = math.log((1 - EPS) / EPS)
        inits += [_const("lo", -bound), _const("hi", bound), _const("a", calibrator["a"]), _const("b", calibrator["b"])]
        nodes += [
            helper.make_node("Clip", [z, p + "lo", p + "hi"], [p + "zc"], name=p + "clip"),
            helper.make_node("Mul", [p + "zc", p + "a"], [p + "az"], name=p + "platt_a"),
            helper.make_node("Add", [p + "az", p + "b"], [p + "azb"], name=p + "platt_b"),
            helper.make_node("Sigmoid", [p + "azb"], [out], name=p + "sigmoid"),
        ]
    else:
        x = np.asarray(calibrator["x"], np.float64)
        y = np.asarray(calibrator["y"], np.float64)
        nodes.append(helper.make_node("Sigmoid", [z], [p + "q"], name=p + "sigmoid"))
        if len(x) == 1:
            # np.interp with one knot is that knot's y everywhere.
            inits += [_const("zero", 0.0), _const("y0", y[0])]
            nodes += [
                helper.make_node("Mul", [p + "q", p + "zero"], [p + "q0"], name=p + "iso_zero"),
                helper.make_node("Add", [p + "q0", p + "y0"], [out], name=p + "iso_const"),
            ]
        else:
            # One ramp per segment, [1, K] against q [batch, 1]: clamp, shift, scale, sum.
            slope = np.diff(y) / np.diff(x)
            inits += [
                _const("x_lo", x[:-1].reshape(1, -1)),
                _const("x_hi", x[1:].reshape(1, -1)),
                _const("slope", slope.reshape(1, -1)),
                _const("y0", y[0]),
                numpy_helper.from_array(np.array([1], np.int64), p + "axis"),
            ]
            nodes += [
                helper.make_node("Min", [p + "q", p + "x_hi"], [p + "q_hi"], name=p + "iso_min"),
                helper.make_node("Max", [p + "q_hi", p + "x_lo"], [p + "q_in"], name=p + "iso_max"),
                helper.make_node("Sub", [p + "q_in", p + "x_lo"], [p + "run"], name=p + "iso_run"),
                helper.make_node("Mul", [p + "run", p + "slope"], [p + "rise"], name=p + "iso_rise"),
                helper.make_node("ReduceSum", [p + "rise", p + "axis"], [p + "sum"], keepdims=1, name=p + "iso_sum"),
                helper.make_node("Add", [p + "sum", p + "y0"], [out], name=p + "iso_y0"),
            ]
    nodes.append(helper.make_node("Cast", [out], [PROBABILITY], to=TensorProto.FLOAT, name=p + "cast_out"))
    return nodes, inits


def _logit_output(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    outs = [o for o in model.graph.output if o.name == LOGIT]
    if not outs:
        raise ValueError(f"the core graph has no output {LOGIT!r} (outputs: {[o.name for o in model.graph.output]})")
    return outs[0]


def _batch_dim(info: onnx.ValueInfoProto) -> str | int:
    dims = info.type.tensor_type.shape.dim
    if dims and dims[0].dim_param:
        return dims[0].dim_param
    return dims[0].dim_value if dims and dims[0].dim_value else "batch"


def attach_postprocess(
    core: onnx.ModelProto,
    *,
    downsample_rate: float = 1.0,
    calibrator: Mapping[str, Any] | None = None,
) -> onnx.ModelProto:
    """A copy of ``core`` (output ``logit`` float32 [batch, 1]) with outputs ``probability``, ``logit``.

    ``probability`` is the calibrated, downsampling-corrected score (module docstring);
    ``logit`` is the model's raw logit. Raises ``ValueError`` for a bad rate or calibrator,
    a graph already post-processed, or one without a ``logit`` output.
    """
    if not (0.0 < downsample_rate <= 1.0):
        raise ValueError(f"downsample_rate must be in (0, 1], got {downsample_rate}")
    cal = check_calibrator(calibrator)
    if any(n.name.startswith(PREFIX) for n in core.graph.node):
        raise ValueError("the graph is already post-processed: strip_postprocess() it first")
    logit = _logit_output(core)
    if logit.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise ValueError("the core graph's logit output must be float32")
    model = copy.deepcopy(core)
    opset = next((o for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        model.opset_import.append(helper.make_opsetid("", MIN_OPSET))
    elif opset.version < MIN_OPSET:
        raise ValueError(f"the core graph uses opset {opset.version}; post-processing needs >= {MIN_OPSET}")
    nodes, inits = _post_nodes(downsample_rate, cal)
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(inits)
    batch = _batch_dim(logit)
    kept = [copy.deepcopy(logit)]
    del model.graph.output[:]
    model.graph.output.extend([helper.make_tensor_value_info(PROBABILITY, TensorProto.FLOAT, [batch, 1]), *kept])
    return model


def strip_postprocess(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` without the ``rtml_post/*`` nodes: the core graph, output ``logit`` only."""
    core = copy.deepcopy(model)
    keep = [n for n in core.graph.node if not n.name.startswith(PREFIX)]
    del core.graph.node[:]
    core.graph.node.extend(keep)
    inits = [t for t in core.graph.initializer if not t.name.startswith(PREFIX)]
    del core.graph.initializer[:]
    core.graph.initializer.extend(inits)
    vinfo = [v for v in core.graph.value_info if not v.name.startswith(PREFIX) and v.name != PROBABILITY]
    del core.graph.value_info[:]
    core.graph.value_info.extend(vinfo)
    logit = copy.deepcopy(_logit_output(core))
    del core.graph.output[:]
    core.graph.output.append(logit)
    return core
