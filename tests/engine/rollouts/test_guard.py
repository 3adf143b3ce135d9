"""The canary guard against a real server: real ONNX Runtime, real gRPC, its real /metrics."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from engine.rollouts import routing as actions
from engine.rollouts.guard import CanaryGuard, GuardSettings
from engine.rollouts.history import HISTORY_FILENAME, read_history
from proto.rtml.v1 import serving_pb2_grpc as rtml_grpc
from serving.api import make_request
from serving.manager import ModelManager
from serving.onnx_session import CPU
from serving.server import BackgroundServer, ServerOptions
from tests.engine.rollouts.helpers import run_cli, write_versions
from tests.serving.models import IR_VERSION, OPSET, write_model

pytestmark = pytest.mark.slow


def fails_on_large_inputs() -> onnx.ModelProto:
    """``features [N, 1] -> score [N, 1]`` that fails at run time (ONNX Runtime FAIL) when any
    value is >= 1: the input is reshaped to ``[-1, floor(max) + 1]``, impossible for one row.
    Zeros (the warm-up) pass, so the version loads and serves."""
    nodes = [
        helper.make_node("ReduceMax", ["features"], ["mx"], keepdims=0),
        helper.make_node("Cast", ["mx"], ["mxi"], to=TensorProto.INT64),
        helper.make_node("Add", ["mxi", "one"], ["dim"]),
        helper.make_node("Unsqueeze", ["dim", "zero"], ["dim1"]),
        helper.make_node("Concat", ["minus_one", "dim1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["features", "shape"], ["reshaped"]),
        helper.make_node("ReduceSum", ["reshaped", "axis1"], ["score"], keepdims=1),
    ]
    constants = {"one": np.array(1, np.int64), "zero": np.array([0], np.int64),
                 "minus_one": np.array([-1], np.int64), "axis1": np.array([1], np.int64)}
    graph = helper.make_graph(
        nodes, "fails_on_large_inputs",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 1])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])],
        [numpy_helper.from_array(v, k) for k, v in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("guard-models")
    canary = {"routing": {"primary": "1", "canary": {"version": "2", "percent": 50}}}
    write_versions(root, "bad", (1,), canary)
    write_model(root, "bad", 2, fails_on_large_inputs())
    write_versions(root, "good", (1, 2), canary)
    write_versions(root, "slow", (1, 2), canary)
    return root


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[BackgroundServer]:
    options = ServerOptions(grpc_port=0, metrics_port=0, grace_s=1.0)
    with BackgroundServer(lambda: ModelManager(repo, poll_interval_s=0.2, providers=[CPU]), options) as bg:
        yield bg


def _send(server: BackgroundServer, model: str, n: int, value: float = 2.0) -> list[tuple[str, str]]:
    """``n`` requests from distinct users: (variant, version) of each answer, ("error", code) of each failure."""
    out = []
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = rtml_grpc.PredictionStub(channel)
        for i in range(n):
            request = make_request(model, [{"entity_ids": {"user_id": f"{model}-user-{time.monotonic_ns()}-{i}"},
                                            "tensors": {"features": [value]}}])
            try:
                response = stub.Predict(request, timeout=10)
                out.append((response.variant, response.model_version))
            except grpc.RpcError as exc:
                out.append(("error", exc.code().name))
    return out


def test_a_failing_canary_is_rolled_back(repo: Path, server: BackgroundServer) -> None:
    guard = CanaryGuard(repo, "bad", [server.metrics_url], GuardSettings(max_error_rate=0.01, min_requests=40))
    baseline = guard.check()
    assert not baseline.judged and baseline.canary is not None and baseline.canary.version == "2"
    answers = _send(server, "bad", 120)
    failures = sum(a[0] == "error" for a in answers)
    assert 20 < failures < 100 and {a for a in answers if a[0] != "error"} == {("primary", "1")}
    report = guard.check()
    assert report.judged and report.rolled_back, report.describe()
    assert report.canary.requests == failures and report.primary.requests == len(answers) - failures
    assert report.canary.failures == failures and report.canary.by_reason == {"unavailable": failures}
    assert report.primary.version == "1" and report.primary.failures == 0
    assert "ROLLED BACK: error rate" in report.describe()
    routing = yaml.safe_load((repo / "bad" / "config.yaml").read_text())["routing"]
    assert routing == {"primary": "1"}
    [change] = read_history(repo / "bad" / HISTORY_FILENAME)
    assert change.actor == "rtml rollout guard" and change.version == "2"
    assert f"error rate {failures / report.canary.requests:.2%} ({failures} of {report.canary.requests} requests)" \
        in change.reason
    assert guard.check().canary is None  # nothing left to guard
    # The server applies the rollback on its next scan: every answer comes from version 1 again.
    deadline = time.monotonic() + 30
    while set(_send(server, "bad", 20)) != {("primary", "1")}:
        assert time.monotonic() < deadline, "the server never applied the guard's rollback"
        time.sleep(0.2)


def test_a_healthy_canary_stays_and_a_quiet_window_waits(repo: Path, server: BackgroundServer) -> None:
    guard = CanaryGuard(repo, "good", [server.metrics_url],
                        GuardSettings(max_error_rate=0.01, max_p99_ms=5_000, min_requests=30))
    guard.check()
    early = _send(server, "good", 10, value=0.5)
    quiet = guard.check()
    assert not quiet.judged and not quiet.rolled_back and "of 30 requests needed" in quiet.note
    answers = _send(server, "good", 80, value=0.5)
    assert {a[0] for a in answers} == {"primary", "canary"}
    report = guard.check()
    assert report.judged and not report.rolled_back and report.breaches == []
    # The quiet window's requests count too: the baseline stayed where it was.
    assert report.canary.requests == sum(a[0] == "canary" for a in early + answers) and report.canary.failures == 0
    assert report.primary.requests == sum(a[0] == "primary" for a in early + answers)
    assert report.canary.p99_ms is not None and 0 < report.canary.p99_ms < 5_000
    assert "healthy" in report.describe()
    assert yaml.safe_load((repo / "good" / "config.yaml").read_text())["routing"]["canary"]["version"] == "2"


def test_a_slow_canary_is_rolled_back_by_the_cli_guard(repo: Path, server: BackgroundServer,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Latency: with a limit below any real request's p99 the p99 check alone rolls back."""
    import threading

    stop = threading.Event()

    def traffic() -> None:  # keeps flowing through the guard's whole window
        while not stop.is_set():
            _send(server, "slow", 5, value=0.5)

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        code = run_cli(["rollout", "guard", "slow", "--repository", str(repo), "--metrics-url", server.metrics_url,
                        "--max-p99-ms", "0.001", "--min-requests", "20", "--interval-s", "1.5", "--once"])
    finally:
        stop.set()
        sender.join()
    out = capsys.readouterr().out
    assert code == 3, out
    assert "ROLLED BACK: p99 latency" in out and "> max 0.001 ms" in out
    assert actions.read_routing(repo, "slow") == {"primary": "1"}


def test_without_a_canary_the_guard_has_nothing_to_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_versions(tmp_path, "plain", (1,))
    code = run_cli(["rollout", "guard", "plain", "--repository", str(tmp_path),
                    "--metrics-url", "http://127.0.0.1:9/never-scraped", "--interval-s", "0.01"])
    assert code == 0 and "no canary in the routing: nothing to guard" in capsys.readouterr().out
