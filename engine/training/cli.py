"""``rtml train`` and ``rtml evaluate`` (docs/training.md).

>>> parser = argparse.ArgumentParser()
>>> register(parser.add_subparsers())
>>> a = parser.parse_args(["train", "--model", "deepfm", "--synthetic", "1000", "--out", "r", "--calibration", "none"])
>>> a.model, a.synthetic, a.calibration, a.fn.__name__
('deepfm', 1000, 'none', 'cmd_train')
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from engine.training.config import TrainConfig

# Synthetic sample seeds: training uses seed + 1 (train) and seed + 2 (validation); keep
# evaluation seeds away from those.
DEFAULT_EVAL_SEED = 1_000


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``train`` and ``evaluate`` to the ``rtml`` subcommands."""
    train = sub.add_parser("train", help="train LR / DeepFM / two-tower on a data set or synthetic data")
    train.add_argument("--model", choices=["lr", "deepfm", "two_tower"], default="deepfm")
    src = train.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="directory written by `rtml dataset build`")
    src.add_argument("--synthetic", type=int, metavar="N", help="N synthetic training rows (validation: N/4)")
    train.add_argument("--world-seed", type=int, default=0, help="synthetic world (hidden weights) seed")
    train.add_argument("--out", required=True, help="run directory to write (model.pt + run.json)")
    train.add_argument("--epochs", type=int, default=3)
    train.add_argument("--batch-size", type=int, default=4096)
    train.add_argument("--lr", type=float, default=2e-3)
    train.add_argument("--embed-dim", type=int, default=8)
    train.add_argument("--downsample", type=float, default=1.0, metavar="W",
                       help="keep training negatives with probability W (default 1: all)")
    train.add_argument("--focal-gamma", type=float, default=None, help="focal loss gamma (default: BCE)")
    train.add_argument("--calibration", choices=["platt", "isotonic", "none"], default="platt")
    train.add_argument("--sparse", default="", help="comma-separated extra columns to hash as sparse fields "
                                                    "(e.g. user_id,item_id)")
    train.add_argument("--buckets", type=int, default=1 << 17, help="hash buckets per sparse column")
    train.add_argument("--null-indicators", action="store_true", help="add <col>.is_null columns for dense features")
    train.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    train.add_argument("--threads", type=int, default=None, help="torch threads (fewer is faster on a busy box)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(fn=cmd_train)

    ev = sub.add_parser("evaluate", help="metrics of a run: report.json + PNG plots")
    ev.add_argument("--run", required=True, help="run directory written by `rtml train`")
    src = ev.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="directory written by `rtml dataset build`")
    src.add_argument("--synthetic", type=int, metavar="N", help="N fresh rows from the run's synthetic world")
    ev.add_argument("--split", default="test", choices=["train", "validation", "test"])
    ev.add_argument("--seed", type=int, default=DEFAULT_EVAL_SEED, help="synthetic sample seed")
    ev.add_argument("--out", required=True, help="report directory")
    ev.add_argument("--bins", type=int, default=100, help="equal-width ECE bins")
    ev.set_defaults(fn=cmd_evaluate)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` that ``rtml train``'s flags describe."""
    return TrainConfig(kind=args.model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                       embed_dim=args.embed_dim, downsample_rate=args.downsample, focal_gamma=args.focal_gamma,
                       calibration=args.calibration, device=args.device, threads=args.threads, seed=args.seed,
                       quiet=args.quiet, buckets=args.buckets, null_indicators=args.null_indicators)


def _synthetic_world(kind: str, world_seed: int) -> Any:
    from engine.training.synthetic import CriteoLike, InteractionWorld

    return InteractionWorld(world_seed) if kind == "two_tower" else CriteoLike(world_seed)


def cmd_train(args: argparse.Namespace) -> int:
    from engine.training.dataset import train_from_dataset
    from engine.training.train import train_ranker, train_two_tower

    cfg = config_from_args(args)
    if args.dataset:
        sparse = [c for c in args.sparse.split(",") if c]
        run = train_from_dataset(args.dataset, cfg, sparse)
    else:
        world = _synthetic_world(cfg.kind, args.world_seed)
        manifest = {"synthetic": type(world).__name__, "world_seed": args.world_seed,
                    "train_rows": args.synthetic, "train_seed": cfg.seed + 1, "validation_seed": cfg.seed + 2}
        train, valid = world.sample(args.synthetic, cfg.seed + 1), world.sample(max(args.synthetic // 4, 1), cfg.seed + 2)
        if cfg.kind == "two_tower":
            run = train_two_tower(train, valid, cfg, manifest, None, world.user_field_dims, world.item_field_dims)
        else:
            run = train_ranker(train, valid, cfg, manifest, None, world.field_dims)
    run.save(args.out)
    print(json.dumps({"run": str(Path(args.out)), "kind": run.kind, "best_epoch": run.metrics.get("best_epoch"),
                      "valid": run.metrics.get("valid")}, default=str))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from engine.training.dataset import load_split_for
    from engine.training.evaluate import evaluate_run
    from engine.training.run import TrainingRun

    run = TrainingRun.load(args.run)
    if args.dataset:
        data = load_split_for(run, args.dataset, args.split)
    else:
        manifest = run.dataset_manifest or {}
        if "synthetic" not in manifest:
            raise SystemExit("--synthetic needs a run trained on synthetic data")
        data = _synthetic_world(run.kind, int(manifest["world_seed"])).sample(args.synthetic, args.seed)
    report = evaluate_run(run, data, args.out, n_bins=args.bins)
    for path in report["files"]:
        print(path)
    return 0
