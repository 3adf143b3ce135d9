"""Bounded reads of JSON-lines records: a whole file, or a Kafka topic up to its end offsets.

Offline tools (``rtml skew``, ``rtml rollout verdict``) read what a topic holds *now* and
stop, rather than following it: every partition is read from its first record up to the end
offset it had when the call started, by ``assign()`` (no consumer group is joined, nothing
is committed).

>>> import pathlib, tempfile
>>> path = pathlib.Path(tempfile.mkdtemp()) / "p.jsonl"
>>> _ = path.write_bytes(b'{"a": 1}\\n\\n{"a": 2}\\r\\n')
>>> read_jsonl_file(path)
[b'{"a": 1}', b'{"a": 2}']
"""

from __future__ import annotations

import os
import time


def read_jsonl_file(path: str | os.PathLike[str]) -> list[bytes]:
    """The raw records of a JSONL file (one record a line; blank lines skipped)."""
    with open(path, "rb") as fh:
        return [line.rstrip(b"\r\n") for line in fh if line.strip()]


def read_topic(bootstrap: str, topic: str, timeout_s: float = 60.0, group_id: str = "rtml-reader") -> list[bytes]:
    """Every record value of ``topic`` from the beginning up to its end offsets at call time.

    Raises ``TimeoutError`` when the partitions are not read to their ends within
    ``timeout_s``, and :class:`~engine.runtime.topics.TopicError` for a missing topic.
    ``group_id`` is only required by librdkafka: no group is joined.
    """
    from confluent_kafka import Consumer, TopicPartition

    from engine.runtime.topics import topic_end_offsets

    ends = {p: end for p, end in topic_end_offsets(bootstrap, topic).items() if end > 0}
    out: list[bytes] = []
    if not ends:
        return out
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group_id,
        "enable.auto.commit": False,
        "allow.auto.create.topics": False,
    })
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        pending = dict(ends)
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"read {len(out)} records of {topic}; partitions {sorted(pending)} not read to "
                                   f"their end within {timeout_s} s")
            for msg in consumer.consume(1000, 0.2):
                p = msg.partition()
                if msg.error() is not None or p not in pending or msg.offset() >= pending[p]:
                    continue
                out.append(msg.value() or b"")
                if msg.offset() + 1 >= pending[p]:
                    del pending[p]
    finally:
        consumer.close()
    return out
