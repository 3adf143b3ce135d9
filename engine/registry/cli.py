"""``rtml registry list|show|lineage`` and ``rtml export`` (a training run into the registry).

The repository root is ``learning.model_repository`` (the one ``rtml serve`` scans), or
``--repository``. Every command takes ``--json`` for machine-readable output.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.config import load_config

if TYPE_CHECKING:  # the registry (and serving's repository scan) is imported when a command runs
    from engine.registry.registry import ModelRegistry, VersionInfo


def _registry(args: argparse.Namespace) -> ModelRegistry:
    from engine.registry.registry import ModelRegistry

    root = args.repository or load_config(args.config).learning.model_repository
    return ModelRegistry(root)


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return _dt.datetime.fromtimestamp(ms / 1000, tz=_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _line(info: VersionInfo) -> str:
    s = info.summary()
    metrics = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(s["metrics"].items()))
    return (f"{info.ref:<24} {s['backend'] or '-':<6} {s['kind'] or '-':<20} {s['precision'] or '-':<5} "
            f"{_when(s['created_ms'])}  parent={s['parent'] or '-'}  {metrics}").rstrip()


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def cmd_list(args: argparse.Namespace) -> int:
    registry = _registry(args)
    names = [args.model] if args.model else registry.list_models()
    infos = [registry.get(n, v) for n in names for v in registry.versions(n)]
    if args.model and not infos:
        print(f"no versions of {args.model} in {registry.root}", file=sys.stderr)
        return 1
    if args.json:
        _print_json([i.summary() for i in infos])
    else:
        for info in infos:
            print(_line(info))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    try:
        info = _registry(args).get(args.model, args.version)
    except KeyError as exc:
        print(exc.args[0], file=sys.stderr)
        return 1
    _print_json({"model": info.name, "version": info.version, "path": str(info.path), "backend": info.backend,
                 "files": list(info.files), "metadata": info.metadata})
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    try:
        chain = _registry(args).lineage(args.model, args.version)
    except KeyError as exc:
        print(exc.args[0], file=sys.stderr)
        return 1
    if args.json:
        _print_json([i.summary() for i in chain])
    else:
        for depth, info in enumerate(chain):
            print(("  " * depth + ("└─ " if depth else "")) + _line(info))
        if chain and chain[-1].parent:
            print("  " * len(chain) + f"└─ {chain[-1].parent} (not in the registry, or a cycle)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from engine.export.parity import ParityError
    from engine.registry.export import register_run
    from engine.training.dataset import load_split_for
    from engine.training.run import TrainingRun

    registry = _registry(args)
    run = TrainingRun.load(args.run_dir)
    validation = None
    if args.dataset and run.kind != "two_tower":  # towers are checked on random rows only
        data = load_split_for(run, args.dataset, "validation")
        validation = (data.dense, data.sparse, data.label)
    variants = [v for v in args.variants.split(",") if v] if args.variants is not None else ["int8", "fp16"]
    try:
        registered = register_run(registry, run, args.name, validation, precision=args.precision,
                                  variants=variants, parent=args.parent, tolerance=args.tolerance,
                                  source_run=Path(args.run_dir).resolve())
    except ParityError as exc:
        print(f"not registered: parity check failed: {exc}", file=sys.stderr)
        return 2
    if args.json:
        _print_json({"model": registered.name, "version": registered.version, "metadata": registered.metadata})
        return 0
    for model in registered.towers.values() or [registered]:
        export = model.metadata["export"]
        print(f"registered {model.ref} ({model.metadata['precision']}, {export['exporter']} exporter, opset "
              f"{export['opset']}, parity {max(export['parity_max_abs_diff'].values()):.2g}) at {model.path}")
        for precision, variant in model.metadata["variants"].items():
            m = variant.get("measurements")
            if m:
                auc_change = "-" if m["auc_change"] is None else f"{m['auc_change']:+.4f}"
                print(f"  {precision}: AUC {auc_change}, mean shift vs fp32 {m['mean_shift_vs_fp32']:+.2%}, "
                      f"speed-up x{m['speedup']['1']:.2f} (batch 1) x{m['speedup']['64']:.2f} (batch 64)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``registry`` (list / show / lineage) and ``export`` to the ``rtml`` parser."""
    repo_help = "model repository root (default: learning.model_repository)"
    reg = sub.add_parser("registry", help="list registered model versions, their metadata and lineage")
    actions = reg.add_subparsers(dest="registry_command", required=True)
    lst = actions.add_parser("list", help="versions of every model, or of one")
    lst.add_argument("model", nargs="?")
    show = actions.add_parser("show", help="one version's metadata and files (JSON)")
    lineage = actions.add_parser("lineage", help="a version and its ancestors (parent references)")
    for p in (show, lineage):
        p.add_argument("model")
        p.add_argument("version")
    for p, fn in ((lst, cmd_list), (show, cmd_show), (lineage, cmd_lineage)):
        p.add_argument("--repository", help=repo_help)
        p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(fn=fn)

    exp = sub.add_parser("export", help="export a training run to ONNX (parity-checked) and register it")
    exp.add_argument("run_dir", help="a training run directory (run.json + model.pt)")
    exp.add_argument("--name", required=True, help="model name in the repository (two-tower: <name>_user/_item)")
    exp.add_argument("--precision", choices=["fp32", "int8", "fp16"], default="fp32", help="what model.onnx holds")
    exp.add_argument("--variants", help="comma-separated other precisions to keep and measure (default int8,fp16)")
    exp.add_argument("--dataset", help="dataset directory (rtml dataset build): its validation split joins the "
                                       "parity check and measures the variants (rankers)")
    exp.add_argument("--parent", help="the version this one descends from, MODEL/VERSION")
    exp.add_argument("--tolerance", type=float, default=1e-5, help="parity tolerance on probabilities")
    exp.add_argument("--repository", help=repo_help)
    exp.add_argument("--json", action="store_true", help="print the registered metadata as JSON")
    exp.set_defaults(fn=cmd_export)
