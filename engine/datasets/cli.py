"""``rtml dataset build``: a point-in-time correct training set from the offline store.

>>> parser = argparse.ArgumentParser()
>>> register(parser.add_subparsers())
>>> args = parser.parse_args(["dataset", "build", "--examples", "ex.parquet", "--out", "ds", "--split", "0.7,0.2,0.1"])
>>> args.split, args.fn.__name__
((0.7, 0.2, 0.1), 'cmd_dataset_build')
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from engine.config import load_config
from engine.features.spec import load_views, parse_duration_ms, views_from_config

if TYPE_CHECKING:
    from engine.datasets.build import DatasetManifest


def _fractions(text: str) -> tuple[float, float, float]:
    parts = [float(p) for p in text.split(",")]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError("--split takes three fractions: train,validation,test")
    return parts[0], parts[1], parts[2]


def _cuts(text: str) -> tuple[int, int]:
    parts = [int(p) for p in text.split(",")]
    if len(parts) != 2:
        raise argparse.ArgumentTypeError("--split-at takes two epoch-ms times: T1,T2")
    return parts[0], parts[1]


def _ttl(text: str) -> tuple[str, int]:
    view, sep, duration = text.partition("=")
    if not sep or not view:
        raise argparse.ArgumentTypeError(f"--ttl expects VIEW=DURATION (e.g. user=6h), got {text!r}")
    try:
        return view, parse_duration_ms(duration)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``dataset build`` to the ``rtml`` subcommands."""
    dataset = sub.add_parser("dataset", help="point-in-time training sets (docs/datasets.md)")
    dsub = dataset.add_subparsers(dest="dataset_command", required=True)
    build = dsub.add_parser("build", help="join labelled examples with offline features, split by time, "
                                          "write Parquet + manifest.json")
    build.add_argument("--examples", required=True,
                       help="examples file (Parquet/JSONL/CSV: entity keys, event_time_ms, label); "
                            "with --from-events, a file of interaction events")
    build.add_argument("--from-events", action="store_true",
                       help="make examples from events: impressions, labelled 1 if clicked within --label-window")
    build.add_argument("--label-window", default=None,
                       help="with --from-events: label window (e.g. 30s; default learning.label_window_ms)")
    build.add_argument("--out", required=True, help="output directory")
    build.add_argument("--features", default=None,
                       help="comma-separated feature names like user.clicks_1h (default: all)")
    build.add_argument("--offline-dir", default=None, help="offline store (default pipeline.offline_dir)")
    build.add_argument("--feature-specs", default=None,
                       help="feature views YAML (default pipeline.feature_specs or the packaged views)")
    group = build.add_mutually_exclusive_group()
    group.add_argument("--split", type=_fractions, default=(0.8, 0.1, 0.1),
                       help="train,validation,test fractions by event time (default 0.8,0.1,0.1)")
    group.add_argument("--split-at", type=_cuts, default=None,
                       help="explicit cut times T1,T2 (ms): train < T1 <= validation < T2 <= test")
    build.add_argument("--ttl", type=_ttl, action="append", default=[], metavar="VIEW=DURATION",
                       help="override a view's TTL (repeatable), e.g. --ttl user=6h")
    build.add_argument("--json", action="store_true", help="print the manifest as JSON")
    build.set_defaults(fn=cmd_dataset_build)


def summary(manifest: "DatasetManifest") -> str:
    """A few human lines about a built data set."""
    lines = [f"{manifest.rows} examples, {len(manifest.features)} features, "
             f"time {manifest.min_time_ms}..{manifest.max_time_ms}"]
    for s in manifest.splits.values():
        rate = "n/a" if s.positive_rate is None else f"{s.positive_rate:.4f}"
        lines.append(f"  {s.name:<10} {s.rows:>9} rows  time {s.min_time_ms}..{s.max_time_ms}  positive rate {rate}")
    worst = sorted(manifest.features, key=lambda f: -(f.null_rate or 0.0))[:3]
    if worst:
        lines.append("  most nulls: " + ", ".join(f"{f.name} {f.null_rate:.3f}" for f in worst if f.null_rate is not None))
    return "\n".join(lines)


def cmd_dataset_build(args: argparse.Namespace) -> int:
    """Run ``rtml dataset build``; 0 on success, 2 on bad input."""
    # Imported here, not at the top: every ``rtml`` command builds this parser.
    from engine.datasets.build import build_from_offline_store
    from engine.datasets.examples import examples_from_events, read_table
    from engine.datasets.splits import SplitSpec

    cfg = load_config(getattr(args, "config", None))
    views = load_views(args.feature_specs) if args.feature_specs else views_from_config(cfg)
    features = [f.strip() for f in args.features.split(",") if f.strip()] if args.features else None
    split = SplitSpec(cuts=args.split_at) if args.split_at else SplitSpec(fractions=args.split)
    examples: Any = args.examples
    source: dict[str, Any] = {}
    try:
        if args.from_events:
            window = parse_duration_ms(args.label_window) if args.label_window else cfg.learning.label_window_ms
            positives = cfg.learning.implicit_label_types
            examples = examples_from_events(read_table(args.examples), window, positives)
            # Made in memory: record the events file and how they were labelled.
            source = {"examples": str(args.examples),
                      "examples_from_events": {"label_window_ms": window, "positive_types": list(positives)}}
        manifest = build_from_offline_store(cfg, examples, args.out, features, split, ttl_ms=dict(args.ttl),
                                            views=views, offline_dir=args.offline_dir, source=source)
    except (ValueError, FileNotFoundError) as exc:
        print(f"rtml dataset build: {exc}")
        return 2
    print(json.dumps(manifest.to_dict(), indent=2) if args.json else f"wrote {args.out}\n{summary(manifest)}")
    return 0
