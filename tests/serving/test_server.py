"""The server process: health, reflection, /metrics, rtml.v1 Predict, error mapping, the CLI."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from proto.inference import open_inference_grpc_pb2 as pb
from proto.inference import open_inference_grpc_pb2_grpc as pb_grpc
from proto.rtml.v1 import serving_pb2 as rtml_pb
from proto.rtml.v1 import serving_pb2_grpc as rtml_grpc
from serving.errors import InvalidInput
from serving.manager import ModelManager
from serving.onnx_session import CPU, OnnxModel, load_onnx
from serving.server import (
    BackgroundServer,
    GrpcMetrics,
    ServerOptions,
    _add_service,
    _service_handler,
)
from tests.serving.models import fixed_shape_model, mlp_model, two_input_model, write_broken_model, write_model

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("server-models")
    write_model(root, "mlp", 1, mlp_model(seed=0))
    write_model(root, "two", 1, two_input_model())
    write_model(root, "fixed", 1, fixed_shape_model())
    return root


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[BackgroundServer]:
    options = ServerOptions(grpc_port=0, metrics_port=0, grace_s=1.0)
    with BackgroundServer(lambda: ModelManager(repository, poll_interval_s=0, providers=[CPU]), options) as bg:
        yield bg


@pytest.fixture(scope="module")
def channel(server: BackgroundServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc_address) as ch:
        yield ch


@pytest.fixture(scope="module")
def reference() -> dict[str, OnnxModel]:
    return {
        "mlp": load_onnx(mlp_model(seed=0).SerializeToString(), providers=[CPU]),
        "two": load_onnx(two_input_model().SerializeToString(), providers=[CPU]),
    }


def _metrics(server: BackgroundServer) -> dict[str, list]:
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


# -- health and reflection ---------------------------------------------------------------------


def test_health_serving(channel: grpc.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + 5
    for service in ("", "inference.GRPCInferenceService", "rtml.v1.Prediction"):
        while True:
            status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
            if status == health_pb2.HealthCheckResponse.SERVING or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert status == health_pb2.HealthCheckResponse.SERVING, service


def test_reflection_lists_services_and_resolves_symbols(channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="inference.GRPCInferenceService"),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="rtml.v1.Prediction"),
    ]
    responses = list(stub.ServerReflectionInfo(iter(requests), timeout=10))
    names = {s.name for s in responses[0].list_services_response.service}
    assert {
        "inference.GRPCInferenceService",
        "rtml.v1.Prediction",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names
    for response in responses[1:]:
        assert response.WhichOneof("message_response") == "file_descriptor_response", response
        assert response.file_descriptor_response.file_descriptor_proto


# -- rtml.v1.Prediction ------------------------------------------------------------------------


def _predict(channel: grpc.Channel, request: rtml_pb.PredictRequest) -> rtml_pb.PredictResponse:
    return rtml_grpc.PredictionStub(channel).Predict(request, timeout=10)


def test_predict_dense_vectors(channel: grpc.Channel, reference: dict[str, OnnxModel]) -> None:
    rng = np.random.default_rng(11)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    request = rtml_pb.PredictRequest(model="mlp", request_id="r-1")
    for row in x:
        request.instances.add(tensors={"input": rtml_pb.FloatVector(values=row.tolist())}, entity_ids={"user_id": "u1"})
    response = _predict(channel, request)
    assert response.request_id == "r-1" and response.model == "mlp" and response.model_version == "1"
    assert response.variant == "" and list(response.feature_age_ms) == []
    got = np.array([list(r.scores) for r in response.results], np.float32)
    np.testing.assert_array_equal(got, reference["mlp"].run({"input": x})["output"])


def test_predict_two_inputs_casts_and_extra_outputs(channel: grpc.Channel, reference: dict[str, OnnxModel]) -> None:
    dense = np.arange(16, dtype=np.float32).reshape(2, 8) / 8
    ids = np.array([[1, 2], [7, 0]], np.int64)
    request = rtml_pb.PredictRequest(model="two", version="1", outputs=["embedding"])
    for d, i in zip(dense, ids):
        request.instances.add(
            tensors={"dense": rtml_pb.FloatVector(values=d.tolist()), "ids": rtml_pb.FloatVector(values=i.tolist())}
        )
    response = _predict(channel, request)
    expected = reference["two"].run({"dense": dense, "ids": ids})
    assert len(response.request_id) == 32  # made up by the server when the caller sent none
    for k, result in enumerate(response.results):
        np.testing.assert_array_equal(np.array(result.scores, np.float32), expected["score"][k])
        np.testing.assert_array_equal(np.array(result.outputs["embedding"].values, np.float32), expected["embedding"][k])


def test_predict_model_without_batch_axis(channel: grpc.Channel) -> None:
    x = np.arange(12, dtype=np.float32)
    request = rtml_pb.PredictRequest(model="fixed")
    request.instances.add(tensors={"x": rtml_pb.FloatVector(values=x.tolist())})
    response = _predict(channel, request)
    assert list(response.results[0].scores) == (x * 2).tolist()


@pytest.mark.parametrize(
    ("build", "code", "fragment"),
    [
        (lambda r: None, grpc.StatusCode.INVALID_ARGUMENT, "no instances"),
        (lambda r: r.instances.add(features={"age": 3.0}), grpc.StatusCode.INVALID_ARGUMENT, "unknown feature 'age'"),
        (
            lambda r: r.instances.add(entity_ids={"user_id": "u1"}),
            grpc.StatusCode.INVALID_ARGUMENT,
            "missing input 'input' (this model has no feature bindings, so entity ids do not fill inputs)",
        ),
        (
            lambda r: r.instances.add(tensors={"input": rtml_pb.FloatVector(values=[1.0] * 63)}),
            grpc.StatusCode.INVALID_ARGUMENT,
            "input 'input' needs 64 values per instance, got 63",
        ),
        (
            lambda r: (r.instances.add(tensors={"input": rtml_pb.FloatVector(values=[1.0] * 64)}), r.outputs.append("nope")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "unknown output 'nope'",
        ),
        (
            lambda r: (r.instances.add(tensors={"input": rtml_pb.FloatVector(values=[1.0] * 64)}), setattr(r, "version", "5")),
            grpc.StatusCode.NOT_FOUND,
            "no version '5'",
        ),
        (
            lambda r: (r.instances.add(tensors={"input": rtml_pb.FloatVector(values=[1.0] * 64)}), setattr(r, "model", "zzz")),
            grpc.StatusCode.NOT_FOUND,
            "model 'zzz' not found",
        ),
    ],
)
def test_predict_errors(channel: grpc.Channel, build, code: grpc.StatusCode, fragment: str) -> None:
    request = rtml_pb.PredictRequest(model="mlp")
    build(request)
    with pytest.raises(grpc.RpcError) as exc:
        _predict(channel, request)
    assert exc.value.code() == code and fragment in exc.value.details(), exc.value.details()


# -- metrics -----------------------------------------------------------------------------------


def test_metrics_endpoint_parses_and_counts_by_method_and_code(server: BackgroundServer, channel: grpc.Channel) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    good = pb.ModelInferRequest(model_name="mlp")
    good.inputs.add(name="input", datatype="FP32", shape=[1, 64])
    good.raw_input_contents.append(np.zeros((1, 64), np.float32).tobytes())
    before = _metrics(server)

    def count(samples: dict[str, list], method: str, code: str) -> float:
        return sum(
            s.value
            for s in samples.get("rtml_grpc_requests", [])
            if s.name == "rtml_grpc_requests_total" and s.labels == {"method": method, "code": code}
        )

    for _ in range(3):
        stub.ModelInfer(good, timeout=10)
    with pytest.raises(grpc.RpcError):
        stub.ModelInfer(pb.ModelInferRequest(model_name="missing"), timeout=10)
    after = _metrics(server)
    assert count(after, "ModelInfer", "OK") - count(before, "ModelInfer", "OK") == 3
    assert count(after, "ModelInfer", "NOT_FOUND") - count(before, "ModelInfer", "NOT_FOUND") == 1
    durations = {
        s.labels["method"]: s.value
        for s in after["rtml_grpc_request_duration_seconds"]
        if s.name == "rtml_grpc_request_duration_seconds_count"
    }
    assert durations["ModelInfer"] >= 4
    # The manager's own series share the registry and the endpoint.
    assert any(s.labels.get("model") == "mlp" for s in after["rtml_inference_request_success"])


# -- error mapping -----------------------------------------------------------------------------


def test_unexpected_errors_become_internal_and_the_server_carries_on() -> None:
    """A handler bug is answered INTERNAL with a short message; ServingErrors keep their code."""

    async def boom(request: pb.ServerLiveRequest, context: object) -> pb.ServerLiveResponse:
        raise RuntimeError("secret stack detail")

    async def invalid(request: pb.ServerLiveRequest, context: object) -> pb.ServerLiveResponse:
        raise InvalidInput("input 'x': nope")

    async def fine(request: pb.ServerLiveRequest, context: object) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def scenario() -> None:
        server = grpc.aio.server()
        metrics = GrpcMetrics(CollectorRegistry())
        methods = {
            name: (fn, pb.ServerLiveRequest, pb.ServerLiveResponse)
            for name, fn in (("ServerLive", fine), ("ServerReady", boom), ("ModelReady", invalid))
        }
        _add_service(server, "inference.GRPCInferenceService", _service_handler(methods, metrics, 1 << 20))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                live = ch.unary_unary(
                    "/inference.GRPCInferenceService/ServerLive",
                    request_serializer=pb.ServerLiveRequest.SerializeToString,
                    response_deserializer=pb.ServerLiveResponse.FromString,
                )
                ready = ch.unary_unary(
                    "/inference.GRPCInferenceService/ServerReady",
                    request_serializer=pb.ServerLiveRequest.SerializeToString,
                    response_deserializer=pb.ServerLiveResponse.FromString,
                )
                model_ready = ch.unary_unary(
                    "/inference.GRPCInferenceService/ModelReady",
                    request_serializer=pb.ServerLiveRequest.SerializeToString,
                    response_deserializer=pb.ServerLiveResponse.FromString,
                )
                with pytest.raises(grpc.aio.AioRpcError) as exc:
                    await ready(pb.ServerLiveRequest())
                assert exc.value.code() == grpc.StatusCode.INTERNAL
                assert exc.value.details() == "internal error in ServerReady: RuntimeError"
                with pytest.raises(grpc.aio.AioRpcError) as exc:
                    await model_ready(pb.ServerLiveRequest())
                assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert exc.value.details() == "input 'x': nope"
                assert (await live(pb.ServerLiveRequest())).live
        finally:
            await server.stop(0)
        assert metrics.requests.labels("ServerReady", "INTERNAL")._value.get() == 1
        assert metrics.requests.labels("ModelReady", "INVALID_ARGUMENT")._value.get() == 1
        assert metrics.requests.labels("ServerLive", "OK")._value.get() == 1

    asyncio.run(scenario())


def test_server_not_ready_when_a_model_cannot_serve(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_broken_model(root, "broken", 1)
    options = ServerOptions(grpc_port=0, metrics_port=None)
    with BackgroundServer(lambda: ModelManager(root, poll_interval_s=0, providers=[CPU]), options) as bg:
        with grpc.insecure_channel(bg.grpc_address) as ch:
            stub = pb_grpc.GRPCInferenceServiceStub(ch)
            assert stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live
            assert not stub.ServerReady(pb.ServerReadyRequest(), timeout=5).ready
            assert not stub.ModelReady(pb.ModelReadyRequest(name="broken"), timeout=5).ready
            time.sleep(0.2)
            status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as exc:
                stub.ModelMetadata(pb.ModelMetadataRequest(name="broken"), timeout=5)
            assert exc.value.code() == grpc.StatusCode.UNAVAILABLE


# -- the CLI process ---------------------------------------------------------------------------


def test_python_m_serving_server_serves_and_stops_on_sigterm(repository: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.server", "--models", str(repository), "--grpc-port", "0",
         "--metrics-port", "0", "--poll-interval", "0.5", "--grace", "1"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        grpc_port = metrics_port = None
        deadline = time.monotonic() + 60
        lines: list[str] = []
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"gRPC on 127\.0\.0\.1:(\d+), metrics on http://127\.0\.0\.1:(\d+)/metrics", line)
            if m:
                grpc_port, metrics_port = int(m.group(1)), int(m.group(2))
                break
        assert grpc_port, "".join(lines)
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:
            assert pb_grpc.GRPCInferenceServiceStub(ch).ServerReady(pb.ServerReadyRequest(), timeout=10).ready
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        assert "rtml_grpc_requests_total" in text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_refuses_a_missing_repository(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "serving.server", "--models", str(tmp_path / "nope"), "--grpc-port", "0",
         "--metrics-port", "-1"],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "not a directory" in result.stderr


# -- generated code ----------------------------------------------------------------------------


def test_all_proto_modules_and_tritonclient_share_one_process() -> None:
    """No duplicate protobuf symbols: rtml.v1 events + serving, our `inference`, Triton's."""
    code = (
        "import proto.rtml.v1.events_pb2, proto.rtml.v1.serving_pb2, tritonclient.grpc, "
        "proto.inference.open_inference_grpc_pb2, proto.inference.open_inference_grpc_pb2_grpc"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize(
    ("proto", "module"),
    [
        ("proto/inference/open_inference_grpc.proto", pb),
        ("proto/rtml/v1/serving.proto", rtml_pb),
    ],
)
def test_generated_code_matches_the_proto_file(tmp_path: Path, proto: str, module: object) -> None:
    """The checked-in *_pb2.py was generated from the current .proto (regenerate if this fails)."""
    protoc = pytest.importorskip("grpc_tools.protoc")
    from google.protobuf import descriptor_pb2

    out = tmp_path / "set.pb"
    assert protoc.main(["protoc", f"-I{REPO_ROOT}", f"--descriptor_set_out={out}", str(REPO_ROOT / proto)]) == 0
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]

    def drop_json_names(messages) -> None:  # protoc embeds descriptors without json_name
        for message in messages:
            for field in message.field:
                field.ClearField("json_name")
            drop_json_names(message.nested_type)

    drop_json_names(fresh.message_type)
    checked_in = descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)  # type: ignore[attr-defined]
    assert fresh == checked_in


def test_calls_beyond_the_concurrency_cap_get_resource_exhausted(tmp_path) -> None:
    """gRPC sheds excess calls with RESOURCE_EXHAUSTED instead of queueing or cancelling them."""
    import asyncio

    import grpc
    import numpy as np

    from proto.inference import open_inference_grpc_pb2 as pb
    from proto.inference import open_inference_grpc_pb2_grpc as pb_grpc
    from serving.manager import ModelManager
    from serving.server import BackgroundServer, ServerOptions
    from tests.serving.models import mlp_model, write_model

    write_model(tmp_path / "repo", "mlp", 1, mlp_model(seed=1))
    options = ServerOptions(grpc_port=0, metrics_port=None, max_concurrent_rpcs=2)
    with BackgroundServer(lambda: ModelManager(tmp_path / "repo", poll_interval_s=0,
                                               providers=["CPUExecutionProvider"]), options) as server:
        x = np.zeros((1, 64), np.float32)
        request = pb.ModelInferRequest(model_name="mlp", raw_input_contents=[x.tobytes()], inputs=[
            pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[1, 64])])

        async def burst() -> list[grpc.StatusCode]:
            async with grpc.aio.insecure_channel(server.grpc_address) as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)

                async def one() -> grpc.StatusCode:
                    try:
                        await stub.ModelInfer(request)
                        return grpc.StatusCode.OK
                    except grpc.aio.AioRpcError as exc:
                        return exc.code()

                return await asyncio.gather(*(one() for _ in range(200)))

        codes = asyncio.run(burst())
    assert grpc.StatusCode.OK in codes
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes


def test_workers_share_the_port_and_stop_on_sigint(tmp_path) -> None:
    """`--workers 2`: two processes answer on one port; SIGINT stops both cleanly."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import grpc

    from engine.runtime.ports import free_port
    from proto.inference import open_inference_grpc_pb2 as pb
    from proto.inference import open_inference_grpc_pb2_grpc as pb_grpc
    from tests.serving.models import mlp_model, write_model

    write_model(tmp_path / "repo", "mlp", 1, mlp_model(seed=1))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "serving.server", "--models", str(tmp_path / "repo"),
                             "--grpc-port", str(port), "--metrics-port", "-1", "--workers", "2"],
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        pids: set[int] = set()
        while time.monotonic() < deadline and len(pids) < 2:
            # A fresh channel per call: SO_REUSEPORT balances connections, not calls.
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                try:
                    ready = pb_grpc.GRPCInferenceServiceStub(channel).ServerReady(pb.ServerReadyRequest(), timeout=2)
                except grpc.RpcError:
                    time.sleep(0.2)
                    continue
                assert ready.ready
            import psutil

            # Both workers must be listening (not just started) before the signal is sent.
            pids = {
                c.pid for c in psutil.Process(proc.pid).children()
                if any(conn.status == psutil.CONN_LISTEN and conn.laddr.port == port
                       for conn in c.net_connections(kind="tcp"))
            }
        assert len(pids) == 2
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
