"""ONNX Runtime session layer: specs from the graph, providers, warm-up, batch invariance."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from serving.onnx_session import CPU, CUDA, OnnxModel, cuda_provider_works, default_providers, load_onnx
from serving.tensors import TensorSpec
from tests.serving.models import failing_model, fixed_shape_model, mlp_model


def test_specs_come_from_the_graph(mlp: OnnxModel, two_inputs: OnnxModel) -> None:
    assert mlp.inputs == [TensorSpec("input", "FP32", (-1, 64))]
    assert mlp.outputs == [TensorSpec("output", "FP32", (-1, 1))]
    assert mlp.has_batch_axis
    assert [(s.name, s.datatype, s.shape) for s in two_inputs.inputs] == [
        ("dense", "FP32", (-1, 8)),
        ("ids", "INT64", (-1, 2)),
    ]
    assert two_inputs.has_batch_axis
    fixed = load_onnx(fixed_shape_model().SerializeToString(), providers=[CPU])
    assert fixed.inputs == [TensorSpec("x", "FP32", (3, 4))]
    assert not fixed.has_batch_axis


def test_providers_on_this_machine(mlp: OnnxModel) -> None:
    providers = default_providers()
    assert providers[-1] == CPU
    assert (CUDA in providers) == cuda_provider_works()
    assert mlp.providers[-1] == CPU


def test_cuda_probe_is_quiet() -> None:
    """onnxruntime-gpu without CUDA libraries must not print its red error at start-up."""
    code = "from serving.onnx_session import cuda_provider_works as p; print(p())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() in {"True", "False"}
    if done.stdout.strip() == "False":
        assert done.stderr == ""


def test_warmup_checks_and_refuses(mlp: OnnxModel) -> None:
    mlp.warmup(64)
    broken = load_onnx(failing_model().SerializeToString(), providers=[CPU])
    with pytest.raises(Exception, match="Reshape"):
        broken.warmup(0)


@pytest.mark.parametrize("form", ["gemm", "matmul"])
@pytest.mark.parametrize("threads", [1, 2])
def test_batch_invariance_is_bitwise(threads: int, form: str) -> None:
    """The property the batcher's exactness rests on: row i of a batch == a batch-1 run of row i."""
    graph = mlp_model(seed=3, form=form)  # type: ignore[arg-type]
    model = load_onnx(graph.SerializeToString(), intra_op_threads=threads, providers=[CPU])
    x = np.random.default_rng(0).standard_normal((256, 64)).astype(np.float32)
    single = np.concatenate([model.run({"input": x[i : i + 1]})["output"] for i in range(len(x))])
    for batch in (2, 3, 7, 8, 16, 31, 32, 33, 64, 128, 256):
        batched = np.concatenate([model.run({"input": x[i : i + batch]})["output"] for i in range(0, len(x), batch)])
        assert np.array_equal(batched, single), f"batch {batch}: max diff {np.abs(batched - single).max()}"


def test_session_options() -> None:
    from serving.onnx_session import session_options

    options = session_options(3)
    assert options.intra_op_num_threads == 3
    assert options.inter_op_num_threads == 1
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
