"""Online learning throughput: raw River vs the same model through the learning dataflow.

``python -m benchmarks.learning`` generates labelled examples (numeric features, labels
from a known logistic model), and measures in one run, for each model kind the learners
offer (StandardScaler → LogisticRegression, StandardScaler → FM, HoeffdingAdaptiveTree,
ARF; fewer examples for the slow kinds, see ``DEFAULT_EXAMPLES``):

* **floor** -- the raw River loop on pre-built dicts: ``predict_proba_one`` then
  ``learn_one`` per example, with the very model the learner builds, examples/s;
* River's ``evaluate.progressive_val_score`` with Accuracy + LogLoss + ROCAUC on the same
  data (the same job as our progressive validation, done by River), for reference;
* **learner** -- :meth:`engine.learning.online.OnlineLearner.learn_many` in process
  (predict, exact and approximate metrics, drift detector, learn);
* **dataflow, 1 process** -- the learning dataflow end to end on the embedded broker: the
  predictions and labels are produced to Kafka first, then the flow reads them (bounded),
  parses, joins by request id, and learns, all in this process; examples/s from the first
  batch read to the flow's end (start-up reported apart);
* **job, 2 processes** -- the same as ``rtml up`` runs it with ``learning.processes: 2``
  (``python -m bytewax.run`` processes replaying the topics): process 0 reads, parses and
  joins, the learner has process 1 to itself;
* **drift cost** -- the drift monitor's cost per event (collect a window, then PSI, JS and
  KS against the reference at window close), per feature.

``ratio_to_floor`` = the 2-process job's examples/s / raw River examples/s (target >= 0.8);
``ratio_to_floor_1_process`` is the same for the 1-process flow.
Results go to benchmarks/results/learning.json and the README table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import threading
import time
import uuid
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any, Callable

import numpy as np
import orjson
from confluent_kafka import Producer

from benchmarks.report import fmt_rate, machine_description, machine_line, publish
from engine.config import RtmlConfig, load_config
from engine.events.topic_reader import read_topic
from engine.learning.learners import LearnerKind, LearnerSpec, build_model
from engine.learning.online import OnlineLearner
from engine.learning.records import PredictionRecord
from engine.runtime.gc_tuning import tuned_gc

NAME = "learning"
T0 = 1_767_225_600_000


def log(msg: str) -> None:
    print(f"[learning] {msg}", flush=True)


def generate(n: int, n_features: int, seed: int = 7) -> tuple[list[dict[str, float]], list[bool]]:
    """Feature dicts named like served features, and labels from a logistic model."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, n_features)) * rng.uniform(0.5, 20, n_features) + rng.uniform(-5, 5, n_features)
    w = rng.normal(size=n_features) / np.sqrt(n_features)
    z = ((x - x.mean(0)) / x.std(0)) @ w
    y = rng.random(n) < 1 / (1 + np.exp(-z))
    names = [f"user.f{i}_1h" for i in range(n_features)]
    rows = [dict(zip(names, map(float, row))) for row in x]
    return rows, y.tolist()


def measure_floor(rows: list[dict[str, float]], labels: list[bool], kind: LearnerKind = "logistic_regression") -> float:
    model = build_model(LearnerSpec(name="floor", kind=kind))
    started = time.perf_counter()
    for x, y in zip(rows, labels):
        model.predict_proba_one(x)
        model.learn_one(x, y)
    return len(rows) / (time.perf_counter() - started)


def measure_river_progressive(rows: list[dict[str, float]], labels: list[bool],
                              kind: LearnerKind = "logistic_regression") -> float:
    from river import evaluate, metrics

    model = build_model(LearnerSpec(name="pvs", kind=kind))
    started = time.perf_counter()
    evaluate.progressive_val_score(zip(rows, labels), model, metrics.Accuracy() + metrics.LogLoss() + metrics.ROCAUC())
    return len(rows) / (time.perf_counter() - started)


def measure_learner(rows: list[dict[str, float]], labels: list[bool],
                    kind: LearnerKind = "logistic_regression") -> tuple[float, dict[str, Any]]:
    """:meth:`OnlineLearner.learn_many` over all examples, as the learner step runs batches."""
    learner = OnlineLearner(LearnerSpec(name="bench", kind=kind))
    targets = [float(y) for y in labels]
    at = 0
    started = time.perf_counter()
    while at < len(rows):  # with on_drift="reset" a run stops at each drift
        at += learner.learn_many(rows[at:], targets[at:])
    rate = len(rows) / (time.perf_counter() - started)
    return rate, learner.report()


def _produce_examples(bootstrap: str, rows: list[dict[str, float]], labels: list[bool]) -> dict[str, str]:
    """Fresh bench topics holding one prediction and one label per example; their names by role."""
    from engine.runtime.topics import ensure_topics

    tag = uuid.uuid4().hex[:6]
    topics = {role: f"bench-{tag}-{role}" for role in ("predictions", "labels", "events", "metrics", "alerts",
                                                         "unjoined")}
    ensure_topics(bootstrap, list(topics.values()), partitions=1)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10000})
    for i, (x, y) in enumerate(zip(rows, labels)):
        t = T0 + i * 10
        rec = {"request_id": f"r{i}", "model": "bench", "version": "1", "variant": "primary",
               "event_time_ms": t, "features": x, "score": 0.5}
        producer.produce(topics["predictions"], orjson.dumps(rec))
        producer.produce(topics["labels"], orjson.dumps({"request_id": f"r{i}", "label": float(y), "event_time": t + 5}))
        if i % 10_000 == 0:
            producer.poll(0)
    producer.flush(120)
    return topics


def _bench_config(bootstrap: str, data_dir: str, topics: dict[str, str], n: int, **learning: Any) -> RtmlConfig:
    """The learning sections for a bench run: one report at the end, no snapshots, one join shard."""
    return load_config(env={}, overrides={
        "data_dir": data_dir,
        "kafka": {"bootstrap": bootstrap, "labels_topic": topics["labels"], "events_topic": topics["events"],
                  "alerts_topic": topics["alerts"]},
        "learning": {"predictions_topic": topics["predictions"], "metrics_topic": topics["metrics"],
                     "unjoined_topic": topics["unjoined"], "report_every_examples": n, "join_shards": 1,
                     "snapshot_every_examples": 10**12, "snapshot_every_s": 1e9, "recovery": False, **learning},
    })


def measure_dataflow(rows: list[dict[str, float]], labels: list[bool],
                     kind: LearnerKind = "logistic_regression") -> tuple[float, dict[str, Any]]:
    """The flow in this process (one Bytewax worker): read, parse, join and learn on one core."""
    from bytewax.testing import run_main

    from dataflows.learning import build_learning_flow
    from engine.metrics import LearningMetrics
    from engine.runtime.stack import LocalStack
    from operators.sources import KafkaBatchSource

    with TemporaryDirectory() as tmp, LocalStack(load_config(env={}, overrides={"data_dir": tmp})) as stack:
        topics = _produce_examples(stack.bootstrap, rows, labels)
        cfg = _bench_config(stack.bootstrap, tmp, topics, len(rows))
        metrics = LearningMetrics()
        source = KafkaBatchSource(stack.bootstrap, [topics[t] for t in ("predictions", "labels", "events")],
                                  batch_size=5000, fetch_wait_max_ms=20, bounded=True, metrics=metrics)
        flow = build_learning_flow(cfg, source, learners=[LearnerSpec(name="bench", kind=kind)],
                                   metrics=metrics, idle_advance=False, snapshots=False)
        counter = metrics.examples_learned.labels("bench")
        read_in = metrics.events_in.labels(topics["predictions"])
        watch = _FirstRead(lambda: read_in._value.get())
        # The dataflow's process tunes its GC once the flow is built (dataflows.learning); this
        # process does the same around the run.
        with tuned_gc():
            started = time.perf_counter()
            watch.start()
            try:
                run_main(flow)
            finally:
                watch.stop()
        elapsed = time.perf_counter() - started
        learned = counter._value.get()
        if learned != len(rows):
            raise RuntimeError(f"the dataflow learned {learned} of {len(rows)} examples")
        detail: dict[str, Any] = {"processes": 1, "seconds_incl_startup": elapsed, "learned": learned,
                                  "per_s_incl_startup": len(rows) / elapsed}
        if watch.first is not None:
            # From the first batch read to the end: start-up (Bytewax, consumer assignment, the
            # first fetch) is left out, as benchmarks.ingest does.
            t_first = watch.first
            detail |= {"startup_seconds": t_first - started, "seconds": elapsed - (t_first - started)}
            return learned / detail["seconds"], detail
        detail["seconds"] = elapsed
        return len(rows) / elapsed, detail


def measure_job(rows: list[dict[str, float]], labels: list[bool], kind: LearnerKind = "logistic_regression",
                processes: int = 2) -> tuple[float, dict[str, Any]]:
    """The learning job as ``rtml up`` runs it with ``learning.processes`` = ``processes``:
    ``python -m bytewax.run`` processes replaying the topics (``flow_from_env(bounded=True)``).

    Examples/s run from the first message read (process 0's /metrics, polled) to the time of
    the learner's one report, written after its last example.
    """
    from engine.runtime.jobs import dataflow_specs
    from engine.runtime.ports import free_port_range
    from engine.runtime.progress import scrape
    from engine.runtime.stack import LocalStack

    with TemporaryDirectory() as tmp, LocalStack(load_config(env={}, overrides={"data_dir": tmp})) as stack:
        topics = _produce_examples(stack.bootstrap, rows, labels)
        learners = Path(tmp) / "learners.yaml"
        learners.write_text(f"learners:\n  - name: bench\n    kind: {kind}\n    learn_from: [bench]\n")
        cfg = _bench_config(stack.bootstrap, tmp, topics, len(rows), processes=processes, learners=str(learners))
        port = free_port_range(processes)
        cfg = cfg.model_copy(update={"metrics": cfg.metrics.model_copy(update={"learning_port": port})})
        specs = dataflow_specs(cfg, "dataflows.learning:flow_from_env(bounded=True)", "learning",
                               processes=processes, recovery=False)

        def read_in() -> float:
            try:
                return scrape(port).get("rtml_events_in_total", 0.0)
            except OSError:
                return 0.0

        watch = _FirstRead(read_in, interval_s=0.005, clock=time.time)  # the report's clock
        started = time.time()
        watch.start()
        procs = [subprocess.Popen(spec.argv, env={**os.environ, **(spec.env or {})}, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE) for spec in specs]
        try:
            errors = [p.communicate(timeout=600)[1] for p in procs]
        finally:
            watch.stop()
            for p in procs:
                if p.poll() is None:
                    p.kill()
        if any(p.returncode for p in procs):
            raise RuntimeError(f"learning job failed: {[e.decode(errors='replace')[-2000:] for e in errors]}")
        reports = [orjson.loads(v) for v in read_topic(stack.bootstrap, topics["metrics"])]
        if [r["examples"] for r in reports] != [len(rows)] or watch.first is None:
            raise RuntimeError(f"the job reported {reports}, first read at {watch.first}")
        end = reports[0]["at_ms"] / 1000
        detail = {"processes": processes, "learned": reports[0]["examples"], "learner_process": reports[0]["process"],
                  "seconds": end - watch.first, "startup_seconds": watch.first - started,
                  "seconds_incl_startup": end - started, "per_s_incl_startup": len(rows) / (end - started)}
        return len(rows) / detail["seconds"], detail


class _FirstRead(threading.Thread):
    """Polls a counter (the source's messages read); remembers when it first moved."""

    def __init__(self, read: Callable[[], float], interval_s: float = 0.002,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        super().__init__(daemon=True, name="first-read")
        self.read = read
        self.interval_s = interval_s
        self.clock = clock
        self.first: float | None = None
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval_s):
            if self.read() > 0:
                self.first = self.clock()
                return

    def stop(self) -> None:
        self._done.set()
        self.join()


def measure_drift_cost(n_events: int, n_features: int, seed: int = 3) -> dict[str, Any]:
    """Per-event, per-feature cost of the drift monitor: collect two windows, test the second."""
    from engine.config import DriftConfig
    from engine.drift.monitor import DriftMonitor

    cfg = DriftConfig(window_ms=1_000_000, min_samples=10, max_window_samples=max(n_events, 10))
    rng = np.random.default_rng(seed)
    names = [f"user.f{i}_1h" for i in range(n_features)]
    records = []
    for w in range(2):  # window 0 is pinned as the reference, window 1 is tested against it
        values = rng.normal(w * 0.1, 1.0, size=(n_events, n_features))
        for i in range(n_events):
            t = T0 + w * cfg.window_ms + i
            records.append(PredictionRecord(f"r{w}-{i}", "bench", "1", "primary", t, float(values[i, 0]),
                                            dict(zip(names, map(float, values[i])))))
    monitor = DriftMonitor(cfg)
    started = time.perf_counter()
    monitor.observe(records)
    out = monitor.advance(T0 + 2 * cfg.window_ms + 1)
    elapsed = time.perf_counter() - started
    features_tested = n_features + 1  # and the score
    return {
        "us_per_event": elapsed / (len(records) * features_tested) * 1e6,
        "window": n_events,
        "features": features_tested,
        "statistics": sorted({s.statistic for s in out.stats}),
        "ks_method": cfg.ks_method,
        "seconds": elapsed,
    }


# Examples per model kind: enough for a steady rate, few enough that the slow kinds finish
# in seconds (River's ARF and FM cost ~1 ms an example here, LogisticRegression ~16 µs).
DEFAULT_EXAMPLES: dict[str, int] = {
    "logistic_regression": 300_000, "hoeffding_adaptive_tree": 30_000, "fm": 10_000, "arf": 10_000,
}
KIND_LABELS: dict[str, str] = {
    "logistic_regression": "StandardScaler → LogisticRegression",
    "fm": "StandardScaler → FMClassifier",
    "hoeffding_adaptive_tree": "HoeffdingAdaptiveTreeClassifier",
    "arf": "ARFClassifier",
}
TARGET_RATIO = 0.8
JOB_PROCESSES = 2


def measure_kind(kind: LearnerKind, rows: list[dict[str, float]], labels: list[bool]) -> dict[str, Any]:
    """Every path for one model kind on the same examples."""
    floor = measure_floor(rows, labels, kind)
    log(f"{kind}: floor (raw River) {floor:,.0f}/s")
    pvs = measure_river_progressive(rows, labels, kind)
    learner, report = measure_learner(rows, labels, kind)
    log(f"{kind}: progressive_val_score {pvs:,.0f}/s, OnlineLearner {learner:,.0f}/s "
        f"(accuracy {report['accuracy']:.4f})")
    dataflow, detail = measure_dataflow(rows, labels, kind)
    log(f"{kind}: dataflow, 1 process {dataflow:,.0f}/s ({detail['seconds']:.1f} s), ratio {dataflow / floor:.2f}")
    job, job_detail = measure_job(rows, labels, kind, processes=JOB_PROCESSES)
    log(f"{kind}: job, {JOB_PROCESSES} processes {job:,.0f}/s ({job_detail['seconds']:.1f} s), "
        f"ratio {job / floor:.2f}")
    return {
        "examples": len(rows), "floor_per_s": floor, "river_progressive_per_s": pvs, "learner_per_s": learner,
        "dataflow_per_s": dataflow, "ratio_to_floor_1_process": dataflow / floor,
        "job_per_s": job, "ratio_to_floor": job / floor,
        "learner_report": report, "dataflow": detail, "job": job_detail,
    }


def table(result: dict[str, Any]) -> str:
    r = result
    lines = [
        f"Machine: {machine_line(r['machine'])}. {r['features']} features per example; each model kind learns "
        "the same examples on every path.",
        "",
        "| model | examples | raw River predict_proba_one + learn_one (floor) | River progressive_val_score "
        "| OnlineLearner in process (metrics + HDDM_A + learn) | learning dataflow, 1 process "
        f"| learning job, {JOB_PROCESSES} processes: Kafka → parse → join → learn "
        f"| ratio_to_floor ({JOB_PROCESSES} processes; target ≥ {TARGET_RATIO}) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, m in r["models"].items():
        met = "met" if m["ratio_to_floor"] >= TARGET_RATIO else "not met"
        lines.append(
            f"| {KIND_LABELS.get(kind, kind)} | {m['examples']:,} | {fmt_rate(m['floor_per_s'])} "
            f"| {fmt_rate(m['river_progressive_per_s'])} ({m['river_progressive_per_s'] / m['floor_per_s']:.2f}) "
            f"| {fmt_rate(m['learner_per_s'])} ({m['learner_per_s'] / m['floor_per_s']:.2f}) "
            f"| {fmt_rate(m['dataflow_per_s'])} ({m['ratio_to_floor_1_process']:.2f}) "
            f"| {fmt_rate(m['job_per_s'])} | **{m['ratio_to_floor']:.2f}**: {met} |"
        )
    startup = [f"{KIND_LABELS.get(kind, kind)} {fmt_rate(m['job']['per_s_incl_startup'])}/s "
               f"({m['job']['per_s_incl_startup'] / m['floor_per_s']:.2f}, "
               f"{m['job']['startup_seconds']:.2f} s of start-up)"
               for kind, m in r["models"].items()]
    lines += ["", f"Ratios in brackets are to the floor. With {JOB_PROCESSES} processes, process 0 reads, parses "
                  "and joins, and the learner has process 1 to itself (`learning.processes`). Rates run from the "
                  "first batch read to the last example learnt; the job's with its start-up included: "
                  + "; ".join(startup) + "."]
    d = r.get("drift")
    if d:
        lines += ["", f"Drift statistics: {d['us_per_event']:.2f} µs per event per feature "
                      f"(windows of {d['window']:,} values, {d['features']} series, PSI + JS + {d['ks_method']} KS at close)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.learning", description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=max(DEFAULT_EXAMPLES.values()),
                        help="most examples per model kind (each kind uses min(this, its default))")
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--kinds", nargs="+", default=list(DEFAULT_EXAMPLES), choices=list(DEFAULT_EXAMPLES))
    parser.add_argument("--out", default=None, help="results directory (default benchmarks/results)")
    parser.add_argument("--no-readme", action="store_true", help="do not touch README.md")
    args = parser.parse_args(argv)
    n = {kind: min(args.examples, DEFAULT_EXAMPLES[kind]) for kind in args.kinds}
    rows, labels = generate(max(n.values()), args.features)
    log(f"{len(rows)} examples x {args.features} features; kinds {args.kinds}")
    models = {kind: measure_kind(kind, rows[:n[kind]], labels[:n[kind]]) for kind in args.kinds}
    drift = measure_drift_cost(min(args.examples, 50_000), 4)
    log(f"drift: {drift['us_per_event']:.2f} us per event per feature")
    result: dict[str, Any] = {
        "name": NAME,
        "machine": machine_description(),
        "features": args.features,
        "target_ratio": TARGET_RATIO,
        "models": models,
        "drift": drift,
    }
    path = publish(NAME, result, table, args.out, readme=not args.no_readme)
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
