"""ONNX models for the serving tests, built with ``onnx.helper`` (nothing downloaded).

* :func:`mlp_model` - the FIELD-NOTES reference MLP 64->256->256->1 (Gemm+Relu), float32,
  dynamic batch axis ``batch``, weights drawn from ``numpy.random.default_rng(seed)``.
* :func:`two_input_model` - float32 ``dense [N, 8]`` + int64 ``ids [N, 2]`` (an embedding
  lookup, so an out-of-range id fails inside ONNX Runtime) -> ``score [N, 1]``, ``embedding [N, 8]``.
* :func:`fixed_shape_model` - no batch axis: ``x [3, 4]`` -> ``y [3, 4]``.
* :func:`failing_model` - loads, but every run fails (a Reshape to an impossible shape).
* :func:`write_model` / :func:`write_broken_model` - put files into a Triton-layout repository.

>>> import onnxruntime as ort, numpy as np
>>> session = ort.InferenceSession(mlp_model(seed=1).SerializeToString(), providers=["CPUExecutionProvider"])
>>> session.run(None, {"input": np.zeros((2, 64), np.float32)})[0].shape
(2, 1)
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 9  # onnxruntime 1.31 reads up to IR 11; 9 keeps older runtimes happy too


def _finish(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="rtml-tests")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def mlp_model(
    seed: int = 0, dims: tuple[int, ...] = (64, 256, 256, 1), form: Literal["gemm", "matmul"] = "gemm"
) -> onnx.ModelProto:
    """Dense ReLU network ``input [batch, dims[0]] -> output [batch, dims[-1]]``.

    ``form="matmul"`` writes each layer as MatMul + Add (what ``torch.onnx.export`` emits)
    instead of one Gemm; same weights, so the same function.
    """
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    prev = "input"
    layers = list(zip(dims[:-1], dims[1:]))
    for i, (fan_in, fan_out) in enumerate(layers):
        weight = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        bias = (rng.standard_normal(fan_out) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(weight, f"W{i}"), numpy_helper.from_array(bias, f"B{i}")]
        last = i == len(layers) - 1
        gemm_out = "output" if last else f"gemm{i}"
        if form == "gemm":
            nodes.append(helper.make_node("Gemm", [prev, f"W{i}", f"B{i}"], [gemm_out]))
        else:
            nodes.append(helper.make_node("MatMul", [prev, f"W{i}"], [f"matmul{i}"]))
            nodes.append(helper.make_node("Add", [f"matmul{i}", f"B{i}"], [gemm_out]))
        if not last:
            nodes.append(helper.make_node("Relu", [gemm_out], [f"relu{i}"]))
            prev = f"relu{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", dims[0]])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", dims[-1]])],
        inits,
    )
    return _finish(graph)


def two_input_model(seed: int = 0, vocabulary: int = 10) -> onnx.ModelProto:
    """``score = sum(dense + sum_k table[ids[:, k]], axis=1)``; ``embedding`` = the summed lookups."""
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((vocabulary, 8)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["looked_up"], axis=0),  # [N, 2, 8]
        helper.make_node("ReduceSum", ["looked_up", "axis1"], ["embedding"], keepdims=0),  # [N, 8]
        helper.make_node("Add", ["dense", "embedding"], ["summed"]),
        helper.make_node("ReduceSum", ["summed", "axis1"], ["score"], keepdims=1),  # [N, 1]
    ]
    graph = helper.make_graph(
        nodes,
        "two_inputs",
        [
            helper.make_tensor_value_info("dense", TensorProto.FLOAT, ["N", 8]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 2]),
        ],
        [
            helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1]),
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 8]),
        ],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.array([1], np.int64), "axis1")],
    )
    return _finish(graph)


def fixed_shape_model() -> onnx.ModelProto:
    """``y = x * 2`` on a fixed ``[3, 4]`` tensor: no batch axis."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])],
    )
    return _finish(graph)


def failing_model() -> onnx.ModelProto:
    """A valid graph that fails at run time (reshape [N, 4] to [3, 5]): warm-up must refuse it."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "failing",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        [numpy_helper.from_array(np.array([3, 5], np.int64), "shape")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model  # not checked: the declared output shape contradicts the reshape on purpose


def write_model(
    root: Path,
    name: str,
    version: int | str,
    model: onnx.ModelProto | bytes,
    config: dict[str, Any] | None = None,
) -> Path:
    """Write ``root/name/version/model.onnx`` (and ``root/name/config.yaml`` if given).

    The version directory is built under a hidden name and renamed into place, as the
    repository docs recommend, so a polling manager never sees a half-written file.
    """
    model_dir = Path(root) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (model_dir / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    staging = model_dir / f".tmp-{uuid.uuid4().hex}"
    staging.mkdir()
    data = model if isinstance(model, bytes) else model.SerializeToString()
    (staging / "model.onnx").write_bytes(data)
    final = model_dir / str(version)
    if final.exists():
        shutil.rmtree(final)
    os.rename(staging, final)
    return final / "model.onnx"


def write_broken_model(
    root: Path, name: str, version: int | str, kind: Literal["garbage", "truncated", "empty"] = "garbage"
) -> Path:
    """A version whose model.onnx is not ONNX (``garbage``), cut in half, or empty."""
    if kind == "garbage":
        data = b"this is not an onnx model\n" * 10
    elif kind == "truncated":
        full = mlp_model(seed=99).SerializeToString()
        data = full[: len(full) // 2]
    else:
        data = b""
    return write_model(root, name, version, data)
