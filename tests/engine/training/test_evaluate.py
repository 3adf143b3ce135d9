"""evaluate_run writes a consistent JSON report and real PNGs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.training.config import TrainConfig
from engine.training.evaluate import evaluate_run
from engine.training.metrics import auc, ece
from engine.training.synthetic import CriteoLike, InteractionWorld
from engine.training.train import train_ranker, train_two_tower

_PNG = b"\x89PNG\r\n\x1a\n"


def test_ranker_report_and_plots(tmp_path: Path) -> None:
    world = CriteoLike(world_seed=6, n_dense=3, n_fields=4, buckets=40)
    train, valid, test = world.sample(20_000, 1), world.sample(5_000, 2), world.sample(10_000, 3)
    run = train_ranker(train, valid, TrainConfig(kind="lr", epochs=1, downsample_rate=0.5, threads=1, quiet=True))
    report = evaluate_run(run, test, tmp_path / "rep", n_bins=50)
    on_disk = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert on_disk["calibrated"]["auc"] == pytest.approx(report["calibrated"]["auc"])
    p = run.predict_proba(test.dense, test.sparse)
    assert report["calibrated"]["auc"] == pytest.approx(auc(test.label, p))
    assert report["calibrated"]["ece"] == pytest.approx(ece(test.label, p, 50))
    assert report["calibrated"]["ece_bins"] == 50 and sum(report["reliability"]["count"]) == len(test)
    assert report["truth"]["auc"] > report["calibrated"]["auc"] - 0.02  # the truth is the ceiling (up to noise)
    names = sorted(Path(f).name for f in report["files"])
    assert names == ["reliability.png", "report.json", "scores.png"]
    for f in report["files"]:
        if f.endswith(".png"):
            assert Path(f).read_bytes()[:8] == _PNG and Path(f).stat().st_size > 5_000
    with pytest.raises(TypeError):
        evaluate_run(run, InteractionWorld(0, 10, 10).sample(10, 1), tmp_path / "x")


def test_two_tower_report_and_curve(tmp_path: Path) -> None:
    world = InteractionWorld(world_seed=1, n_users=100, n_items=60)
    train, valid, test = world.sample(8_000, 1), world.sample(2_000, 2), world.sample(2_000, 3)
    run = train_two_tower(train, valid, TrainConfig(kind="two_tower", epochs=1, batch_size=512, embed_dim=4,
                                                    hidden=(16,), out_dim=8, threads=1, quiet=True, eval_k=(5, 20)))
    report = evaluate_run(run, test, tmp_path)
    curve = np.array(report["recall_curve"])
    assert len(curve) == 20 and (np.diff(curve) >= -1e-12).all()
    assert curve[4] == pytest.approx(report["recall@5"]) and curve[19] == pytest.approx(report["recall@20"])
    assert 0 <= report["map@5"] <= 1 and 0 <= report["ndcg@20"] <= 1
    assert (tmp_path / "recall_at_k.png").read_bytes()[:8] == _PNG
