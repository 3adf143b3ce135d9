"""The retraining watcher on a real broker: drift alerts start runs (real child processes)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Producer

from engine.alerts import DriftAlert
from engine.config import load_config
from engine.retraining.watch import RetrainWatcher, WatchState, run_command


class Clock:
    def __init__(self, now: float = 10_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _alert(kind: str = "concept_drift", model: str = "ctr", value: float = 0.4) -> bytes:
    return DriftAlert(kind, model, "error", "hddm_a", value, 0.1, 0, 60_000, 60_500).to_json()


def _publish(bootstrap: str, topic: str, payloads: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for payload in payloads:
        producer.produce(topic, payload, key=b"ctr")
    assert producer.flush(10) == 0


def _step_until(watcher: RetrainWatcher, done: Any, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "watcher did not get there in time"
        watcher.step(poll_timeout_s=0.2)


def test_alerts_start_one_run_per_burst_then_cooldown_and_restart_keeps_state(
    kafka_bootstrap: str, unique_topic: Any, tmp_path: Path
) -> None:
    topic = unique_topic("alerts", partitions=2)
    cfg = load_config(env={}, overrides={
        "kafka": {"bootstrap": kafka_bootstrap, "alerts_topic": topic},
        "retraining": {"work_dir": str(tmp_path), "cooldown_s": 600},
    })
    launched: list[list[str]] = []
    marker = tmp_path / "ran"

    def launch(reasons: list[str]) -> subprocess.Popen[bytes]:
        launched.append(reasons)
        # A real child process standing in for `rtml retrain run`: it records that it ran.
        return subprocess.Popen([sys.executable, "-c", f"open({str(marker)!r}, 'a').write('x')"])

    clock = Clock()
    watcher = RetrainWatcher(cfg, launch=launch, clock=clock)
    watcher.poll_alerts(0.5)  # opens at the end of the (empty) topic
    # A burst: three matching alerts, plus ones that must be ignored.
    _publish(kafka_bootstrap, topic, [
        _alert(), _alert(value=0.5), _alert("prediction_drift"),
        _alert(model="other"), _alert("data_drift"),  # another model; a kind not in on_alerts
        orjson.dumps({"kind": "input_stalled", "message": "no input"}), b"not json",
    ])
    _step_until(watcher, lambda: launched)
    assert len(launched) == 1 and len(launched[0]) == 3, launched
    assert "concept_drift on ctr" in launched[0][0]
    _step_until(watcher, lambda: watcher._child is None)  # the child exits; cooldown starts
    assert marker.read_text() == "x"

    clock.now += 60  # within the cooldown: a new alert starts nothing
    _publish(kafka_bootstrap, topic, [_alert(value=0.9)])
    _step_until(watcher, lambda: sum(watcher.state.offsets.values()) >= 8)
    watcher.step(0.2)
    assert len(launched) == 1

    state = WatchState.load(tmp_path / "watch-state.json")
    assert sum(state.offsets.values()) == 8 and state.last_finished is not None
    watcher._consumer.close()

    # A restarted watcher resumes after the handled alerts and remembers the cooldown...
    restarted = RetrainWatcher(cfg, launch=launch, clock=clock)
    restarted.step(0.5)
    assert len(launched) == 1
    # ...and retrains on the next alert once the cooldown is over.
    clock.now += 600
    _publish(kafka_bootstrap, topic, [_alert("concept_drift", value=0.7)])
    _step_until(restarted, lambda: len(launched) == 2)
    assert len(launched[1]) == 1 and "0.7" in launched[1][0]
    _step_until(restarted, lambda: restarted._child is None)
    restarted._consumer.close()


def test_schedule_starts_runs_without_alerts(kafka_bootstrap: str, unique_topic: Any, tmp_path: Path) -> None:
    topic = unique_topic("alerts")
    cfg = load_config(env={}, overrides={
        "kafka": {"bootstrap": kafka_bootstrap, "alerts_topic": topic},
        "retraining": {"work_dir": str(tmp_path), "schedule_s": 3600, "cooldown_s": 0},
    })
    launched: list[list[str]] = []
    clock = Clock()
    watcher = RetrainWatcher(cfg, launch=lambda r: launched.append(r) or subprocess.Popen([sys.executable, "-c", ""]),
                             clock=clock)
    watcher.step(0.2)
    assert launched == []
    clock.now += 3600
    watcher.step(0.2)
    assert launched == [["schedule (every 3600 s)"]]
    watcher._consumer.close()


def test_run_command_passes_config_and_reasons() -> None:
    argv = run_command("cfg.yaml", ["a", "b"])
    assert argv[1:] == ["-m", "engine.cli", "--config", "cfg.yaml", "retrain", "run", "--reason", "a", "--reason", "b"]
