"""The features dataflow: events -> validate (DLQ) -> windowed aggregates -> Redis + Parquet.

Run it with Bytewax (``rtml up`` does this under a supervisor)::

    python -m bytewax.run "dataflows.features:flow_from_env()" -r RECOVERY_DIR -s 5 -b 0

Configuration comes from ``RTML_*`` variables / ``RTML_CONFIG`` (see engine/config.py).
The same :func:`build_features_flow` runs over files for backfill (dataflows/backfill.py).
"""

from __future__ import annotations

import os
import time
from typing import Callable, Sequence

import bytewax.operators as op
from bytewax.dataflow import Dataflow

from engine.config import RtmlConfig, load_config
from engine.events.dlq import DeadLetter
from engine.features.aggregates import ViewProgram
from engine.features.spec import FeatureView, views_from_config
from engine.metrics import PipelineMetrics
from engine.runtime.gc_tuning import tune_gc
from engine.runtime.placement import unsalted
from operators.aggregate import AggregateSettings, FlushPacer, ShardLogic, ShardOutput
from operators.route import Router
from operators.sinks import DeadLetterSink, OfflineLogSink, RedisFeatureSink
from operators.balance import MeteredSource, ReadMeter, Spreader
from operators.sources import FileBatchSource, KafkaBatchSource, RawBatch
from operators.validate import ValidatedBatch, validate_batch

LATE = "late"


def _late_letters(out: ShardOutput, metrics: PipelineMetrics | None) -> list[DeadLetter]:
    if metrics is not None:
        if out.watermark_ms is not None:
            metrics.watermark_ms.labels(out.shard).set(out.watermark_ms)
        if out.late:
            metrics.events_late.labels(out.view).inc(len(out.late))
        if out.accepted:
            metrics.events_aggregated.labels(out.view).inc(out.accepted)
    now_ms = int(time.time() * 1000)
    detail = (
        f"feature view {out.view}: event time is more than the allowed lateness behind "
        f"the watermark ({out.watermark_ms} ms)"
    )
    return [
        DeadLetter(LATE, detail, topic, partition, offset, raw, now_ms, headers)
        for topic, partition, offset, raw, headers in out.late
    ]


def _pass_on(_state: None, batch: RawBatch) -> tuple[None, list[RawBatch]]:
    # A keyed step keeps no state: it only moves each batch to its key's worker.
    return None, [batch]


def _value(keyed: tuple[str, RawBatch]) -> RawBatch:
    return keyed[1]


def _with_shard(keyed: tuple[str, ShardOutput]) -> ShardOutput:
    key, out = keyed
    out.shard = unsalted(key)  # the shard's name, without its placement salt
    return out


def build_features_flow(
    cfg: RtmlConfig,
    views: Sequence[FeatureView],
    source: KafkaBatchSource | FileBatchSource,
    *,
    metrics: PipelineMetrics | None = None,
    dlq_topic: str | None = None,
    clock: Callable[[], float] = time.time,
    run_id: str = "",
    process_index: int = 0,
) -> Dataflow:
    """Wire the features pipeline over any batch source (Kafka or files).

    ``process_index``: this process's place among ``pipeline.processes`` (one worker each).
    """
    if not cfg.kafka.bootstrap or not cfg.redis.url:
        raise ValueError("build_features_flow needs kafka.bootstrap and redis.url (start a LocalStack first)")
    p = cfg.pipeline
    programs = {v.name: ViewProgram(v) for v in views}
    router = Router(list(programs.values()), p.shards_per_view)
    settings = AggregateSettings(
        p.out_of_orderness_ms, p.allowed_lateness_ms, p.idle_advance, p.flush_interval_ms, p.source_idle_ms,
        sources=tuple(source.source_ids()), catch_up_backlog=p.catch_up_backlog,
    )

    # One per process: its shards and its Redis sink share the CPU, and so the flush budget.
    pacer = FlushPacer(p.flush_interval_ms / 1000, p.flush_share)
    flow = Dataflow("rtml_features")

    def validate(batch: RawBatch) -> ValidatedBatch:
        return validate_batch(batch, max_future_ms=p.max_future_ms, metrics=metrics)

    route = router.route
    meter: ReadMeter | None = None
    if p.processes > 1 and p.spread_checks:
        # Partitions rarely split evenly over processes (3 over 2): the process that reads
        # more hands some of its batches' checking to the others (operators/balance.py);
        # aggregation is keyed and balanced anyway.
        meter = ReadMeter(p.processes, source.source_ids())
        spreader = Spreader.for_process(meter, process_index)
        keyed_raw = op.map("spread_key", op.input("events", flow, MeteredSource(source, meter)), spreader.key)
        raw = op.map("spread_unkey", op.stateful_flat_map("spread", keyed_raw, _pass_on), _value)
        validate = meter.timed_check(validate)
        route = meter.timed_check(route, counts_events=False)
    else:
        raw = op.input("events", flow, source)
    checked = op.map("validate", raw, validate)
    invalid = op.flat_map("invalid", checked, lambda v: v.dead)
    routed = op.flat_map("route", checked, route)
    keyed = op.stateful_batch(
        "aggregate", routed,
        lambda resume: ShardLogic(programs, settings, resume, clock, pacer, meter.saw_folded if meter else None),
    )
    results = op.map("unkey", keyed, _with_shard)
    op.output("online", results, RedisFeatureSink(cfg.redis.url, views, cfg.redis.key_prefix, metrics, pacer))
    op.output(
        "offline",
        results,
        OfflineLogSink(p.offline_dir or "", views, metrics, run_id),
    )
    late = op.flat_map("late", results, lambda out: _late_letters(out, metrics))
    dead = op.merge("dead_letters", invalid, late)
    op.output("dlq", dead, DeadLetterSink(cfg.kafka.bootstrap, p.dlq_suffix, metrics, fixed_topic=dlq_topic))
    return flow


def flow_from_env() -> Dataflow:
    """Entry point for ``python -m bytewax.run``: Kafka source, config from the environment."""
    cfg = load_config()
    metrics = PipelineMetrics()
    metrics.serve_for_process(cfg.metrics.port, cfg.metrics.enabled)
    source = KafkaBatchSource.from_config(cfg, [cfg.kafka.events_topic], metrics)
    flow = build_features_flow(cfg, views_from_config(cfg), source, metrics=metrics,
                               process_index=int(os.environ.get("RTML_PROCESS_INDEX", "0")))
    tune_gc()
    return flow
