"""Exporting runs: parity with torch, dynamic batch, missing inputs, towers, the gate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from engine.export.parity import ParityError, sample_inputs
from engine.export.ranker import export_ranker, export_towers
from engine.export.torch_export import feeds
from serving.onnx_session import CPU, load_onnx
from tests.engine.export.runs import make_run, make_validation

PLATT = {"kind": "platt", "a": 0.9, "b": -0.2}
ISOTONIC = {"kind": "isotonic", "x": [0.01, 0.1, 0.3, 0.5, 0.9], "y": [0.0, 0.05, 0.2, 0.6, 0.95]}


@pytest.mark.parametrize(("kind", "n_dense", "field_dims", "w", "calibrator"), [
    ("lr", 3, [7, 30, 5, 100], 1.0, None),
    ("lr", 4, [], 0.25, PLATT),          # no sparse input
    ("deepfm", 3, [7, 30, 5, 100], 0.1, ISOTONIC),
    ("deepfm", 0, [7, 30], 1.0, PLATT),  # no dense input
])
def test_export_matches_predict_proba(tmp_path: Path, kind: str, n_dense: int, field_dims: list[int], w: float,
                                      calibrator: dict | None) -> None:
    run = make_run(kind, n_dense, field_dims, downsample_rate=w, calibrator=calibrator)
    validation = make_validation(run, rows=300)
    exported = export_ranker(run, tmp_path / "model.onnx", validation=validation[:2])
    assert exported.parity["probability"] <= 1e-5 and exported.parity_rows == 257 + 300
    info = exported.info()
    expected_inputs = [n for n, k in (("dense", n_dense), ("sparse", len(field_dims))) if k]
    assert [i["name"] for i in info["inputs"]] == expected_inputs
    assert [(o["name"], o["dtype"], o["shape"]) for o in info["outputs"]] == [
        ("probability", "float32", ["batch", 1]), ("logit", "float32", ["batch", 1])]
    assert info["exporter"] in ("dynamo", "torchscript") and info["opset"] >= 13

    # The written file, loaded as serving loads it, at several batch sizes (the dynamic axis).
    model = load_onnx(tmp_path / "model.onnx", providers=[CPU])
    assert model.has_batch_axis
    dense, sparse = sample_inputs(n_dense, field_dims, rows=130, seed=9)
    expected = run.predict_proba(dense, sparse)
    for rows in (1, 2, 64, 130):
        got = model.run(feeds(dense[:rows], sparse[:rows], [s.name for s in model.inputs]))
        np.testing.assert_allclose(got["probability"][:, 0], expected[:rows], rtol=0, atol=1e-5)
        np.testing.assert_allclose(got["logit"][:, 0], run.predict_logit(dense[:rows], sparse[:rows]),
                                   rtol=1e-5, atol=1e-4)


def test_torchscript_exporter_gives_the_same_scores() -> None:
    run = make_run("deepfm", calibrator=PLATT, downsample_rate=0.5)
    exported = export_ranker(run, exporter="torchscript")
    assert exported.info()["exporter"] == "torchscript" and exported.info()["opset"] == 17
    assert exported.parity["probability"] <= 1e-5


class ExportSensitive(torch.nn.Module):
    """A model that answers differently while being exported (e.g. a traced Python branch)."""

    def __init__(self, offset: float) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 1)
        self.offset = offset

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        out = self.linear(dense).squeeze(-1)
        return out + self.offset if torch.onnx.is_in_onnx_export() else out


def test_parity_gate_refuses_a_graph_that_differs(tmp_path: Path) -> None:
    run = make_run("lr", 3, [])
    run.model = ExportSensitive(offset=1e-3)
    with pytest.raises(ParityError, match="'probability' differs from the reference by"):
        export_ranker(run, tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()  # nothing written
    # The same model within a looser tolerance passes: the gate is the tolerance, not luck.
    assert export_ranker(run, tolerance=1e-2).parity["probability"] > 1e-6


def test_two_tower_exports_both_towers() -> None:
    run = make_run("two_tower", 3, [7, 30])
    towers = export_towers(run)
    assert sorted(towers) == ["item", "user"]
    for side, encode, n_dense, dims in (("user", run.encode_users, 3, [7, 30]), ("item", run.encode_items, 2, [11, 4])):
        exported = towers[side]
        assert [o.name for o in exported.model.graph.output] == ["embedding"]
        onnx.checker.check_model(exported.model)
        session = load_onnx(exported.model.SerializeToString(), providers=[CPU])
        dense, sparse = sample_inputs(n_dense, dims, rows=33, seed=4)
        got = session.run(feeds(dense, sparse, [s.name for s in session.inputs]))["embedding"]
        assert got.shape == (33, 6)
        np.testing.assert_allclose(got, encode(dense, sparse), rtol=0, atol=1e-5)


def test_export_refuses_the_wrong_kind() -> None:
    with pytest.raises(ValueError, match="exports rankers"):
        export_ranker(make_run("two_tower", 3, [7]))
    with pytest.raises(ValueError, match="two_tower runs"):
        export_towers(make_run("lr", 3, [7]))
