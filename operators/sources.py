"""Batch-emitting Bytewax sources: Kafka partitions and event files (backfill).

Both emit one :class:`RawBatch` per poll instead of one item per message: the
per-item overhead of the dataflow is then paid once per batch, and downstream
steps work on plain lists. Offsets (Kafka) and event positions (files: the n-th
non-blank line or Parquet row) are the
resume state, so recovery replays from the last snapshot exactly.
"""

from __future__ import annotations

import logging
import math
import os
import time
from array import array
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from engine.features._kernels import pack_bytes, unpack_bytes
from engine.metrics import SourceMetrics

if TYPE_CHECKING:
    from engine.config import RtmlConfig

log = logging.getLogger(__name__)
# A consumer error of the same kind is logged at most this often per partition.
_ERROR_LOG_EVERY_S = 10.0

# (offset, value, headers or None)
RawMessage = tuple[int, bytes | None, list[tuple[str, bytes]] | None]


@dataclass(slots=True)
class RawBatch:
    """Messages of one source partition, in order, as columns (offsets, values, headers).

    ``backlog``: how many messages of the partition were still waiting after this batch
    (from the high watermark of the last fetch response; 0 when unknown). Downstream steps
    tell catching up from keeping up by it.

    >>> RawBatch.of("t", 0, [(7, b"{}", None)]).messages
    [(7, b'{}', None)]
    """

    topic: str
    partition: int
    offsets: list[int]
    values: list[bytes | None]
    headers: list[list[tuple[str, bytes]] | None]
    backlog: int = 0

    @property
    def source_id(self) -> tuple[str, int]:
        """``(topic, partition)``: the partition the batch was read from."""
        return (self.topic, self.partition)

    @classmethod
    def of(cls, topic: str, partition: int, messages: Sequence[RawMessage], backlog: int = 0) -> "RawBatch":
        """A batch from ``(offset, value, headers)`` messages."""
        return cls(topic, partition, [m[0] for m in messages], [m[1] for m in messages], [m[2] for m in messages],
                   backlog)

    @property
    def messages(self) -> list[RawMessage]:
        """``(offset, value, headers)`` per message."""
        return list(zip(self.offsets, self.values, self.headers))

    def __len__(self) -> int:
        return len(self.offsets)

    def __reduce__(self) -> tuple[Any, ...]:
        # Spread to another process for checking (operators/balance.py): the messages travel
        # as a few buffers instead of an object or two each.
        if None in self.values:  # a tombstone cannot be packed; rare, sent as it is
            return RawBatch, (self.topic, self.partition, self.offsets, self.values, self.headers, self.backlog)
        return _unpack_batch, (self.topic, self.partition,
                               *pack_messages(self.offsets, self.values, self.headers), self.backlog)  # type: ignore[arg-type]


def pack_messages(
    offsets: Sequence[int], values: Sequence[bytes], headers: Sequence[list[tuple[str, bytes]] | None]
) -> tuple[bytes, bytes, bytes, list[list[tuple[str, bytes]] | None] | None]:
    """Messages of one partition as a few buffers, for a pickle to another process.

    ``(offsets as int64, the values end to end, where each value ends (int64), the headers)``;
    the headers are None when no message has any.
    """
    blob, ends = pack_bytes(values)
    return array("q", offsets).tobytes(), blob, ends, (list(headers) if any(headers) else None)


def _unpack_batch(topic: str, partition: int, offsets: bytes, blob: bytes, ends: bytes,
                  headers: list[list[tuple[str, bytes]] | None] | None, backlog: int) -> RawBatch:
    values = unpack_bytes(blob, ends)
    return RawBatch(topic, partition, array("q", offsets).tolist(), values,
                    headers if headers is not None else [None] * len(values), backlog)


class _KafkaPartition(StatefulSourcePartition[RawBatch, int]):
    def __init__(
        self,
        config: dict[str, Any],
        topic: str,
        partition: int,
        offset: int,
        batch_size: int,
        metrics: SourceMetrics | None,
        bounded: bool = False,
    ) -> None:
        self._consumer = Consumer(config)
        # assign(), not subscribe(): offsets live in Bytewax snapshots, and group joins are
        # slow on Tansu (FIELD-NOTES).
        self._consumer.assign([TopicPartition(topic, partition, offset)])
        # Bounded: read up to the end offset seen in the first fetch response, then end. (Tansu
        # answers ListOffsets with a wrong high watermark; fetch responses carry the right one.)
        self._bounded = bounded
        self._end: int | None = None
        self._topic = topic
        self._partition = partition
        self._offset = offset
        self._batch_size = batch_size
        self._metrics = metrics
        self._idle_until = 0.0
        self._next_lag_check = 0.0
        self._labels = (topic, str(partition))
        self._tp = TopicPartition(topic, partition)
        self._error_logged: dict[Any, float] = {}
        if metrics is not None:
            metrics.input_position.labels(*self._labels).set(offset if offset >= 0 else 0)

    def next_batch(self) -> list[RawBatch]:
        if self._end is not None and self._offset >= self._end:
            raise StopIteration()
        msgs = self._consumer.consume(self._batch_size, 0.001)
        if self._bounded and self._end is None:
            low, high = self._consumer.get_watermark_offsets(TopicPartition(self._topic, self._partition), cached=True)
            if high >= 0:
                self._end = high
                if self._offset < 0 and not msgs:  # OFFSET_BEGINNING / OFFSET_END, nothing read
                    self._offset = low if self._offset == OFFSET_BEGINNING else high
        # Error entries (transient broker errors: librdkafka retries, and the stall alert
        # covers outages; partition EOF) carry no message; each kind is logged now and then.
        if any([m.error() for m in msgs]):
            for m in msgs:
                if m.error() is not None:
                    self._log_error(m.error())
            msgs = [m for m in msgs if m.error() is None]
        offsets = [m.offset() for m in msgs]
        past_end = self._end is not None and bool(offsets) and offsets[-1] >= self._end
        if past_end:
            keep = sum(1 for o in offsets if o < self._end)  # type: ignore[operator]
            msgs, offsets = msgs[:keep], offsets[:keep]
        now = time.monotonic()
        if offsets:
            self._offset = offsets[-1] + 1
        elif self._end is not None and not msgs and self._offset < self._end:
            # Nothing more came: the client's position moves past records it does not hand
            # out (transaction markers), so it tells whether the end was reached.
            position = self._consumer.position([self._tp])[0].offset
            past_end = position >= self._end
        if past_end:
            # Everything before the end has been read, even when the last offsets below it
            # never arrive (a transaction marker, a compacted gap): the bounded read is done.
            self._offset = max(self._offset, self._end)  # type: ignore[type-var]
        if offsets:
            if self._metrics is not None:
                self._metrics.events_in.labels(self._topic).inc(len(offsets))
                self._metrics.input_position.labels(*self._labels).set(self._offset)
        backlog = self._backlog() if (offsets or now >= self._next_lag_check) else 0
        if self._metrics is not None and now >= self._next_lag_check:
            self._next_lag_check = now + 1.0
            self._metrics.input_lag.labels(*self._labels).set(backlog)
        # An empty poll backs off briefly so an idle source does not spin a core.
        self._idle_until = 0.0 if offsets else now + 0.005
        if not offsets:
            return []
        return [RawBatch(self._topic, self._partition, offsets, [m.value() for m in msgs],
                         [m.headers() for m in msgs], backlog)]

    def _log_error(self, err: Any) -> None:
        code = err.code() if hasattr(err, "code") else str(err)
        now = time.monotonic()
        if now - self._error_logged.get(code, -math.inf) >= _ERROR_LOG_EVERY_S:
            self._error_logged[code] = now
            fatal = err.fatal() if hasattr(err, "fatal") else False
            log.log(logging.ERROR if fatal else logging.WARNING, "%s[%d]: consumer %s error: %s",
                    self._topic, self._partition, "fatal" if fatal else "transient", err)

    def _backlog(self) -> int:
        """Messages after the read position (0 when unknown)."""
        try:
            # cached=True reads the high watermark from the last fetch response: no broker
            # round trip on the dataflow thread (that stalled batches by ms).
            _, high = self._consumer.get_watermark_offsets(self._tp, cached=True)
        except Exception:  # noqa: BLE001 - lag is best effort; never stop the source
            return 0
        return max(0, high - self._offset) if self._offset >= 0 else 0

    def next_awake(self) -> datetime | None:
        if self._idle_until:
            return datetime.now(timezone.utc) + timedelta(seconds=max(0.0, self._idle_until - time.monotonic()))
        return None

    def snapshot(self) -> int:
        return self._offset

    def close(self) -> None:
        self._consumer.close()


class KafkaBatchSource(FixedPartitionedSource[RawBatch, int]):
    """Every partition of the given topics, read with ``assign()`` from the resume offset.

    ``bounded=True`` reads each partition up to its end offset as of start-up and then ends
    (replays, backfills from Kafka, tests); otherwise the source runs forever.
    """

    def __init__(
        self,
        bootstrap: str,
        topics: Sequence[str],
        *,
        batch_size: int = 5000,
        fetch_wait_max_ms: int = 100,
        starting_offset: int = OFFSET_BEGINNING,
        metrics: SourceMetrics | None = None,
        extra_config: dict[str, Any] | None = None,
        bounded: bool = False,
    ) -> None:
        self.bootstrap = bootstrap
        self.bounded = bounded
        self.topics = list(topics)
        self.batch_size = batch_size
        self.fetch_wait_max_ms = fetch_wait_max_ms
        self.starting_offset = starting_offset
        self.metrics = metrics
        self.extra_config = extra_config or {}

    @classmethod
    def from_config(cls, cfg: "RtmlConfig", topics: Sequence[str], metrics: SourceMetrics | None = None,
                    bounded: bool = False) -> "KafkaBatchSource":
        """The source of a dataflow: ``topics`` with the ``kafka`` section's settings (live,
        or up to the end offsets found at start when ``bounded``)."""
        return cls(
            cfg.kafka.bootstrap or "",
            topics,
            batch_size=cfg.kafka.consume_batch_size,
            fetch_wait_max_ms=cfg.kafka.fetch_wait_max_ms,
            bounded=bounded,
            metrics=metrics,
        )

    def source_ids(self) -> list[tuple[str, int]]:
        """(topic, partition) of every input partition: the sources a watermark waits for."""
        return [(topic, int(idx)) for idx, topic in (part.split("-", 1) for part in self.list_parts())]

    def list_parts(self) -> list[str]:
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        parts = []
        for topic in self.topics:
            meta = admin.list_topics(topic, timeout=30).topics[topic]
            if meta.error is not None:
                raise RuntimeError(f"cannot list partitions of topic {topic!r}: {meta.error.str()}")
            parts += [f"{p}-{topic}" for p in sorted(meta.partitions)]
        return parts

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _KafkaPartition:
        idx, topic = for_part.split("-", 1)
        config = {
            "bootstrap.servers": self.bootstrap,
            "group.id": "rtml-ignored",  # required by librdkafka; no group is joined
            "enable.auto.commit": "false",
            "enable.partition.eof": "false",
            "fetch.wait.max.ms": str(self.fetch_wait_max_ms),
            "queued.max.messages.kbytes": "65536",
            # librdkafka pauses fetching for 1 s (default) whenever its local queue is full,
            # which caps a catch-up read near 170k msgs/s; 10 ms keeps the queue topped up.
            "fetch.queue.backoff.ms": "10",
        }
        config.update(self.extra_config)
        offset = self.starting_offset if resume_state is None else resume_state
        return _KafkaPartition(config, topic, int(idx), offset, self.batch_size, self.metrics, self.bounded)


class _FilePartition(StatefulSourcePartition[RawBatch, int]):
    def __init__(self, path: Path, start: int, batch_size: int, metrics: SourceMetrics | None) -> None:
        self._metrics = metrics
        self._path = path
        self._lines = _read_events(path)
        self._pos = start
        self._batch_size = batch_size

    def next_batch(self) -> list[RawBatch]:
        if self._pos >= len(self._lines):
            raise StopIteration()
        chunk = self._lines[self._pos : self._pos + self._batch_size]
        start = self._pos
        self._pos += len(chunk)
        batch = RawBatch(str(self._path), 0, list(range(start, self._pos)), list(chunk), [None] * len(chunk),
                         backlog=len(self._lines) - self._pos)
        if self._metrics is not None:
            self._metrics.events_in.labels(batch.topic).inc(len(chunk))
        return [batch]

    def snapshot(self) -> int:
        return self._pos


def _read_events(path: Path) -> list[bytes]:
    """Raw event payloads of a JSONL or Parquet file (Parquet rows re-encoded as JSON)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return [orjson.dumps(_drop_struct_nulls(row)) for row in pq.read_table(path).to_pylist()]
    with open(path, "rb") as fh:
        return [line.rstrip(b"\r\n") for line in fh if line.strip()]


def _drop_struct_nulls(row: dict[str, Any]) -> dict[str, Any]:
    # A Parquet struct column has every key of every row; absent keys read back as null.
    context = row.get("context")
    if isinstance(context, dict):
        row["context"] = {k: v for k, v in context.items() if v is not None}
    elif isinstance(context, list):  # a map column reads back as (key, value) pairs
        row["context"] = {k: v for k, v in context if v is not None}
    return row


class FileBatchSource(FixedPartitionedSource[RawBatch, int]):
    """Events from JSONL / Parquet files for backfill: one partition per file, read in order."""

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]],
        batch_size: int = 5000,
        metrics: SourceMetrics | None = None,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.batch_size = batch_size
        self.metrics = metrics

    def list_parts(self) -> list[str]:
        return [str(p) for p in self.paths]

    def source_ids(self) -> list[tuple[str, int]]:
        """(file, 0) per file, matching the origin of the events it yields."""
        return [(str(p), 0) for p in self.paths]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _FilePartition:
        return _FilePartition(Path(for_part), resume_state or 0, self.batch_size, self.metrics)


class ReadHere(FixedPartitionedSource[RawBatch, int]):
    """Another batch source whose partitions only this process reads, or none of them.

    Bytewax gives each partition to a worker among those that list it, so a process that
    lists none reads nothing: a job uses this to keep input and parsing off the processes
    it gives other roles (the learning job's learner processes).
    """

    def __init__(self, source: "KafkaBatchSource | FileBatchSource", here: bool) -> None:
        self.source = source
        self.here = here

    def list_parts(self) -> list[str]:
        return self.source.list_parts() if self.here else []

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> StatefulSourcePartition[RawBatch, int]:
        return self.source.build_part(step_id, for_part, resume_state)

    def source_ids(self) -> list[tuple[str, int]]:
        return self.source.source_ids()
