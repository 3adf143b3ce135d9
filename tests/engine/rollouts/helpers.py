"""Shared helpers of the rollout tests: the CLI parser and a repository of real ONNX versions."""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.rollouts.cli import register
from tests.serving.models import write_model
from tests.serving.test_predict import echo_model


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv`` with a parser holding only ``--config`` and the rollout subcommands."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def run_cli(argv: list[str]) -> int:
    args = parse(argv)
    return args.fn(args)


def write_versions(root: Path, model: str, versions: tuple[int, ...], config: dict | None = None) -> None:
    """Echo models whose score is ``features . 1 + 1000 * version``: a score tells the version apart."""
    for v in versions:
        write_model(root, model, v, echo_model(1, offset=1000.0 * v), config)
