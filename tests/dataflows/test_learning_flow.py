"""The learning dataflow end to end on the real broker (and Redis for bandits).

Each test produces predictions / labels / events to fresh topics, runs the dataflow in
process over a bounded Kafka source (it ends at the end offsets), and reads what it wrote.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import orjson
from bytewax.testing import run_main
from confluent_kafka import Consumer, Producer, TopicPartition
from river import datasets, linear_model, metrics, preprocessing

from dataflows.learning import build_learning_flow
from engine.bandits.spec import parse_bandit_specs
from engine.config import RtmlConfig, load_config
from engine.events.dlq import DeadLetter
from engine.learning.learners import LearnerSpec
from engine.learning.snapshots import load_snapshot
from engine.metrics import LearningMetrics
from engine.runtime.jobs import dataflow_specs
from engine.runtime.ports import free_port_range
from operators.sources import KafkaBatchSource

T0 = 1_767_225_600_000


def produce(bootstrap: str, topic: str, records: list[dict[str, Any] | bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for rec in records:
        producer.produce(topic, rec if isinstance(rec, bytes) else orjson.dumps(rec))
    assert producer.flush(30) == 0


def read_all(bootstrap: str, topic: str) -> list[tuple[bytes, list[tuple[str, bytes]]]]:
    """Every message of partition 0 (until the topic stays quiet for a second)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "t", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0, 0)])
    out = []
    while (msg := consumer.poll(1.0)) is not None:
        if msg.error() is None:
            out.append((msg.value(), msg.headers() or []))
    consumer.close()
    return out


class Topics:
    """Fresh topics for one test, wired into a config."""

    def __init__(self, unique_topic: Any, stack: Any, tmp_path: Path, **learning: Any) -> None:
        self.predictions = unique_topic("predictions")
        self.labels = unique_topic("labels")
        self.events = unique_topic("events")
        self.metrics = unique_topic("metrics")
        self.alerts = unique_topic("alerts")
        self.unjoined = unique_topic("unjoined")
        unique_topic_dlq = f"{self.predictions}.dlq"
        from engine.runtime.topics import ensure_topics

        ensure_topics(stack.bootstrap, [unique_topic_dlq, f"{self.labels}.dlq"], partitions=1)
        self.cfg: RtmlConfig = load_config(env={}, overrides={
            "kafka": {"bootstrap": stack.bootstrap, "labels_topic": self.labels, "events_topic": self.events,
                      "alerts_topic": self.alerts},
            "redis": {"url": stack.redis_url},
            "learning": {"predictions_topic": self.predictions, "metrics_topic": self.metrics,
                         "unjoined_topic": self.unjoined, "model_repository": str(tmp_path / "models"),
                         **learning},
        })

    def run(self, learners: list[LearnerSpec], **kwargs: Any) -> LearningMetrics:
        metrics = LearningMetrics()
        source = KafkaBatchSource(self.cfg.kafka.bootstrap or "", [self.predictions, self.labels, self.events],
                                  fetch_wait_max_ms=20, bounded=True)
        flow = build_learning_flow(self.cfg, source, learners=learners, metrics=metrics, idle_advance=False,
                                   **kwargs)
        run_main(flow)
        return metrics


def prediction(rid: str, t: int, features: dict[str, float], model: str = "m", **extra: Any) -> dict[str, Any]:
    return {"request_id": rid, "model": model, "version": "1", "variant": "primary", "event_time_ms": t,
            "features": features, "score": 0.5, **extra}


def test_phishing_through_the_dataflow_reproduces_progressive_val_score(stack, unique_topic, tmp_path) -> None:
    topics = Topics(unique_topic, stack, tmp_path, report_every_examples=1250, snapshot_every_examples=1250,
                    join_shards=3)
    data = list(datasets.Phishing())
    assert len(data) == 1250
    preds, labels = [], []
    for i, (x, y) in enumerate(data):
        t = T0 + i * 1000
        preds.append(prediction(f"r{i}", t, {f"request.{k}": v for k, v in x.items()}, model="phishing"))
        labels.append({"request_id": f"r{i}", "label": 1.0 if y else 0.0, "event_time": t + 500})
    produce(stack.bootstrap, topics.predictions, preds)
    produce(stack.bootstrap, topics.labels, labels)

    learner = LearnerSpec(name="phishing", kind="logistic_regression")
    m = topics.run([learner])

    # River's own loop on the same data: predict -> metric -> learn.
    reference = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    accuracy = metrics.Accuracy()
    for x, y in data:
        accuracy.update(y, reference.predict_one(x))
        reference.learn_one(x, y)
    assert round(accuracy.get(), 4) == 0.8928

    reports = [orjson.loads(v) for v, _ in read_all(stack.bootstrap, topics.metrics)]
    assert [r["n"] for r in reports] == [1250]
    assert reports[0]["accuracy"] == accuracy.get()
    assert reports[0]["learner"] == "phishing" and reports[0]["auc_approx"] is not None
    assert m.examples_learned.labels("phishing")._value.get() == 1250

    # The published snapshot is the same model: identical predictions.
    snap = load_snapshot(tmp_path / "models" / "phishing" / "1")
    assert snap.features == tuple(f"request.{k}" for k in data[0][0])
    for x, _ in data[:50]:
        ours = snap.model.predict_proba_one({f"request.{k}": v for k, v in x.items()})
        assert ours[True] == reference.predict_proba_one(x)[True]


def test_a_two_process_job_learns_in_its_second_process_exactly_as_river(stack, unique_topic, tmp_path) -> None:
    """learning.processes=2 as ``rtml up`` runs it (two bytewax.run processes), replaying."""
    topics = Topics(unique_topic, stack, tmp_path, report_every_examples=1250, join_shards=3, processes=2,
                    snapshot_every_examples=10_000)
    data = list(datasets.Phishing())
    produce(stack.bootstrap, topics.predictions, [
        prediction(f"r{i}", T0 + i * 1000, {f"request.{k}": v for k, v in x.items()}, model="phishing")
        for i, (x, _) in enumerate(data)])
    produce(stack.bootstrap, topics.labels, [
        {"request_id": f"r{i}", "label": 1.0 if y else 0.0, "event_time": T0 + i * 1000 + 500}
        for i, (_, y) in enumerate(data)])
    learners = tmp_path / "learners.yaml"
    learners.write_text("learners:\n  - name: phishing\n    kind: logistic_regression\n    learn_from: [phishing]\n")
    cfg = topics.cfg.model_copy(update={
        "learning": topics.cfg.learning.model_copy(update={"learners": str(learners)}),
        "metrics": topics.cfg.metrics.model_copy(update={"learning_port": free_port_range(2)}),
    })
    specs = dataflow_specs(cfg, "dataflows.learning:flow_from_env(bounded=True)", "learning", recovery=False,
                           processes=2)
    procs = [subprocess.Popen(spec.argv, env={**os.environ, **(spec.env or {})}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) for spec in specs]
    outputs = [p.communicate(timeout=180)[0].decode(errors="replace") for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs

    reference = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    accuracy = metrics.Accuracy()
    for x, y in data:
        accuracy.update(y, reference.predict_one(x))
        reference.learn_one(x, y)
    reports = [orjson.loads(v) for v, _ in read_all(stack.bootstrap, topics.metrics)]
    assert [(r["n"], r["process"]) for r in reports] == [(1250, 1)]  # learnt in process 1 only
    assert reports[0]["accuracy"] == accuracy.get()


def test_a_two_process_job_killed_mid_stream_resumes_its_learner_exactly(stack, unique_topic, tmp_path) -> None:
    """kill -9 of both processes, restart with the same settings: the learner's state comes
    back from Bytewax recovery under its placed key, and every example is learnt once."""
    topics = Topics(unique_topic, stack, tmp_path, report_every_examples=250, join_shards=3, processes=2,
                    snapshot_every_examples=10_000, recovery_dir=str(tmp_path / "recovery"))
    data = list(datasets.Phishing())
    preds = [prediction(f"r{i}", T0 + i * 1000, {f"request.{k}": v for k, v in x.items()}, model="phishing")
             for i, (x, _) in enumerate(data)]
    labels = [{"request_id": f"r{i}", "label": 1.0 if y else 0.0, "event_time": T0 + i * 1000 + 500}
              for i, (_, y) in enumerate(data)]
    learners = tmp_path / "learners.yaml"
    learners.write_text("learners:\n  - name: phishing\n    kind: logistic_regression\n    learn_from: [phishing]\n")
    cfg = topics.cfg.model_copy(update={
        "learning": topics.cfg.learning.model_copy(update={"learners": str(learners)}),
        "metrics": topics.cfg.metrics.model_copy(update={"learning_port": free_port_range(2)}),
        "pipeline": topics.cfg.pipeline.model_copy(update={"snapshot_interval_s": 1}),
    })

    def start() -> list[subprocess.Popen[bytes]]:
        return [subprocess.Popen(spec.argv, env={**os.environ, **(spec.env or {})}, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
                for spec in dataflow_specs(cfg, "dataflows.learning:flow_from_env()", "learning", processes=2,
                                           recovery=True, recovery_dir=tmp_path / "recovery")]

    def reports_until(done: Callable[[list[dict[str, Any]]], bool], timeout_s: float = 90) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            reports = [orjson.loads(v) for v, _ in read_all(stack.bootstrap, topics.metrics)]
            if done(reports):
                return reports
        raise AssertionError(f"no such reports in {timeout_s} s: {reports}")

    half = 700
    produce(stack.bootstrap, topics.predictions, preds[:half])
    produce(stack.bootstrap, topics.labels, labels[:half])
    procs = start()
    try:
        reports_until(lambda rs: any(r["examples"] >= 500 for r in rs))
        time.sleep(1.5)  # at least one snapshot after that
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
    produce(stack.bootstrap, topics.predictions, preds[half:])
    produce(stack.bootstrap, topics.labels, labels[half:])
    procs = start()
    try:
        reports = reports_until(lambda rs: any(r["examples"] == len(data) for r in rs))
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)

    reference = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    accuracy = metrics.Accuracy()
    for x, y in data:
        accuracy.update(y, reference.predict_one(x))
        reference.learn_one(x, y)
    final = next(r for r in reports if r["examples"] == len(data))
    assert (final["n"], final["accuracy"], final["process"]) == (len(data), accuracy.get(), 1)
    # Resumed, not started afresh: a fresh job would read from the start and report 250 again.
    assert sum(r["examples"] == 250 for r in reports) == 1, [r["examples"] for r in reports]


def test_join_outcomes_dead_letters_and_unjoined_labels(stack, unique_topic, tmp_path) -> None:
    topics = Topics(unique_topic, stack, tmp_path, label_window_ms=10_000, out_of_orderness_ms=0,
                    report_every_examples=1, implicit_labels="click")
    f = {"request.x": 1.0}
    produce(stack.bootstrap, topics.predictions, [
        prediction("explicit", T0, f),
        prediction("clicked", T0 + 100, f, entity_ids={"user_id": "u1", "item_id": "i1"}),
        prediction("silent", T0 + 200, f),
        prediction("late", T0 + 300, f),
        b'{"model": "m"}',  # malformed: no request_id
        prediction("tick", T0 + 60_000, f),  # moves the watermark past every window above
    ])
    produce(stack.bootstrap, topics.labels, [
        {"request_id": "explicit", "label": 1.0, "event_time": T0 + 1_000},
        {"request_id": "explicit", "label": 1.0, "event_time": T0 + 1_500},  # agreeing duplicate: counted
        {"request_id": "late", "label": 1.0, "event_time": T0 + 30_000},  # after its 10 s window
        {"request_id": "nobody", "label": 0.0, "event_time": T0 + 2_000},  # no such prediction
        {"request_id": "tick", "label": 0.0, "event_time": T0 + 60_000},
        b"not json",
    ])
    produce(stack.bootstrap, topics.events, [
        {"user_id": "u1", "item_id": "i1", "event_type": "click", "event_time": T0 + 2_000, "request_id": "clicked"},
        {"user_id": "u1", "item_id": "i1", "event_type": "impression", "event_time": T0 + 60_000},
    ])
    m = topics.run([LearnerSpec(name="m", kind="logistic_regression")], snapshots=False)

    def outcome(name: str) -> float:
        return m.join_outcomes.labels(name)._value.get()

    # explicit + clicked + tick joined; silent and late became negatives at window close.
    assert outcome("joined") == 3 and outcome("negatives") == 2
    assert outcome("duplicate") == 1
    assert outcome("late_explicit") == 1 and outcome("unmatched_explicit") == 1
    assert m.examples_learned.labels("m")._value.get() == 5

    unjoined = [DeadLetter.from_kafka(v, h) for v, h in read_all(stack.bootstrap, topics.unjoined)]
    assert sorted((d.reason, orjson.loads(d.original)["request_id"]) for d in unjoined) == [
        ("late", "late"), ("unmatched", "nobody")
    ]
    assert all(d.source_topic == topics.labels for d in unjoined)
    dead_predictions = [DeadLetter.from_kafka(v, h) for v, h in read_all(stack.bootstrap, f"{topics.predictions}.dlq")]
    assert [d.reason for d in dead_predictions] == ["missing_field"]
    dead_labels = [DeadLetter.from_kafka(v, h) for v, h in read_all(stack.bootstrap, f"{topics.labels}.dlq")]
    assert [d.original for d in dead_labels] == [b"not json"]


def test_concept_drift_raises_an_alert(stack, unique_topic, tmp_path) -> None:
    topics = Topics(unique_topic, stack, tmp_path, report_every_examples=1000)
    preds, labels = [], []
    import random

    rng = random.Random(4)
    for i in range(4000):
        t = T0 + i * 100
        x = rng.random()
        y = x > 0.5 if i < 2000 else x <= 0.5  # the concept flips halfway
        preds.append(prediction(f"r{i}", t, {"request.x": x}))
        labels.append({"request_id": f"r{i}", "label": 1.0 if y else 0.0, "event_time": t + 50})
    produce(stack.bootstrap, topics.predictions, preds)
    produce(stack.bootstrap, topics.labels, labels)
    m = topics.run([LearnerSpec(name="m", kind="logistic_regression")], snapshots=False)
    alerts = [orjson.loads(v) for v, _ in read_all(stack.bootstrap, topics.alerts)]
    assert alerts, "no concept-drift alert"
    first = alerts[0]
    assert first["kind"] == "concept_drift" and first["model"] == "m" and first["feature"] == "error"
    assert first["statistic"] == "hddm_a_error_rise" and first["severity"] == "critical"
    assert T0 + 2000 * 100 < first["window_end_ms"] < T0 + 2300 * 100  # detected soon after the flip
    assert m.concept_drifts.labels("m")._value.get() == len(alerts)


def test_bandit_decisions_are_rewarded_from_clicks(stack, unique_topic, tmp_path, redis_client) -> None:
    topics = Topics(unique_topic, stack, tmp_path, label_window_ms=5_000, out_of_orderness_ms=0)
    specs = parse_bandit_specs("bandits: [{name: banner, policy: thompson, arms: [a, b]}]")
    preds, events = [], []
    for i in range(40):
        arm = "a" if i % 2 else "b"
        t = T0 + i * 1000
        preds.append(prediction(f"d{i}", t, {}, model="banner", arm=arm, variant="bandit"))
        if arm == "a" and i % 4 == 1:  # half of a's decisions are clicked; b never
            events.append({"user_id": "u", "item_id": arm, "event_type": "click", "event_time": t + 500,
                           "request_id": f"d{i}"})
    preds.append(prediction("tick", T0 + 100_000, {}, model="other"))
    events.append({"user_id": "u", "item_id": "x", "event_type": "view", "event_time": T0 + 100_000})
    produce(stack.bootstrap, topics.predictions, preds)
    produce(stack.bootstrap, topics.events, events)
    # Every partition must pass the windows for them to close (an empty one holds the watermark).
    produce(stack.bootstrap, topics.labels, [{"request_id": "tick", "label": 0.0, "event_time": T0 + 100_000}])
    topics.run([], bandits=specs, snapshots=False)
    state = {k.decode(): v.decode() for k, v in redis_client.hgetall("rtml:bandit:banner").items()}
    # Beta(1 + clicks, 1 + misses) per arm position (a = 0, b = 1).
    assert float(state["c:alpha:0"]) == 1 + 10 and float(state["c:beta:0"]) == 1 + 10
    assert float(state["c:alpha:1"]) == 1 and float(state["c:beta:1"]) == 1 + 20
