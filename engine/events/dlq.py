"""Dead-letter records: rejected messages kept byte for byte, with why and where from.

A dead letter goes to ``dlq_topic(source_topic)``. Its Kafka value is the
original value, untouched, so that it can be inspected or replayed with the
exact bytes the producer sent; everything rtml knows about the failure travels
in ``rtml.dlq.*`` headers. The original message's own headers (for example its
``content-type``) are carried along unchanged, so a replay decodes the same way.

>>> dl = DeadLetter("bad_enum", "event_type: ...", "events", 2, 41, b'{"x":1}', 1_700_000_000_000)
>>> value, headers = dl.to_kafka()
>>> value
b'{"x":1}'
>>> DeadLetter.from_kafka(value, headers) == dl
True
>>> dlq_topic("events")
'events.dlq'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from engine.events.codec import Headers

HEADER_PREFIX: Final = "rtml.dlq."
REASON_HEADER: Final = "rtml.dlq.reason"
DETAIL_HEADER: Final = "rtml.dlq.detail"
SOURCE_TOPIC_HEADER: Final = "rtml.dlq.source.topic"
SOURCE_PARTITION_HEADER: Final = "rtml.dlq.source.partition"
SOURCE_OFFSET_HEADER: Final = "rtml.dlq.source.offset"
FAILED_AT_HEADER: Final = "rtml.dlq.failed_at"

#: Reason given by the windowing stage (not the validator) to events older than the
#: watermark by more than ``pipeline.allowed_lateness_ms``.
LATE: Final = "late"


def dlq_topic(topic: str, suffix: str = ".dlq") -> str:
    """The dead-letter topic of ``topic`` (``pipeline.dlq_suffix`` is the suffix).

    >>> dlq_topic("labels", "-dead")
    'labels-dead'
    """
    return topic + suffix


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One rejected message and why it was rejected.

    ``original_headers`` are the source message's headers, re-emitted as they
    were (minus any ``rtml.dlq.*`` ones, which would be ambiguous).
    """

    reason: str
    detail: str
    source_topic: str
    partition: int
    offset: int
    original: bytes
    failed_at_ms: int
    original_headers: tuple[tuple[str, bytes], ...] = ()

    def to_kafka(self) -> tuple[bytes, list[tuple[str, bytes]]]:
        """``(value, headers)`` to produce: the original bytes and the ``rtml.dlq.*`` headers."""
        headers = [
            (REASON_HEADER, self.reason.encode("utf-8", "replace")),
            (DETAIL_HEADER, self.detail.encode("utf-8", "replace")),
            (SOURCE_TOPIC_HEADER, self.source_topic.encode("utf-8", "replace")),
            (SOURCE_PARTITION_HEADER, str(self.partition).encode()),
            (SOURCE_OFFSET_HEADER, str(self.offset).encode()),
            (FAILED_AT_HEADER, str(self.failed_at_ms).encode()),
        ]
        headers.extend((k, v) for k, v in self.original_headers if not k.startswith(HEADER_PREFIX))
        return self.original, headers

    @classmethod
    def from_kafka(cls, value: bytes | None, headers: Headers) -> DeadLetter:
        """Rebuild a dead letter from a DLQ message; raises ``ValueError`` if it is not one.

        A ``None`` value (a tombstone) reads as empty bytes.
        """
        found: dict[str, bytes] = {}
        others: list[tuple[str, bytes]] = []
        for key, raw in headers or ():
            if isinstance(key, bytes):
                key = key.decode("utf-8", "replace")
            data = b"" if raw is None else raw if isinstance(raw, bytes) else str(raw).encode()
            if key.startswith(HEADER_PREFIX):
                found.setdefault(key, data)  # first wins, like the producer wrote them
            else:
                others.append((key, data))
        missing = [
            h
            for h in (REASON_HEADER, SOURCE_TOPIC_HEADER, SOURCE_PARTITION_HEADER, SOURCE_OFFSET_HEADER, FAILED_AT_HEADER)
            if h not in found
        ]
        if missing:
            raise ValueError(f"not a dead letter: missing header(s) {', '.join(missing)}")
        try:
            partition = int(found[SOURCE_PARTITION_HEADER])
            offset = int(found[SOURCE_OFFSET_HEADER])
            failed_at = int(found[FAILED_AT_HEADER])
        except ValueError as exc:
            raise ValueError(f"not a dead letter: bad numeric header ({exc})") from None
        return cls(
            reason=found[REASON_HEADER].decode("utf-8", "replace"),
            detail=found.get(DETAIL_HEADER, b"").decode("utf-8", "replace"),
            source_topic=found[SOURCE_TOPIC_HEADER].decode("utf-8", "replace"),
            partition=partition,
            offset=offset,
            original=b"" if value is None else bytes(value),
            failed_at_ms=failed_at,
            original_headers=tuple(others),
        )
