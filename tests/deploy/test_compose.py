"""The deployment files: docker-compose.yml, deploy/prometheus.yml, Dockerfile, entry script.

``docker-compose config -q`` runs when the binary is installed (Debian's
docker-compose 1.29 validates without a Docker engine); the structural checks
below need only PyYAML and keep the files in step with the engine's defaults.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.config import RtmlConfig, load_config
from engine.runtime.stack import LocalStack

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS = ROOT / "deploy" / "prometheus.yml"
DOCKERFILE = ROOT / "Dockerfile"

SERVICES = {"kafka", "topic-init", "redis", "features", "prometheus", "learning", "drift"}


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _dataflow_config() -> RtmlConfig:
    """The config the features container sees (only its RTML_* variables)."""
    return load_config(path=None, env=_env(_compose()["services"]["features"]))


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed")
def test_docker_compose_config_validates() -> None:
    result = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config", "-q"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    services = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config", "--services"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    ).stdout.split()
    assert set(services) == SERVICES


def test_compose_has_the_services_and_start_order() -> None:
    services = _compose()["services"]
    assert set(services) == SERVICES
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "controller" in _env(services["kafka"])["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    assert services["redis"]["image"].startswith("redis:7")
    assert services["prometheus"]["image"].startswith("prom/prometheus")
    assert services["features"]["build"]["context"] == "."
    for name in ("kafka", "redis", "features", "prometheus"):
        assert "healthcheck" in services[name], name
    deps = services["features"]["depends_on"]
    assert deps["kafka"]["condition"] == "service_healthy"
    assert deps["redis"]["condition"] == "service_healthy"
    assert deps["topic-init"]["condition"] == "service_completed_successfully"
    assert services["topic-init"]["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_features_container_points_at_the_compose_services() -> None:
    cfg = _dataflow_config()
    assert cfg.kafka.bootstrap == "kafka:9092"
    assert cfg.redis.url is not None and cfg.redis.url.startswith("redis://redis:6379")
    assert cfg.pipeline.offline_dir.startswith("/data/")
    assert cfg.pipeline.recovery_dir and cfg.pipeline.recovery_dir.startswith("/data/")
    volumes = _compose()["services"]["features"]["volumes"]
    assert any(v.endswith(":/data") for v in volumes)


def test_topic_init_creates_every_topic_the_stack_would() -> None:
    """The one-shot service creates the same topics as LocalStack (inputs, alerts, DLQs)."""
    topic_init = _compose()["services"]["topic-init"]
    created = set(_env(topic_init)["TOPICS"].split())
    assert created == set(LocalStack(_dataflow_config()).topics)
    script = "\n".join(topic_init["command"])
    assert "kafka-topics.sh" in script and "--if-not-exists" in script


def test_prometheus_scrapes_the_dataflow_metrics_port() -> None:
    prom = yaml.safe_load(PROMETHEUS.read_text())
    targets = [t for job in prom["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]]
    port = _dataflow_config().metrics.port
    assert port == 9400
    assert f"features:{port}" in targets
    services = _compose()["services"]
    assert any(str(p).split(":")[-1] == str(port) for p in services["features"]["ports"])
    mounts = services["prometheus"]["volumes"]
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts


def test_image_runs_the_features_flow() -> None:
    from engine.cli import build_parser
    from engine.runtime.jobs import FEATURES_FLOW

    module, _, factory = FEATURES_FLOW.partition(":")
    assert callable(getattr(importlib.import_module(module), factory.removesuffix("()")))
    assert build_parser().parse_args(["dataflow"]).command == "dataflow"
    dockerfile = DOCKERFILE.read_text()
    assert dockerfile.startswith("#") and "FROM python:3.11-slim" in dockerfile
    assert "pip install" in dockerfile and 'CMD ["rtml", "dataflow"]' in dockerfile
    assert _compose()["services"]["features"]["command"] == ["rtml", "dataflow"]
