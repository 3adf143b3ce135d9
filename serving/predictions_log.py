"""Publish every prediction to Kafka (the ``predictions`` topic) for label joins and skew checks.

One JSON message (orjson) per scored instance, keyed by the instance's ``user_id`` (else its
first entity id, else the request id) so one user's predictions stay in order in one
partition::

    {"request_id": "3f2a...", "model": "ranker", "version": "2", "variant": "canary",
     "entity_ids": {"user_id": "u42", "item_id": "i7"},
     "features": {"user.clicks_1h": 3.0, "request.price": 9.5},
     "feature_defaults": ["user_item.clicks_1h"],
     "scores": [0.73], "score": 0.73, "event_time_ms": 1767225661000,
     "feature_age_ms": 1200.0, "cached": false}

``features`` holds the values the model actually received for bound sources (after defaults
and request overrides) and, for inputs taken from the request as is, the raw
``instance.features`` / ``instance.tensors`` values by name. ``feature_defaults`` lists the
sources that were filled with a default. ``feature_age_ms`` is null when no online value was
used. Shadow predictions are logged with ``variant: "shadow"`` and the shadow version, under
the same request id as the primary one; unrouted predictions with ``variant: "primary"``.

Delivery: :meth:`PredictionLogger.log` hands the message to librdkafka's local queue and
returns at once (a C call, no I/O, never blocks the event loop); a background thread polls
the producer to serve delivery reports.

**This is the one place where rtml drops data on purpose.** When the local queue is full
(Kafka down or slower than the prediction rate for long enough to fill
``queue_max_messages``) or a message cannot be delivered within ``message_timeout_ms``, the
message is dropped and counted in ``rtml_predictions_log_dropped_total{reason}`` instead of
blocking or failing the prediction: serving must never wait on, or fail because of, its
audit log, and an unbounded queue would only turn a Kafka outage into an out-of-memory
crash. Alert on that counter if label joins must be complete.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Mapping

import orjson
from confluent_kafka import KafkaError, KafkaException, Producer
from prometheus_client import CollectorRegistry, Counter, Gauge

log = logging.getLogger(__name__)

DEFAULT_TOPIC = "predictions"


def prediction_record(
    request_id: str,
    model: str,
    version: str,
    variant: str,
    entity_ids: dict[str, str],
    scores: list[float],
    event_time_ms: int,
    *,
    features: dict[str, Any] | None = None,
    feature_defaults: list[str] | None = None,
    feature_age_ms: int | None = None,
    cached: bool = False,
    precomputed: bool = False,
) -> dict[str, Any]:
    """One scored instance as the ``predictions`` topic holds it (Predict and Recommend alike)."""
    return {
        "request_id": request_id,
        "model": model,
        "version": version,
        "variant": variant,
        "entity_ids": entity_ids,
        "features": features or {},
        "feature_defaults": feature_defaults or [],
        "scores": scores,
        "score": scores[0] if scores else None,
        "event_time_ms": event_time_ms,
        "feature_age_ms": feature_age_ms,
        "cached": cached,
        "precomputed": precomputed,
    }


class PredictionLogMetrics:
    """``rtml_predictions_log_*`` series on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.sent = Counter(
            "rtml_predictions_log_sent", "Predictions delivered to the predictions topic.", registry=registry
        )
        self.dropped = Counter(
            "rtml_predictions_log_dropped",
            "Predictions not published: queue_full (local producer queue full), delivery_failed "
            "(Kafka did not take it in time), error (refused by the client, e.g. too large), "
            "shutdown (still queued when the server stopped).",
            ["reason"],
            registry=registry,
        )
        self.queued = Gauge(
            "rtml_predictions_log_queue_length",
            "Messages waiting in the producer's local queue.",
            registry=registry,
        )


class PredictionLogger:
    """Publishes prediction records to ``topic`` through a confluent_kafka Producer.

    ``queue_max_messages`` bounds the local queue (see the module docstring for what happens
    when it is full). Metrics go to ``metrics``, else to new series on ``registry`` (a
    registry takes one set). ``create_topic``: create the topic with ``partitions`` if it is
    missing, from a background thread, so neither :meth:`start` nor :meth:`close` waits on it. ``producer_config``
    entries override the defaults.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str = DEFAULT_TOPIC,
        *,
        registry: CollectorRegistry | None = None,
        metrics: PredictionLogMetrics | None = None,
        queue_max_messages: int = 100_000,
        message_timeout_ms: int = 60_000,
        create_topic: bool = True,
        partitions: int = 3,
        producer_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.metrics = metrics if metrics is not None else PredictionLogMetrics(registry)
        self._create_topic = create_topic
        self._partitions = partitions
        config: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,  # batch under load; the log is not latency-critical
            "queue.buffering.max.messages": queue_max_messages,
            "message.timeout.ms": message_timeout_ms,
            "enable.idempotence": False,
            "logger": log,  # librdkafka's own log lines into Python logging (not stderr)
        }
        config.update(producer_config or {})
        self._producer = Producer(config)
        self.metrics.queued.set_function(lambda: len(self._producer))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sent = self.metrics.sent.inc
        self._dropped_full = self.metrics.dropped.labels("queue_full").inc
        self._dropped_failed = self.metrics.dropped.labels("delivery_failed").inc
        self._dropped_error = self.metrics.dropped.labels("error").inc
        self._first_failure_logged = False

    def start(self) -> "PredictionLogger":
        """Start the delivery-report thread (idempotent)."""
        if self._thread is None:
            if self._create_topic:
                # Its own thread, never joined: with Kafka down, topic creation waits for its
                # timeout, and neither delivery reports nor shutdown should wait with it.
                threading.Thread(target=self._ensure_topic, name="rtml-predictions-topic", daemon=True).start()
            self._thread = threading.Thread(target=self._poll_loop, name="rtml-predictions-log", daemon=True)
            self._thread.start()
        return self

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            # Serves delivery callbacks; sleeps in C (GIL released) when there is nothing to do.
            self._producer.poll(0.1)

    def _ensure_topic(self) -> None:
        from engine.runtime.topics import TopicError, ensure_topics

        try:
            ensure_topics(self.bootstrap, [self.topic], partitions=self._partitions, timeout=10)
        except TopicError:
            pass  # it exists, with another partition count: that is fine for a log
        except Exception as exc:  # Kafka down at startup: messages queue and retry
            log.warning(
                "could not create predictions topic %r on %s: %s: %s", self.topic, self.bootstrap, type(exc).__name__, exc
            )

    def _on_delivery(self, err: KafkaError | None, _msg: Any) -> None:
        if err is None:
            self._sent()
            return
        self._dropped_failed()
        if not self._first_failure_logged:
            # One line, not one per message: an outage fails thousands of messages at once.
            self._first_failure_logged = True
            log.warning("prediction log delivery to %r failed (%s); counting further drops", self.topic, err)

    def log(self, record: Mapping[str, Any], key: str | None) -> bool:
        """Queue one record; returns False when it was dropped (counted). Never blocks."""
        try:
            self._producer.produce(self.topic, orjson.dumps(record), key, on_delivery=self._on_delivery)
        except BufferError:
            self._dropped_full()
            return False
        except (KafkaException, TypeError, ValueError) as exc:
            self._dropped_error()
            log.debug("prediction log record refused: %s", exc)
            return False
        return True

    def flush(self, timeout_s: float = 5.0) -> int:
        """Wait up to ``timeout_s`` for queued messages; returns how many are still queued.

        Blocking: call from a thread (or at shutdown), not from the event loop while serving.
        """
        return self._producer.flush(timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        """Flush what is queued (up to ``timeout_s``), then stop the thread. Idempotent."""
        remaining = self._producer.flush(timeout_s)
        if remaining:
            self.metrics.dropped.labels("shutdown").inc(remaining)
            log.warning("%d prediction log messages not delivered at shutdown", remaining)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
