"""One typed configuration for every rtml process.

Values come from, in increasing priority:

1. the defaults below,
2. a YAML file (``--config FILE`` or ``RTML_CONFIG``),
3. environment variables ``RTML_<SECTION>_<FIELD>`` (for example
   ``RTML_KAFKA_BOOTSTRAP=broker:9092`` or ``RTML_PIPELINE_PROCESSES=2``).

>>> cfg = load_config(env={"RTML_KAFKA_PARTITIONS": "6"})
>>> cfg.kafka.partitions
6
>>> cfg.kafka.bootstrap is None  # None: start the embedded broker
True
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class KafkaConfig(_Section):
    """Where events come from; ``bootstrap=None`` starts the embedded Tansu broker."""

    bootstrap: str | None = None
    partitions: int = Field(3, ge=1)
    events_topic: str = "events"
    labels_topic: str = "labels"
    items_topic: str = "items"
    alerts_topic: str = "alerts"
    # Measured (benchmarks/ingest.py): 20 ms keeps freshness p99 near 100 ms where 100 ms
    # gave ~230 ms; FIELD-NOTES: 5 ms made Tansu fall behind.
    fetch_wait_max_ms: int = Field(20, ge=1)
    consume_batch_size: int = Field(5000, ge=1)


class RedisConfig(_Section):
    """Online store; ``url=None`` starts an embedded ``redis-server``."""

    url: str | None = None
    key_prefix: str = "rtml"


class PipelineConfig(_Section):
    """The features dataflow."""

    feature_specs: str | None = None  # YAML of feature views; None: the packaged defaults
    # Watermark = max event time seen - out_of_orderness_ms (per shard).
    out_of_orderness_ms: int = Field(5_000, ge=0)
    # Events older than the watermark by more than this are late (DLQ, reason "late").
    allowed_lateness_ms: int = Field(60_000, ge=0)
    # Events with event_time further than this in the future are invalid.
    max_future_ms: int = Field(300_000, ge=0)
    # Advance the watermark with wall-clock time while a shard is idle (live mode).
    idle_advance: bool = True
    # A source partition silent (or unheard of) this long stops holding the watermark back.
    source_idle_ms: int = Field(10_000, ge=0)
    shards_per_view: int = Field(8, ge=1)
    # Coalesce running-feature writes to Redis at most this often per shard.
    flush_interval_ms: int = Field(20, ge=0)
    # A batch read with this many messages still waiting in its partition is catch-up: writes
    # of running features are then spaced so that they take at most flush_share of the CPU.
    catch_up_backlog: int = Field(10_000, ge=1)
    flush_share: float = Field(0.05, gt=0, le=1)
    offline_dir: str | None = None  # None: <data_dir>/offline
    recovery: bool = True  # Bytewax snapshots: restart resumes state and offsets
    recovery_dir: str | None = None  # None: <data_dir>/recovery
    snapshot_interval_s: int = Field(5, ge=1)  # Bytewax takes whole seconds
    processes: int = Field(1, ge=1)
    # With several processes, the process that reads more partitions hands part of its
    # batches' checking to the others (operators/balance.py). Off: each partition's batches
    # stay in order end to end (no reordering near the lateness limit), at the cost of balance.
    spread_checks: bool = True
    dlq_suffix: str = ".dlq"


class SupervisorConfig(_Section):
    """How ``rtml up`` keeps dataflow processes alive."""

    backoff_initial_s: float = Field(0.5, gt=0)
    backoff_max_s: float = Field(30.0, gt=0)
    stall_after_s: float = Field(30.0, gt=0)
    check_interval_s: float = Field(2.0, gt=0)


class MetricsConfig(_Section):
    """Prometheus exposition; each dataflow process i serves on ``port + i``."""

    enabled: bool = True
    port: int = Field(9400, ge=0, le=65535)
    supervisor_port: int = Field(9399, ge=0, le=65535)  # ``rtml up``'s own metrics; 0 disables
    learning_port: int = Field(9410, ge=0, le=65535)  # the learning dataflow; 0 disables
    drift_port: int = Field(9420, ge=0, le=65535)  # the drift dataflow; 0 disables


class LearningConfig(_Section):
    """The learning dataflow: label join, online learners, snapshots (docs/learning.md)."""

    predictions_topic: str = "predictions"
    metrics_topic: str = "metrics"  # progressive-validation reports, one JSON per learner report
    # Labels that cannot join (after their window, duplicates, unknown request) go here, with a reason.
    unjoined_topic: str = "labels.unjoined"
    # A prediction waits this long (event time) for its label; a label later than this is late.
    label_window_ms: int = Field(30_000, ge=1)
    # Join watermark = slowest source partition's max event time - this.
    out_of_orderness_ms: int = Field(2_000, ge=0)
    # A source partition silent this long stops holding the join watermark back.
    source_idle_ms: int = Field(10_000, ge=0)
    unlabeled: Literal["negative", "drop"] = "negative"  # a window closing without a label
    # Interaction types that label a prediction 1.0 when they carry its request_id (comma-separated).
    implicit_labels: str = "click"
    join_shards: int = Field(4, ge=1)
    # Processes of the learning job: 1 does everything; N > 1 reads and joins in process 0
    # and spreads the learners over the others (dataflows/learning.py).
    processes: int = Field(1, ge=1)
    # With N > 1, process 0 lowers its CPU priority by this much (nice; 0: not): a learner is
    # the job's sequential bottleneck, so where cores are short it keeps its core.
    input_niceness: int = Field(10, ge=0, le=19)
    learners: str | None = None  # YAML of learner specs; None: the packaged defaults
    bandits: str | None = None  # YAML of bandit specs (served by Choose, rewarded here); None: none
    model_repository: str | None = None  # where snapshots are published; None: <data_dir>/models
    # HMAC-SHA256 key for snapshot manifests; serving refuses unsigned snapshots when set.
    snapshot_key: str | None = None
    snapshot_every_examples: int = Field(5_000, ge=1)
    snapshot_every_s: float = Field(30.0, gt=0)
    keep_snapshots: int = Field(5, ge=1)
    report_every_examples: int = Field(1_000, ge=1)
    auc_window: int = Field(5_000, ge=10)  # rolling window of the progressive metrics
    recovery: bool = True
    recovery_dir: str | None = None  # None: <data_dir>/recovery-learning

    @property
    def implicit_label_types(self) -> tuple[str, ...]:
        """``implicit_labels`` as interaction types, in the order given."""
        return tuple(t.strip() for t in self.implicit_labels.split(",") if t.strip())


class DriftConfig(_Section):
    """In-stream drift detection (dataflows/drift.py) and what an alert triggers."""

    window_ms: int = Field(60_000, ge=1)  # tumbling event-time window compared to the reference
    # Reference distribution: Parquet/JSONL of feature rows (training data); None pins the first
    # full window seen per model.
    reference: str | None = None
    min_samples: int = Field(200, ge=2)  # windows smaller than this are not tested
    binning: Literal["quantile", "uniform", "evidently"] = "quantile"
    n_bins: int = Field(10, ge=2)
    epsilon: float = Field(1e-4, gt=0)  # fills empty bins (Evidently's value)
    psi_threshold: float = Field(0.2, gt=0)
    js_threshold: float = Field(0.1, gt=0)
    ks_p_value: float = Field(0.01, gt=0, lt=1)
    ks_method: Literal["exact", "kll"] = "exact"
    max_window_samples: int = Field(50_000, ge=10)  # per feature; beyond it a uniform reservoir
    # Concept drift (the learning dataflow's error stream): detector and reaction.
    detector: Literal["hddm_a", "ddm", "adwin"] = "hddm_a"
    detector_grace: int = Field(0, ge=0)  # examples after a (re)start during which no concept drift is raised
    on_concept_drift: Literal["alert", "reset"] = "alert"  # reset: the learner also starts afresh
    # "module:function" called with every alert (the retraining hook); None: alerts only.
    retrain_hook: str | None = None


def _comma_list(value: Any) -> Any:
    # Lists also come from environment variables: "concept_drift,prediction_drift".
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class RetrainingConfig(_Section):
    """The retraining loop (engine/retraining): when to retrain one model, and how (docs/retraining.md)."""

    model: str = "ctr"  # registry (= serving repository) name of the model that is retrained
    # Labeled examples: "events" reads impressions and clicks from the events topic (clicks within
    # learning.label_window_ms label an impression); "file" reads `examples` (Parquet/JSONL/CSV).
    examples_from: Literal["events", "file"] = "events"
    examples: str | None = None
    lookback_ms: int = Field(7 * 86_400_000, ge=1)  # examples newer than now - lookback
    features: Annotated[list[str], BeforeValidator(_comma_list)] = Field(default_factory=list)  # []: all
    sparse_columns: Annotated[list[str], BeforeValidator(_comma_list)] = Field(
        default_factory=lambda: ["user_id", "item_id"]
    )  # hashed as categorical fields
    model_kind: Literal["lr", "deepfm"] = "deepfm"
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(1024, ge=1)  # small enough for enough steps on a few days of examples
    buckets: int = Field(1 << 17, ge=2)  # hash buckets per sparse column
    downsample_rate: float = Field(1.0, gt=0, le=1)
    calibration: Literal["platt", "isotonic", "none"] = "platt"
    precision: Literal["fp32", "int8", "fp16"] = "fp32"
    min_examples: int = Field(1_000, ge=1)  # fewer: the run stops before training
    # Quality gate: the new model's test AUC may be at most this far below the serving
    # version's on the same fresh test split (when that version can be scored on it).
    max_auc_drop: float = Field(0.005, ge=0)
    shadow: bool = True  # start a shadow rollout of the registered version
    # Triggers: a schedule (seconds between runs; None: none) and drift alerts on alerts_topic.
    schedule_s: float | None = Field(None, gt=0)
    on_alerts: Annotated[list[str], BeforeValidator(_comma_list)] = Field(
        default_factory=lambda: ["concept_drift", "prediction_drift"]
    )
    min_severity: Literal["warning", "critical"] = "warning"
    cooldown_s: float = Field(600.0, ge=0)  # after a run, alerts within this long start nothing
    work_dir: str | None = None  # None: <data_dir>/retraining


class RtmlConfig(_Section):
    """The whole configuration."""

    kafka: KafkaConfig = KafkaConfig()
    redis: RedisConfig = RedisConfig()
    pipeline: PipelineConfig = PipelineConfig()
    supervisor: SupervisorConfig = SupervisorConfig()
    metrics: MetricsConfig = MetricsConfig()
    learning: LearningConfig = LearningConfig()
    drift: DriftConfig = DriftConfig()
    retraining: RetrainingConfig = RetrainingConfig()
    data_dir: str = ".rtml"

    @model_validator(mode="after")
    def _paths_under_data_dir(self) -> "RtmlConfig":
        # Unset paths live under data_dir, so moving data_dir moves everything.
        if self.pipeline.offline_dir is None:
            self.pipeline.offline_dir = str(Path(self.data_dir) / "offline")
        if self.pipeline.recovery_dir is None:
            self.pipeline.recovery_dir = str(Path(self.data_dir) / "recovery")
        if self.learning.model_repository is None:
            self.learning.model_repository = str(Path(self.data_dir) / "models")
        if self.learning.recovery_dir is None:
            self.learning.recovery_dir = str(Path(self.data_dir) / "recovery-learning")
        if self.retraining.work_dir is None:
            self.retraining.work_dir = str(Path(self.data_dir) / "retraining")
        return self


ENV_PREFIX = "RTML_"


def _sections() -> dict[str, type[BaseModel]]:
    return {
        name: field.annotation
        for name, field in RtmlConfig.model_fields.items()
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
    }


def _optional(model: type[BaseModel], name: str) -> bool:
    annotation = model.model_fields[name].annotation
    return type(None) in getattr(annotation, "__args__", ())


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """Map ``RTML_<SECTION>_<FIELD>`` (and top-level ``RTML_<FIELD>``) variables onto config keys.

    An empty value means "unset" (None) for optional fields, e.g. ``RTML_KAFKA_BOOTSTRAP=``.
    """
    overrides: dict[str, Any] = {}
    sections = _sections()
    for section, model in sections.items():
        for field_name in model.model_fields:
            var = f"{ENV_PREFIX}{section}_{field_name}".upper()
            if var in env:
                value: Any = env[var]
                if value == "" and _optional(model, field_name):
                    value = None
                overrides.setdefault(section, {})[field_name] = value
    for field_name in RtmlConfig.model_fields:
        var = f"{ENV_PREFIX}{field_name}".upper()
        if field_name not in sections and var in env:
            overrides[field_name] = env[var]
    return overrides


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> RtmlConfig:
    """Build the configuration from defaults, a YAML file, env vars and explicit overrides."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    path = path or env.get(f"{ENV_PREFIX}CONFIG")
    if path:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {path} must hold a mapping")
        data = loaded
    data = _deep_merge(data, _env_overrides(env))
    if overrides:
        data = _deep_merge(data, overrides)
    return RtmlConfig.model_validate(data)


def _env_text(value: Any) -> str:
    # The inverse of the parsing: None is "", a list is comma-separated (see _comma_list).
    if value is None:
        return ""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def to_env(cfg: RtmlConfig) -> dict[str, str]:
    """The env vars that reproduce ``cfg`` in a child process (inverse of the overrides)."""
    out: dict[str, str] = {}
    sections = _sections()
    for section in sections:
        for name, value in getattr(cfg, section).model_dump().items():
            out[f"{ENV_PREFIX}{section}_{name}".upper()] = _env_text(value)
    for name, value in cfg.model_dump().items():
        if name not in sections:
            out[f"{ENV_PREFIX}{name}".upper()] = str(value)
    return out
