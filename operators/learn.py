"""Operators of the learning dataflow: parse + shard, the label join, the learner update.

* :func:`parse_batch` turns one Kafka batch (predictions, labels or events) into one
  :class:`JoinInput` per join shard. Every shard gets the batch's newest event time even
  when none of its records are in it, so every shard's watermark follows every partition.
* :class:`JoinLogic` wraps a :class:`~engine.learning.join.LabelJoiner` per shard.
* :class:`LearnerLogic` wraps an :class:`~engine.learning.online.OnlineLearner` per learner:
  learn in order, report progressive metrics, raise concept-drift alerts, publish snapshots.
"""

from __future__ import annotations

import logging
import sys
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from itertools import chain
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping, Sequence, overload

from bytewax.operators import StatefulBatchLogic

from engine.alerts import DriftAlert
from engine.drift.detectors import DetectorName
from engine.events.dlq import DeadLetter
from engine.events.schemas import Interaction
from engine.events.validation import Invalid, validate_interaction, validate_label
from engine.learning.join import JoinSettings, LabelIn, LabelJoiner
from engine.learning.learners import LearnerSpec
from engine.learning.online import OnlineLearner, clean_features
from engine.learning.records import JoinedExample, PredictionRecord, prediction_or_dead_letter
from engine.learning.snapshots import publish_snapshot
from engine.metrics import LearningMetrics
from engine.runtime.placement import unsalted
from operators.sources import RawBatch

log = logging.getLogger(__name__)

TopicKind = Literal["prediction", "label", "event"]
_IDLE_TICK_S = 1.0


def shard_of(request_id: str, shards: int) -> int:
    """The join shard of a request id (stable across processes and restarts).

    >>> shard_of("r1", 4) == shard_of("r1", 4) < 4
    True
    """
    return zlib.crc32(request_id.encode()) % shards


def shard_names(shards: int) -> tuple[str, ...]:
    """The join shards' names ("0", "1", ...): their state keys in a one-process job."""
    return tuple(str(i) for i in range(shards))


@dataclass(slots=True)
class JoinInput:
    """One shard's share of one source batch."""

    source: tuple[str, int]
    max_event_ms: int | None
    predictions: list[PredictionRecord] = field(default_factory=list)
    labels: list[LabelIn] = field(default_factory=list)


@dataclass(slots=True)
class ParsedBatch:
    """A source batch split over the join shards, plus what could not be parsed."""

    items: list[tuple[str, JoinInput]]
    dead: list[DeadLetter]
    skipped_events: int = 0  # interactions that label nothing (or invalid: the features flow dead-letters those)


@dataclass(frozen=True, slots=True)
class ParseSettings:
    """What each topic holds, how labels are recognised, and the join shards' state keys.

    ``shard_keys[i]`` is shard i's key (default ``"i"``; a job of several processes salts
    them to place the shards, see :mod:`engine.runtime.placement`).
    """

    kinds: dict[str, TopicKind]
    shards: int
    implicit_labels: frozenset[str]
    max_future_ms: int
    shard_keys: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.shard_keys:
            object.__setattr__(self, "shard_keys", shard_names(self.shards))
        if len(self.shard_keys) != self.shards:
            raise ValueError("one state key per join shard")


def parse_batch(batch: RawBatch, settings: ParseSettings, now_ms: Callable[[], int] = lambda: int(time.time() * 1000)) -> ParsedBatch:
    """Decode and validate one batch; shard its records by request id."""
    kind = settings.kinds[batch.topic]
    now = now_ms()
    source = (batch.topic, batch.partition)
    shards = settings.shards
    parts = [JoinInput(source, None) for _ in range(shards)]
    only = parts[0] if shards == 1 else None  # one shard: no request-id hash to compute
    dead: list[DeadLetter] = []
    skipped = 0
    max_t: int | None = None
    for offset, value, headers in batch.messages:
        raw = value if value is not None else b""
        hdrs = tuple(headers or ())
        if kind == "prediction":
            rec = prediction_or_dead_letter(raw, batch.topic, batch.partition, offset, headers, now)
            if isinstance(rec, DeadLetter):
                dead.append(rec)
                continue
            (only or parts[shard_of(rec.request_id, shards)]).predictions.append(rec)
            t = rec.event_time_ms
        elif kind == "label":
            lab = validate_label(raw, headers, now, settings.max_future_ms)
            if lab.__class__ is Invalid:
                dead.append(DeadLetter(lab.reason, lab.detail, batch.topic, batch.partition, offset, raw, now, hdrs))  # type: ignore[union-attr]
                continue
            t = lab.event_time  # type: ignore[union-attr]
            (only or parts[shard_of(lab.request_id, shards)]).labels.append(  # type: ignore[union-attr]
                LabelIn(lab.request_id, lab.label, t, lab.item_id, False, (batch.topic, batch.partition, offset, raw, hdrs))  # type: ignore[union-attr]
            )
        else:
            ev = validate_interaction(raw, headers, now, settings.max_future_ms)
            if ev.__class__ is not Interaction:
                skipped += 1  # the features dataflow dead-letters invalid events
                continue
            t = ev.event_time  # type: ignore[union-attr]
            if ev.request_id is not None and ev.event_type in settings.implicit_labels:  # type: ignore[union-attr]
                (only or parts[shard_of(ev.request_id, shards)]).labels.append(  # type: ignore[union-attr]
                    LabelIn(ev.request_id, 1.0, t, ev.item_id, True)  # type: ignore[union-attr]
                )
            else:
                skipped += 1
        if max_t is None or t > max_t:
            max_t = t
    for part in parts:
        part.max_event_ms = max_t
    return ParsedBatch(list(zip(settings.shard_keys, parts)), dead, skipped)


@dataclass(slots=True)
class JoinOutput:
    """What one call of a join shard produced."""

    shard: str
    examples: list[JoinedExample]
    unjoined: list[DeadLetter]
    counts: dict[str, int]  # increments since the previous output
    waiting: int
    watermark_ms: int | None


class JoinLogic(StatefulBatchLogic[JoinInput, JoinOutput, dict[str, Any]]):
    """One join shard (the key is the shard number; Bytewax's builder does not see it)."""

    def __init__(
        self,
        settings: JoinSettings,
        resume: dict[str, Any] | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.clock = clock
        self.settings = settings
        self.joiner = LabelJoiner(settings, wall_now=clock())
        if resume is not None:
            self.joiner.restore(resume, clock())
        self._reported: dict[str, int] = dict(self.joiner.counts)

    def _emit(self, now: float, examples: list[JoinedExample]) -> JoinOutput:
        result = self.joiner.advance(now)
        examples.extend(result.examples)
        now_ms = int(now * 1000)
        unjoined = [
            DeadLetter(u.reason, u.detail, *u.label.origin[:4], now_ms, u.label.origin[4])  # type: ignore[misc]
            for u in self.joiner.take_unjoined()
            if u.label.origin is not None
        ]
        counts = {k: v - self._reported.get(k, 0) for k, v in self.joiner.counts.items() if v != self._reported.get(k, 0)}
        self._reported = dict(self.joiner.counts)
        return JoinOutput("", examples, unjoined, counts, self.joiner.waiting, result.watermark_ms)

    def on_batch(self, values: list[JoinInput]) -> tuple[list[JoinOutput], bool]:
        now = self.clock()
        joiner = self.joiner
        examples: list[JoinedExample] = []
        for inp in values:
            # The batch's newest time is observed once below: records need not be.
            for rec in inp.predictions:
                examples.extend(joiner.add_prediction(rec, None, now))
            for lab in inp.labels:
                examples.extend(joiner.add_label(lab, None, now))
            if inp.max_event_ms is not None:
                joiner.clock.observe(inp.source, inp.max_event_ms, now)
            else:
                joiner.heard(inp.source, now)
        return [self._emit(now, examples)], False

    def on_notify(self) -> tuple[list[JoinOutput], bool]:
        out = self._emit(self.clock(), [])
        return ([out] if out.examples or out.unjoined or out.counts else []), False

    def notify_at(self) -> datetime | None:
        # Idle advance closes windows while the input is quiet.
        if self.settings.idle_advance and self.joiner.has_waiting:
            return datetime.now(timezone.utc) + timedelta(seconds=_IDLE_TICK_S)
        return None

    def snapshot(self) -> dict[str, Any]:
        return self.joiner.snapshot()


@dataclass(frozen=True, slots=True)
class LearnSettings:
    """Learner behaviour (``learning`` and ``drift`` config)."""

    window: int
    report_every: int
    snapshot_every_examples: int
    snapshot_every_s: float
    keep_snapshots: int
    model_repository: str | None  # None: no snapshots (tests, benchmarks)
    snapshot_key: bytes | None
    detector: DetectorName
    on_drift: Literal["alert", "reset"]
    detector_grace: int = 0
    process: int = 0  # this process's index in the learning job (reports name it: its /metrics port)


@dataclass(slots=True)
class LearnOutput:
    """What one call of a learner produced."""

    learner: str
    reports: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[DriftAlert] = field(default_factory=list)
    learned: int = 0
    snapshot_version: str | None = None


class RowDicts(Sequence[dict[str, Any]]):
    """Feature dicts made on demand from value tuples and their (interned) name tuples.

    What a :class:`LearnerBatch` holds after crossing processes. Each dict is made as the
    learner reaches it, so it is still in cache when the model reads it and freed right after
    (making all of a large batch up front cost the learner ~0.6 µs more an example).
    """

    __slots__ = ("names", "rows")

    def __init__(self, names: list[tuple[str, ...]], rows: list[tuple[Any, ...]]) -> None:
        self.names = names  # per example: one of a few shared tuples
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return map(dict, map(zip, self.names, self.rows))

    @overload
    def __getitem__(self, i: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, i: slice) -> "RowDicts": ...
    def __getitem__(self, i: int | slice) -> "dict[str, Any] | RowDicts":
        if isinstance(i, slice):
            return RowDicts(self.names[i], self.rows[i])
        return dict(zip(self.names[i], self.rows[i]))

    def take(self, order: Sequence[int]) -> "RowDicts":
        return RowDicts([self.names[i] for i in order], [self.rows[i] for i in order])


def _concat(parts: list[Sequence[dict[str, Any]]]) -> Sequence[dict[str, Any]]:
    if all(isinstance(p, RowDicts) for p in parts):
        return RowDicts([n for p in parts for n in p.names], [r for p in parts for r in p.rows])  # type: ignore[union-attr]
    return [v for p in parts for v in p]


def _take(values: Sequence[dict[str, Any]], order: Sequence[int]) -> Sequence[dict[str, Any]]:
    return values.take(order) if isinstance(values, RowDicts) else [values[i] for i in order]


# Pickled form of a LearnerBatch: the distinct name tuples, the one of each example (None:
# all share the first), value tuples, labels, label times, clean.
_LearnerBatchState = tuple[list[tuple[str, ...]], "list[int] | None", list[tuple[Any, ...]], list[float], list[int],
                           bool]


@dataclass(slots=True)
class LearnerBatch:
    """A learner's share of one join output, as columns: what learning reads, nothing more.

    ``label_times`` are the examples' label times, the learning order. ``clean``: every value
    is a dict of finite floats (:func:`~engine.learning.online.clean_features`), checked by
    :meth:`of` in the process that joins, so the learner takes the dicts as they are.

    It crosses processes when the learner runs in a process of its own. Each distinct list of
    feature names travels once, each example as a tuple of values, and the receiving side
    holds them as :class:`RowDicts` whose names are *interned*. That matters: River's models
    keep per-feature state in dicts, and a lookup with the very key object a dict holds skips
    the string comparison; with fresh key objects in every batch the model itself ran ~20%
    slower.
    """

    values: Sequence[dict[str, Any]]
    labels: list[float]
    label_times: list[int]
    clean: bool = False

    @classmethod
    def of(cls, examples: list[JoinedExample]) -> "LearnerBatch":
        values = [ex.prediction.features for ex in examples]
        return cls(values, [ex.label for ex in examples], [ex.label_time_ms for ex in examples],
                   all(map(clean_features, values)))

    def feature_names(self) -> list[str]:
        """Every feature name of the batch, in the order first seen."""
        values = self.values
        source = dict.fromkeys(values.names) if isinstance(values, RowDicts) else values
        return list(dict.fromkeys(chain.from_iterable(source)))

    @classmethod
    def in_label_time_order(cls, batches: list["LearnerBatch"]) -> "LearnerBatch":
        """One batch of all, ordered by label time (stable: one shard's examples keep their order)."""
        if len(batches) == 1:
            merged = batches[0]
        else:
            merged = cls(_concat([b.values for b in batches]), [y for b in batches for y in b.labels],
                         [t for b in batches for t in b.label_times], all(b.clean for b in batches))
        times = merged.label_times
        if all(a <= b for a, b in zip(times, times[1:])):
            return merged
        order = sorted(range(len(times)), key=times.__getitem__)
        return cls(_take(merged.values, order), [merged.labels[i] for i in order], [times[i] for i in order],
                   merged.clean)

    def __getstate__(self) -> _LearnerBatchState:
        values = self.values
        if isinstance(values, RowDicts):
            names, rows = values.names, values.rows
        else:
            names = list(map(tuple, values))
            rows = list(map(tuple, map(dict.values, values)))
        layouts = list(dict.fromkeys(names))
        # One layout (the usual case: one model's features) needs no per-example index.
        layout_of = None if len(layouts) == 1 else [{n: i for i, n in enumerate(layouts)}[k] for k in names]
        return layouts, layout_of, rows, self.labels, self.label_times, self.clean

    def __setstate__(self, state: _LearnerBatchState) -> None:
        layouts, layout_of, rows, self.labels, self.label_times, self.clean = state
        interned = [tuple(map(sys.intern, layout)) for layout in layouts]
        names = [interned[0]] * len(rows) if layout_of is None else [interned[i] for i in layout_of]
        self.values = RowDicts(names, rows)


# Routed examples: the learner's name and its batch (the builder does not see the key).
LearnerInput = tuple[str, LearnerBatch]


class LearnerLogic(StatefulBatchLogic[LearnerInput, LearnOutput, OnlineLearner]):
    """One learner (the key is the learner's name).

    Each batch is learnt in label-time order (a stable sort: examples of one join shard keep
    their order), so the order does not depend on how Bytewax interleaves the join shards.
    """

    def __init__(
        self,
        specs: Mapping[str, LearnerSpec],
        settings: LearnSettings,
        resume: OnlineLearner | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.specs = specs
        self.settings = settings
        self.clock = clock
        self.learner: OnlineLearner | None = None
        self._window_start_ms: int | None = None
        if resume is not None:
            self._init(resume)

    def _init(self, learner: OnlineLearner) -> OnlineLearner:
        self.learner = learner
        self.spec = learner.spec
        every = self.settings.report_every
        self._next_report = (learner.seen // every + 1) * every
        return learner

    def on_batch(self, values: list[LearnerInput]) -> tuple[list[LearnOutput], bool]:
        learner = self.learner
        if learner is None:
            s = self.settings
            learner = self._init(OnlineLearner(self.specs[values[0][0]], window=s.window, detector=s.detector,
                                               on_drift=s.on_drift, detector_grace=s.detector_grace))
        out = LearnOutput(self.spec.name)
        batch = LearnerBatch.in_label_time_order([b for _, b in values])
        if batch.clean:
            learner.note_features(batch.feature_names())
        times = batch.label_times
        at = 0
        # Learn in runs that end at each report (and, with on_drift="reset", at each drift),
        # so a report sees exactly the examples before it; an alert's metrics are its own.
        while at < len(times):
            if self._window_start_ms is None:
                self._window_start_ms = times[at]

            def alert(index: int, seen: int, offset: int = at) -> None:
                out.alerts.append(self._concept_alert(times[offset + index], seen))
                # The next alert's window starts after this one (or at the next run).
                self._window_start_ms = times[offset + index + 1] if offset + index + 1 < len(times) else None

            at += learner.learn_many(batch.values[at:], batch.labels[at:], self._next_report, clean=batch.clean,
                                     on_drift=alert)
            if learner.seen >= self._next_report:
                out.reports.append(self._report())
                self._next_report += self.settings.report_every
        out.learned = len(times)
        now = self.clock()
        s = self.settings
        if s.model_repository and learner.snapshot_due(s.snapshot_every_examples, s.snapshot_every_s, now):
            out.snapshot_version = self._publish(now)
        return [out], False

    def _report(self) -> dict[str, Any]:
        assert self.learner is not None
        return {**self.learner.report(), "process": self.settings.process, "at_ms": int(self.clock() * 1000)}

    def _concept_alert(self, label_time_ms: int, seen: int) -> DriftAlert:
        learner = self.learner
        assert learner is not None
        rolling = learner.validation.report()["rolling"]
        error = None if rolling["accuracy"] is None else 1.0 - rolling["accuracy"]
        return DriftAlert(
            kind="concept_drift",
            model=self.spec.name,
            feature="error",
            statistic=f"{self.settings.detector}_error_rise",
            value=float(error) if error is not None else float("nan"),
            threshold=0.0,
            window_start_ms=self._window_start_ms or label_time_ms,
            window_end_ms=label_time_ms,
            at_ms=int(self.clock() * 1000),
            details={
                "detector": repr(learner.detector),
                "examples_seen": seen,
                "rolling_error_window": rolling["n"],
                "reaction": self.settings.on_drift,
            },
            severity="critical",
        )

    def _publish(self, now: float) -> str | None:
        learner = self.learner
        assert learner is not None
        s = self.settings
        try:
            version = publish_snapshot(
                s.model_repository or "", self.spec.name, learner.model,
                features=learner.features, kind=self.spec.kind, key=s.snapshot_key,
                metadata={"examples": learner.seen, "metrics": learner.validation.report()}, keep=s.keep_snapshots,
            )
        except (OSError, ValueError) as exc:
            # The learner keeps learning; the next due snapshot tries again.
            log.warning("snapshot of learner %s to %s failed: %s", self.spec.name, s.model_repository, exc)
            return None
        learner.mark_snapshot(now)
        return version

    def snapshot(self) -> OnlineLearner:
        assert self.learner is not None
        return self.learner


def model_repository_path(path: str | None) -> str | None:
    """The snapshot directory, created if needed (None stays None)."""
    if path is None:
        return None
    Path(path).mkdir(parents=True, exist_ok=True)
    return path


def record_join(keyed: tuple[str, JoinOutput], metrics: LearningMetrics | None) -> JoinOutput:
    """Name the output's shard and count it in Prometheus."""
    shard, out = keyed
    out.shard = unsalted(shard)  # the shard's number, without a placement salt
    if metrics is not None:
        for outcome, n in out.counts.items():
            metrics.join_outcomes.labels(outcome).inc(n)
        metrics.join_waiting.labels(out.shard).set(out.waiting)
        if out.watermark_ms is not None:
            metrics.join_watermark_ms.labels(out.shard).set(out.watermark_ms)
    return out


def record_learn(keyed: tuple[str, LearnOutput], metrics: LearningMetrics | None) -> LearnOutput:
    """Count a learner output in Prometheus."""
    out = keyed[1]
    if metrics is not None:
        name = out.learner
        metrics.examples_learned.labels(name).inc(out.learned)
        if out.alerts:
            metrics.concept_drifts.labels(name).inc(len(out.alerts))
        if out.snapshot_version is not None:
            metrics.snapshots.labels(name).inc()
        if out.reports:
            report = out.reports[-1]
            for metric in ("accuracy", "log_loss", "auc_approx"):
                if report.get(metric) is not None:
                    metrics.learner_metric.labels(name, metric, "stream").set(report[metric])
            for metric in ("accuracy", "log_loss", "auc"):
                if report["rolling"].get(metric) is not None:
                    metrics.learner_metric.labels(name, metric, "rolling").set(report["rolling"][metric])
    return out
