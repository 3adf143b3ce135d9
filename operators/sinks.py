"""Sinks: Redis (online) and Parquet (offline) features; dead letters, alerts and JSON records
(Kafka); bandit rewards (Redis)."""

from __future__ import annotations

import logging
import time
from typing import Callable, Sequence, TypeVar

import orjson
import redis
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import Producer

from engine.alerts import AlertHook, AlertPublisher, DriftAlert, load_hook
from engine.bandits.rewards import BanditRewarder
from engine.bandits.spec import BanditSpec
from engine.events.dlq import DeadLetter, dlq_topic
from engine.features.offline import OfflineLogWriter
from engine.features.online import OnlineStore
from engine.features.spec import FeatureView
from engine.learning.records import JoinedExample
from engine.metrics import LearningMetrics, PipelineMetrics, SourceMetrics
from operators.aggregate import FlushPacer, ShardOutput

log = logging.getLogger(__name__)

T = TypeVar("T")
_DELIVERY_TIMEOUT_S = 30


def _retry_redis(write: Callable[[], T], what: str, on_error: Callable[[], None] | None = None) -> T:
    """Run ``write`` until Redis takes it, backing off 0.1 s doubling to 5 s; the dataflow waits.

    Only for idempotent or all-or-nothing writes, where a retry cannot apply anything twice.
    """
    delay = 0.1
    while True:
        try:
            return write()
        except redis.RedisError as exc:
            if on_error is not None:
                on_error()
            log.warning("%s failed (%s); retrying in %.1fs", what, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _wait_delivered(flush: Callable[[float], int], what: str) -> None:
    """Nothing acknowledged may vanish: wait for Kafka to take the batch before it counts as done."""
    remaining = flush(_DELIVERY_TIMEOUT_S)
    if remaining:
        raise RuntimeError(f"{remaining} {what} not delivered to Kafka within {_DELIVERY_TIMEOUT_S} s")


class _RedisPartition(StatelessSinkPartition[ShardOutput]):
    def __init__(self, url: str, views: Sequence[FeatureView], prefix: str, metrics: PipelineMetrics | None,
                 pacer: FlushPacer | None):
        self._store = OnlineStore(redis.Redis.from_url(url), views, prefix)
        self._metrics = metrics
        self._pacer = pacer

    def write_batch(self, items: list[ShardOutput]) -> None:
        by_view: dict[str, list] = {}
        for out in items:
            if out.running:
                by_view.setdefault(out.view, []).extend(out.running)
        for view, rows in by_view.items():
            self._write(view, rows)

    def _write(self, view: str, rows: list) -> None:
        def attempt() -> tuple[float, int]:
            started = time.perf_counter()
            wall_ms = int(time.time() * 1000)
            self._store.write_running(view, rows, wall_ms)
            return started, wall_ms

        def count_error() -> None:
            if self._metrics is not None:
                self._metrics.redis_errors.labels(view).inc()

        # Values are absolute, so a retried write can never double count.
        started, wall_ms = _retry_redis(attempt, f"redis write for view {view}", count_error)
        took = time.perf_counter() - started
        if self._pacer is not None:
            self._pacer.record_write(len(rows), took)
        if self._metrics is not None:
            m = self._metrics
            m.redis_write_seconds.labels(view).observe(took)
            m.features_written.labels(view).inc(len(rows))
            hist = m.freshness_seconds.labels(view)
            for row in rows:
                if row.has_new_events:  # a write because a window slid says nothing of freshness
                    hist.observe(max(0.0, (wall_ms - row.last_event_ms) / 1000))


class RedisFeatureSink(DynamicSink[ShardOutput]):
    """Writes running feature values, one pipelined round trip per batch and view.

    With a ``pacer``, reports each write's cost to it (the shards space their flushes by it).
    """

    def __init__(self, url: str, views: Sequence[FeatureView], prefix: str, metrics: PipelineMetrics | None = None,
                 pacer: FlushPacer | None = None):
        self.url, self.views, self.prefix, self.metrics, self.pacer = url, list(views), prefix, metrics, pacer

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _RedisPartition:
        return _RedisPartition(self.url, self.views, self.prefix, self.metrics, self.pacer)


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
    def __init__(self, bootstrap: str, suffix: str, metrics: SourceMetrics | None, fixed_topic: str | None):
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
        _wait_delivered(self._producer.flush, "dead letters")

    def close(self) -> None:
        self._producer.flush(_DELIVERY_TIMEOUT_S)


class DeadLetterSink(DynamicSink[DeadLetter]):
    """Writes dead letters to ``<source topic><suffix>`` with their reason in headers.

    ``fixed_topic`` sends every dead letter to one topic (file sources have no topic).
    """

    def __init__(
        self,
        bootstrap: str,
        suffix: str = ".dlq",
        metrics: SourceMetrics | None = None,
        fixed_topic: str | None = None,
    ):
        self.bootstrap, self.suffix, self.metrics, self.fixed_topic = bootstrap, suffix, metrics, fixed_topic

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _DlqPartition:
        return _DlqPartition(self.bootstrap, self.suffix, self.metrics, self.fixed_topic)


class _AlertPartition(StatelessSinkPartition[DriftAlert]):
    def __init__(self, bootstrap: str | None, topic: str, hook: AlertHook | None):
        self._publisher = AlertPublisher(bootstrap, topic, hook)

    def write_batch(self, items: list[DriftAlert]) -> None:
        for alert in items:
            self._publisher.publish(alert)
        _wait_delivered(self._publisher.flush, "alerts")

    def close(self) -> None:
        self._publisher.flush(_DELIVERY_TIMEOUT_S)


class AlertSink(DynamicSink[DriftAlert]):
    """Publishes drift alerts to the alerts topic (JSON, keyed by model) and calls the hook.

    ``hook`` is a ``"module:function"`` spec (:func:`engine.alerts.load_hook`), imported in
    each worker; ``bootstrap=None`` only calls the hook.
    """

    def __init__(self, bootstrap: str | None, topic: str, hook: str | None = None):
        self.bootstrap, self.topic, self.hook = bootstrap, topic, hook

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _AlertPartition:
        return _AlertPartition(self.bootstrap, self.topic, load_hook(self.hook))


class _JsonPartition(StatelessSinkPartition[tuple[str | None, dict]]):
    def __init__(self, bootstrap: str, topic: str):
        self._topic = topic
        self._producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})

    def write_batch(self, items: list[tuple[str | None, dict]]) -> None:
        for key, payload in items:
            self._producer.produce(self._topic, orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), key=key)
        self._producer.poll(0)
        _wait_delivered(self._producer.flush, f"messages for {self._topic}")

    def close(self) -> None:
        self._producer.flush(_DELIVERY_TIMEOUT_S)


class KafkaJsonSink(DynamicSink[tuple[str | None, dict]]):
    """Publishes ``(key, payload)`` items as JSON to one topic, delivered before the batch ends."""

    def __init__(self, bootstrap: str, topic: str):
        self.bootstrap, self.topic = bootstrap, topic

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _JsonPartition:
        return _JsonPartition(self.bootstrap, self.topic)


class _RewardPartition(StatelessSinkPartition[JoinedExample]):
    def __init__(self, sink: "BanditRewardSink"):
        self._rewarder = BanditRewarder(redis.Redis.from_url(sink.url), sink.specs, sink.prefix)
        self._metrics = sink.metrics

    def write_batch(self, items: list[JoinedExample]) -> None:
        # A batch is applied all-or-nothing (one MULTI/EXEC), so a retry is safe.
        counts = _retry_redis(lambda: self._rewarder.apply(items), "applying bandit rewards")
        if self._metrics is not None:
            for bandit, n in counts.items():
                self._metrics.bandit_rewards.labels(bandit).inc(n)


class BanditRewardSink(DynamicSink[JoinedExample]):
    """Applies joined bandit decisions as rewards to the bandits' shared Redis state."""

    def __init__(self, url: str, specs: Sequence[BanditSpec], prefix: str, metrics: LearningMetrics | None = None):
        self.url, self.specs, self.prefix, self.metrics = url, list(specs), prefix, metrics

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _RewardPartition:
        return _RewardPartition(self)
