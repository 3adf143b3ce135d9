"""The learning dataflow: predictions ⋈ labels (label window) -> online learners and bandits.

Run it with Bytewax (``rtml up`` does this under a supervisor)::

    python -m bytewax.run "dataflows.learning:flow_from_env()" -r RECOVERY_DIR -s 5 -b 0

::

    predictions ─┐
    labels ──────┼─ parse (DLQ) ─ shard by request id ─ label join ─┬─ unjoined labels ─► labels.unjoined
    events ──────┘   (clicks are implicit labels)                   ├─ bandit decisions ─► rewards (Redis)
                                                                    └─ learner update ─┬─► metrics topic + Prometheus
                                                                                       ├─► concept-drift alerts
                                                                                       └─► snapshots ─► serving

With ``learning.processes`` = N > 1 the job's processes get roles (:class:`LearningLayout`):
process 0 reads, parses and joins (every join shard); the learners are spread over processes
1..N-1, each learner alone with its model on a core. Only learner batches (features and
labels as columns) cross between them.

Configuration comes from ``RTML_*`` variables / ``RTML_CONFIG`` (``learning`` and ``drift``
sections, see docs/learning.md).
"""

from __future__ import annotations

import os
import time
import zlib
from dataclasses import dataclass
from typing import Callable, Sequence

import bytewax.operators as op
from bytewax.dataflow import Dataflow

from engine.bandits.spec import BanditSpec, load_bandit_specs
from engine.config import RtmlConfig, load_config
from engine.learning.join import JoinSettings
from engine.learning.learners import LearnerSpec, default_learners_path, load_learners
from engine.learning.snapshots import encode_key
from engine.metrics import LearningMetrics
from engine.runtime.gc_tuning import tune_gc
from engine.runtime.placement import keys_on
from operators.learn import (
    JoinOutput,
    JoinLogic,
    LearnerBatch,
    LearnerInput,
    LearnerLogic,
    LearnSettings,
    ParseSettings,
    TopicKind,
    model_repository_path,
    parse_batch,
    record_join,
    record_learn,
    shard_names,
)
from operators.sinks import AlertSink, BanditRewardSink, DeadLetterSink, KafkaJsonSink
from operators.sources import FileBatchSource, KafkaBatchSource, ReadHere


def learners_from_config(cfg: RtmlConfig) -> list[LearnerSpec]:
    """The configured learners (the packaged defaults when none are configured)."""
    return load_learners(cfg.learning.learners or default_learners_path())


def bandits_from_config(cfg: RtmlConfig) -> list[BanditSpec]:
    """The configured bandits (none when not configured)."""
    return load_bandit_specs(cfg.learning.bandits) if cfg.learning.bandits else []


def input_topics(cfg: RtmlConfig) -> dict[str, TopicKind]:
    """The topics the learning dataflow reads, and what each holds."""
    return {
        cfg.learning.predictions_topic: "prediction",
        cfg.kafka.labels_topic: "label",
        cfg.kafka.events_topic: "event",
    }


@dataclass(frozen=True)
class LearningLayout:
    """Which process of the learning job does what, as the state keys that put it there.

    One process does everything. With N > 1, every join shard's key is owned by process 0
    (which alone reads the input) and a learner's by process 1 + crc32(name) mod (N - 1):
    its place depends on its name only, so adding or removing learners moves no other.
    """

    processes: int
    join_keys: tuple[str, ...]
    learner_keys: dict[str, str]

    @classmethod
    def plan(cls, processes: int, join_shards: int, learners: Sequence[str]) -> "LearningLayout":
        shards = shard_names(join_shards)
        if processes == 1:
            return cls(1, shards, {name: name for name in learners})
        join = keys_on({shard: 0 for shard in shards}, processes)
        learn = keys_on({name: 1 + zlib.crc32(name.encode()) % (processes - 1) for name in learners}, processes)
        return cls(processes, tuple(join[s] for s in shards), learn)

    def reads_input(self, process_index: int) -> bool:
        return process_index == 0


def build_learning_flow(
    cfg: RtmlConfig,
    source: KafkaBatchSource | FileBatchSource,
    *,
    learners: Sequence[LearnerSpec],
    bandits: Sequence[BanditSpec] = (),
    topic_kinds: dict[str, TopicKind] | None = None,
    metrics: LearningMetrics | None = None,
    idle_advance: bool = True,
    snapshots: bool = True,
    clock: Callable[[], float] = time.time,
    process_index: int = 0,
) -> Dataflow:
    """Wire the learning pipeline over a batch source of predictions, labels and events.

    ``topic_kinds`` maps each source topic to what it holds (default: the configured
    topics). ``idle_advance`` lets a quiet input close label windows with the wall clock
    (live mode; off for bounded replays). ``snapshots=False`` publishes no model versions.
    ``process_index``: this process's place in a job of ``learning.processes`` processes.
    """
    if not cfg.kafka.bootstrap:
        raise ValueError("build_learning_flow needs kafka.bootstrap (start a LocalStack first)")
    if bandits and not cfg.redis.url:
        raise ValueError("bandit rewards need redis.url")
    lc, dc = cfg.learning, cfg.drift
    kinds = topic_kinds or input_topics(cfg)
    layout = LearningLayout.plan(lc.processes, lc.join_shards, [s.name for s in learners])
    parse_settings = ParseSettings(
        kinds,
        lc.join_shards,
        frozenset(lc.implicit_label_types),
        cfg.pipeline.max_future_ms,
        layout.join_keys,
    )
    join_settings = JoinSettings(
        lc.label_window_ms, lc.out_of_orderness_ms, lc.unlabeled, lc.source_idle_ms, idle_advance,
        tuple(source.source_ids()),
    )
    learn_settings = LearnSettings(
        window=lc.auc_window,
        report_every=lc.report_every_examples,
        snapshot_every_examples=lc.snapshot_every_examples,
        snapshot_every_s=lc.snapshot_every_s,
        keep_snapshots=lc.keep_snapshots,
        model_repository=model_repository_path(lc.model_repository) if snapshots else None,
        snapshot_key=encode_key(lc.snapshot_key),
        detector=dc.detector,
        on_drift=dc.on_concept_drift,
        detector_grace=dc.detector_grace,
        process=process_index,
    )
    specs = {s.name: s for s in learners}
    keys = layout.learner_keys

    def route(out: JoinOutput) -> list[tuple[str, LearnerInput]]:
        # One item per learner per join output: Bytewax's per-item cost is paid per batch.
        routed: list[tuple[str, LearnerInput]] = []
        for name, spec in specs.items():
            mine = [ex for ex in out.examples if spec.learns_from(ex.prediction.model, ex.prediction.variant)]
            if mine:
                routed.append((keys[name], (name, LearnerBatch.of(mine))))
        return routed

    flow = Dataflow("rtml_learning")
    raw = op.input("inputs", flow, ReadHere(source, layout.reads_input(process_index)))
    parsed = op.map("parse", raw, lambda b: parse_batch(b, parse_settings))
    invalid = op.flat_map("invalid", parsed, lambda p: p.dead)
    op.output("dlq", invalid, DeadLetterSink(cfg.kafka.bootstrap, cfg.pipeline.dlq_suffix, metrics))
    sharded = op.flat_map("shard", parsed, lambda p: p.items)
    joined = op.stateful_batch(
        "join", sharded, lambda resume: JoinLogic(join_settings, resume, clock)
    )
    joins = op.map("join_metrics", joined, lambda kv: record_join(kv, metrics))
    unjoined = op.flat_map("unjoined", joins, lambda out: out.unjoined)
    op.output("unjoined_labels", unjoined, DeadLetterSink(cfg.kafka.bootstrap, fixed_topic=lc.unjoined_topic,
                                                         metrics=metrics))
    if bandits:
        decisions = op.flat_map(
            "bandit_decisions", joins, lambda out: [ex for ex in out.examples if ex.prediction.arm is not None]
        )
        op.output("bandit_rewards", decisions,
                  BanditRewardSink(cfg.redis.url or "", bandits, cfg.redis.key_prefix, metrics))
    routed = op.flat_map("route", joins, route)
    learned = op.stateful_batch(
        "learn", routed, lambda resume: LearnerLogic(specs, learn_settings, resume, clock)
    )
    outputs = op.map("learn_metrics", learned, lambda kv: record_learn(kv, metrics))
    reports = op.flat_map("reports", outputs, lambda out: [(out.learner, r) for r in out.reports])
    op.output("metrics_topic", reports, KafkaJsonSink(cfg.kafka.bootstrap, lc.metrics_topic))
    alerts = op.flat_map("concept_drift", outputs, lambda out: out.alerts)
    op.output("alerts", alerts, AlertSink(cfg.kafka.bootstrap, cfg.kafka.alerts_topic, dc.retrain_hook))
    return flow


def flow_from_env(bounded: bool = False) -> Dataflow:
    """Entry point for ``python -m bytewax.run``: Kafka source, config from the environment.

    ``bounded=True`` (``"dataflows.learning:flow_from_env(bounded=True)"``) learns what the
    topics hold now and ends: a replay, e.g. to warm a learner up from history.
    """
    cfg = load_config()
    metrics = LearningMetrics()
    metrics.serve_for_process(cfg.metrics.learning_port, cfg.metrics.enabled)
    source = KafkaBatchSource.from_config(cfg, list(input_topics(cfg)), metrics, bounded=bounded)
    process_index = int(os.environ.get("RTML_PROCESS_INDEX", "0"))
    flow = build_learning_flow(
        cfg, source, learners=learners_from_config(cfg), bandits=bandits_from_config(cfg), metrics=metrics,
        idle_advance=not bounded, process_index=process_index,
    )
    if cfg.learning.processes > 1 and process_index == 0 and cfg.learning.input_niceness:
        # Reading and joining run ahead of the learners and can wait; the learners cannot.
        os.nice(cfg.learning.input_niceness)
    tune_gc()
    return flow
