"""Backfill: the features dataflow, unchanged, over JSONL / Parquet event files.

The only difference from the live job is the source, so backfilled features equal
streamed ones (no logic skew). Wall-clock watermark advance is turned off: a
replay of past events must not see them as late because the files are old.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from bytewax.testing import run_main

from engine.config import RtmlConfig
from engine.features.spec import FeatureView
from engine.metrics import PipelineMetrics
from engine.runtime.topics import ensure_topics
from dataflows.features import build_features_flow
from operators.sources import FileBatchSource


def backfill_dlq_topic(cfg: RtmlConfig) -> str:
    """Dead letters of a backfill go to ``<events topic>.backfill<suffix>``."""
    return f"{cfg.kafka.events_topic}.backfill{cfg.pipeline.dlq_suffix}"


def run_backfill(
    cfg: RtmlConfig,
    views: Sequence[FeatureView],
    paths: Sequence[str | Path],
    metrics: PipelineMetrics | None = None,
) -> PipelineMetrics:
    """Run the features flow over files to completion in this process."""
    cfg = cfg.model_copy(deep=True)
    cfg.pipeline.idle_advance = False
    cfg.pipeline.processes = 1  # this process alone: nothing to spread
    metrics = metrics or PipelineMetrics()
    ensure_topics(cfg.kafka.bootstrap or "", [backfill_dlq_topic(cfg)], partitions=1)
    source = FileBatchSource(paths, batch_size=cfg.kafka.consume_batch_size, metrics=metrics)
    flow = build_features_flow(cfg, views, source, metrics=metrics, dlq_topic=backfill_dlq_topic(cfg), run_id="backfill")
    run_main(flow)
    return metrics
