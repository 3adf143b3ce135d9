"""Validate a batch of raw messages: events go on, bad messages become dead letters."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from engine.events.dlq import DeadLetter
from engine.events.schemas import Interaction
from engine.events.validation import Invalid, validate_interaction
from engine.metrics import PipelineMetrics
from operators.sources import RawBatch

# Where an event came from, its original bytes and headers: a late event is dead-lettered as it came.
Origin = tuple[str, int, int, bytes, tuple[tuple[str, bytes], ...]]


@dataclass(slots=True)
class ValidatedBatch:
    """Outcome of validating one :class:`RawBatch`."""

    events: list[tuple[Interaction, Origin]] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)


def validate_batch(
    batch: RawBatch,
    *,
    max_future_ms: int,
    now_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    metrics: PipelineMetrics | None = None,
) -> ValidatedBatch:
    """Validate every message of a batch; nothing raises and nothing is dropped."""
    out = ValidatedBatch()
    now = now_ms()
    topic, partition = batch.topic, batch.partition
    for offset, value, headers in batch.messages:
        raw = value if value is not None else b""
        result = validate_interaction(raw, headers, now, max_future_ms)
        if result.__class__ is Invalid:
            out.dead.append(
                DeadLetter(result.reason, result.detail, topic, partition, offset, raw, now,  # type: ignore[union-attr]
                           tuple(headers or ()))
            )
        else:
            out.events.append((result, (topic, partition, offset, raw, tuple(headers or ()))))  # type: ignore[arg-type]
    if metrics is not None:
        metrics.events_valid.labels(topic).inc(len(out.events))
        for dl in out.dead:
            metrics.events_invalid.labels(topic, dl.reason).inc()
    return out
