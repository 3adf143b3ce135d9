"""Embedded broker, topic admin and end offsets against the session stack."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from engine.runtime.kafka import EmbeddedKafka
from engine.runtime.stack import LocalStack
from engine.runtime.topics import TopicError, ensure_topics, topic_end_offsets, topic_partitions

pytestmark = pytest.mark.integration


def _consume_all(bootstrap: str, topic: str, partitions: int, expected: int) -> list[tuple[int, int, bytes]]:
    """Read ``expected`` records via assign() (no consumer group: see FIELD-NOTES)."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "rtml-test", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    got: list[tuple[int, int, bytes]] = []
    deadline = time.monotonic() + 15
    try:
        while len(got) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            got.append((msg.partition(), msg.offset(), msg.value()))
    finally:
        consumer.close()
    return got


def test_produce_consume_round_trip(kafka_bootstrap: str, unique_topic) -> None:
    topic = unique_topic("rt", partitions=3)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 5})
    for i in range(30):
        producer.produce(topic, key=str(i).encode(), value=f"v{i}".encode(), partition=i % 3)
    assert producer.flush(10) == 0
    got = _consume_all(kafka_bootstrap, topic, 3, 30)
    assert sorted(v for _, _, v in got) == sorted(f"v{i}".encode() for i in range(30))
    for p in range(3):
        offsets = [o for part, o, _ in got if part == p]
        assert offsets == list(range(10))  # per-partition order and dense offsets


def test_ensure_topics_creates_partitions_idempotently(kafka_bootstrap: str) -> None:
    import uuid

    names = [f"ens-{uuid.uuid4().hex[:8]}", f"ens-{uuid.uuid4().hex[:8]}"]
    ensure_topics(kafka_bootstrap, names, partitions=4)
    ensure_topics(kafka_bootstrap, names, partitions=4)  # second call: already exists, fine
    for name in names:
        assert topic_partitions(kafka_bootstrap, name) == [0, 1, 2, 3]
    with pytest.raises(TopicError, match="already exists with 4 partitions"):
        ensure_topics(kafka_bootstrap, names[:1], partitions=2)


def test_topic_end_offsets_counts_records(kafka_bootstrap: str, unique_topic) -> None:
    topic = unique_topic("ends", partitions=2)
    assert topic_end_offsets(kafka_bootstrap, topic) == {0: 0, 1: 0}
    # One linger-batched send per partition: a single record batch of many records.
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 50})
    for i in range(10):
        producer.produce(topic, value=b"x", partition=0)
    for i in range(3):
        producer.produce(topic, value=b"y", partition=1)
    assert producer.flush(10) == 0
    exact = topic_end_offsets(kafka_bootstrap, topic)
    assert exact == {0: 10, 1: 3}
    raw = topic_end_offsets(kafka_bootstrap, topic, exact=False)
    # Raw watermarks may lag on Tansu (base offset of the last batch + 1), never exceed.
    assert all(1 <= raw[p] <= exact[p] for p in exact)


def test_stack_default_topics_exist(stack: LocalStack) -> None:
    cfg = stack.config
    for name in stack.topics:
        assert len(topic_partitions(stack.bootstrap, name)) == cfg.kafka.partitions
    assert f"{cfg.kafka.events_topic}{cfg.pipeline.dlq_suffix}" in stack.topics


def test_embedded_kafka_restart_and_busy_port(stack: LocalStack) -> None:
    if stack.kafka is None:
        pytest.skip("session broker is external")
    # Asking for the session broker's (busy) port: Tansu's bind fails; a fresh port is used.
    with EmbeddedKafka(port=stack.kafka.port) as kafka:
        assert kafka.port != stack.kafka.port
        assert kafka.is_running()
        ensure_topics(kafka.bootstrap, ["own"], partitions=1)
        pid = kafka.pid
        kafka.stop()
        assert not kafka.is_running()
        kafka.start()
        assert kafka.pid != pid
        # In-memory storage: topics are gone after a restart.
        with pytest.raises(TopicError):
            topic_partitions(kafka.bootstrap, "own", timeout=5)
    assert not kafka.is_running()
    assert stack.kafka.is_running()


def test_lookups_never_create_topics(kafka_bootstrap: str) -> None:
    import uuid

    missing = f"missing-{uuid.uuid4().hex[:8]}"
    for _ in range(2):
        with pytest.raises(TopicError):
            topic_partitions(kafka_bootstrap, missing, timeout=5)
        with pytest.raises(TopicError):
            topic_end_offsets(kafka_bootstrap, missing, timeout=5)
