"""The ``rtml`` command line.

Subcommands: ``up`` (stack + supervised dataflows), ``stack`` (embedded Kafka and
Redis only), ``dataflow`` (one dataflow process, for containers), ``serve`` (gRPC
model serving), ``produce`` (simulator -> Kafka), ``backfill`` (files -> features),
``features`` (read online features), ``demo`` (the one-minute tour), ``config``
(print the effective configuration); and the offline loop's ``dataset``, ``train``, ``evaluate``,
``export``, ``registry``, ``batch-predict``, ``rollout`` and ``retrain``, registered by their own modules.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Sequence

import orjson
import yaml

from engine.config import RtmlConfig, load_config

log = logging.getLogger("rtml")


def _config(args: argparse.Namespace) -> RtmlConfig:
    return load_config(args.config)


def _wait_for_ctrl_c() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass


def cmd_config(args: argparse.Namespace) -> int:
    print(yaml.safe_dump(_config(args).model_dump(), sort_keys=False), end="")
    return 0


def cmd_stack(args: argparse.Namespace) -> int:
    from engine.runtime.stack import LocalStack

    with LocalStack(_config(args)) as stack:
        stack.ensure_topics()
        print(f"RTML_KAFKA_BOOTSTRAP={stack.bootstrap}")
        print(f"RTML_REDIS_URL={stack.redis_url}", flush=True)
        _wait_for_ctrl_c()
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from engine.alerts import AlertPublisher
    from engine.runtime.jobs import JOBS, job_specs
    from engine.runtime.progress import pipeline_progress
    from engine.runtime.stack import LocalStack
    from engine.runtime.supervisor import Alert, Supervisor
    from prometheus_client import start_http_server

    cfg = _config(args)
    if args.processes:
        cfg.pipeline.processes = args.processes
    if args.learning_processes:
        cfg.learning.processes = args.learning_processes
    if args.no_recovery:
        cfg.pipeline.recovery = False
    with LocalStack(cfg) as stack:
        stack.ensure_topics()
        cfg = stack.config
        if stack.kafka is not None and cfg.pipeline.recovery:
            # The embedded broker keeps data in memory only: offsets saved by an earlier
            # run point into topics that no longer exist, so start from clean state.
            for directory in (cfg.pipeline.recovery_dir, cfg.learning.recovery_dir):
                shutil.rmtree(Path(directory or ""), ignore_errors=True)
        print(f"kafka {cfg.kafka.bootstrap}  redis {cfg.redis.url}  metrics :{cfg.metrics.port}+", flush=True)

        publisher = AlertPublisher(cfg.kafka.bootstrap, cfg.kafka.alerts_topic)

        def on_alert(alert: Alert) -> None:
            publisher.publish(asdict(alert))
            publisher.flush(5)

        jobs = [job for job in JOBS if job not in (args.without or [])]
        specs = [spec for job in jobs for spec in job_specs(cfg, job)]
        supervisor = Supervisor(
            specs, cfg, log_dir=Path(cfg.data_dir) / "logs", echo=True,
            progress=pipeline_progress(cfg), on_alert=on_alert,
        )
        if cfg.metrics.enabled and cfg.metrics.supervisor_port:
            start_http_server(cfg.metrics.supervisor_port, registry=supervisor.registry)
        supervisor.run_forever()  # until Ctrl-C / SIGTERM; stops the children
    return 0


def cmd_dataflow(args: argparse.Namespace) -> int:
    """Run one process of a dataflow job in the foreground (containers, manual scale-out)."""
    from engine.runtime.jobs import job_specs

    cfg = _config(args)
    if not cfg.kafka.bootstrap or not cfg.redis.url:
        print("rtml dataflow needs RTML_KAFKA_BOOTSTRAP and RTML_REDIS_URL (`rtml up` starts everything)",
              file=sys.stderr)
        return 2
    if (cfg.pipeline.processes if args.job == "features" else cfg.learning.processes if args.job == "learning" else 1) != 1:
        # Processes of one job find each other on fixed addresses, which only `rtml up` sets up.
        print("rtml dataflow runs one process; use `rtml up --processes N` (features) or "
              "`--learning-processes N` for a multi-process job", file=sys.stderr)
        return 2
    [spec] = job_specs(cfg, args.job)
    os.execvpe(spec.argv[0], spec.argv, {**os.environ, **(spec.env or {})})
    return 0  # not reached


def cmd_skew(args: argparse.Namespace) -> int:
    """Compare features logged at serving time with the offline log, per feature."""
    from engine.features.skew import skew_report

    cfg = _config(args)
    if args.predictions is None and not cfg.kafka.bootstrap:
        print("rtml skew needs --predictions FILE or RTML_KAFKA_BOOTSTRAP (the predictions topic)", file=sys.stderr)
        return 2
    report = skew_report(
        cfg, args.predictions, model=args.model, rel_tol=args.rel_tol, abs_tol=args.abs_tol,
        include_shadow=args.include_shadow, since_ms=args.since_ms, until_ms=args.until_ms,
    )
    print(orjson.dumps(report.to_dict()).decode() if args.json else report.to_text())
    overall = report.overall.mismatch_rate
    if args.fail_above is not None and overall is not None and overall > args.fail_above:
        return 1
    return 0


def cmd_produce(args: argparse.Namespace) -> int:
    from engine.events.producer import Topics, produce
    from engine.events.simulator import Simulator, SimulatorConfig

    cfg = _config(args)
    if not cfg.kafka.bootstrap:
        print("rtml produce needs a broker: set RTML_KAFKA_BOOTSTRAP (see `rtml stack`)", file=sys.stderr)
        return 2
    sim = Simulator(SimulatorConfig(
        n_users=args.users, n_items=args.items, rate=args.rate, drift_at_s=args.drift_at,
        invalid_fraction=args.invalid_fraction, seed=args.seed,
    ))
    stats = produce(cfg.kafka.bootstrap, sim, Topics.from_config(cfg.kafka), duration_s=args.duration,
                    max_events=args.max_events, wire=args.wire, realtime=not args.fast)
    print(orjson.dumps({"produced": stats.produced, "delivered": stats.delivered, "failed": stats.failed,
                        "malformed": stats.malformed, "seconds": round(stats.elapsed_s, 2)}).decode())
    return 0 if stats.failed == 0 else 1


def cmd_backfill(args: argparse.Namespace) -> int:
    from dataflows.backfill import run_backfill
    from engine.features.spec import views_from_config
    from engine.runtime.stack import LocalStack

    cfg = _config(args)
    if not cfg.redis.url:
        print("rtml backfill writes to an existing Redis: set RTML_REDIS_URL (an embedded one would be "
              "thrown away on exit)", file=sys.stderr)
        return 2
    with LocalStack(cfg) as stack:
        metrics = run_backfill(stack.config, views_from_config(stack.config), args.files)
    total = {m.name: sum(s.value for s in m.samples if s.name.endswith("_total")) for m in metrics.registry.collect()}
    print(orjson.dumps({k: v for k, v in total.items() if v}).decode())
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    import redis

    from engine.features.spec import views_from_config
    from engine.features.online import OnlineStore

    cfg = _config(args)
    if not cfg.redis.url:
        print("rtml features needs RTML_REDIS_URL", file=sys.stderr)
        return 2
    store = OnlineStore(redis.Redis.from_url(cfg.redis.url), views_from_config(cfg), cfg.redis.key_prefix)
    rows = store.get(args.view, args.entities, now_ms=args.now_ms)
    for row in rows:
        print(orjson.dumps({"entity": row.entity, "found": row.found, "age_ms": row.age_ms, **row.values}).decode())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if args.tour:
        from engine.demo import run_demo

        return run_demo(_config(args), duration_s=args.duration or 60.0, rate=args.rate)
    from engine.demo.main import DemoPlan, run_main_demo

    plan = DemoPlan() if args.duration is None else DemoPlan(live_s=args.duration, drift_at_s=args.duration * 0.45)
    return run_main_demo(_config(args), plan, out_dir=args.out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rtml", description="Streaming-first real-time ML engine")
    parser.add_argument("--config", help="YAML config file (also RTML_CONFIG); RTML_<SECTION>_<FIELD> override it")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("config", help="print the effective configuration").set_defaults(fn=cmd_config)
    sub.add_parser("stack", help="run the embedded Kafka + Redis until Ctrl-C").set_defaults(fn=cmd_stack)

    up = sub.add_parser("up", help="run the stack and the dataflows under a supervisor until Ctrl-C")
    up.add_argument("--processes", type=int, help="features dataflow processes (pipeline.processes)")
    up.add_argument("--learning-processes", type=int,
                    help="learning dataflow processes (learning.processes): input and join in one, learners in the others")
    up.add_argument("--no-recovery", action="store_true", help="run without Bytewax recovery")
    up.add_argument("--without", action="append", choices=["learning", "drift"],
                    help="do not run this dataflow (repeatable; the features dataflow always runs)")
    up.set_defaults(fn=cmd_up)

    flow = sub.add_parser("dataflow", help="run one process of a dataflow (recovery as configured) "
                                           "in the foreground, without a supervisor: for containers")
    flow.add_argument("--job", choices=["features", "learning", "drift"], default="features")
    flow.set_defaults(fn=cmd_dataflow)

    skew = sub.add_parser("skew", help="training-serving skew: served features vs the offline log, per feature")
    skew.add_argument("--predictions", help="JSONL of prediction records (default: the predictions topic, "
                                            "which needs RTML_KAFKA_BOOTSTRAP)")
    skew.add_argument("--model", help="only this model's predictions")
    skew.add_argument("--since-ms", type=int, help="only predictions at or after this time")
    skew.add_argument("--until-ms", type=int, help="only predictions before this time")
    skew.add_argument("--rel-tol", type=float, default=1e-6, help="relative tolerance of a match (default 1e-6)")
    skew.add_argument("--abs-tol", type=float, default=1e-9, help="absolute tolerance of a match (default 1e-9)")
    skew.add_argument("--include-shadow", action="store_true", help="also compare shadow predictions")
    skew.add_argument("--json", action="store_true", help="print JSON instead of a table")
    skew.add_argument("--fail-above", type=float, help="exit 1 when the overall mismatch rate is above this")
    skew.set_defaults(fn=cmd_skew)

    # `rtml serve ...` is dispatched to serving.server before parsing; listed here for --help.
    sub.add_parser("serve", help="serve ONNX models over gRPC (KServe v2 + rtml.v1); see `rtml serve -h`")

    prod = sub.add_parser("produce", help="simulate users and items and produce events to Kafka")
    prod.add_argument("--rate", type=float, default=1000.0, help="impressions per second (events ~2x)")
    prod.add_argument("--duration", type=float, default=None, help="seconds of event time (default: forever)")
    prod.add_argument("--max-events", type=int, default=None)
    prod.add_argument("--users", type=int, default=1000)
    prod.add_argument("--items", type=int, default=500)
    prod.add_argument("--drift-at", type=float, default=None, help="seconds after start when tastes shift")
    prod.add_argument("--invalid-fraction", type=float, default=0.0)
    prod.add_argument("--wire", choices=["json", "proto"], default="json")
    prod.add_argument("--fast", action="store_true", help="send as fast as possible instead of in real time")
    prod.add_argument("--seed", type=int, default=0)
    prod.set_defaults(fn=cmd_produce)

    bf = sub.add_parser("backfill", help="compute features from JSONL / Parquet event files")
    bf.add_argument("files", nargs="+")
    bf.set_defaults(fn=cmd_backfill)

    feats = sub.add_parser("features", help="read online features of entities")
    feats.add_argument("view")
    feats.add_argument("entities", nargs="+")
    feats.add_argument("--now-ms", type=int, default=None, help="clock for the TTL check (default: now)")
    feats.set_defaults(fn=cmd_features)

    demo = sub.add_parser("demo", help="the main job end to end: stack, dataflows, training, serving, live "
                                       "traffic with drift, load, and a report (about 3 minutes)")
    demo.add_argument("--duration", type=float, default=None,
                      help="seconds of live traffic (default 80; with --tour: 60)")
    demo.add_argument("--out", default=None, help="where the run and its report go (default <data_dir>/demo-<time>)")
    demo.add_argument("--tour", action="store_true", help="only the features tour: simulated traffic through the "
                                                         "features dataflow, and a summary")
    # 1000/s leaves the 2-core reference machine room for the broker, Redis and the dataflow.
    demo.add_argument("--rate", type=float, default=1000.0, help="--tour: impressions per second")
    demo.set_defaults(fn=cmd_demo)

    # The offline loop: each area registers its own subcommands.
    from engine.batch.cli import register as register_batch
    from engine.datasets.cli import register as register_dataset
    from engine.registry.cli import register as register_registry
    from engine.retraining.cli import register as register_retrain
    from engine.rollouts.cli import register as register_rollout
    from engine.training.cli import register as register_training

    for register in (register_dataset, register_training, register_registry, register_batch, register_rollout,
                     register_retrain):
        register(sub)
    return parser


def _subcommand_index(argv: Sequence[str]) -> int | None:
    """Position of the subcommand, skipping the global options before it."""
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--config":
            i += 2
        elif token.startswith("-"):
            i += 1
        else:
            return i
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    at = _subcommand_index(argv)
    if at is not None and argv[at] == "serve":  # the server owns its flags (-h included)
        head = build_parser().parse_args(argv[:at] + ["config"])
        if head.config:
            os.environ["RTML_CONFIG"] = head.config  # serve reads the rtml config for its store defaults
        from serving.server import serve_main

        return serve_main(argv[at + 1 :])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.fn(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
