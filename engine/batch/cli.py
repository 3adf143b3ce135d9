"""``rtml batch-predict``: precompute a model's scores for every user into Redis (docs/batch.md).

>>> import argparse
>>> parser = argparse.ArgumentParser()
>>> register(parser.add_subparsers())
>>> args = parser.parse_args(["batch-predict", "ranker", "--users", "ids.txt", "--ttl", "2d"])
>>> args.model, args.users, args.ttl_ms, args.all_users
('ranker', 'ids.txt', 172800000, False)
"""

from __future__ import annotations

import argparse
import sys

import orjson

from engine.batch import DEFAULT_BATCH_SIZE, DEFAULT_TTL_MS
from engine.config import load_config
from engine.features.spec import parse_duration_ms


def _duration(text: str) -> int:
    try:
        return parse_duration_ms(int(text) if text.isdigit() else text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def cmd_batch_predict(args: argparse.Namespace) -> int:
    """Run one batch prediction; print its summary (JSON with ``--json``)."""
    # Imported here, not at the top: every ``rtml`` command builds this parser.
    from engine.batch.predict import BatchPredictError, batch_predict, read_ids
    from serving.errors import ServingError

    cfg = load_config(getattr(args, "config", None))
    try:
        users = read_ids(args.users) if args.users else None
        result = batch_predict(
            cfg, args.model, args.version, users, args.repository, batch_size=args.batch_size, ttl_ms=args.ttl_ms
        )
    except (BatchPredictError, OSError) as exc:
        print(f"rtml batch-predict: {exc}", file=sys.stderr)
        return 2
    except ServingError as exc:  # Redis down or failing mid-run: nothing was published
        print(f"rtml batch-predict: {exc} (nothing published; the previous scores still serve)", file=sys.stderr)
        return 1
    if args.json:
        print(orjson.dumps(result.to_dict()).decode())
    else:
        print(f"{result.model} version {result.version}: {result.entities} scores in {result.seconds:.2f} s "
              f"({result.rows_per_s:,.0f} rows/s on {', '.join(result.providers) or '?'}), run {result.run_id} "
              f"published at {result.key}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``batch-predict`` to the ``rtml`` subcommands."""
    p = sub.add_parser(
        "batch-predict",
        help="precompute a model's scores for every user into Redis (served by Predict with precomputed:)",
        description="Score every entity (default: all entities of the model's feature views in Redis) with "
                    "the same feature bindings online Predict uses, and publish the scores atomically.",
    )
    p.add_argument("model", help="model name in the model repository")
    p.add_argument("--version", default=None, help="version to score (default: the highest)")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--users", metavar="FILE", default=None, help="score these ids (one per line) only")
    who.add_argument("--all-users", action="store_true",
                     help="score every entity of the model's views found in Redis (the default)")
    p.add_argument("--repository", default=None,
                   help="model repository (default: learning.model_repository of the rtml config)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help="entities per feature round trip and model call (default %(default)s)")
    p.add_argument("--ttl", dest="ttl_ms", type=_duration, default=DEFAULT_TTL_MS,
                   help="keep the published scores this long, e.g. 2d (default 7d)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(fn=cmd_batch_predict)
