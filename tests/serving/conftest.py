"""Fixtures for the serving tests: real ONNX Runtime sessions on models the tests build."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.onnx_session import CPU, OnnxModel, load_onnx
from tests.serving.models import mlp_model, two_input_model


@pytest.fixture(scope="module")
def mlp() -> OnnxModel:
    """The reference MLP (seed 0) on the CPU provider, one intra-op thread."""
    return load_onnx(mlp_model(seed=0).SerializeToString(), intra_op_threads=1, providers=[CPU])


@pytest.fixture(scope="module")
def two_inputs() -> OnnxModel:
    return load_onnx(two_input_model().SerializeToString(), providers=[CPU])


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    """An empty model repository directory."""
    root = tmp_path / "models"
    root.mkdir()
    return root
