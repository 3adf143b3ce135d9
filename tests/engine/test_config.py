"""Configuration: defaults, YAML file, RTML_* overrides and their round trip to child processes."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from engine.config import load_config, to_env


def test_defaults_mean_embedded_services() -> None:
    cfg = load_config(env={})
    assert cfg.kafka.bootstrap is None and cfg.redis.url is None
    assert cfg.pipeline.processes == 1


def test_file_then_env_overrides(tmp_path: Path) -> None:
    path = tmp_path / "rtml.yaml"
    path.write_text("kafka:\n  partitions: 6\n  events_topic: clicks\npipeline:\n  processes: 2\n")
    cfg = load_config(path, env={"RTML_PIPELINE_PROCESSES": "4", "RTML_KAFKA_BOOTSTRAP": "b:9092"})
    assert cfg.kafka.partitions == 6 and cfg.kafka.events_topic == "clicks"
    assert cfg.pipeline.processes == 4
    assert cfg.kafka.bootstrap == "b:9092"


def test_config_file_from_env(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("redis:\n  key_prefix: x\n")
    assert load_config(env={"RTML_CONFIG": str(path)}).redis.key_prefix == "x"


def test_invalid_values_and_unknown_keys_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        load_config(env={"RTML_KAFKA_PARTITIONS": "zero"})
    with pytest.raises(ValidationError):
        load_config(env={"RTML_PIPELINE_PROCESSES": "0"})
    path = tmp_path / "typo.yaml"
    path.write_text("kafka:\n  bootstrp: x\n")
    with pytest.raises(ValidationError):
        load_config(path, env={})


def test_to_env_round_trips() -> None:
    cfg = load_config(env={}, overrides={"kafka": {"bootstrap": "h:1"}, "pipeline": {"idle_advance": False,
                                                                                     "recovery": False}})
    again = load_config(env=to_env(cfg))
    assert again.model_dump() == cfg.model_dump()


def test_paths_default_under_data_dir() -> None:
    cfg = load_config(env={"RTML_DATA_DIR": "/srv/rtml"})
    assert cfg.pipeline.offline_dir == "/srv/rtml/offline"
    assert cfg.pipeline.recovery_dir == "/srv/rtml/recovery" and cfg.pipeline.recovery
    explicit = load_config(env={"RTML_DATA_DIR": "/srv/rtml", "RTML_PIPELINE_OFFLINE_DIR": "/lake/features"})
    assert explicit.pipeline.offline_dir == "/lake/features"
