"""Topic administration and end-offset reads through confluent-kafka."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Mapping, Sequence

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

log = logging.getLogger(__name__)


class TopicError(RuntimeError):
    """A topic could not be created or does not have the expected shape."""


def _admin(bootstrap: str) -> AdminClient:
    return AdminClient(
        {
            "bootstrap.servers": bootstrap,
            # Route librdkafka's own log lines through logging instead of raw stderr.
            "logger": log,
            # A metadata request for one topic would otherwise *create* it on brokers
            # that allow auto-creation (Tansu does, with 4 partitions; so does Kafka with
            # auto.create.topics.enable): a mere lookup must never create a topic.
            "allow.auto.create.topics": False,
        }
    )


def ensure_topics(
    bootstrap: str,
    topics: Sequence[str],
    partitions: int,
    replication: int = 1,
    config: Mapping[str, str] | None = None,
    timeout: float = 30,
) -> None:
    """Create ``topics`` with ``partitions`` partitions unless they exist; wait until visible.

    Idempotent: an existing topic is accepted if it has exactly ``partitions``
    partitions, otherwise :class:`TopicError` is raised (we never silently run with a
    different partition count, since partitions are the unit of parallelism).
    ``config`` is passed explicitly at creation because some brokers (Tansu) return no
    entries from DescribeConfigs, so defaults cannot be read back and patched later.
    """
    names = list(dict.fromkeys(topics))  # dedupe, keep order
    if not names:
        return
    if partitions < 1:
        raise ValueError("partitions must be >= 1")
    deadline = time.monotonic() + timeout
    admin = _admin(bootstrap)
    new = [
        NewTopic(name, num_partitions=partitions, replication_factor=replication,
                 config=dict(config or {}))
        for name in names
    ]
    futures = admin.create_topics(new, operation_timeout=timeout, request_timeout=timeout)
    preexisting: set[str] = set()
    for name, future in futures.items():
        try:
            future.result(timeout=max(0.1, deadline - time.monotonic()))
            log.info("created topic %s (%d partitions)", name, partitions)
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            if err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                preexisting.add(name)
                continue
            raise TopicError(f"could not create topic {name!r} on {bootstrap}: {err}") from exc

    # Creation is acknowledged before metadata everywhere agrees: wait until it does.
    pending = set(names)
    while True:
        try:
            md = admin.list_topics(timeout=max(0.5, min(5.0, deadline - time.monotonic())))
        except KafkaException:
            md = None
        if md is not None:
            for name in list(pending):
                meta = md.topics.get(name)
                if meta is None or meta.error is not None or not meta.partitions:
                    continue
                count = len(meta.partitions)
                if count == partitions:
                    pending.discard(name)
                elif name in preexisting:
                    raise TopicError(
                        f"topic {name!r} already exists with {count} partitions, "
                        f"expected {partitions}"
                    )
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise TopicError(
                f"topics {sorted(pending)} not visible with {partitions} partitions "
                f"on {bootstrap} after {timeout}s"
            )
        time.sleep(0.05)


def topic_partitions(bootstrap: str, topic: str, timeout: float = 10) -> list[int]:
    """Partition ids of ``topic`` (sorted); :class:`TopicError` if it does not exist."""
    # Ask for all topics rather than this one: a named lookup can auto-create it.
    md = _admin(bootstrap).list_topics(timeout=timeout)
    meta = md.topics.get(topic)
    if meta is None or meta.error is not None:
        raise TopicError(f"topic {topic!r} not found on {bootstrap}: {meta.error if meta else ''}")
    return sorted(meta.partitions)


def topic_end_offsets(
    bootstrap: str, topic: str, timeout: float = 10, exact: bool = True
) -> dict[int, int]:
    """End offset (offset of the next record) per partition of ``topic``.

    The sum over partitions is the number of records ever written (for a topic without
    compaction or deletion), which is what the supervisor compares with consumption.

    ``exact=True`` also reads the last record batch of each non-empty partition and
    returns ``max(high watermark, last offset + 1)``. This is needed because Tansu 0.6
    reports the high watermark as *base offset of the last batch + 1*, so after a
    producer sends one batch of 10 records it says 1 instead of 10. On Apache Kafka the
    read changes nothing (the watermark already is the end), so the code stays
    broker-neutral. ``exact=False`` returns the raw watermarks (one round trip).
    """
    partitions = topic_partitions(bootstrap, topic, timeout)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            # Required by the client even though we never join a group or commit.
            "group.id": f"rtml-offsets-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "allow.auto.create.topics": False,
            "fetch.wait.max.ms": 10,
            "logger": log,
        }
    )
    try:
        ends: dict[int, int] = {}
        for p in partitions:
            _low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, p), timeout=timeout, cached=False
            )
            ends[p] = int(high)
        if exact:
            _read_last_batches(consumer, topic, ends, timeout)
        return ends
    finally:
        consumer.close()


def _read_last_batches(
    consumer: Consumer, topic: str, ends: dict[int, int], timeout: float
) -> None:
    """Raise ``ends[p]`` to one past the last record found from ``ends[p] - 1`` onwards."""
    waiting = {p for p, high in ends.items() if high > 0}
    if not waiting:
        return
    consumer.assign([TopicPartition(topic, p, ends[p] - 1) for p in waiting])
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is None:
            continue
        p = msg.partition()
        err = msg.error()
        if p is None:  # client-level error not tied to a partition
            log.debug("reading end of %s: %s", topic, err)
            continue
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                waiting.discard(p)
            else:
                # Keep the watermark for this partition rather than fail the whole read.
                log.debug("reading end of %s[%s]: %s", topic, p, err)
                waiting.discard(p)
            continue
        offset = msg.offset()
        if offset is not None and offset + 1 > ends[p]:
            ends[p] = offset + 1
    consumer.unassign()
