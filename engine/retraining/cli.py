"""``rtml retrain run`` (one run now) and ``rtml retrain watch`` (alerts + schedule, until Ctrl-C)."""

from __future__ import annotations

import argparse
import signal
import threading

import orjson

from engine.config import load_config


def cmd_run(args: argparse.Namespace) -> int:
    from engine.retraining.pipeline import run_retraining

    cfg = load_config(args.config)
    if args.model:
        cfg.retraining.model = args.model
    report = run_retraining(cfg, args.reason or ["manual"])
    print(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode() if args.json else
          f"{report.status}: {report.message} (run {report.run_id}, {report.examples} examples)")
    return 0 if report.status in ("registered", "skipped") else 1


def cmd_watch(args: argparse.Namespace) -> int:
    from engine.retraining.watch import RetrainWatcher

    cfg = load_config(args.config)
    watcher = RetrainWatcher(cfg, config_path=args.config)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"watching {cfg.kafka.alerts_topic} for drift alerts on {cfg.retraining.model}"
          f" (kinds {', '.join(cfg.retraining.on_alerts)}; schedule "
          f"{'every %g s' % cfg.retraining.schedule_s if cfg.retraining.schedule_s else 'off'})", flush=True)
    watcher.run_forever(stop)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``retrain run`` and ``retrain watch`` to the ``rtml`` parser."""
    retrain = sub.add_parser("retrain", help="retrain a model: fresh point-in-time set, train, evaluate, "
                                             "register, shadow (docs/retraining.md)")
    actions = retrain.add_subparsers(dest="retrain_command", required=True)
    run = actions.add_parser("run", help="one retraining run now")
    run.add_argument("--model", help="model to retrain (retraining.model)")
    run.add_argument("--reason", action="append", help="why (recorded in the registry); repeatable")
    run.add_argument("--json", action="store_true", help="print the whole report as JSON")
    run.set_defaults(fn=cmd_run)
    watch = actions.add_parser("watch", help="start runs on drift alerts (alerts topic) and on the schedule")
    watch.set_defaults(fn=cmd_watch)
