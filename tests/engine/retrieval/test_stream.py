"""ItemStreamUpdater against the session broker: upserts, retirements, dead letters, the hook."""

from __future__ import annotations

import time

import numpy as np
import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

from engine.events.dlq import DeadLetter
from engine.events.schemas import ItemUpdate
from engine.metrics import SourceMetrics
from engine.retrieval.index import IndexConfig, ItemIndex
from engine.retrieval.stream import VECTOR_FN_FAILED, ItemStreamUpdater
from engine.runtime.topics import ensure_topics

DIM = 8
NOW = int(time.time() * 1000)


def item(item_id: str, vector: list[float] | None, t: int, **kw) -> bytes:
    return orjson.dumps(ItemUpdate(item_id, t, embedding=vector, **kw).to_dict())


def send(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for v in values:
        producer.produce(topic, v)
    assert producer.flush(10) == 0


def read_dead_letters(bootstrap: str, topic: str, expected: int) -> list[DeadLetter]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "t", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0, 0)])
    out: list[DeadLetter] = []
    deadline = time.monotonic() + 10
    while len(out) < expected and time.monotonic() < deadline:
        for msg in consumer.consume(100, 0.2):
            if msg.error() is None:
                out.append(DeadLetter.from_kafka(msg.value(), msg.headers()))
    consumer.close()
    return out


def unit(j: int) -> list[float]:
    return np.eye(DIM)[j].tolist()


def top(index: ItemIndex, j: int) -> str | None:
    hits = index.search(np.eye(DIM, dtype=np.float32)[j:j + 1], 1)[0]
    return hits[0][0] if hits else None


def test_updates_retirements_and_dead_letters(kafka_bootstrap: str, unique_topic) -> None:
    topic = unique_topic("items", partitions=2)
    dlq = topic + ".dlq"
    ensure_topics(kafka_bootstrap, [dlq], partitions=1)
    index = ItemIndex(IndexConfig(dim=DIM, kind="flat", use_gpu="never"))
    send(kafka_bootstrap, topic, [item("a", unit(0), NOW - 5_000, category="c1"), item("b", unit(1), NOW - 5_000)])
    metrics = SourceMetrics()
    updater = ItemStreamUpdater(index, kafka_bootstrap, topic, dlq_topic=dlq, metrics=metrics)
    with updater:
        assert updater.wait_until_caught_up(15)
        assert (top(index, 0), top(index, 1), len(index)) == ("a", "b", 2)
        assert index.meta(["a"])[0].category == "c1" and index.meta(["a"])[0].created_ms == NOW - 5_000

        # A new item is searchable right after its update; a retired one is gone.
        send(kafka_bootstrap, topic, [item("n", unit(2), NOW), item("b", None, NOW, active=False)])
        assert updater.wait_until_caught_up(15)
        assert top(index, 2) == "n" and top(index, 1) != "b" and len(index) == 2
        assert updater.lag_ms is not None and updater.lag_ms >= 0

        # Bad records go to the DLQ with their reason; the thread keeps applying what follows.
        bad = [
            b"{not json",
            item("w", [1.0, 2.0], NOW),  # wrong dimension
            item("x", None, NOW),  # unknown item without a vector
            b'{"item_id":"y","event_time":' + str(NOW).encode() + b',"embedding":[1e39,0,0,0,0,0,0,0]}',
        ]
        send(kafka_bootstrap, topic, bad + [item("a", unit(3), NOW + 1, category=None),  # replace, keep category
                                            item("a", unit(0), NOW - 60_000)])  # older: skipped
        assert updater.wait_until_caught_up(15)
        assert top(index, 3) == "a" and dict(index.search(np.eye(DIM, dtype=np.float32)[:1], 5)[0])["a"] == 0.0
        assert index.meta(["a"])[0].category == "c1" and index.meta(["a"])[0].created_ms == NOW - 5_000
        assert updater.skipped_stale == 1 and updater.dead_lettered == 4 and updater._thread.is_alive()
    letters = read_dead_letters(kafka_bootstrap, dlq, 4)
    assert sorted(dl.reason for dl in letters) == ["missing_field", "out_of_range", "out_of_range", "undecodable"]
    assert {dl.original for dl in letters} == set(bad)
    assert all(dl.source_topic == topic for dl in letters)
    assert any("expected 8 values; got 2" in dl.detail for dl in letters)
    assert metrics.registry.get_sample_value("rtml_dlq_written_total", {"topic": dlq}) == 4


def test_vector_fn_hook_and_start_from_end(kafka_bootstrap: str, unique_topic) -> None:
    topic = unique_topic("items")
    dlq = topic + ".dlq"
    ensure_topics(kafka_bootstrap, [dlq], partitions=1)
    send(kafka_bootstrap, topic, [item("old", unit(0), NOW)])  # before start: not read (from the end)
    index = ItemIndex(IndexConfig(dim=DIM, kind="flat", use_gpu="never"))

    def tower(update: ItemUpdate) -> np.ndarray | None:
        if update.attributes.get("boom"):
            raise RuntimeError("tower failed")
        return np.eye(DIM, dtype=np.float32)[int(update.attributes["slot"])]

    with ItemStreamUpdater(index, kafka_bootstrap, topic, from_beginning=False, dlq_topic=dlq,
                           vector_fn=tower) as updater:
        send(kafka_bootstrap, topic, [item("t", None, NOW, attributes={"slot": 5}),
                                      item("u", unit(0), NOW, attributes={"boom": True})])
        assert updater.wait_until_caught_up(15)
        assert top(index, 5) == "t" and len(index) == 1 and "old" not in [i for i, _ in index.search(
            np.eye(DIM, dtype=np.float32)[:1], 5)[0]]
    [letter] = read_dead_letters(kafka_bootstrap, dlq, 1)
    assert letter.reason == VECTOR_FN_FAILED and "tower failed" in letter.detail
