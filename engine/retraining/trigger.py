"""When to retrain: a schedule and drift alerts, with a cooldown and one pending request.

The policy is pure (no I/O, the clock is passed in), so the watcher (:mod:`engine.retraining.watch`)
and the tests drive it the same way. An alert starts a run when it is a drift alert for the
retrained model, of a kind listed in ``retraining.on_alerts``, at least ``min_severity``, and
no run finished within ``cooldown_s``. Alerts that arrive while a run is in progress collapse
into one pending request (the reasons are kept): a burst of per-feature alerts from one
drifted window becomes one retraining, not twenty. Alerts that arrived during a run start
one more run once the cooldown has passed (the drift outlived the data the run used).

>>> policy = RetrainPolicy(model="ctr", on_alerts=frozenset({"concept_drift"}), cooldown_s=600)
>>> trigger = RetrainTrigger(policy)
>>> trigger.offer({"kind": "concept_drift", "model": "ctr", "feature": "error", "statistic": "hddm_a",
...                "value": 0.3, "severity": "warning"}, now=1000.0)
True
>>> trigger.take(now=1000.0)
['concept_drift on ctr (error, hddm_a=0.3, warning)']
>>> trigger.finished(now=1060.0)
>>> trigger.offer({"kind": "concept_drift", "model": "ctr", "severity": "critical"}, now=1200.0)  # cooldown
False
>>> trigger.offer({"kind": "input_stalled", "message": "no input"}, now=5000.0)  # not a drift alert
False
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from engine.config import RetrainingConfig

_SEVERITY_RANK = {"warning": 0, "critical": 1}


@dataclass(frozen=True)
class RetrainPolicy:
    """What starts a retraining run of ``model`` (see the module docstring)."""

    model: str
    on_alerts: frozenset[str] = frozenset({"concept_drift", "prediction_drift"})
    min_severity: str = "warning"
    cooldown_s: float = 600.0
    schedule_s: float | None = None

    @classmethod
    def from_config(cls, cfg: RetrainingConfig) -> "RetrainPolicy":
        return cls(cfg.model, frozenset(cfg.on_alerts), cfg.min_severity, cfg.cooldown_s, cfg.schedule_s)


def describe_alert(alert: Mapping[str, Any]) -> str:
    """A one-line reason naming the alert, for logs and the registry's metadata."""
    detail = ", ".join(
        part
        for part in (
            str(alert["feature"]) if alert.get("feature") else "",
            f"{alert['statistic']}={alert['value']:.4g}" if alert.get("statistic") and _is_number(alert.get("value")) else "",
            str(alert.get("severity") or ""),
        )
        if part
    )
    return f"{alert.get('kind')} on {alert.get('model')}" + (f" ({detail})" if detail else "")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class RetrainTrigger:
    """Decides when a run starts; remembers the last run and what is pending."""

    policy: RetrainPolicy
    last_finished: float | None = None  # wall-clock seconds of the last finished run
    pending: list[str] = field(default_factory=list)
    running: bool = False

    def matches(self, alert: Mapping[str, Any]) -> bool:
        """True for a drift alert of the policy's model, kinds and severity."""
        if alert.get("model") != self.policy.model or alert.get("kind") not in self.policy.on_alerts:
            return False
        severity = _SEVERITY_RANK.get(str(alert.get("severity")), -1)
        return severity >= _SEVERITY_RANK[self.policy.min_severity]

    def in_cooldown(self, now: float) -> bool:
        return self.last_finished is not None and now - self.last_finished < self.policy.cooldown_s

    def offer(self, alert: Mapping[str, Any], now: float) -> bool:
        """Consider one alert; True when it asks for a run (now or after the current one)."""
        if not self.matches(alert) or self.in_cooldown(now):
            return False
        self.pending.append(describe_alert(alert))
        return True

    def schedule_due(self, now: float, started_at: float) -> bool:
        """True when the schedule asks for a run (``started_at``: when watching began)."""
        every = self.policy.schedule_s
        if every is None:
            return False
        since = self.last_finished if self.last_finished is not None else started_at
        return now - since >= every

    def take(self, now: float, started_at: float | None = None) -> list[str] | None:
        """The reasons of the run to start now, or None. Marks the trigger as running."""
        if self.running or self.in_cooldown(now):
            return None
        reasons = list(self.pending)
        if not reasons and started_at is not None and self.schedule_due(now, started_at):
            reasons = [f"schedule (every {self.policy.schedule_s:g} s)"]
        if not reasons:
            return None
        self.pending.clear()
        self.running = True
        return reasons

    def finished(self, now: float) -> None:
        """A run ended (successfully or not): the cooldown starts now."""
        self.running = False
        self.last_finished = now
