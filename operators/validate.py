"""Validate a batch of raw messages: events go on, bad messages become dead letters."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from engine.events.columns import InteractionColumns
from engine.events.dlq import DeadLetter
from engine.events.validation import Invalid, validate_interaction, validate_interaction_batch
from engine.features._kernels import take
from engine.metrics import PipelineMetrics
from operators.sources import RawBatch, pack_messages

# Where an event came from, its original bytes and headers: a late event is dead-lettered as it came.
Origin = tuple[str, int, int, bytes, tuple[tuple[str, bytes], ...]]


@dataclass(slots=True)
class Origins:
    """Where each event of a batch came from (one source partition), by position.

    Kept as columns so that routing a batch costs no tuple per event; an :data:`Origin` is
    built only for an event that turns out late.
    """

    topic: str
    partition: int
    offsets: list[int] = field(default_factory=list)
    raws: list[bytes] = field(default_factory=list)
    headers: list[list[tuple[str, bytes]] | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i: int) -> Origin:
        return (self.topic, self.partition, self.offsets[i], self.raws[i], tuple(self.headers[i] or ()))

    def slice(self, start: int, stop: int) -> "Origins":
        """The origins at positions ``start`` up to ``stop``."""
        return Origins(self.topic, self.partition, self.offsets[start:stop], self.raws[start:stop],
                       self.headers[start:stop])

    def take(self, order: bytes | np.ndarray) -> "Origins":
        """The origins at ``order`` (a buffer of int64 positions), in that order."""
        return Origins(self.topic, self.partition, take(self.offsets, order), take(self.raws, order),
                       take(self.headers, order))

    def __copy__(self) -> "Origins":
        return Origins(self.topic, self.partition, self.offsets, self.raws, self.headers)

    def __deepcopy__(self, memo: dict[int, Any]) -> "Origins":
        return Origins(self.topic, self.partition, list(self.offsets), list(self.raws),
                       [None if h is None else list(h) for h in self.headers])

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled (copies keep the columns: __copy__, __deepcopy__).
        # Sent to a shard in another process, origins are read only for late events: packed,
        # they pickle as a few buffers instead of an object or three per event.
        return PackedOrigins, (self.topic, self.partition, *pack_messages(self.offsets, self.raws, self.headers))


@dataclass(frozen=True, slots=True)
class PackedOrigins:
    """:class:`Origins` as they arrive from another process: buffers, read by position.

    >>> import pickle
    >>> origins = pickle.loads(pickle.dumps(Origins("t", 3, [7, 9], [b"ab", b"c"], [None, [("k", b"v")]])))
    >>> len(origins), origins[0], origins[1]
    (2, ('t', 3, 7, b'ab', ()), ('t', 3, 9, b'c', (('k', b'v'),)))
    """

    topic: str
    partition: int
    offsets: bytes  # int64 each
    raws: bytes  # every raw message, end to end
    ends: bytes  # int64 end of each message in raws
    headers: list[list[tuple[str, bytes]] | None] | None  # None: no message had any

    def __len__(self) -> int:
        return len(self.offsets) // 8

    def __getitem__(self, i: int) -> Origin:
        if not 0 <= i < len(self):
            raise IndexError(i)
        ends = memoryview(self.ends).cast("q")
        offset = memoryview(self.offsets).cast("q")[i]
        headers = tuple(self.headers[i] or ()) if self.headers is not None else ()
        return (self.topic, self.partition, offset, self.raws[ends[i - 1] if i else 0 : ends[i]], headers)


@dataclass(slots=True)
class ValidatedBatch:
    """Outcome of validating one :class:`RawBatch`: valid events with their origins, dead letters."""

    events: InteractionColumns
    origins: Origins
    dead: list[DeadLetter] = field(default_factory=list)
    backlog: int = 0  # the source's backlog after this batch (RawBatch.backlog)


def validate_batch(
    batch: RawBatch,
    *,
    max_future_ms: int,
    now_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    metrics: PipelineMetrics | None = None,
) -> ValidatedBatch:
    """Validate every message of a batch; nothing raises and nothing is dropped.

    A batch of valid JSON events is checked in one compiled pass
    (:func:`validate_interaction_batch`); otherwise message by message, to say which are bad and why.
    """
    now = now_ms()
    topic, partition = batch.topic, batch.partition
    offsets, headers = batch.offsets, batch.headers
    raws = batch.values if None not in batch.values else [b"" if v is None else v for v in batch.values]
    columns = validate_interaction_batch(raws, headers, now, max_future_ms)
    if columns is not None:
        out = ValidatedBatch(columns, Origins(topic, partition, offsets, raws, headers), backlog=batch.backlog)
    else:
        out = _validate_each(topic, partition, offsets, raws, headers, now, max_future_ms)
        out.backlog = batch.backlog
    if metrics is not None:
        metrics.events_valid.labels(topic).inc(len(out.events))
        for dl in out.dead:
            metrics.events_invalid.labels(topic, dl.reason).inc()
    return out


def _validate_each(
    topic: str,
    partition: int,
    offsets: list[int],
    raws: list[bytes],
    headers: list[list[tuple[str, bytes]] | None],
    now: int,
    max_future_ms: int,
) -> ValidatedBatch:
    out = ValidatedBatch(InteractionColumns(), Origins(topic, partition))
    origins = out.origins
    for offset, raw, hdrs in zip(offsets, raws, headers):
        result = validate_interaction(raw, hdrs, now, max_future_ms)
        if result.__class__ is Invalid:
            out.dead.append(
                DeadLetter(result.reason, result.detail, topic, partition, offset, raw, now,  # type: ignore[union-attr]
                           tuple(hdrs or ()))
            )
        else:
            out.events.append(result)  # type: ignore[arg-type]
            origins.offsets.append(offset)
            origins.raws.append(raw)
            origins.headers.append(hdrs)
    return out
