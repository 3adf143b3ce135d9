"""``rtml rollout ...``: drive serving's routing, judge A/B tests, guard canaries.

::

    rtml rollout shadow   MODEL VERSION
    rtml rollout canary   MODEL VERSION --percent P [--key user_id]
    rtml rollout ab       MODEL VERSION [--control V] [--weights 50,50] [--names control,treatment]
    rtml rollout promote  MODEL VERSION
    rtml rollout rollback MODEL [VERSION]
    rtml rollout pin      MODEL [VERSION]
    rtml rollout status   MODEL
    rtml rollout verdict  MODEL [--predictions FILE | --from-kafka] [--outcomes FILE] [--sequential] ...
    rtml rollout guard    MODEL --metrics-url URL [--max-error-rate 0.01] [--max-p99-ms 50] [--once]

Every command takes ``--repository`` (default: the config's ``learning.model_repository``).
Exit codes: 0 done (or nothing to change), 1 refused / error, 3 the guard rolled a canary back.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine.config import RtmlConfig, load_config

# Each command imports what it runs (routing, the guard's scraper, the outcome join, the
# statistics) when it runs: `rtml` registers every area's commands on every start.

ROLLED_BACK_EXIT = 3


def _root(args: argparse.Namespace, cfg: RtmlConfig | None = None) -> Path:
    if args.repository:
        return Path(args.repository)
    cfg = cfg or load_config(args.config)
    return Path(str(cfg.learning.model_repository))


def _pair(text: str, kind: type) -> tuple:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(parts):
        raise argparse.ArgumentTypeError(f"expected two comma-separated values, got {text!r}")
    try:
        return tuple(kind(p) for p in parts)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _run_action(args: argparse.Namespace) -> int:
    from engine.rollouts import routing
    from engine.rollouts.routing import RolloutError

    root = _root(args)
    common = {"reason": args.reason or "", "actor": args.actor}
    try:
        if args.action == "shadow":
            outcome = routing.start_shadow(root, args.model, args.version, **common)
        elif args.action == "canary":
            outcome = routing.start_canary(root, args.model, args.version, args.percent, key=args.key, **common)
        elif args.action == "ab":
            outcome = routing.start_ab(root, args.model, args.version, control=args.control, weights=args.weights,
                                       names=args.names, sticky_key=args.key, **common)
        elif args.action == "promote":
            outcome = routing.promote(root, args.model, args.version, **common)
        elif args.action == "pin":
            outcome = routing.pin_primary(root, args.model, args.version, **common)
        else:
            outcome = routing.rollback(root, args.model, args.version, **common)
    except RolloutError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    print(outcome.summary, flush=True)  # says 'nothing to change' when so
    return 0


def _run_status(args: argparse.Namespace) -> int:
    from engine.rollouts import routing
    from engine.rollouts.routing import RolloutError

    try:
        print(routing.status(_root(args), args.model, last=args.last).describe())
    except RolloutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _run_verdict(args: argparse.Namespace) -> int:
    from engine.events.topic_reader import read_jsonl_file, read_topic
    from engine.rollouts.outcomes import tally_for_config
    from engine.rollouts.verdict import ab_verdict

    cfg = load_config(args.config)
    lc = cfg.learning
    if args.predictions is None and not args.from_kafka:
        print("error: give --predictions FILE or --from-kafka", file=sys.stderr)
        return 1
    if args.from_kafka and not cfg.kafka.bootstrap:
        print("error: --from-kafka needs kafka.bootstrap (RTML_KAFKA_BOOTSTRAP)", file=sys.stderr)
        return 1
    try:
        if args.predictions is not None:
            predictions = read_jsonl_file(args.predictions)
        else:
            predictions = read_topic(str(cfg.kafka.bootstrap), lc.predictions_topic, args.timeout)
        outcomes: list[bytes] = []
        for path in args.outcomes or []:
            outcomes += read_jsonl_file(path)
        if args.from_kafka and not args.outcomes:
            for topic in (cfg.kafka.labels_topic, cfg.kafka.events_topic):
                outcomes += read_topic(str(cfg.kafka.bootstrap), topic, args.timeout)
    except (OSError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    tally = tally_for_config(cfg, args.model, predictions, outcomes, label_window_ms=args.label_window_ms,
                             since_ms=args.since_ms)
    verdict = ab_verdict(args.model, tally.arms, control=args.control, alpha=args.alpha, sequential=args.sequential,
                         min_samples=args.min_samples, mde=args.mde, power=args.power)
    if tally.pending:
        verdict.notes.append(f"{tally.pending:,} predictions still inside their label window are not counted yet")
    skipped = {k: v for k, v in tally.skipped.items() if v}
    if skipped:
        verdict.notes.append("left out: " + ", ".join(f"{k} {v:,}" for k, v in sorted(skipped.items())))
    if args.json:
        print(json.dumps(verdict.to_dict(), indent=2))
    else:
        print(verdict.describe())
    return 0


def _run_guard(args: argparse.Namespace) -> int:
    from engine.rollouts.guard import GUARD_ACTOR, CanaryGuard, GuardReport, GuardSettings
    from engine.rollouts.routing import RolloutError

    settings = GuardSettings(max_error_rate=args.max_error_rate, max_p99_ms=args.max_p99_ms,
                             min_requests=args.min_requests)
    try:
        guard = CanaryGuard(_root(args), args.model, args.metrics_url, settings, version=args.version,
                            actor=args.actor or GUARD_ACTOR)

        def show(report: GuardReport) -> None:
            print(report.describe(), flush=True)

        report = guard.run(args.interval_s, once=args.once, on_report=show)
    except (RolloutError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return ROLLED_BACK_EXIT if report.rolled_back else 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``rollout`` and its subcommands to the ``rtml`` parser's subparsers."""
    rollout = sub.add_parser("rollout", help="shadow / canary / A/B / promote / rollback model versions; "
                                             "A/B verdicts; canary guardrails")
    cmds = rollout.add_subparsers(dest="rollout_command", required=True)

    def add(name: str, help_text: str, version: str = "required") -> argparse.ArgumentParser:
        p = cmds.add_parser(name, help=help_text)
        p.add_argument("model")
        if version == "required":
            p.add_argument("version")
        elif version == "optional":
            p.add_argument("version", nargs="?")
        p.add_argument("--repository", help="model repository (default: learning.model_repository)")
        return p

    def edit(name: str, help_text: str, version: str = "required") -> argparse.ArgumentParser:
        p = add(name, help_text, version)
        p.add_argument("--reason", help="why (recorded in rollouts.jsonl)")
        p.add_argument("--actor", help="who (default: user@host)")
        p.set_defaults(fn=_run_action, action=name)
        return p

    edit("shadow", "score every routed request with VERSION too, off the response path")
    canary = edit("canary", "send a share of entities to VERSION")
    canary.add_argument("--percent", type=float, required=True, help="share of entities, 0-100")
    canary.add_argument("--key", help="entity_ids field hashed for the split (default user_id)")
    ab = edit("ab", "A/B test VERSION against the control")
    ab.add_argument("--control", help="control version (default: the primary serving now)")
    ab.add_argument("--weights", type=lambda t: _pair(t, float), default=(50.0, 50.0),
                    help="control,treatment weights (default 50,50)")
    ab.add_argument("--names", type=lambda t: _pair(t, str), default=("control", "treatment"),
                    help="control,treatment arm names (default control,treatment)")
    ab.add_argument("--key", help="entity_ids field the split sticks to (default user_id)")
    edit("promote", "make VERSION the primary; end its canary / A/B test / shadow")
    edit("pin", "pin the primary to VERSION (default: the version serving now), e.g. before registering "
                "a new version", "optional")
    edit("rollback", "undo the last change; with VERSION: take VERSION out of canary, A/B and shadow", "optional")

    status = add("status", "routing, versions and recent rollout history", version="none")
    status.add_argument("--last", type=int, default=10, help="history entries to show (default 10)")
    status.set_defaults(fn=_run_status)

    verdict = add("verdict", "CTR per variant from logged predictions joined with outcomes, and a verdict",
                  version="none")
    src = verdict.add_mutually_exclusive_group()
    src.add_argument("--predictions", help="JSONL of prediction records")
    src.add_argument("--from-kafka", action="store_true",
                     help="read the predictions topic (and the labels and events topics unless --outcomes)")
    verdict.add_argument("--outcomes", action="append",
                         help="JSONL of labels and/or events (repeatable); clicks need a request_id")
    verdict.add_argument("--since-ms", type=int, help="only predictions at or after this event time")
    verdict.add_argument("--control", help="the control arm's variant name (default control, else primary)")
    verdict.add_argument("--sequential", action="store_true",
                         help="always-valid sequential test (mSPRT): safe to check repeatedly")
    verdict.add_argument("--alpha", type=float, default=0.05, help="false-positive rate (default 0.05)")
    verdict.add_argument("--min-samples", type=int, default=1000,
                         help="impressions per arm before any verdict (default 1000)")
    verdict.add_argument("--mde", type=float, default=0.02,
                         help="relative lift the sample-size advice is for (default 0.02)")
    verdict.add_argument("--power", type=float, default=0.8, help="power of the sample-size advice (default 0.8)")
    verdict.add_argument("--label-window-ms", type=int, help="default: learning.label_window_ms")
    verdict.add_argument("--timeout", type=float, default=60.0, help="seconds to read each topic (default 60)")
    verdict.add_argument("--json", action="store_true", help="print JSON")
    verdict.set_defaults(fn=_run_verdict)

    guard = add("guard", "roll the canary back when its error rate or p99 latency breach a limit", version="none")
    guard.add_argument("--metrics-url", action="append", required=True,
                       help="serving's /metrics URL (repeat for every worker)")
    guard.add_argument("--max-error-rate", type=float, default=0.01, help="default 0.01")
    guard.add_argument("--max-p99-ms", type=float, default=50.0, help="default 50")
    guard.add_argument("--min-requests", type=int, default=100,
                       help="canary requests a window needs before it is judged (default 100)")
    guard.add_argument("--interval-s", type=float, default=5.0, help="seconds between scrapes (default 5)")
    guard.add_argument("--once", action="store_true", help="judge one interval and exit")
    guard.add_argument("--version", help="guard this version instead of the routing's canary")
    guard.add_argument("--actor", help="recorded with a rollback (default 'rtml rollout guard')")
    guard.set_defaults(fn=_run_guard)
