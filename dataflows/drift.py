"""The drift dataflow: predictions -> parse (DLQ) -> per-model windowed drift tests -> alerts + metrics.

Run it with Bytewax (``rtml up`` can run it under the supervisor, like the features flow)::

    python -m bytewax.run "dataflows.drift:flow_from_env()" -r RECOVERY_DIR -s 5 -b 0

Steps:

1. :class:`~operators.sources.KafkaBatchSource` on ``learning.predictions_topic``;
2. parse every message with :func:`engine.learning.records.prediction_or_dead_letter`; a bad one goes
   to ``<predictions topic><pipeline.dlq_suffix>`` with the parser's reason (``undecodable``,
   ``missing_field``, ``wrong_type``) in the ``rtml.dlq.reason`` header;
3. records keyed by model into a stateful step holding a
   :class:`~engine.drift.monitor.DriftMonitor` and a
   :class:`~engine.watermark.SourceWatermark` per model (see :class:`DriftTiming`). When the
   watermark passes a window's end, the window is tested against the reference
   (``drift.reference``, or the first full window pinned per model and feature);
4. drifted statistics become :class:`~engine.alerts.DriftAlert` messages on
   ``kafka.alerts_topic`` (keyed by model) and are handed to the ``drift.retrain_hook``
   (:class:`~operators.sinks.AlertSink`); every statistic sets a gauge
   (:class:`~engine.metrics.DriftMetrics`).

End of input (a bounded source) does not close the open windows: as in the features flow,
a window is tested only once the watermark has passed it.

Recovery: the snapshot per model holds the open windows (bounded samples, KLL sketches as
bytes), the pinned references, counters and the watermark. Output is at-least-once: after a
restore, windows closed after the snapshot are tested again and their alerts re-published
(dedupe on ``model, feature, statistic, window_start_ms``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Hashable, Sequence

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic

from engine.alerts import DriftAlert
from engine.config import RtmlConfig, load_config
from engine.drift.monitor import DriftMonitor, MonitorOutput, ObserveCounts, Reference, load_reference
from engine.events.dlq import DeadLetter
from engine.learning.records import PredictionRecord, prediction_or_dead_letter
from engine.metrics import DriftMetrics
from engine.runtime.gc_tuning import tune_gc
from engine.watermark import SourceWatermark
from operators.sinks import AlertSink, DeadLetterSink
from operators.sources import KafkaBatchSource, RawBatch

__all__ = [
    "DRIFT_FLOW",
    "DriftLogic",
    "DriftOutput",
    "DriftTiming",
    "ParsedBatch",
    "build_drift_flow",
    "flow_from_env",
    "parse_batch",
]

#: The ``python -m bytewax.run`` target of this flow.
DRIFT_FLOW = "dataflows.drift:flow_from_env()"
# How often a model with open windows wakes: idle advance, or a partition going idle, can move
# its watermark without input.
_IDLE_TICK_S = 1.0

Source = tuple[str, int]  # (topic, partition)


@dataclass(frozen=True)
class DriftTiming:
    """Event-time settings of the per-model watermark.

    The predictions topic is the label join's input too, so its timing comes from the
    ``learning`` section: watermark = slowest active partition's newest prediction time
    minus ``learning.out_of_orderness_ms``; a partition silent for ``learning.source_idle_ms``
    stops holding it back. ``pipeline.idle_advance`` lets a quiet model's watermark move
    with the wall clock, so its last window is tested without new traffic (off for replays).

    >>> from engine.config import load_config
    >>> DriftTiming.from_config(load_config(env={}))
    DriftTiming(out_of_orderness_ms=2000, source_idle_ms=10000, idle_advance=True, sources=())
    """

    out_of_orderness_ms: int
    source_idle_ms: int = 10_000
    idle_advance: bool = False
    sources: tuple[Hashable, ...] = ()  # every input partition: the watermark waits for each

    @classmethod
    def from_config(cls, cfg: RtmlConfig, sources: Sequence[Hashable] = ()) -> "DriftTiming":
        return cls(cfg.learning.out_of_orderness_ms, cfg.learning.source_idle_ms, cfg.pipeline.idle_advance,
                   tuple(sources))


@dataclass(slots=True)
class ParsedBatch:
    """One raw batch after parsing: records grouped by model, and the dead letters."""

    source: Source
    by_model: dict[str, list[PredictionRecord]] = field(default_factory=dict)
    dead: list[DeadLetter] = field(default_factory=list)


def parse_batch(
    batch: RawBatch,
    now_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    metrics: DriftMetrics | None = None,
) -> ParsedBatch:
    """Parse every message; nothing raises and nothing is dropped.

    ``metrics`` counts ``rtml_events_valid_total{topic}`` / ``rtml_events_invalid_total{topic,reason}``.

    >>> b = RawBatch.of("predictions", 0, [(0, b'{"request_id": "r", "model": "m", "event_time_ms": 5}', None),
    ...                                 (1, b'not json', [("content-type", b"x")])])
    >>> out = parse_batch(b, now_ms=lambda: 7)
    >>> [r.request_id for r in out.by_model["m"]], [(d.reason, d.offset, d.original_headers) for d in out.dead]
    (['r'], [('undecodable', 1, (('content-type', b'x'),))])
    """
    out = ParsedBatch((batch.topic, batch.partition))
    now = now_ms()
    for offset, value, headers in batch.messages:
        raw = value if value is not None else b""
        rec = prediction_or_dead_letter(raw, batch.topic, batch.partition, offset, headers, now)
        if isinstance(rec, DeadLetter):
            out.dead.append(rec)
        else:
            out.by_model.setdefault(rec.model, []).append(rec)
    if metrics is not None:
        metrics.events_valid.labels(batch.topic).inc(sum(len(r) for r in out.by_model.values()))
        for dl in out.dead:
            metrics.events_invalid.labels(batch.topic, dl.reason).inc()
    return out


@dataclass(slots=True)
class DriftOutput:
    """What one step of a model's monitor produced."""

    model: str
    counts: ObserveCounts
    result: MonitorOutput
    watermark_ms: int | None


ModelInput = tuple[Source, list[PredictionRecord]]


class DriftLogic(StatefulBatchLogic[ModelInput, DriftOutput, dict[str, Any]]):
    """One model's monitor and watermark inside ``op.stateful_batch``.

    Bytewax's builder does not see the key, so the model is learnt from the first record
    (or from the resume state).
    """

    def __init__(
        self,
        cfg: RtmlConfig,
        reference: Reference | None,
        timing: DriftTiming,
        resume: dict[str, Any] | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.clock = clock
        self.timing = timing
        now = clock()
        self.monitor = DriftMonitor(cfg.drift, reference)
        self.watermark = SourceWatermark.from_timing(timing, now)
        self.model = ""
        if resume is not None:
            self.model = resume["model"]
            self.monitor.restore(resume["monitor"])
            self.watermark.restore(resume["watermark"], now)

    def _step(self, counts: ObserveCounts) -> list[DriftOutput]:
        wm = self.watermark.watermark_ms(self.clock())
        result = self.monitor.advance(wm) if wm is not None else MonitorOutput()
        if not (result or counts.records or counts.shadow or counts.late or counts.invalid):
            return []
        return [DriftOutput(self.model, counts, result, wm)]

    def on_batch(self, values: list[ModelInput]) -> tuple[list[DriftOutput], bool]:
        now = self.clock()
        counts = ObserveCounts()
        for source, records in values:
            if not self.model and records:
                self.model = records[0].model
            for rec in records:
                self.watermark.observe(source, rec.event_time_ms, now)
            counts.add(self.monitor.observe(records))
        return self._step(counts), False

    def on_notify(self) -> tuple[list[DriftOutput], bool]:
        return self._step(ObserveCounts()), False

    def notify_at(self) -> datetime | None:
        # Only idle advance (or partitions going idle) can move the watermark without input.
        if self.monitor.open_windows:
            return datetime.now(timezone.utc) + timedelta(seconds=_IDLE_TICK_S)
        return None

    def snapshot(self) -> dict[str, Any]:
        return {"model": self.model, "monitor": self.monitor.snapshot(), "watermark": self.watermark.snapshot()}


def _by_model(parsed: ParsedBatch) -> list[tuple[str, ModelInput]]:
    return [(model, (parsed.source, records)) for model, records in parsed.by_model.items()]


def _unkey(item: tuple[str, DriftOutput]) -> DriftOutput:
    return item[1]


def _alerts(out: DriftOutput) -> list[DriftAlert]:
    return out.result.alerts


def reference_from_config(cfg: RtmlConfig) -> Reference | None:
    """The configured reference file, loaded (None: pin the first full window)."""
    return load_reference(cfg.drift.reference) if cfg.drift.reference else None


def build_drift_flow(
    cfg: RtmlConfig,
    source: KafkaBatchSource,
    *,
    metrics: DriftMetrics | None = None,
    reference: Reference | None = None,
    timing: DriftTiming | None = None,
    clock: Callable[[], float] = time.time,
) -> Dataflow:
    """Wire the drift pipeline over a batch source of prediction messages.

    ``reference`` defaults to :func:`reference_from_config`; ``timing`` to
    :meth:`DriftTiming.from_config` over the source's partitions.
    """
    if not cfg.kafka.bootstrap:
        raise ValueError("build_drift_flow needs kafka.bootstrap (start a LocalStack first)")
    if reference is None:
        reference = reference_from_config(cfg)
    if timing is None:
        timing = DriftTiming.from_config(cfg, source.source_ids())

    flow = Dataflow("rtml_drift")
    raw = op.input("predictions", flow, source)
    parsed = op.map("parse", raw, lambda batch: parse_batch(batch, metrics=metrics))
    dead = op.flat_map("invalid", parsed, lambda p: p.dead)
    keyed = op.flat_map("by_model", parsed, _by_model)
    stepped = op.stateful_batch("monitor", keyed, lambda resume: DriftLogic(cfg, reference, timing, resume, clock))
    results = op.map("unkey", stepped, _unkey)
    if metrics is not None:
        op.inspect("metrics", results, lambda _step, out: metrics.observe(out.model, out.counts, out.result,
                                                                          out.watermark_ms))
    alerts = op.flat_map("alerts", results, _alerts)
    op.output("alerts_out", alerts, AlertSink(cfg.kafka.bootstrap, cfg.kafka.alerts_topic, cfg.drift.retrain_hook))
    op.output("dlq", dead, DeadLetterSink(cfg.kafka.bootstrap, cfg.pipeline.dlq_suffix, metrics))
    return flow


def flow_from_env() -> Dataflow:
    """Entry point for ``python -m bytewax.run``: Kafka source, config from the environment."""
    cfg = load_config()
    metrics = DriftMetrics()
    metrics.serve_for_process(cfg.metrics.drift_port, cfg.metrics.enabled)
    source = KafkaBatchSource.from_config(cfg, [cfg.learning.predictions_topic], metrics)
    flow = build_drift_flow(cfg, source, metrics=metrics)
    tune_gc()
    return flow
