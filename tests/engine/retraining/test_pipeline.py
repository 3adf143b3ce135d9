"""A retraining run end to end on real components.

Simulated events go to a real Kafka topic and through the features dataflow (backfill) into the
offline log; a run reads the topic, builds a point-in-time set, trains DeepFM, evaluates,
registers an ONNX version and, from the second run on, shadows the serving version.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from dataflows.backfill import run_backfill
from engine.config import RtmlConfig, load_config
from engine.events.producer import Topics, produce
from engine.events.schemas import Interaction
from engine.events.simulator import Simulator, SimulatorConfig
from engine.features.spec import views_from_config
from engine.registry.registry import ModelRegistry
from engine.retraining.pipeline import run_retraining
from engine.rollouts.routing import read_routing
from engine.training.dataset import load_split_for
from engine.training.run import TrainingRun
from serving.onnx_session import load_onnx

FEATURES = ["user.clicks_1h", "user.impressions_1h", "user.ctr_1h", "item.clicks_1h", "item.ctr_1h", "user.ctr_5m"]

pytestmark = pytest.mark.slow


def _simulate(tmp_path: Path, bootstrap: str, topic: str) -> Path:
    start = int(time.time() * 1000) - 30 * 60_000
    sim_cfg = SimulatorConfig(n_users=120, n_items=60, rate=40.0, seed=5, start_time_ms=start, new_item_every_s=None)
    stats = produce(bootstrap, Simulator(sim_cfg), Topics(events=topic, labels=topic + "-labels", items=topic + "-items"),
                    duration_s=900)
    assert stats.failed == 0
    # The same events, as a file, through the features dataflow: the offline feature log.
    events = [e.to_dict() for e in Simulator(sim_cfg).events(duration_s=900) if isinstance(e, Interaction)]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(e) for e in events) + b"\n")
    return path


def _config(tmp_path: Path, bootstrap: str, redis_url: str, topic: str, **retraining: object) -> RtmlConfig:
    return load_config(env={}, overrides={
        "kafka": {"bootstrap": bootstrap, "events_topic": topic},
        "redis": {"url": redis_url, "key_prefix": f"rt{tmp_path.name}"},
        "pipeline": {"offline_dir": str(tmp_path / "offline"), "shards_per_view": 2},
        "learning": {"model_repository": str(tmp_path / "models")},
        "retraining": {"work_dir": str(tmp_path / "runs"), "features": FEATURES, "epochs": 2,
                       "min_examples": 500, **retraining},
    })


def test_runs_register_then_shadow_with_lineage_and_a_quality_gate(
    kafka_bootstrap: str, redis_url: str, unique_topic, tmp_path: Path
) -> None:
    topic = unique_topic("events", partitions=2)
    events_file = _simulate(tmp_path, kafka_bootstrap, topic)
    cfg = _config(tmp_path, kafka_bootstrap, redis_url, topic)
    run_backfill(cfg, views_from_config(cfg), [events_file])

    first = run_retraining(cfg, ["manual"])
    assert first.status == "registered", first.message
    assert first.version == "1" and first.baseline_version is None and not first.shadow
    assert first.examples > 5_000
    assert 0.6 < first.test_metrics["auc"] <= 1.0  # the simulator's clicks are learnable from these features

    registry = ModelRegistry(cfg.learning.model_repository or "")
    info = registry.get("ctr", "1")
    assert info.metadata["retraining"]["reasons"] == ["manual"]
    manifest = info.metadata["dataset_manifest"]
    assert [f["name"] for f in manifest["features"]] == FEATURES
    assert manifest["rows"] == first.examples  # every example kept by the PIT join
    assert sum(split["rows"] for split in manifest["splits"].values()) == first.examples
    # The registered ONNX model scores the test split as the training run does.
    run = TrainingRun.load(first.run_dir or "")
    test = load_split_for(run, first.dataset_dir or "", "test")
    session = load_onnx((info.path / "model.onnx").read_bytes())
    names = [s.name for s in session.inputs]
    feeds = {n: arr for n, arr in (("dense", test.dense), ("sparse", test.sparse)) if n in names}
    served = session.run(feeds)["probability"].reshape(-1)
    np.testing.assert_allclose(served, run.predict_proba(test.dense, test.sparse), atol=1e-5)
    report = orjson.loads((Path(cfg.retraining.work_dir or "") / first.run_id / "report.json").read_bytes())
    assert report["status"] == "registered"
    assert (Path(first.evaluation_dir or "") / "reliability.png").exists()

    # A drift-triggered run: the serving version is scored on the same fresh test rows, stays
    # primary (pinned), and the new version shadows it.
    second = run_retraining(cfg, ["concept_drift on ctr (error, hddm_a=0.3, warning)"])
    assert second.status == "registered", second.message
    assert second.baseline_version == "1" and second.baseline_metrics is not None
    assert second.version == "2" and second.shadow
    routing = read_routing(cfg.learning.model_repository or "", "ctr")
    assert routing["primary"] == "1" and routing["shadow"]["version"] == "2"
    assert [v.version for v in registry.lineage("ctr", "2")] == ["2", "1"]

    # The gate: a weaker model must not get in; whatever the numbers, the decision follows them.
    gated = _config(tmp_path, kafka_bootstrap, redis_url, topic, model_kind="lr", epochs=1, max_auc_drop=0.0)
    third = run_retraining(gated, ["schedule"])
    assert third.baseline_metrics is not None
    worse = third.test_metrics["auc"] < third.baseline_metrics["auc"]
    assert third.status == ("rejected" if worse else "registered"), third.message
    assert ("3" in registry.versions("ctr")) == (not worse)


def test_too_few_examples_skips_before_training(kafka_bootstrap: str, redis_url: str, unique_topic,
                                                tmp_path: Path) -> None:
    topic = unique_topic("events")
    cfg = _config(tmp_path, kafka_bootstrap, redis_url, topic)
    report = run_retraining(cfg, ["manual"])
    assert report.status == "skipped" and report.examples == 0
    assert not (tmp_path / "models" / "ctr").exists()


def test_a_failing_step_is_reported_not_raised(tmp_path: Path) -> None:
    cfg = load_config(env={}, overrides={"retraining": {"work_dir": str(tmp_path), "examples_from": "file",
                                                        "examples": str(tmp_path / "missing.parquet")}})
    report = run_retraining(cfg, ["manual"])
    assert report.status == "failed" and "missing.parquet" in report.message
