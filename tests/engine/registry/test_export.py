"""register_run and the CLI: export → gate → variants → a version serving loads and scores."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.export.parity import ParityError, sample_inputs
from engine.registry.cli import register as register_cli
from engine.registry.export import register_run
from engine.registry.registry import ModelRegistry
from serving.manager import ModelManager
from serving.onnx_session import CPU, load_onnx
from tests.engine.export.runs import make_run, make_validation
from tests.engine.export.test_ranker import ExportSensitive

PLATT = {"kind": "platt", "a": 1.1, "b": -0.3}


def served_scores(root: Path, name: str, version: str, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
    """Scores from serving's ModelManager, the way `rtml serve` loads the repository."""
    async def main() -> np.ndarray:
        manager = ModelManager(root, poll_interval_s=0, providers=[CPU])
        await manager.start()
        try:
            served = manager.get(name, version)
            outputs = await served.infer({"dense": dense, "sparse": sparse})
            assert [o.name for o in served.outputs] == ["probability", "logit"]  # the score comes first
            return np.asarray(outputs["probability"])
        finally:
            await manager.stop()

    return asyncio.run(main())


def test_registered_ranker_is_served_with_the_runs_scores(tmp_path: Path) -> None:
    run = make_run("deepfm", 3, downsample_rate=0.3, calibrator=PLATT, seed=4)
    validation = make_validation(run, rows=1500, seed=2)
    registry = ModelRegistry(tmp_path)
    first = register_run(registry, run, "ctr", validation, repeats=3, source_run="/runs/1")
    second = register_run(registry, run, "ctr", validation, precision="int8", variants=("fp16",),
                          parent=first.ref, repeats=3, extra_metadata={"note": "int8 rollout"})
    assert (first.version, second.version) == ("1", "2")

    meta = first.metadata
    assert meta["kind"] == "deepfm" and meta["precision"] == "fp32" and meta["parent"] is None
    assert meta["dataset_manifest"] == run.dataset_manifest and meta["metrics"] == run.metrics
    assert meta["calibrator"] == PLATT and meta["source_run"] == "/runs/1" and meta["validation_rows"] == 1500
    assert meta["export"]["parity_max_abs_diff"]["probability"] <= 1e-5
    assert sorted(meta["variants"]) == ["fp16", "fp32", "int8"]
    assert meta["variants"]["int8"]["file"] == "variants/int8.onnx"
    assert meta["variants"]["int8"]["measurements"]["recalibration"]["mean_shift_after"] == pytest.approx(0, abs=2e-3)
    assert set(registry.get("ctr", "1").files) == {"metadata.json", "model.onnx", "variants/fp16.onnx",
                                                   "variants/int8.onnx"}

    # Version 2 serves INT8 (recalibrated); fp32 is recorded as the baseline, not kept as a file.
    meta2 = second.metadata
    assert meta2["precision"] == "int8" and meta2["parent"] == "ctr/1" and meta2["note"] == "int8 rollout"
    assert meta2["variants"]["int8"]["file"] == "model.onnx" and meta2["variants"]["fp32"]["file"] is None
    assert meta2["calibrator"] == meta2["variants"]["int8"]["calibrator"] != PLATT
    assert [v.ref for v in registry.lineage("ctr", "2")] == ["ctr/2", "ctr/1"]

    dense, sparse = sample_inputs(3, run.field_dims, rows=50, seed=11)
    expected = run.predict_proba(dense, sparse)
    scores = served_scores(tmp_path, "ctr", "1", dense, sparse)
    np.testing.assert_allclose(scores[:, 0], expected, rtol=0, atol=1e-5)
    int8 = load_onnx(tmp_path / "ctr" / "2" / "model.onnx", providers=[CPU]).run({"dense": dense, "sparse": sparse})
    assert np.abs(int8["probability"][:, 0] - expected).max() < 0.05  # close, not equal: quantised


def test_a_parity_failure_registers_nothing(tmp_path: Path) -> None:
    run = make_run("lr", 3, [])
    run.model = ExportSensitive(offset=0.5)
    with pytest.raises(ParityError):
        register_run(ModelRegistry(tmp_path), run, "ctr")
    assert list(tmp_path.iterdir()) == []


def test_two_tower_registers_both_towers(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    run = make_run("two_tower", 3, [7, 30])
    first = register_run(registry, run, "retrieval")
    second = register_run(registry, run, "retrieval", parent=first.ref)
    assert registry.list_models() == ["retrieval_item", "retrieval_user"]
    assert (first.ref, first.towers["item"].ref) == ("retrieval_user/1", "retrieval_item/1")
    assert first.metadata["pair"] == "retrieval_item/1" and first.metadata["tower"] == "user"
    assert second.towers["item"].metadata["parent"] == "retrieval_item/1"
    assert second.metadata["parent"] == "retrieval_user/1"
    item = load_onnx(tmp_path / "retrieval_item" / "1" / "model.onnx", providers=[CPU])
    dense, sparse = sample_inputs(2, [11, 4], rows=5, seed=1)
    np.testing.assert_allclose(item.run({"dense": dense, "sparse": sparse})["embedding"],
                               run.encode_items(dense, sparse), atol=1e-5)
    with pytest.raises(ValueError, match="fp32 only"):
        register_run(registry, run, "retrieval", precision="int8")


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.fn(args))


def test_cli_export_list_show_lineage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run("lr", 2, [50, 50], calibrator=PLATT, seed=3)
    run.features = {"dense": ["user.clicks_1h", "item.price"], "sparse": ["user.country", "item.category"],
                    "buckets": 50, "null_indicators": False, "label": "label"}
    run.save(tmp_path / "run")
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({
        "user.clicks_1h": rng.poisson(3, 400).astype(float), "item.price": rng.gamma(2, 10, 400),
        "user.country": rng.choice(["fr", "de", "us", None], 400), "item.category": rng.integers(0, 30, 400),
        "label": rng.integers(0, 2, 400),
    })
    (tmp_path / "dataset").mkdir()
    frame.to_parquet(tmp_path / "dataset" / "validation.parquet")
    (tmp_path / "dataset" / "manifest.json").write_text(json.dumps({"label_column": "label"}))
    repo = str(tmp_path / "models")

    assert cli("export", str(tmp_path / "run"), "--name", "ctr", "--dataset", str(tmp_path / "dataset"),
               "--variants", "int8", "--repository", repo) == 0
    out = capsys.readouterr().out
    assert out.startswith("registered ctr/1 (fp32,") and "int8: AUC" in out
    assert cli("export", str(tmp_path / "run"), "--name", "ctr", "--parent", "ctr/1", "--variants", "",
               "--repository", repo, "--json") == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported["version"] == "2" and exported["metadata"]["variants"].keys() == {"fp32"}

    assert cli("registry", "list", "--repository", repo) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["ctr/1", "ctr/2"] and "parent=ctr/1" in lines[1]
    assert cli("registry", "show", "ctr", "1", "--repository", repo) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["metadata"]["validation_rows"] == 400 and "variants/int8.onnx" in shown["files"]
    assert shown["metadata"]["source_run"] == str((tmp_path / "run").resolve())
    assert cli("registry", "lineage", "ctr", "2", "--repository", repo, "--json") == 0
    assert [e["version"] for e in json.loads(capsys.readouterr().out)] == ["2", "1"]
    assert cli("registry", "show", "ctr", "9", "--repository", repo) == 1
    assert cli("registry", "list", "nope", "--repository", repo) == 1
