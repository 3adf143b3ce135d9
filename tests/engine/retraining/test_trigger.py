"""The retraining policy: which alerts start a run, cooldown, coalescing, schedule."""

from __future__ import annotations

from engine.config import load_config
from engine.retraining.trigger import RetrainPolicy, RetrainTrigger


def _alert(kind: str = "concept_drift", severity: str = "warning", model: str = "ctr") -> dict:
    return {"kind": kind, "model": model, "feature": "error", "statistic": "hddm_a", "value": 0.2,
            "severity": severity}


def test_severity_kind_and_model_filters() -> None:
    policy = RetrainPolicy("ctr", frozenset({"data_drift"}), min_severity="critical")
    trigger = RetrainTrigger(policy)
    assert not trigger.offer(_alert("data_drift", "warning"), now=0)
    assert not trigger.offer(_alert("concept_drift", "critical"), now=0)
    assert not trigger.offer(_alert("data_drift", "critical", model="other"), now=0)
    assert not trigger.offer(_alert("data_drift", "bogus"), now=0)
    assert trigger.offer(_alert("data_drift", "critical"), now=0)


def test_alerts_during_a_run_wait_for_the_cooldown() -> None:
    trigger = RetrainTrigger(RetrainPolicy("ctr", cooldown_s=100))
    trigger.offer(_alert(), now=0)
    assert trigger.take(now=0) is not None
    assert trigger.offer(_alert(), now=10)  # arrives while the run is in progress: pending
    assert trigger.take(now=10) is None  # one run at a time
    trigger.finished(now=50)
    assert trigger.take(now=60) is None  # cooldown
    assert trigger.offer(_alert(), now=70) is False  # new alerts in the cooldown are dropped
    reasons = trigger.take(now=150)
    assert reasons is not None and len(reasons) == 1  # the one that arrived during the run


def test_schedule_counts_from_the_last_run() -> None:
    trigger = RetrainTrigger(RetrainPolicy("ctr", cooldown_s=0, schedule_s=100))
    assert trigger.take(now=50, started_at=0) is None
    assert trigger.take(now=100, started_at=0) == ["schedule (every 100 s)"]
    trigger.finished(now=130)
    assert trigger.take(now=200, started_at=0) is None
    assert trigger.take(now=230, started_at=0) is not None


def test_policy_from_config() -> None:
    cfg = load_config(env={"RTML_RETRAINING_ON_ALERTS": "data_drift", "RTML_RETRAINING_SCHEDULE_S": "60"})
    policy = RetrainPolicy.from_config(cfg.retraining)
    assert policy.on_alerts == frozenset({"data_drift"}) and policy.schedule_s == 60
