"""Prometheus metrics of the dataflows (one registry per process, no globals)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

if TYPE_CHECKING:  # engine.drift pulls in river: not for the features flow's imports
    from engine.drift.monitor import MonitorOutput, ObserveCounts

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_FRESHNESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class SourceMetrics:
    """What every dataflow reports about its input and dead letters (operators/sources.py)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.events_in = Counter("rtml_events_in", "Messages read from the input", ["topic"], registry=r)
        self.input_position = Gauge("rtml_input_position", "Next offset to read", ["topic", "partition"],
                                    registry=r)
        self.input_lag = Gauge("rtml_input_lag_messages", "End offset minus next offset", ["topic", "partition"],
                               registry=r)
        self.dlq_written = Counter("rtml_dlq_written", "Messages written to dead-letter topics", ["topic"], registry=r)

    def serve(self, port: int) -> None:
        """Expose /metrics on ``port`` (0 disables)."""
        if port:
            start_http_server(port, addr="0.0.0.0", registry=self.registry)

    def serve_for_process(self, base_port: int, enabled: bool = True) -> None:
        """Expose /metrics on ``base_port`` + this process's index (``RTML_PROCESS_INDEX``)."""
        if enabled and base_port:
            self.serve(base_port + int(os.environ.get("RTML_PROCESS_INDEX", "0")))


@dataclass
class PipelineMetrics(SourceMetrics):
    """Counters and histograms of the features dataflow.

    ``rtml_events_in_total`` counts every message read; each ends as exactly one of
    valid (then per view: aggregated or late) or invalid (by reason).
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        r = self.registry
        self.events_valid = Counter("rtml_events_valid", "Messages that passed validation", ["topic"], registry=r)
        self.events_invalid = Counter(
            "rtml_events_invalid", "Messages sent to the DLQ by validation", ["topic", "reason"], registry=r
        )
        self.events_late = Counter("rtml_events_late", "Events behind the watermark (DLQ)", ["view"], registry=r)
        self.events_aggregated = Counter("rtml_events_aggregated", "Events folded into a view", ["view"], registry=r)
        self.windows_emitted = Counter(
            "rtml_windows_emitted", "Closed windows written to the offline log", ["view"], registry=r
        )
        self.features_written = Counter(
            "rtml_features_written", "Entity hashes written to Redis", ["view"], registry=r
        )
        self.redis_write_seconds = Histogram(
            "rtml_redis_write_seconds", "Pipelined Redis write latency", ["view"], buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.redis_errors = Counter("rtml_redis_write_errors", "Failed Redis writes (retried)", ["view"], registry=r)
        self.freshness_seconds = Histogram(
            "rtml_feature_freshness_seconds", "Wall clock minus event time when a feature is written", ["view"],
            buckets=_FRESHNESS_BUCKETS, registry=r,
        )
        self.watermark_ms = Gauge("rtml_watermark_ms", "Event-time watermark per view shard", ["shard"],
                                  registry=r)


@dataclass
class LearningMetrics(SourceMetrics):
    """The learning dataflow: join outcomes, learner progress and progressive metrics."""

    def __post_init__(self) -> None:
        super().__post_init__()
        r = self.registry
        self.join_outcomes = Counter(
            "rtml_label_join", "Label-join outcomes: joined, negatives, dropped_unlabeled, duplicate, "
            "late_*, conflict_*, unmatched_* (explicit / implicit labels)", ["outcome"], registry=r,
        )
        self.join_waiting = Gauge("rtml_label_join_waiting", "Predictions waiting for a label", ["shard"], registry=r)
        self.join_watermark_ms = Gauge("rtml_label_join_watermark_ms", "Join watermark per shard", ["shard"],
                                       registry=r)
        self.examples_learned = Counter("rtml_learner_examples", "Examples learned", ["learner"], registry=r)
        self.learner_metric = Gauge(
            "rtml_learner_metric", "Progressive validation (auc is exact over the rolling window; auc_approx is "
            "River's 10-threshold approximation)", ["learner", "metric", "scope"], registry=r,
        )
        self.concept_drifts = Counter("rtml_concept_drift_alerts", "Error-rise detections", ["learner"], registry=r)
        self.snapshots = Counter("rtml_learner_snapshots", "Snapshots published", ["learner"], registry=r)
        self.bandit_rewards = Counter("rtml_bandit_rewards", "Bandit rewards applied", ["bandit"], registry=r)


@dataclass
class DriftMetrics(SourceMetrics):
    """The drift dataflow (docs/drift.md): statistics per closed window, alerts, skips.

    >>> from engine.drift.monitor import MonitorOutput, ObserveCounts
    >>> m = DriftMetrics()
    >>> m.observe("ctr", ObserveCounts(records=3, shadow=1), MonitorOutput(), watermark_ms=5)
    >>> m.records.labels("ctr", "monitored")._value.get(), m.watermark_ms.labels("ctr")._value.get()
    (3.0, 5.0)
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        r = self.registry
        # Parse results of the predictions topic: the features flow's series, same names and labels.
        self.events_valid = Counter("rtml_events_valid", "Messages that parsed", ["topic"], registry=r)
        self.events_invalid = Counter(
            "rtml_events_invalid", "Messages sent to the DLQ by the parser", ["topic", "reason"], registry=r
        )
        labels = ["model", "feature", "statistic"]
        self.statistic = Gauge("rtml_drift_statistic", "Drift statistic of the last tested window", labels,
                               registry=r)
        self.threshold = Gauge("rtml_drift_threshold", "Threshold the drift statistic is compared with", labels,
                               registry=r)
        self.alerts = Counter("rtml_drift_alerts", "Drift alerts", ["model", "kind", "severity"], registry=r)
        self.windows_tested = Counter("rtml_drift_windows_tested", "Closed windows tested, per feature",
                                      ["model", "feature"], registry=r)
        self.windows_skipped = Counter(
            "rtml_drift_windows_skipped", "Closed windows not tested (min_samples, no_reference, reference_pinned)",
            ["model", "feature", "reason"], registry=r,
        )
        self.records = Counter("rtml_drift_records", "Prediction records by outcome (monitored, shadow, late)",
                               ["model", "outcome"], registry=r)
        self.values_invalid = Counter("rtml_drift_values_invalid", "Feature values skipped (missing, non_numeric)",
                                      ["model", "feature", "reason"], registry=r)
        self.watermark_ms = Gauge("rtml_drift_watermark_ms", "Event-time watermark of a model's drift monitor",
                                  ["model"], registry=r)

    def observe(self, model: str, counts: "ObserveCounts", out: "MonitorOutput", watermark_ms: int | None) -> None:
        """Account for one step of a model's monitor."""
        for outcome, n in (("monitored", counts.records), ("shadow", counts.shadow), ("late", counts.late)):
            if n:
                self.records.labels(model, outcome).inc(n)
        for (m, feature, reason), n in counts.invalid.items():
            self.values_invalid.labels(m, feature, reason).inc(n)
        tested: set[tuple[str, str, int]] = set()
        for s in out.stats:
            self.statistic.labels(s.model, s.feature, s.statistic).set(s.value)
            self.threshold.labels(s.model, s.feature, s.statistic).set(s.threshold)
            tested.add((s.model, s.feature, s.window_start_ms))
        for m, feature, _ in tested:
            self.windows_tested.labels(m, feature).inc()
        for skip in out.skipped:
            self.windows_skipped.labels(skip.model, skip.feature, skip.reason).inc()
        for a in out.alerts:
            self.alerts.labels(a.model, a.kind, a.severity).inc()
        if watermark_ms is not None:
            self.watermark_ms.labels(model).set(watermark_ms)
