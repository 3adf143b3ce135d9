"""Online learning throughput: raw River vs the same model through the learning dataflow.

``python -m benchmarks.learning`` generates labelled examples (numeric features, labels
from a known logistic model), and measures in one run, for each model kind the learners
offer (StandardScaler → LogisticRegression, StandardScaler → FM, HoeffdingAdaptiveTree,
ARF; fewer examples for the slow kinds, see ``DEFAULT_EXAMPLES``):

* **floor** -- the raw River loop on pre-built dicts: ``predict_proba_one`` then
  ``learn_one`` per example, with the very model the learner builds, examples/s;
* River's ``evaluate.progressive_val_score`` with Accuracy + LogLoss + ROCAUC on the same
  data (the same job as our progressive validation, done by River), for reference;
* **learner** -- :class:`engine.learning.online.OnlineLearner` in process (predict, exact and
  approximate metrics, drift detector, learn);
* **dataflow** -- the learning dataflow end to end on the embedded broker: the predictions
  and labels are produced to Kafka first, then the flow reads them (bounded), parses, joins
  by request id, and learns; examples/s from the first batch read to the flow's end
  (start-up reported apart), with the dataflow process's GC settings;
* **drift cost** -- the drift monitor's cost per event (collect a window, then PSI, JS and
  KS against the reference at window close), per feature.

``ratio_to_floor`` = dataflow examples/s / raw River examples/s (target >= 0.8).
Results go to benchmarks/results/learning.json and the README table.
"""

from __future__ import annotations

import argparse
import threading
import time
from tempfile import TemporaryDirectory
from typing import Any, Callable

import numpy as np
import orjson
from confluent_kafka import Producer

from benchmarks.report import fmt_rate, machine_description, machine_line, publish
from engine.config import load_config
from engine.learning.learners import LearnerKind, LearnerSpec, build_model
from engine.learning.online import OnlineLearner
from engine.learning.records import JoinedExample, PredictionRecord
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
    learner = OnlineLearner(LearnerSpec(name="bench", kind=kind))
    examples = [
        JoinedExample(PredictionRecord(f"r{i}", "bench", "1", "primary", T0 + i, None, x), float(y), "label", T0 + i)
        for i, (x, y) in enumerate(zip(rows, labels))
    ]
    started = time.perf_counter()
    for ex in examples:
        learner.learn(ex)
    rate = len(examples) / (time.perf_counter() - started)
    return rate, learner.report()


def measure_dataflow(rows: list[dict[str, float]], labels: list[bool],
                     kind: LearnerKind = "logistic_regression") -> tuple[float, dict[str, Any]]:
    from bytewax.testing import run_main

    from dataflows.learning import build_learning_flow
    from engine.metrics import LearningMetrics
    from engine.runtime.stack import LocalStack
    from engine.runtime.topics import ensure_topics
    from operators.sources import KafkaBatchSource

    with TemporaryDirectory() as tmp, LocalStack(load_config(env={}, overrides={"data_dir": tmp})) as stack:
        topics = {"predictions": "bench-predictions", "labels": "bench-labels", "events": "bench-events"}
        ensure_topics(stack.bootstrap, [*topics.values(), "bench-metrics", "bench-alerts", "bench-unjoined"],
                      partitions=1)
        producer = Producer({"bootstrap.servers": stack.bootstrap, "linger.ms": 20, "batch.num.messages": 10000})
        for i, (x, y) in enumerate(zip(rows, labels)):
            t = T0 + i * 10
            rec = {"request_id": f"r{i}", "model": "bench", "version": "1", "variant": "primary",
                   "event_time_ms": t, "features": x, "score": 0.5}
            producer.produce(topics["predictions"], orjson.dumps(rec))
            producer.produce(topics["labels"], orjson.dumps({"request_id": f"r{i}", "label": float(y), "event_time": t + 5}))
            if i % 10_000 == 0:
                producer.poll(0)
        producer.flush(120)
        cfg = load_config(env={}, overrides={
            "data_dir": tmp,
            "kafka": {"bootstrap": stack.bootstrap, "labels_topic": topics["labels"], "events_topic": topics["events"],
                      "alerts_topic": "bench-alerts"},
            "learning": {"predictions_topic": topics["predictions"], "metrics_topic": "bench-metrics",
                         "unjoined_topic": "bench-unjoined", "report_every_examples": len(rows), "join_shards": 1},
        })
        metrics = LearningMetrics()
        source = KafkaBatchSource(stack.bootstrap, list(topics.values()), batch_size=5000, fetch_wait_max_ms=20,
                                  bounded=True, metrics=metrics)
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
        detail: dict[str, Any] = {"seconds_incl_startup": elapsed, "learned": learned,
                                  "per_s_incl_startup": len(rows) / elapsed}
        if watch.first is not None:
            # From the first batch read to the end: start-up (Bytewax, consumer assignment, the
            # first fetch) is left out, as benchmarks.ingest does.
            t_first = watch.first
            detail |= {"startup_seconds": t_first - started, "seconds": elapsed - (t_first - started)}
            return learned / detail["seconds"], detail
        detail["seconds"] = elapsed
        return len(rows) / elapsed, detail


class _FirstRead(threading.Thread):
    """Polls a counter (the source's messages read); remembers when it first moved."""

    def __init__(self, read: Callable[[], float], interval_s: float = 0.002) -> None:
        super().__init__(daemon=True, name="first-read")
        self.read = read
        self.interval_s = interval_s
        self.first: float | None = None
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval_s):
            if self.read() > 0:
                self.first = time.perf_counter()
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
    "logistic_regression": 100_000, "hoeffding_adaptive_tree": 30_000, "fm": 10_000, "arf": 10_000,
}
KIND_LABELS: dict[str, str] = {
    "logistic_regression": "StandardScaler → LogisticRegression",
    "fm": "StandardScaler → FMClassifier",
    "hoeffding_adaptive_tree": "HoeffdingAdaptiveTreeClassifier",
    "arf": "ARFClassifier",
}
TARGET_RATIO = 0.8


def measure_kind(kind: LearnerKind, rows: list[dict[str, float]], labels: list[bool]) -> dict[str, Any]:
    """Every path for one model kind on the same examples."""
    floor = measure_floor(rows, labels, kind)
    log(f"{kind}: floor (raw River) {floor:,.0f}/s")
    pvs = measure_river_progressive(rows, labels, kind)
    learner, report = measure_learner(rows, labels, kind)
    log(f"{kind}: progressive_val_score {pvs:,.0f}/s, OnlineLearner {learner:,.0f}/s "
        f"(accuracy {report['accuracy']:.4f})")
    dataflow, detail = measure_dataflow(rows, labels, kind)
    log(f"{kind}: dataflow {dataflow:,.0f}/s ({detail['seconds']:.1f} s), ratio {dataflow / floor:.2f}")
    return {
        "examples": len(rows), "floor_per_s": floor, "river_progressive_per_s": pvs, "learner_per_s": learner,
        "dataflow_per_s": dataflow, "ratio_to_floor": dataflow / floor, "learner_report": report,
        "dataflow": detail,
    }


def table(result: dict[str, Any]) -> str:
    r = result
    lines = [
        f"Machine: {machine_line(r['machine'])}. {r['features']} features per example; each model kind learns "
        "the same examples on every path.",
        "",
        "| model | examples | raw River predict_proba_one + learn_one (floor) | River progressive_val_score "
        "| OnlineLearner in process (metrics + HDDM_A + learn) | learning dataflow: Kafka → parse → join → learn "
        f"| ratio_to_floor (target ≥ {TARGET_RATIO}) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, m in r["models"].items():
        met = "met" if m["ratio_to_floor"] >= TARGET_RATIO else "not met"
        lines.append(
            f"| {KIND_LABELS.get(kind, kind)} | {m['examples']:,} | {fmt_rate(m['floor_per_s'])} "
            f"| {fmt_rate(m['river_progressive_per_s'])} ({m['river_progressive_per_s'] / m['floor_per_s']:.2f}) "
            f"| {fmt_rate(m['learner_per_s'])} ({m['learner_per_s'] / m['floor_per_s']:.2f}) "
            f"| {fmt_rate(m['dataflow_per_s'])} | **{m['ratio_to_floor']:.2f}**: {met} |"
        )
    startup = [f"{KIND_LABELS.get(kind, kind)} {fmt_rate(m['dataflow']['per_s_incl_startup'])}/s "
               f"({m['dataflow']['per_s_incl_startup'] / m['floor_per_s']:.2f}, "
               f"{m['dataflow']['startup_seconds']:.2f} s of start-up)"
               for kind, m in r["models"].items() if "startup_seconds" in m["dataflow"]]
    lines += ["", "Ratios in brackets are to the floor. The dataflow's rate runs from its first batch read to "
                  "its end; with its start-up included: " + "; ".join(startup) + "."]
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
