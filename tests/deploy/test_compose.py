"""The deployment files: docker-compose.yml (+ the GPU override), deploy/prometheus.yml, Dockerfile.

``docker-compose config -q`` runs when the binary is installed (Debian's
docker-compose 1.29 validates without a Docker engine); the structural checks
below need only PyYAML and keep the files in step with the engine's defaults.
"""

from __future__ import annotations

import importlib
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.config import RtmlConfig, load_config
from engine.runtime.stack import LocalStack

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_GPU = ROOT / "docker-compose.gpu.yml"
PROMETHEUS = ROOT / "deploy" / "prometheus.yml"
DOCKERFILE = ROOT / "Dockerfile"

SERVICES = {"kafka", "topic-init", "redis", "features", "prometheus", "learning", "drift", "serving", "retrainer"}
RTML_SERVICES = {"features", "learning", "drift", "serving", "retrainer"}  # run the rtml image


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


def _config(service: dict[str, Any]) -> RtmlConfig:
    """The rtml config a container sees (only its RTML_* variables)."""
    return load_config(path=None, env=_env(service))


def _flags(command: list[str]) -> dict[str, str]:
    """``--name=value`` arguments of a command (the compose file writes serve flags that way)."""
    return dict(a[2:].split("=", 1) for a in command if a.startswith("--") and "=" in a)


def _mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """Container path -> (named volume, writable)."""
    out = {}
    for v in service.get("volumes", []):
        source, target, *mode = v.split(":")
        out[target] = (source, mode != ["ro"])
    return out


def _metrics_port(name: str, service: dict[str, Any]) -> int | None:
    """The /metrics port a compose service serves, from its own command and RTML_* variables."""
    command = service.get("command") or []
    if command[:2] == ["rtml", "serve"]:
        return int(_flags(command)["metrics-port"])
    if command[:2] == ["rtml", "dataflow"]:
        job = command[command.index("--job") + 1] if "--job" in command else "features"
        m = _config(service).metrics
        return {"features": m.port, "learning": m.learning_port, "drift": m.drift_port}[job]
    return None


def _scrape_targets() -> set[str]:
    prom = yaml.safe_load(PROMETHEUS.read_text())
    return {t for job in prom["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]}


def _docker_compose(*files: Path, args: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    command = ["docker-compose", *(a for f in files for a in ("-f", str(f))), "config", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed")
def test_docker_compose_config_validates() -> None:
    result = _docker_compose(COMPOSE, args=("-q",))
    assert result.returncode == 0, result.stderr
    services = _docker_compose(COMPOSE, args=("--services",))
    assert set(services.stdout.split()) == SERVICES
    gpu = _docker_compose(COMPOSE, COMPOSE_GPU, args=("-q",))
    assert gpu.returncode == 0, gpu.stderr


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
    assert cfg.pipeline.recovery_dir and cfg.pipeline.recovery_dir.startswith("/data/")
    mounts = _mounts(_compose()["services"]["features"])
    assert mounts["/data"] == ("features-data", True)
    assert mounts[cfg.pipeline.offline_dir] == ("offline", True)  # the offline log: its own volume


def test_every_rtml_service_points_at_the_compose_kafka_and_redis() -> None:
    services = _compose()["services"]
    for name in RTML_SERVICES:
        cfg = _config(services[name])
        assert cfg.kafka.bootstrap == "kafka:9092", name
        assert cfg.redis.url == "redis://redis:6379/0", name
    flags = _flags(services["serving"]["command"])
    assert flags["kafka-bootstrap"] == "kafka:9092" and flags["redis-url"] == "redis://redis:6379/0"
    assert flags["predictions-topic"] == _config(services["learning"]).learning.predictions_topic
    assert flags["host"] == "0.0.0.0"  # reachable from Prometheus and the host


def test_serving_and_retrainer_commands_parse() -> None:
    """The compose commands use only flags that exist (`rtml serve -h`, `rtml retrain watch -h`)."""
    from engine.cli import build_parser
    from serving.server import _parser

    services = _compose()["services"]
    serve = services["serving"]["command"]
    assert serve[:2] == ["rtml", "serve"]
    args = _parser().parse_args(serve[2:])  # exits (SystemExit) on an unknown flag
    assert args.models == "/models" and args.metrics_port == 8002 and args.grpc_port == 8001
    assert build_parser().parse_args(services["retrainer"]["command"][1:]).command == "retrain"


def test_the_model_and_offline_volumes_are_shared_as_documented() -> None:
    """learning publishes, the retrainer registers, serving reads: one `models` volume at their paths."""
    services = _compose()["services"]
    learning, retrainer, serving, features = (services[n] for n in ("learning", "retrainer", "serving", "features"))
    repo = _config(learning).learning.model_repository
    assert _mounts(learning)[repo] == ("models", True)
    assert _mounts(retrainer)[_config(retrainer).learning.model_repository] == ("models", True)
    assert _mounts(serving)[_flags(serving["command"])["models"]] == ("models", False)  # read-only
    # The retrainer builds its training sets from the features dataflow's offline log.
    offline = _config(features).pipeline.offline_dir
    assert _mounts(features)[offline] == ("offline", True)
    assert _mounts(retrainer)[_config(retrainer).pipeline.offline_dir][0] == "offline"
    assert _config(retrainer).retraining.work_dir.startswith("/data/")
    assert _mounts(retrainer)["/data"] == ("retraining-data", True)
    declared = set(_compose()["volumes"])
    used = {src for s in services.values() for src, _ in _mounts(s).values() if not src.startswith(".")}
    assert used == declared  # no undeclared volume, no unused one
    # Every volume mount point exists in the image, owned by the service user (see Dockerfile).
    rtml_mounts = {t for n in RTML_SERVICES for t in _mounts(services[n])}
    chown = next(line for line in DOCKERFILE.read_text().splitlines() if "chown rtml:rtml" in line)
    assert rtml_mounts <= set(chown.split()), rtml_mounts - set(chown.split())


def test_topic_init_creates_every_topic_the_stack_would() -> None:
    """The one-shot service creates the same topics as LocalStack (inputs, alerts, DLQs)."""
    topic_init = _compose()["services"]["topic-init"]
    created = set(_env(topic_init)["TOPICS"].split())
    assert created == set(LocalStack(_dataflow_config()).topics)
    script = "\n".join(topic_init["command"])
    assert "kafka-topics.sh" in script and "--if-not-exists" in script


def test_prometheus_scrapes_every_component_with_metrics() -> None:
    services = _compose()["services"]
    targets = _scrape_targets()
    expected = {name: port for name in RTML_SERVICES if (port := _metrics_port(name, services[name])) is not None}
    assert set(expected) == RTML_SERVICES - {"retrainer"}  # `rtml retrain watch` serves no metrics
    assert expected["features"] == 9400
    for name, port in expected.items():
        assert f"{name}:{port}" in targets, name
        assert f"{port}:{port}" in services[name]["ports"], name  # and published for the host
        assert name in services["prometheus"]["depends_on"], name
    assert targets - {f"{n}:{p}" for n, p in expected.items()} == {"localhost:9090"}  # nothing stale
    mounts = services["prometheus"]["volumes"]
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts


def test_health_checks_probe_the_ports_the_services_use() -> None:
    services = _compose()["services"]
    for name in ("features", "learning", "drift"):
        probe = " ".join(services[name]["healthcheck"]["test"])
        assert f"127.0.0.1:{_metrics_port(name, services[name])}/metrics" in probe, name
    probe = services["serving"]["healthcheck"]["test"]
    assert probe[:3] == ["CMD", "python", "-c"]
    assert f"127.0.0.1:{_flags(services['serving']['command'])['grpc-port']}" in probe[3]
    assert services["retrainer"]["healthcheck"] == {"disable": True}


@pytest.mark.slow
def test_serving_health_check_command_works_against_rtml_serve(tmp_path: Path) -> None:
    """The compose probe, run against a real `rtml serve`: NOT_SERVING (exit 1) while empty, then 0."""
    from engine.runtime.ports import free_port
    from tests.serving.models import mlp_model, write_model

    port = free_port()
    probe = _compose()["services"]["serving"]["healthcheck"]["test"][3].replace("127.0.0.1:8001", f"127.0.0.1:{port}")

    def check() -> int:
        return subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=30).returncode

    assert check() == 1  # nothing listening
    server = subprocess.Popen(
        [sys.executable, "-m", "serving.server", "--models", str(tmp_path), "--grpc-port", str(port),
         "--metrics-port", "-1", "--poll-interval", "0.2"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:  # wait until the port accepts: only then does exit 1 mean NOT_SERVING
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "rtml serve never listened"
                time.sleep(0.2)
        assert check() == 1  # up, but an empty repository is NOT_SERVING
        write_model(tmp_path, "m", 1, mlp_model())
        while check() != 0:
            assert server.poll() is None and time.monotonic() < deadline, "never SERVING"
            time.sleep(0.3)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_gpu_override_reserves_one_gpu_per_serving_replica() -> None:
    gpu = yaml.safe_load(COMPOSE_GPU.read_text())
    assert set(gpu["services"]) == {"serving"}
    serving = gpu["services"]["serving"]
    (device,) = serving["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    assert serving["image"] != _compose()["services"]["serving"]["image"]  # never overwrites the CPU image
    wheels = serving["build"]["args"]["CUDA_WHEELS"].split()
    assert any(w.startswith("nvidia-cudnn-cu13") for w in wheels)  # onnxruntime-gpu 1.31: CUDA 13 + cuDNN 9
    assert "ARG CUDA_WHEELS" in DOCKERFILE.read_text()


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
