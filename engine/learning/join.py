"""The label join: logged predictions meet their outcomes inside an event-time label window.

In the manner of Facebook's online joiner, every prediction waits up to
``label_window_ms`` (event time) for its outcome, matched by ``request_id``:

* an explicit label (the ``labels`` topic) or an implicit one (an interaction such as a
  click that carries the prediction's ``request_id``) joins at once and the example is
  emitted; the label's ``item_id``, when set, must match the prediction's;
* a prediction whose window closes (the watermark passes ``prediction time + window``)
  without an outcome becomes a negative example (``unlabeled="negative"``) or is dropped
  and counted (``"drop"``);
* a label can arrive before its prediction (the topics are read independently): it waits
  until the watermark passes its own time, since no on-time prediction it could belong to
  can arrive after that.

Labels that cannot join are never lost. An explicit label is returned as an
:class:`Unjoined` with a reason, for the ``labels.unjoined`` topic:

* ``late``: its prediction's window had already closed, or the label's time is past it;
* ``conflict``: a second label for an already joined prediction, with a different value
  (an agreeing one, e.g. the explicit label after the click, is only counted as
  ``duplicate``);
* ``unmatched``: no prediction with its request id arrived in time.

Implicit labels that cannot join are only counted: they are ordinary interactions, kept in
the events topic, and most clicks do not answer a logged prediction.

The watermark is the slowest active source partition's newest event time minus
``out_of_orderness_ms`` (:class:`~engine.watermark.SourceWatermark`).

>>> from engine.learning.records import PredictionRecord
>>> j = LabelJoiner(JoinSettings(label_window_ms=10_000, out_of_orderness_ms=0))
>>> p1 = PredictionRecord("r1", "ctr", "1", "primary", 1_000, 0.3)
>>> p2 = PredictionRecord("r2", "ctr", "1", "primary", 2_000, 0.6)
>>> j.add_prediction(p1, "src", 0.0) + j.add_prediction(p2, "src", 0.0)
[]
>>> [(e.prediction.request_id, e.label) for e in j.add_label(LabelIn("r2", 1.0, 3_000), "src", 0.0)]
[('r2', 1.0)]
>>> out = j.advance(wall_now=0.0)  # watermark 3000: nothing closes yet
>>> j.add_prediction(PredictionRecord("r3", "ctr", "1", "primary", 12_000, 0.1), "src", 0.0)
[]
>>> [(e.prediction.request_id, e.label, e.label_source) for e in j.advance(wall_now=0.0).examples]
[('r1', 0.0, 'window_closed')]
>>> j.add_label(LabelIn("r1", 1.0, 12_500, origin=("labels", 0, 7, b"{}", ())), "src", 0.0)
[]
>>> [(u.reason, u.label.request_id) for u in j.take_unjoined()]
[('late', 'r1')]
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Hashable, Literal

from engine.learning.records import JoinedExample, LabelSource, PredictionRecord
from engine.watermark import SourceWatermark

# Where a record came from: topic, partition, offset, original bytes, headers.
Origin = tuple[str, int, int, bytes, tuple[tuple[str, bytes], ...]]
UnjoinedReason = Literal["late", "conflict", "unmatched"]


@dataclass(frozen=True, slots=True)
class JoinSettings:
    """Timing and policy of the join (``learning`` config)."""

    label_window_ms: int
    out_of_orderness_ms: int
    unlabeled: Literal["negative", "drop"] = "negative"
    source_idle_ms: int = 10_000
    idle_advance: bool = False
    sources: tuple[Hashable, ...] = ()


@dataclass(slots=True)
class LabelIn:
    """An outcome for ``request_id``: explicit (``labels`` topic) or implicit (an interaction)."""

    request_id: str
    value: float
    event_time_ms: int
    item_id: str | None = None
    implicit: bool = False
    origin: Origin | None = None  # set for explicit labels, to route them when unjoined
    joined: bool = False  # joined at least one prediction (a label may join primary and shadow)

    def matches(self, prediction: PredictionRecord) -> bool:
        """Same request; and the same item when both name one (a bandit decision's item is its arm,
        so a click on one slot of a several-arm decision rewards that slot only)."""
        if self.item_id is None:
            return True
        item = prediction.item_id
        if item is None and prediction.arm is not None:
            item = str(prediction.arm)
        return item is None or item == self.item_id


@dataclass(slots=True)
class Unjoined:
    """An explicit label that could not join, with why."""

    reason: UnjoinedReason
    detail: str
    label: LabelIn


@dataclass(slots=True)
class JoinResult:
    """What one :meth:`LabelJoiner.advance` produced."""

    examples: list[JoinedExample] = field(default_factory=list)
    watermark_ms: int | None = None


@dataclass(slots=True)
class _Pending:
    prediction: PredictionRecord
    deadline_ms: int
    label: float | None = None  # set once joined (kept until the deadline to spot duplicates)


class LabelJoiner:
    """Joins predictions with labels by request id within an event-time window."""

    def __init__(self, settings: JoinSettings, wall_now: float = 0.0) -> None:
        self.settings = settings
        self.clock = SourceWatermark.from_timing(settings, wall_now)
        self._pending: dict[str, list[_Pending]] = {}
        self._deadlines: list[tuple[int, str]] = []  # (deadline, request id), a min-heap
        # Request ids whose window closed, until one more window passes: a label for them is late.
        self._closed: dict[str, int] = {}
        self._closed_order: list[tuple[int, str]] = []
        self._early: dict[str, list[LabelIn]] = {}  # labels waiting for their prediction
        self._early_order: list[tuple[int, str]] = []
        self._unjoined: list[Unjoined] = []
        self.counts: Counter[str] = Counter()

    # -- input --------------------------------------------------------------------------

    def add_prediction(
        self, prediction: PredictionRecord, source: Hashable | None, wall_now: float
    ) -> list[JoinedExample]:
        """Hold a prediction for its window; join labels that arrived before it.

        ``source`` (its partition) advances the watermark; None when the caller observes a
        whole batch's newest time itself (:meth:`SourceWatermark.observe` on ``clock``).
        """
        t = prediction.event_time_ms
        if source is not None:
            self.clock.observe(source, t, wall_now)
        self.counts["predictions"] += 1
        pending = _Pending(prediction, t + self.settings.label_window_ms)
        rid = prediction.request_id
        out: list[JoinedExample] = []
        # A label that came first joins every prediction of its request it matches (the primary
        # and a shadow share the request id), so it stays until it expires.
        for label in self._early.get(rid, ()):
            if not label.matches(prediction):
                continue
            if label.event_time_ms > pending.deadline_ms:
                if not label.joined:
                    self._route(label, "late", f"label at {label.event_time_ms} is after its prediction's window")
            elif pending.label is None:
                out.append(self._join(pending, label))
            elif pending.label == label.value:
                self.counts["duplicate"] += 1
            elif not label.joined:
                self._route(label, "conflict", "its prediction already joined with a different label")
            label.joined = True  # dealt with: never routed as unmatched
        self._pending.setdefault(rid, []).append(pending)
        heapq.heappush(self._deadlines, (pending.deadline_ms, rid))
        return out

    def add_label(self, label: LabelIn, source: Hashable | None, wall_now: float) -> list[JoinedExample]:
        """Join a label with its waiting prediction(s), or hold / route it (``source`` as above)."""
        if source is not None:
            self.clock.observe(source, label.event_time_ms, wall_now)
        self.counts["labels_implicit" if label.implicit else "labels"] += 1
        rid = label.request_id
        waiting = self._pending.get(rid)
        out: list[JoinedExample] = []
        matched = late = conflict = duplicate = False
        for pending in waiting or ():
            if not label.matches(pending.prediction):
                continue
            matched = True
            if label.event_time_ms > pending.deadline_ms:
                late = True
            elif pending.label is None:
                out.append(self._join(pending, label))
            elif pending.label == label.value:
                duplicate = True
            else:
                conflict = True
        if matched:
            if out:
                label.joined = True
            elif late:
                self._route(label, "late", f"label at {label.event_time_ms} is after its prediction's window")
            elif conflict:
                self._route(label, "conflict", "its prediction already joined with a different label")
            elif duplicate:
                self.counts["duplicate"] += 1
            return out
        if rid in self._closed:
            self._route(label, "late", f"the label window of request {rid} closed at {self._closed[rid]}")
            return out
        self._early.setdefault(rid, []).append(label)
        heapq.heappush(self._early_order, (label.event_time_ms, rid))
        return out

    def heard(self, source: Hashable, wall_now: float) -> None:
        """A source delivered records that carry no usable event time: it is still alive."""
        self.clock.heard(source, wall_now)

    # -- time -----------------------------------------------------------------------------

    def advance(self, wall_now: float) -> JoinResult:
        """Close the windows the watermark has passed; expire early labels and old tombstones."""
        wm = self.clock.watermark_ms(wall_now)
        result = JoinResult(watermark_ms=wm)
        if wm is None:
            return result
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= wm:
            deadline, rid = heapq.heappop(deadlines)
            waiting = self._pending.get(rid)
            if not waiting:
                continue
            keep = [p for p in waiting if p.deadline_ms > wm]
            for p in waiting:
                if p.deadline_ms > wm:
                    continue
                if p.label is None:
                    if self.settings.unlabeled == "negative":
                        result.examples.append(JoinedExample(p.prediction, 0.0, "window_closed", p.deadline_ms))
                        self.counts["negatives"] += 1
                    else:
                        self.counts["dropped_unlabeled"] += 1
            if keep:
                self._pending[rid] = keep
            else:
                del self._pending[rid]
                self._closed[rid] = deadline
                heapq.heappush(self._closed_order, (deadline + self.settings.label_window_ms, rid))
        while self._closed_order and self._closed_order[0][0] <= wm:
            _, rid = heapq.heappop(self._closed_order)
            if rid not in self._pending:
                self._closed.pop(rid, None)
        # No on-time prediction at or before a label's time can arrive once the watermark passed it.
        early_order = self._early_order
        while early_order and early_order[0][0] < wm:
            t, rid = heapq.heappop(early_order)
            labels = self._early.get(rid)
            if not labels:
                continue
            expired = [lab for lab in labels if lab.event_time_ms < wm]
            rest = [lab for lab in labels if lab.event_time_ms >= wm]
            for lab in expired:
                if not lab.joined:
                    self._route(lab, "unmatched", f"no prediction with request id {rid} arrived by watermark {wm}")
            if rest:
                self._early[rid] = rest
            else:
                del self._early[rid]
        return result

    def take_unjoined(self) -> list[Unjoined]:
        """Explicit labels that could not join since the last call."""
        out, self._unjoined = self._unjoined, []
        return out

    @property
    def waiting(self) -> int:
        """Predictions still waiting for a label or their window to close."""
        return sum(len(v) for v in self._pending.values())

    @property
    def has_waiting(self) -> bool:
        """Whether any prediction waits (O(1), for Bytewax's frequent wake-up checks)."""
        return bool(self._pending)

    # -- internals ------------------------------------------------------------------------

    def _join(self, pending: _Pending, label: LabelIn) -> JoinedExample:
        pending.label = label.value
        source: LabelSource = "implicit" if label.implicit else "label"
        self.counts["joined"] += 1
        return JoinedExample(pending.prediction, label.value, source, label.event_time_ms)

    def _route(self, label: LabelIn, reason: UnjoinedReason, detail: str) -> None:
        kind = "implicit" if label.implicit else "explicit"
        self.counts[f"{reason}_{kind}"] += 1
        if not label.implicit:
            self._unjoined.append(Unjoined(reason, detail, label))

    # -- recovery -------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Plain, picklable state."""
        return {
            "clock": self.clock.snapshot(),
            "pending": self._pending,
            "deadlines": self._deadlines,
            "closed": self._closed,
            "closed_order": self._closed_order,
            "early": self._early,
            "early_order": self._early_order,
            "unjoined": self._unjoined,
            "counts": dict(self.counts),
        }

    def restore(self, state: dict[str, Any], wall_now: float) -> None:
        """Load a :meth:`snapshot`."""
        self.clock.restore(state["clock"], wall_now)
        self._pending = state["pending"]
        self._deadlines = state["deadlines"]
        self._closed = state["closed"]
        self._closed_order = state["closed_order"]
        self._early = state["early"]
        self._early_order = state["early_order"]
        self._unjoined = state["unjoined"]
        self.counts = Counter(state["counts"])
