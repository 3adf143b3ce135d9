"""One retraining run: fresh point-in-time set → train → evaluate → gate → register → shadow.

:func:`run_retraining` is what ``rtml retrain run`` (and the watcher's child process) does:

1. **examples**: labeled examples newer than ``now − retraining.lookback_ms``: impressions and
   clicks read from the events topic (a click within ``learning.label_window_ms`` labels its
   impression, see :func:`engine.datasets.examples.examples_from_events`) or a file;
2. **dataset**: a point-in-time correct training set from the offline feature log, split by
   time into train / validation / test (:mod:`engine.datasets`);
3. **train**: the configured ranker (:mod:`engine.training`), calibrated on validation;
4. **evaluate** on the test split, and score the version serving now on the same rows when
   it takes the same inputs; the **gate** refuses a model whose test AUC is more than
   ``retraining.max_auc_drop`` below it;
5. **register** the new version (ONNX, parity-checked, with the dataset manifest, metrics, the
   reasons and ``parent`` = the serving version) in the model repository;
6. **shadow**: with ``retraining.shadow``, route a shadow copy of live traffic to it, so its
   scores are logged beside the primary's before anyone promotes it (``rtml rollout``).

Everything a run produces stays in ``<retraining.work_dir>/<run id>/`` (dataset, training run,
evaluation report with plots, ``report.json``).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import orjson
import pandas as pd

from engine.config import RtmlConfig

log = logging.getLogger(__name__)

Status = Literal["registered", "rejected", "skipped", "failed"]


@dataclass
class RetrainReport:
    """What one run did; written to ``<run dir>/report.json``."""

    run_id: str
    model: str
    reasons: list[str]
    status: Status = "failed"
    message: str = ""
    started_ms: int = 0
    finished_ms: int = 0
    examples: int = 0
    dataset_dir: str | None = None
    run_dir: str | None = None
    evaluation_dir: str | None = None
    test_metrics: dict[str, Any] = field(default_factory=dict)
    baseline_version: str | None = None
    baseline_metrics: dict[str, Any] | None = None
    version: str | None = None
    shadow: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_examples_for(cfg: RtmlConfig, now_ms: int) -> pd.DataFrame:
    """Labeled examples for a run (see the module docstring), newest ``lookback_ms`` only."""
    from engine.datasets.examples import examples_from_events, load_examples

    rcfg = cfg.retraining
    since = now_ms - rcfg.lookback_ms
    if rcfg.examples_from == "file":
        if not rcfg.examples:
            raise ValueError("retraining.examples_from is 'file' but retraining.examples is not set")
        examples = load_examples(rcfg.examples)
    else:
        events = read_events(cfg)
        examples = examples_from_events(events, cfg.learning.label_window_ms)
    return examples[examples["event_time_ms"] >= since].reset_index(drop=True)


def read_events(cfg: RtmlConfig) -> pd.DataFrame:
    """Every valid interaction of the events topic (up to its end at call time) as a DataFrame.

    Invalid events are skipped: the features dataflow has already dead-lettered them.
    """
    from engine.datasets.examples import events_frame
    from engine.events.topic_reader import read_topic
    from engine.events.validation import validate_interaction

    if not cfg.kafka.bootstrap:
        raise ValueError("reading examples from the events topic needs RTML_KAFKA_BOOTSTRAP")
    now_ms = int(time.time() * 1000)
    raws = read_topic(cfg.kafka.bootstrap, cfg.kafka.events_topic, group_id="rtml-retrainer")
    return events_frame(validate_interaction(raw, None, now_ms, cfg.pipeline.max_future_ms) for raw in raws)


def run_retraining(
    cfg: RtmlConfig,
    reasons: Sequence[str],
    examples: pd.DataFrame | None = None,
    now_ms: int | None = None,
) -> RetrainReport:
    """Perform one run (see the module docstring); never raises for a failed step: the report says."""
    rcfg = cfg.retraining
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    run_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now_ms / 1000)) + "-" + uuid.uuid4().hex[:6]
    run_dir = Path(rcfg.work_dir or ".") / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    report = RetrainReport(run_id, rcfg.model, list(reasons), started_ms=now_ms)
    try:
        _run(cfg, report, run_dir, examples, now_ms)
    except Exception as exc:  # a failed run is reported; the watcher keeps going
        log.exception("retraining run %s failed", run_id)
        report.status, report.message = "failed", f"{type(exc).__name__}: {exc}"
    report.finished_ms = int(time.time() * 1000)
    (run_dir / "report.json").write_bytes(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    return report


def _run(cfg: RtmlConfig, report: RetrainReport, run_dir: Path, examples: pd.DataFrame | None, now_ms: int) -> None:
    from engine.datasets.build import build_from_offline_store
    from engine.registry.export import register_run
    from engine.registry.registry import ModelRegistry
    from engine.rollouts.routing import current_primary, pin_primary, start_shadow
    from engine.training.config import TrainConfig
    from engine.training.dataset import load_split_for, train_from_dataset
    from engine.training.evaluate import evaluate_run

    rcfg = cfg.retraining
    if examples is None:
        examples = load_examples_for(cfg, now_ms)
    report.examples = len(examples)
    if len(examples) < rcfg.min_examples:
        report.status = "skipped"
        report.message = f"{len(examples)} labeled examples, fewer than retraining.min_examples ({rcfg.min_examples})"
        return

    dataset_dir = run_dir / "dataset"
    build_from_offline_store(cfg, examples, dataset_dir, features=rcfg.features or None)
    report.dataset_dir = str(dataset_dir)

    train_cfg = TrainConfig(
        kind=rcfg.model_kind, epochs=rcfg.epochs, batch_size=rcfg.batch_size, buckets=rcfg.buckets,
        downsample_rate=rcfg.downsample_rate,
        calibration=None if rcfg.calibration == "none" else rcfg.calibration,
    )
    run = train_from_dataset(dataset_dir, train_cfg, sparse_columns=rcfg.sparse_columns)
    run.save(run_dir / "run")
    report.run_dir = str(run_dir / "run")

    test = load_split_for(run, dataset_dir, "test")
    evaluation = evaluate_run(run, test, run_dir / "evaluation")
    report.evaluation_dir = str(run_dir / "evaluation")
    report.test_metrics = {k: evaluation["calibrated"][k] for k in ("auc", "log_loss", "ece", "calibration_ratio")}

    root = Path(cfg.learning.model_repository or "models")
    registry = ModelRegistry(root)
    baseline = current_primary(root, rcfg.model)
    report.baseline_version = baseline
    if baseline is not None:
        report.baseline_metrics = score_baseline(registry, rcfg.model, baseline, run, test)
    if report.baseline_metrics is not None:
        floor = report.baseline_metrics["auc"] - rcfg.max_auc_drop
        if report.test_metrics["auc"] < floor:
            report.status = "rejected"
            report.message = (f"test AUC {report.test_metrics['auc']:.4f} is below the serving version "
                              f"{baseline}'s {report.baseline_metrics['auc']:.4f} - {rcfg.max_auc_drop} on the same rows")
            return

    if baseline is not None:
        # Pin what serves now, so the new (highest) version never becomes the default
        # between the server loading it and the shadow edit.
        pin_primary(root, rcfg.model, baseline, reason=f"retraining {report.run_id}: keep {baseline} primary")
    validation = load_split_for(run, dataset_dir, "validation")
    registered = register_run(
        registry, run, rcfg.model, validation=(validation.dense, validation.sparse, validation.label),
        precision=rcfg.precision, parent=f"{rcfg.model}/{baseline}" if baseline else None,
        extra_metadata={"retraining": {"run_id": report.run_id, "reasons": report.reasons,
                                       "test_metrics": report.test_metrics}},
    )
    report.version = registered.version
    report.status = "registered"
    report.message = f"registered {rcfg.model} version {registered.version}"
    if rcfg.shadow and baseline is not None:  # a first version has nothing to shadow: it serves
        start_shadow(root, rcfg.model, registered.version, reason="retraining: " + "; ".join(report.reasons))
        report.shadow = True
        report.message += ", shadowing the serving version"


def score_baseline(registry: Any, model: str, version: str, run: Any, test: Any) -> dict[str, Any] | None:
    """Test metrics of the serving version on the new test rows, None when it cannot take them.

    It can when it is an ONNX ranker registered from a training run whose inputs were built the
    same way (the registry's ``features``: dense columns, hashed sparse columns, bucket count).
    """
    from engine.export.torch_export import feeds
    from engine.training.metrics import auc, log_loss
    from serving.onnx_session import load_onnx

    info = registry.get(model, version)
    layout = info.metadata.get("features")
    if info.backend != "onnx" or layout is None or layout != run.features:
        return None
    session = load_onnx((info.path / "model.onnx").read_bytes())
    out = session.run(feeds(test.dense, test.sparse, [spec.name for spec in session.inputs]))
    scores = np.asarray(out[session.outputs[0].name], dtype=np.float64).reshape(-1)
    return {"auc": auc(test.label, scores), "log_loss": log_loss(test.label, scores)}
