"""Idempotent sinks of the features dataflow: Redis (online), Parquet (offline), DLQ (Kafka)."""

from __future__ import annotations

import logging
import time
from typing import Sequence

import redis
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import Producer

from engine.events.dlq import DeadLetter, dlq_topic
from engine.features.offline import OfflineLogWriter
from engine.features.online import OnlineStore
from engine.features.spec import FeatureView
from engine.metrics import PipelineMetrics
from operators.aggregate import ShardOutput

log = logging.getLogger(__name__)


class _RedisPartition(StatelessSinkPartition[ShardOutput]):
    def __init__(self, url: str, views: Sequence[FeatureView], prefix: str, metrics: PipelineMetrics | None):
        self._store = OnlineStore(redis.Redis.from_url(url), views, prefix)
        self._metrics = metrics

    def write_batch(self, items: list[ShardOutput]) -> None:
        by_view: dict[str, list] = {}
        for out in items:
            if out.running:
                by_view.setdefault(out.view, []).extend(out.running)
        for view, rows in by_view.items():
            self._write(view, rows)

    def _write(self, view: str, rows: list) -> None:
        delay = 0.1
        while True:  # values are absolute, so a retried write can never double count
            started = time.perf_counter()
            try:
                wall_ms = int(time.time() * 1000)
                self._store.write_running(view, rows, wall_ms)
                break
            except redis.RedisError as exc:
                if self._metrics is not None:
                    self._metrics.redis_errors.labels(view).inc()
                log.warning("redis write for view %s failed (%s); retrying in %.1fs", view, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        if self._metrics is not None:
            m = self._metrics
            m.redis_write_seconds.labels(view).observe(time.perf_counter() - started)
            m.features_written.labels(view).inc(len(rows))
            hist = m.freshness_seconds.labels(view)
            for row in rows:
                if row.has_new_events:  # a write because a window slid says nothing of freshness
                    hist.observe(max(0.0, (wall_ms - row.last_event_ms) / 1000))


class RedisFeatureSink(DynamicSink[ShardOutput]):
    """Writes running feature values, one pipelined round trip per batch and view."""

    def __init__(self, url: str, views: Sequence[FeatureView], prefix: str, metrics: PipelineMetrics | None = None):
        self.url, self.views, self.prefix, self.metrics = url, list(views), prefix, metrics

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _RedisPartition:
        return _RedisPartition(self.url, self.views, self.prefix, self.metrics)


class _OfflinePartition(StatelessSinkPartition[ShardOutput]):
    def __init__(self, sink: "OfflineLogSink", writer_id: str):
        self._writers = {v.name: OfflineLogWriter(sink.root, v, writer_id) for v in sink.views}
        self._metrics = sink.metrics

    def write_batch(self, items: list[ShardOutput]) -> None:
        by_view: dict[str, list] = {}
        for out in items:
            if out.closed:
                by_view.setdefault(out.view, []).extend(out.closed)
        for view, rows in by_view.items():
            self._writers[view].write(rows)
            if self._metrics is not None:
                self._metrics.windows_emitted.labels(view).inc(len(rows))


class OfflineLogSink(DynamicSink[ShardOutput]):
    """Appends closed windows to the hourly-partitioned Parquet log, durably per batch."""

    def __init__(
        self,
        root: str,
        views: Sequence[FeatureView],
        metrics: PipelineMetrics | None = None,
        run_id: str = "",
    ):
        self.root, self.views = root, list(views)
        self.metrics = metrics
        self.run_id = run_id or str(int(time.time() * 1000))

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _OfflinePartition:
        return _OfflinePartition(self, f"{self.run_id}-w{worker_index}")


class _DlqPartition(StatelessSinkPartition[DeadLetter]):
    def __init__(self, bootstrap: str, suffix: str, metrics: PipelineMetrics | None, fixed_topic: str | None):
        self._fixed_topic = fixed_topic
        self._producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": False})
        self._suffix = suffix
        self._metrics = metrics
        self._failed: list[DeadLetter] = []

    def write_batch(self, items: list[DeadLetter]) -> None:
        for dl in items:
            value, headers = dl.to_kafka()
            topic = self._fixed_topic or dlq_topic(dl.source_topic, self._suffix)
            self._producer.produce(topic, value=value, headers=headers)
            if self._metrics is not None:
                self._metrics.dlq_written.labels(topic).inc()
        self._producer.poll(0)
        # Dead letters must not vanish: wait for delivery before the batch counts as done.
        remaining = self._producer.flush(30)
        if remaining:
            raise RuntimeError(f"{remaining} dead letters not delivered to Kafka within 30 s")

    def close(self) -> None:
        self._producer.flush(30)


class DeadLetterSink(DynamicSink[DeadLetter]):
    """Writes dead letters to ``<source topic><suffix>`` with their reason in headers.

    ``fixed_topic`` sends every dead letter to one topic (file sources have no topic).
    """

    def __init__(
        self,
        bootstrap: str,
        suffix: str = ".dlq",
        metrics: PipelineMetrics | None = None,
        fixed_topic: str | None = None,
    ):
        self.bootstrap, self.suffix, self.metrics, self.fixed_topic = bootstrap, suffix, metrics, fixed_topic

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _DlqPartition:
        return _DlqPartition(self.bootstrap, self.suffix, self.metrics, self.fixed_topic)
