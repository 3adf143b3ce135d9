"""Training: the acceptance test on Criteo-shaped data, determinism, losses, runs on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from engine.training.calibration import downsampling_correction, sigmoid
from engine.training.config import TrainConfig
from engine.training.metrics import classification_report, recall_at_k
from engine.training.run import TrainingRun
from engine.training.synthetic import CriteoLike, InteractionWorld
from engine.training.train import downsample, focal_loss, resolve_device, train_ranker, train_two_tower


@pytest.mark.slow
def test_deepfm_beats_lr_and_calibrates_after_downsampling() -> None:
    world = CriteoLike(world_seed=0)
    train, valid, test = world.sample(600_000, seed=1), world.sample(200_000, seed=2), world.sample(500_000, seed=3)
    common = dict(downsample_rate=0.25, batch_size=4096, threads=1, quiet=True, calibration="platt")
    lr = train_ranker(train, valid, TrainConfig(kind="lr", epochs=3, lr=5e-3, **common), field_dims=world.field_dims)
    fm = train_ranker(train, valid, TrainConfig(kind="deepfm", epochs=4, lr=3e-3, **common),
                      field_dims=world.field_dims)
    assert fm.metrics["train_rows_used"] < 0.4 * len(train)  # negatives were downsampled

    lr_auc = classification_report(test.label, lr.predict_proba(test.dense, test.sparse))["auc"]
    raw = sigmoid(fm.predict_logit(test.dense, test.sparse))
    q = downsampling_correction(raw, 0.25)
    before, after = classification_report(test.label, q), classification_report(test.label, fm.predict_proba(
        test.dense, test.sparse))
    truth = classification_report(test.label, test.true_p)
    print(f"AUC lr {lr_auc:.4f} deepfm {after['auc']:.4f} truth {truth['auc']:.4f}; ratio raw "
          f"{raw.mean() / test.label.mean():.3f} corrected {before['calibration_ratio']:.4f} calibrated "
          f"{after['calibration_ratio']:.4f}; ECE corrected {before['ece']:.4f} calibrated {after['ece']:.4f} "
          f"truth {truth['ece']:.4f}")
    assert after["auc"] > lr_auc + 0.02
    assert after["auc"] == pytest.approx(before["auc"], abs=1e-9)  # Platt is monotone: AUC unchanged
    assert raw.mean() / test.label.mean() > 2.5  # downsampling biases p upward ...
    assert abs(before["calibration_ratio"] - 1) < 0.1  # ... the correction brings it back ...
    assert abs(after["calibration_ratio"] - 1) < 0.03  # ... and calibration closer still
    assert after["ece"] <= 0.003
    assert after["ece"] < before["ece"]


def test_training_is_deterministic_on_cpu_and_run_round_trips(tmp_path: Path) -> None:
    world = CriteoLike(world_seed=3, n_dense=4, n_fields=5, buckets=50)
    train, valid = world.sample(20_000, seed=1), world.sample(5_000, seed=2)
    cfg = TrainConfig(kind="deepfm", epochs=2, batch_size=1024, embed_dim=4, hidden=(16,), downsample_rate=0.5,
                      calibration="isotonic", threads=1, quiet=True, device="cpu")
    a, b = train_ranker(train, valid, cfg), train_ranker(train, valid, cfg)
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(x, y), name
    a.save(tmp_path / "run")
    back = TrainingRun.load(tmp_path / "run")
    assert (back.kind, back.downsample_rate, back.field_dims, back.params) == (a.kind, 0.5, a.field_dims, a.params)
    assert back.calibrator == a.calibrator and back.metrics["best_epoch"] == a.metrics["best_epoch"]
    np.testing.assert_array_equal(back.predict_proba(valid.dense, valid.sparse), a.predict_proba(valid.dense,
                                                                                                 valid.sparse))
    p = back.predict_proba(valid.dense, valid.sparse)
    assert ((p >= 0) & (p <= 1)).all() and p.shape == (len(valid),)


def test_predict_proba_composes_sigmoid_correction_and_calibrator() -> None:
    world = CriteoLike(world_seed=4, n_dense=2, n_fields=3, buckets=20)
    train, valid = world.sample(5_000, seed=1), world.sample(2_000, seed=2)
    run = train_ranker(train, valid, TrainConfig(kind="lr", epochs=1, downsample_rate=0.3, threads=1, quiet=True))
    logit = run.predict_logit(valid.dense, valid.sparse)
    q = sigmoid(logit) / (sigmoid(logit) + (1 - sigmoid(logit)) / 0.3)
    a, b = run.calibrator["a"], run.calibrator["b"]
    np.testing.assert_allclose(run.predict_proba(valid.dense, valid.sparse), sigmoid(a * np.log(q / (1 - q)) + b),
                               rtol=1e-9)


def test_focal_loss_down_weights_easy_examples() -> None:
    x = torch.tensor([4.0, -4.0, 0.2, -0.1])
    y = torch.tensor([1.0, 0.0, 0.0, 1.0])
    bce = nn.functional.binary_cross_entropy_with_logits(x, y)
    assert torch.isclose(focal_loss(x, y, 0.0), bce)
    assert focal_loss(x, y, 2.0) < bce
    easy = focal_loss(x[:2], y[:2], 2.0) / nn.functional.binary_cross_entropy_with_logits(x[:2], y[:2])
    hard = focal_loss(x[2:], y[2:], 2.0) / nn.functional.binary_cross_entropy_with_logits(x[2:], y[2:])
    assert easy < 0.01 < hard
    alpha = focal_loss(x, y, 0.0, alpha=0.25)
    manual = (nn.functional.binary_cross_entropy_with_logits(x, y, reduction="none") * (0.25 * y + 0.75 * (1 - y)))
    assert torch.isclose(alpha, manual.mean())


def test_focal_loss_trains_and_downsample_keeps_positives() -> None:
    world = CriteoLike(world_seed=5, n_dense=2, n_fields=4, buckets=30)
    train, valid = world.sample(10_000, seed=1), world.sample(3_000, seed=2)
    small = downsample(train, 0.1, seed=0)
    assert small.label.sum() == train.label.sum() and len(small) < 0.2 * len(train)
    run = train_ranker(train, valid, TrainConfig(kind="deepfm", epochs=1, focal_gamma=2.0, embed_dim=4, hidden=(8,),
                                                 threads=1, quiet=True))
    assert run.metrics["valid_calibrated"]["auc"] > 0.55
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.slow
def test_two_tower_beats_popularity_and_round_trips(tmp_path: Path) -> None:
    world = InteractionWorld(world_seed=0, n_users=500, n_items=300)
    train, valid, test = world.sample(60_000, seed=1), world.sample(10_000, seed=2), world.sample(10_000, seed=3)
    cfg = TrainConfig(kind="two_tower", epochs=3, batch_size=1024, lr=5e-3, embed_dim=16, hidden=(64,),
                      threads=1, quiet=True, eval_k=(10, 50))
    run = train_two_tower(train, valid, cfg, user_field_dims=world.user_field_dims,
                          item_field_dims=world.item_field_dims)
    _, _, _, relevant = test.queries()
    popular = np.argsort(-np.bincount(train.item_key, minlength=300))[:10]
    pop_recall = recall_at_k(np.tile(popular, (len(relevant), 1)), relevant, 10)
    from engine.training.retrieval import retrieval_report

    model_recall = retrieval_report(run, test, (10,))["recall@10"]
    assert model_recall > pop_recall + 0.05, (model_recall, pop_recall)
    run.save(tmp_path / "tt")
    back = TrainingRun.load(tmp_path / "tt")
    assert (back.item_n_dense, back.item_field_dims) == (run.item_n_dense, run.item_field_dims)
    assert retrieval_report(back, test, (10,))["recall@10"] == pytest.approx(model_recall)
    with pytest.raises(ValueError):
        back.predict_proba(test.user_dense, test.user_sparse)
