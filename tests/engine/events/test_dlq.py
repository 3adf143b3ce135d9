"""Dead-letter records keep the original bytes and round-trip through Kafka headers."""

from __future__ import annotations

import pytest

from engine.events.dlq import (
    DETAIL_HEADER,
    FAILED_AT_HEADER,
    REASON_HEADER,
    SOURCE_OFFSET_HEADER,
    SOURCE_PARTITION_HEADER,
    SOURCE_TOPIC_HEADER,
    DeadLetter,
    dlq_topic,
)
from engine.events.simulator import malformed_examples
from engine.events.validation import Invalid, validate_interaction


def test_round_trip_keeps_bytes_and_metadata() -> None:
    for i, (raw, _reason) in enumerate(malformed_examples()):
        got = validate_interaction(raw, None, 1_700_000_100_000, 300_000)
        assert isinstance(got, Invalid)
        dl = DeadLetter(got.reason, got.detail, "events", i % 3, 10_000 + i, raw, 1_700_000_200_000)
        value, headers = dl.to_kafka()
        assert value is raw or value == raw  # untouched
        names = [k for k, _ in headers]
        assert names[:6] == [REASON_HEADER, DETAIL_HEADER, SOURCE_TOPIC_HEADER, SOURCE_PARTITION_HEADER,
                             SOURCE_OFFSET_HEADER, FAILED_AT_HEADER]
        assert all(isinstance(v, bytes) for _, v in headers)
        assert DeadLetter.from_kafka(value, headers) == dl


def test_binary_original_and_unicode_detail() -> None:
    raw = bytes(range(256))
    dl = DeadLetter("undecodable", "détail ✓ 'x'", "évents", 0, 0, raw, 1)
    value, headers = dl.to_kafka()
    assert value == raw
    assert dict(headers)[DETAIL_HEADER] == "détail ✓ 'x'".encode()
    assert DeadLetter.from_kafka(value, headers) == dl


def test_original_headers_travel_along() -> None:
    dl = DeadLetter("wrong_type", "d", "events", 1, 2, b"\x0a", 3,
                    original_headers=(("content-type", b"application/x-protobuf"), ("trace", b"abc")))
    value, headers = dl.to_kafka()
    assert ("content-type", b"application/x-protobuf") in headers
    back = DeadLetter.from_kafka(value, headers)
    assert back == dl and back.original_headers == dl.original_headers


def test_from_kafka_tolerates_client_shapes() -> None:
    # confluent-kafka may hand over None values; a tombstone value reads as b"".
    dl = DeadLetter("late", "", "t", 0, 5, b"", 9)
    _, headers = dl.to_kafka()
    headers = [(k, v if v else None) for k, v in headers]
    assert DeadLetter.from_kafka(None, headers) == dl


def test_from_kafka_rejects_non_dead_letters() -> None:
    with pytest.raises(ValueError, match="missing header"):
        DeadLetter.from_kafka(b"x", [("content-type", b"application/json")])
    _, headers = DeadLetter("r", "d", "t", 0, 1, b"", 2).to_kafka()
    bad = [(k, b"nope" if k == SOURCE_OFFSET_HEADER else v) for k, v in headers]
    with pytest.raises(ValueError, match="numeric"):
        DeadLetter.from_kafka(b"", bad)


def test_dlq_topic() -> None:
    assert dlq_topic("events") == "events.dlq"
    assert dlq_topic("labels", "_dlq") == "labels_dlq"
