"""The records the learning side reads and writes: logged predictions and joined examples.

A *prediction record* is what serving publishes to the ``predictions`` topic (see
:mod:`serving.predictions_log`); a bandit decision (the ``Choose`` RPC) is a prediction record
too, with ``arm`` (and ``context`` for a contextual policy) set. A *joined example* is a
prediction together with its outcome, as the label join emits it.

>>> rec = parse_prediction(b'{"request_id": "r1", "model": "ctr", "version": "3", "variant": "primary",'
...     b' "entity_ids": {"user_id": "u1", "item_id": "i9"}, "features": {"user.clicks_1h": 2.0},'
...     b' "score": 0.4, "event_time_ms": 1767225661000}')
>>> rec.item_id, rec.features["user.clicks_1h"]
('i9', 2.0)
>>> parse_prediction(b'{"model": "ctr"}')
Traceback (most recent call last):
...
engine.learning.records.BadRecord: missing_field: request_id is required (a non-empty string)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import orjson

from engine.events.dlq import DeadLetter

LabelSource = Literal["label", "implicit", "window_closed"]


class BadRecord(ValueError):
    """A record that cannot be used; ``reason`` is a short code for the DLQ header."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(slots=True)
class PredictionRecord:
    """One logged prediction (one instance of a Predict call, or one bandit decision)."""

    request_id: str
    model: str
    version: str
    variant: str
    event_time_ms: int
    score: float | None
    features: dict[str, Any] = field(default_factory=dict)
    entity_ids: dict[str, str] = field(default_factory=dict)
    arm: str | int | None = None  # bandit decisions only
    context: list[float] | None = None  # contextual bandit decisions only

    @property
    def item_id(self) -> str | None:
        return self.entity_ids.get("item_id")

    @property
    def user_id(self) -> str | None:
        return self.entity_ids.get("user_id")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "request_id": self.request_id,
            "model": self.model,
            "version": self.version,
            "variant": self.variant,
            "event_time_ms": self.event_time_ms,
            "score": self.score,
            "features": self.features,
            "entity_ids": self.entity_ids,
        }
        if self.arm is not None:
            out["arm"] = self.arm
        if self.context is not None:
            out["context"] = self.context
        return out


def _text(d: dict[str, Any], name: str, required: bool = True, default: str = "") -> str:
    value = d.get(name)
    if value is None:
        if required:
            raise BadRecord("missing_field", f"{name} is required (a non-empty string)")
        return default
    if not isinstance(value, str) or (required and not value):
        raise BadRecord("wrong_type", f"{name} must be a non-empty string, got {value!r}")
    return value


def _number_or_none(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRecord("wrong_type", f"{name} must be a finite number, got {value!r}")
    return float(value)


def prediction_from_dict(d: Any) -> PredictionRecord:
    """Validate a decoded prediction record. Raises :class:`BadRecord`."""
    if not isinstance(d, dict):
        raise BadRecord("wrong_type", f"a prediction record is a JSON object, got {type(d).__name__}")
    request_id = _text(d, "request_id")
    model = _text(d, "model")
    version_value = d.get("version")
    # A producer other than rtml serve may write the version as a number.
    if isinstance(version_value, (int, float)) and not isinstance(version_value, bool):
        version = str(version_value)
    else:
        version = _text(d, "version", required=False)
    variant = _text(d, "variant", required=False, default="primary")
    t = d.get("event_time_ms")
    if isinstance(t, bool) or not isinstance(t, int) or t <= 0:
        raise BadRecord("missing_field" if t is None else "wrong_type", f"event_time_ms must be a positive int, got {t!r}")
    score = _number_or_none(d.get("score"), "score")
    features = d.get("features") or {}
    if not isinstance(features, dict):
        raise BadRecord("wrong_type", f"features must be an object, got {type(features).__name__}")
    entity_ids = d.get("entity_ids") or {}
    if entity_ids.__class__ is not dict:
        raise BadRecord("wrong_type", "entity_ids must be an object of strings")
    for v in entity_ids.values():
        if v.__class__ is not str:
            raise BadRecord("wrong_type", "entity_ids must be an object of strings")
    arm = d.get("arm")
    if arm is not None and (isinstance(arm, bool) or not isinstance(arm, (str, int))):
        raise BadRecord("wrong_type", f"arm must be a string or int, got {arm!r}")
    context = d.get("context")
    if context is not None:
        if not isinstance(context, list) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in context
        ):
            raise BadRecord("wrong_type", "context must be a list of finite numbers")
        context = [float(v) for v in context]
    return PredictionRecord(request_id, model, version, variant, t, score, features, entity_ids, arm, context)


def parse_prediction(raw: bytes) -> PredictionRecord:
    """Decode and validate one ``predictions`` message. Raises :class:`BadRecord`."""
    try:
        d = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRecord("undecodable", f"not JSON: {exc}") from None
    return prediction_from_dict(d)


def prediction_or_dead_letter(
    raw: bytes, topic: str, partition: int, offset: int, headers: Sequence[tuple[str, bytes]] | None, now_ms: int
) -> PredictionRecord | DeadLetter:
    """One ``predictions`` message as a record, or as a dead letter with the reason (never raises)."""
    try:
        return parse_prediction(raw)
    except BadRecord as exc:
        return DeadLetter(exc.reason, exc.detail, topic, partition, offset, raw, now_ms, tuple(headers or ()))


@dataclass(slots=True)
class JoinedExample:
    """A prediction with its outcome.

    ``label`` is 1.0/0.0 (or the label's value); ``label_source`` says where it came from:
    an explicit ``labels`` message, an implicit one (a click carrying the request id), or the
    label window closing without one (``window_closed``, emitted only when unlabeled
    predictions count as negatives). ``label_time_ms`` is the outcome's event time (the
    window's end for ``window_closed``).
    """

    prediction: PredictionRecord
    label: float
    label_source: LabelSource
    label_time_ms: int

    @property
    def features(self) -> dict[str, Any]:
        """The features serving used: learning sees what serving saw."""
        return self.prediction.features
