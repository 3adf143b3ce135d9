"""Prometheus metrics of the features pipeline (one registry per process, no globals)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_FRESHNESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class PipelineMetrics:
    """Counters and histograms of the features dataflow.

    ``rtml_events_in_total`` counts every message read; each ends as exactly one of
    valid (then per view: aggregated or late) or invalid (by reason).
    """

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.events_in = Counter("rtml_events_in", "Messages read from the input", ["topic"], registry=r)
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
        self.input_position = Gauge("rtml_input_position", "Next offset to read", ["topic", "partition"],
                                    registry=r)
        self.input_lag = Gauge("rtml_input_lag_messages", "End offset minus next offset", ["topic", "partition"],
                               registry=r)
        self.watermark_ms = Gauge("rtml_watermark_ms", "Event-time watermark per view shard", ["shard"],
                                  registry=r)
        self.dlq_written = Counter("rtml_dlq_written", "Messages written to dead-letter topics", ["topic"], registry=r)

    def serve(self, port: int) -> None:
        """Expose /metrics on ``port`` (0 disables)."""
        if port:
            start_http_server(port, addr="0.0.0.0", registry=self.registry)
