"""producer.produce against the session broker (embedded Tansu unless RTML_KAFKA_BOOTSTRAP)."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from typing import Callable

import pytest

from engine.events.producer import ProduceStats, Topics, produce
from engine.events.schemas import Interaction, ItemUpdate, Label
from engine.events.simulator import Malformed, Simulator, SimulatorConfig
from engine.events.validation import VALIDATORS, Invalid, validate_interaction


def _read_all(bootstrap: str, topic: str, partitions: int, expected: int, timeout_s: float = 30.0) -> list:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        out: list = []
        deadline = time.monotonic() + timeout_s
        while len(out) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=0.5):
                if msg.error() is None:
                    out.append(msg)
        return out
    finally:
        consumer.close()


@pytest.mark.integration
def test_produce_and_read_back(kafka_bootstrap: str, unique_topic: Callable[..., str]) -> None:
    topics = Topics(unique_topic("events", partitions=3), unique_topic("labels", partitions=3),
                    unique_topic("items", partitions=1))
    sim = Simulator(SimulatorConfig(n_users=40, n_items=10, rate=300.0, invalid_fraction=0.05,
                                    start_time_ms=int(time.time() * 1000), seed=11))
    expected = list(sim.events(n=1_500))
    stats = produce(kafka_bootstrap, sim, topics, max_events=1_500, wire="json")
    assert isinstance(stats, ProduceStats)
    assert stats.produced == 1_500 and stats.delivered == 1_500 and stats.failed == 0
    assert stats.malformed == sum(isinstance(e, Malformed) for e in expected) > 0

    want = Counter(
        topics.events if isinstance(e, (Interaction, Malformed)) else topics.labels if isinstance(e, Label)
        else topics.items for e in expected
    )
    assert stats.by_topic == dict(want)
    now = int(time.time() * 1000) + 60_000
    by_user_partition: dict[str, set[int]] = {}
    for topic, parts, kind in ((topics.events, 3, Interaction), (topics.labels, 3, Label), (topics.items, 1, ItemUpdate)):
        msgs = _read_all(kafka_bootstrap, topic, parts, want[topic])
        assert len(msgs) == want[topic]
        got = []
        for m in msgs:
            headers = m.headers()
            result = VALIDATORS[kind](m.value(), headers, now, 300_000)
            if headers is None:  # malformed: sent raw, unkeyed
                assert isinstance(result, Invalid)
                continue
            assert not isinstance(result, Invalid), result
            got.append(result)
            key = m.key().decode()
            if kind is Interaction:
                assert key == result.user_id
                by_user_partition.setdefault(key, set()).add(m.partition())
            elif kind is Label:
                assert key == result.request_id
            else:
                assert key == result.item_id
        assert sorted(map(repr, got)) == sorted(repr(e) for e in expected if type(e) is kind)
    # Keyed by user: each user's interactions sit in one partition.
    assert all(len(p) == 1 for p in by_user_partition.values())


@pytest.mark.integration
def test_produce_proto_realtime(kafka_bootstrap: str, unique_topic: Callable[..., str]) -> None:
    topics = Topics(unique_topic("events"), unique_topic("labels"), unique_topic("items"))
    sim = Simulator(SimulatorConfig(n_users=10, n_items=5, rate=200.0, seed=2))
    start = time.monotonic()
    stats = produce(kafka_bootstrap, sim, topics, duration_s=1.0, wire="proto", realtime=True)
    elapsed = time.monotonic() - start
    assert stats.failed == 0 and stats.delivered == stats.produced > 100
    assert elapsed >= 0.9  # paced to event time, not as fast as possible
    msgs = _read_all(kafka_bootstrap, topics.events, 1, stats.by_topic[topics.events])
    assert msgs and all(dict(m.headers())["content-type"] == b"application/x-protobuf" for m in msgs)
    assert all(isinstance(validate_interaction(m.value(), m.headers(), int(time.time() * 1000), 300_000), Interaction)
               for m in msgs)
