"""``rtml train`` / ``rtml evaluate`` through their argparse entry points, on synthetic data and on a
data-set directory shaped like ``rtml dataset build``'s output."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.training.cli import register
from engine.training.config import TrainConfig
from engine.training.dataset import train_from_dataset
from engine.training.run import TrainingRun


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.fn(args)


def _dataset(path: Path, rows: int = 6_000) -> Path:
    """A small data set in the documented layout: features with a known effect on the label."""
    rng = np.random.default_rng(0)
    users = rng.integers(0, 200, rows)
    items = rng.integers(0, 50, rows)
    clicks = rng.poisson(2, rows).astype(float)
    clicks[rng.random(rows) < 0.1] = np.nan
    category = np.array(["a", "b", "c"])[items % 3]
    logit = -2 + 0.4 * np.nan_to_num(clicks) + np.where(category == "a", 1.0, 0.0) + 0.02 * (items - 25)
    label = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    df = pd.DataFrame({"user_id": [f"u{u}" for u in users], "item_id": [f"i{i}" for i in items],
                       "event_time_ms": np.arange(rows) * 1000, "label": label, "user.clicks_1h": clicks,
                       "item.category": category, "item.price": (items % 7).astype(float)})
    path.mkdir()
    cuts = {"train": df.iloc[: rows * 6 // 10], "validation": df.iloc[rows * 6 // 10: rows * 8 // 10],
            "test": df.iloc[rows * 8 // 10:]}
    for name, part in cuts.items():
        part.to_parquet(path / f"{name}.parquet")
    manifest = {"entity_columns": ["user_id", "item_id"], "label_column": "label", "time_column": "event_time_ms",
                "features": [{"name": "user.clicks_1h", "table": "user", "dtype": "float"},
                             {"name": "item.category", "table": "item", "dtype": "str"},
                             {"name": "item.price", "table": "item", "dtype": "float"}],
                "splits": {n: {"file": f"{n}.parquet", "rows": len(p)} for n, p in cuts.items()}}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def test_train_and_evaluate_synthetic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run("train", "--model", "deepfm", "--synthetic", "20000", "--out", str(tmp_path / "run"), "--epochs", "2",
                "--batch-size", "1024", "--lr", "0.01", "--downsample", "0.5", "--calibration", "isotonic", "--threads", "1", "--quiet") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["kind"] == "deepfm" and summary["valid"]["auc"] > 0.55
    run = TrainingRun.load(tmp_path / "run")
    assert run.calibrator["kind"] == "isotonic" and run.dataset_manifest["synthetic"] == "CriteoLike"
    assert _run("evaluate", "--run", str(tmp_path / "run"), "--synthetic", "20000", "--out", str(tmp_path / "rep")) == 0
    printed = capsys.readouterr().out.split()
    assert sorted(Path(p).name for p in printed) == ["reliability.png", "report.json", "scores.png"]
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["calibrated"]["n"] == 20_000


def test_train_and_evaluate_on_a_dataset_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ds = _dataset(tmp_path / "ds")
    assert _run("train", "--model", "lr", "--dataset", str(ds), "--out", str(tmp_path / "run"), "--epochs", "3",
                "--batch-size", "256", "--lr", "0.05", "--sparse", "item_id", "--buckets", "1000", "--null-indicators", "--quiet") == 0
    run = TrainingRun.load(tmp_path / "run")
    assert run.features["dense"] == ["user.clicks_1h", "item.price"]
    assert run.features["sparse"] == ["item.category", "item_id"] and run.field_dims == [1000, 1000]
    assert run.n_dense == 4  # two columns + two is-null indicators
    assert run.dataset_manifest["label_column"] == "label"
    capsys.readouterr()
    assert _run("evaluate", "--run", str(tmp_path / "run"), "--dataset", str(ds), "--out", str(tmp_path / "rep")) == 0
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["calibrated"]["n"] == 1_200 and report["calibrated"]["auc"] > 0.65


def test_two_tower_from_dataset(tmp_path: Path) -> None:
    ds = _dataset(tmp_path / "ds", rows=8_000)
    cfg = TrainConfig(kind="two_tower", epochs=1, batch_size=256, buckets=512, embed_dim=4, hidden=(8,), out_dim=8,
                      threads=1, quiet=True, eval_k=(5,))
    run = train_from_dataset(ds, cfg)
    assert run.features["user"]["sparse"] == ["user_id"] and run.features["item"]["dense"] == ["item.price"]
    assert run.field_dims == [512] and run.item_field_dims == [512, 512]
    assert 0 <= run.metrics["valid"]["recall@5"] <= 1 and run.metrics["valid"]["items"] <= 50
