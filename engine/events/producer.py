"""Produce simulated traffic to Kafka (what ``rtml produce`` runs).

Interactions go to the events topic keyed by ``user_id`` (so one user's events
stay in one partition, in order), labels to the labels topic keyed by
``request_id``, item updates to the items topic keyed by ``item_id``.
Malformed messages (``SimulatorConfig.invalid_fraction``) go, unkeyed and
without a content-type header, to the topic of the kind they imitate.

Usage (needs a broker)::

    from engine.events.simulator import Simulator, SimulatorConfig
    stats = produce("localhost:9092", Simulator(SimulatorConfig(rate=500)), Topics(),
                    duration_s=10, realtime=True)
    print(stats.delivered, stats.failed)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from engine.events.codec import WireFormat, encode
from engine.events.schemas import Interaction, ItemUpdate, Label
from engine.events.simulator import Malformed, Simulator

if TYPE_CHECKING:
    from engine.config import KafkaConfig


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic names for the three event kinds.

    >>> Topics(events="ev").labels
    'labels'
    """

    events: str = "events"
    labels: str = "labels"
    items: str = "items"

    @classmethod
    def from_config(cls, kafka: KafkaConfig) -> Topics:
        """The topics named in the ``kafka`` config section."""
        return cls(kafka.events_topic, kafka.labels_topic, kafka.items_topic)


@dataclass(slots=True)
class ProduceStats:
    """What one :func:`produce` call did. ``produced`` counts messages handed to the
    client; ``delivered``/``failed`` come from delivery reports (after the final flush
    ``produced == delivered + failed + undelivered``)."""

    produced: int = 0
    delivered: int = 0
    failed: int = 0
    undelivered: int = 0  # still queued when the flush timed out
    malformed: int = 0  # of produced, deliberately invalid
    by_topic: dict[str, int] = field(default_factory=dict)
    first_errors: list[str] = field(default_factory=list)  # a few, for the CLI to print
    elapsed_s: float = 0.0

    @property
    def rate(self) -> float:
        """Produced messages per wall-clock second."""
        return self.produced / self.elapsed_s if self.elapsed_s > 0 else 0.0


_MAX_ERRORS_KEPT = 10


def produce(
    bootstrap: str,
    sim: Simulator,
    topics: Topics | None = None,
    duration_s: float | None = None,
    max_events: int | None = None,
    wire: WireFormat | Literal["json", "proto"] = "json",
    realtime: bool = False,
    producer_config: dict[str, Any] | None = None,
    flush_timeout_s: float = 30.0,
) -> ProduceStats:
    """Send the simulator's events to Kafka and wait for their delivery reports.

    ``duration_s`` bounds the *event time* span (in realtime mode that is also
    wall time), ``max_events`` the number of messages; with neither the run is
    endless (stop it with KeyboardInterrupt: what was queued is still flushed).
    ``realtime=True`` paces sends so event time advances with the wall clock at
    the simulator's rate; otherwise it sends as fast as the client takes them.
    """
    if wire not in ("json", "proto"):
        raise ValueError(f"wire: expected 'json' or 'proto'; got {wire!r}")
    from confluent_kafka import KafkaException, Producer  # imported late: tests of the rest need no librdkafka

    topics = topics or Topics()
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "linger.ms": 5,  # small batches: low latency for live demos, still batched under load
        "queue.buffering.max.messages": 500_000,
    }
    conf.update(producer_config or {})
    producer = Producer(conf)
    stats = ProduceStats()

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is None:
            stats.delivered += 1
        else:
            stats.failed += 1
            if len(stats.first_errors) < _MAX_ERRORS_KEPT:
                stats.first_errors.append(str(err))

    malformed_topic = {"interaction": topics.events, "label": topics.labels, "item": topics.items}
    started = time.monotonic()
    origin_ms = sim.start_time_ms
    sent_since_poll = 0

    def send(topic: str, value: bytes, key: str | None, headers: list[tuple[str, bytes]] | None) -> None:
        while True:
            try:
                producer.produce(topic, value, key, headers=headers, on_delivery=on_delivery)
                return
            except BufferError:
                # Local queue full: serve delivery reports until there is room.
                producer.poll(0.05)

    try:
        for event in sim.events(n=max_events, duration_s=duration_s):
            if realtime:
                due = started + (event.event_time - origin_ms) / 1000.0
                ahead = due - time.monotonic()
                if ahead > 0.001:
                    # Sleep inside poll so delivery callbacks keep flowing while we wait.
                    producer.poll(ahead)
                    ahead = due - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)
            if isinstance(event, Interaction):
                topic, key = topics.events, event.user_id
            elif isinstance(event, Label):
                topic, key = topics.labels, event.request_id
            elif isinstance(event, ItemUpdate):
                topic, key = topics.items, event.item_id
            elif isinstance(event, Malformed):
                send(malformed_topic[event.kind], event.payload, None, None)
                stats.malformed += 1
                stats.produced += 1
                stats.by_topic[malformed_topic[event.kind]] = stats.by_topic.get(malformed_topic[event.kind], 0) + 1
                continue
            else:  # pragma: no cover - the simulator yields nothing else
                continue
            value, headers = encode(event, wire)  # type: ignore[arg-type]
            send(topic, value, key, headers)
            stats.produced += 1
            stats.by_topic[topic] = stats.by_topic.get(topic, 0) + 1
            sent_since_poll += 1
            if sent_since_poll >= 1000:
                producer.poll(0)  # serve delivery callbacks without blocking
                sent_since_poll = 0
    finally:
        try:
            stats.undelivered = producer.flush(flush_timeout_s)
        except KafkaException as exc:  # pragma: no cover - flush failures are rare
            stats.first_errors.append(f"flush: {exc}")
        stats.elapsed_s = time.monotonic() - started
    return stats
