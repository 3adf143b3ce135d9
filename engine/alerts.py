"""Alerts: one record shape for drift, a Kafka publisher for the ``alerts`` topic, and the hook.

Every drift alert (data drift per feature, prediction drift, concept drift on the error
stream) is a :class:`DriftAlert`; it is published as one JSON message to the ``alerts`` topic
(keyed by model) and handed to the configured retraining hook, a ``"module:function"`` that
receives the alert (see :func:`load_hook`). The supervisor's stall alerts go through the same
:class:`AlertPublisher`.

>>> alert = DriftAlert("data_drift", "ranker", "user.clicks_1h", "psi", 0.31, 0.2,
...                    window_start_ms=0, window_end_ms=60_000, at_ms=60_500)
>>> alert.severity
'warning'
>>> sorted(alert.to_dict())[:4]
['at_ms', 'details', 'feature', 'kind']
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal, Mapping

import orjson

log = logging.getLogger(__name__)

AlertKind = Literal["data_drift", "prediction_drift", "concept_drift"]
Severity = Literal["warning", "critical"]
# Statistics where a *smaller* value means drift (a p-value); the others alert above threshold.
_SMALLER_IS_WORSE = frozenset({"ks_p_value"})


def severity_of(statistic: str, value: float, threshold: float) -> Severity:
    """``critical`` when the statistic is twice as far past its threshold, else ``warning``.

    >>> severity_of("psi", 0.25, 0.2), severity_of("psi", 0.5, 0.2)
    ('warning', 'critical')
    >>> severity_of("ks_p_value", 0.001, 0.01)
    'critical'
    """
    if statistic in _SMALLER_IS_WORSE:
        return "critical" if value * 2 <= threshold else "warning"
    return "critical" if value >= 2 * threshold else "warning"


@dataclass(frozen=True)
class DriftAlert:
    """One drift finding.

    ``feature`` is the feature source (``user.clicks_1h``), ``"score"`` for prediction
    drift, or ``"error"`` for concept drift. ``details`` records how the value was computed
    (binning, epsilon, KS method, sample sizes, detector), so numbers can be compared with
    other tools.
    """

    kind: AlertKind
    model: str
    feature: str
    statistic: str
    value: float
    threshold: float
    window_start_ms: int
    window_end_ms: int
    at_ms: int
    details: dict[str, Any] = field(default_factory=dict)
    severity: Severity | None = None  # None: derived from value and threshold

    def __post_init__(self) -> None:
        if self.severity is None:
            object.__setattr__(self, "severity", severity_of(self.statistic, self.value, self.threshold))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict(), option=orjson.OPT_SERIALIZE_NUMPY)


AlertHook = Callable[[DriftAlert], None]


def load_hook(spec: str | None) -> AlertHook | None:
    """Import ``"package.module:function"``; None for an empty spec.

    >>> load_hook(None) is None
    True
    >>> load_hook("json:dumps").__name__
    'dumps'
    """
    if not spec:
        return None
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"hook {spec!r} must be 'package.module:function'")
    target: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"hook {spec!r} is not callable")
    return target


class AlertPublisher:
    """Publishes alerts (JSON) to a Kafka topic and calls an optional hook for drift alerts.

    A failing hook is logged and never stops the caller (a dataflow must keep running).
    ``bootstrap=None`` only calls the hook (tests, or Kafka-less tools).
    """

    def __init__(self, bootstrap: str | None, topic: str, hook: AlertHook | None = None) -> None:
        self.topic = topic
        self.hook = hook
        self._producer: Any = None
        if bootstrap:
            from confluent_kafka import Producer

            self._producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})

    def publish(self, alert: DriftAlert | Mapping[str, Any], key: str | None = None) -> None:
        """Queue ``alert`` for the topic; call the hook for a :class:`DriftAlert`."""
        if isinstance(alert, DriftAlert):
            payload, key = alert.to_json(), key or alert.model
        else:
            payload = orjson.dumps(dict(alert), option=orjson.OPT_SERIALIZE_NUMPY)
        if self._producer is not None:
            self._producer.produce(self.topic, payload, key=key)
            self._producer.poll(0)
        if isinstance(alert, DriftAlert) and self.hook is not None:
            try:
                self.hook(alert)
            except Exception:
                log.exception("alert hook %r failed on %s alert for %s", self.hook, alert.kind, alert.model)

    def flush(self, timeout_s: float = 5.0) -> int:
        """Wait for queued alerts; returns how many are still undelivered."""
        return 0 if self._producer is None else self._producer.flush(timeout_s)
