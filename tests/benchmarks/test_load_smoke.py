"""Smoke test of the load generator against the real server (``python -m serving.server``).

A tiny repository (the small benchmark MLP) is served by a subprocess on free ports; the load
generator runs a ~2 s closed loop at C=4 and a short open loop; the summary's shape, zero
errors, and one served answer equal to in-process ONNX Runtime's are checked.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from benchmarks import load
from benchmarks.models import BENCH_MODELS, write_repository
from benchmarks.serving import ServerProcess, scrape, server_side

MODEL = BENCH_MODELS["mlp"]
SUMMARY_KEYS = {
    "target", "model", "mode", "concurrency", "rate", "processes", "duration_s", "warmup_s", "requests",
    "throughput_rps", "p50_ms", "p95_ms", "p99_ms", "max_ms", "mean_ms", "errors", "error_count",
    "client_cpu_s", "client_cores", "request_bytes",
}


def test_request_round_trip_helpers() -> None:
    x = MODEL.sample(3)
    data = load.build_infer_request("m", {MODEL.input_name: x}, version="2", request_id="r1")
    from proto.inference import open_inference_grpc_pb2 as pb

    req = pb.ModelInferRequest.FromString(data)
    assert (req.model_name, req.model_version, req.id) == ("m", "2", "r1")
    assert req.inputs[0].datatype == "FP32" and list(req.inputs[0].shape) == [3, 64]
    assert np.array_equal(np.frombuffer(req.raw_input_contents[0], "<f4").reshape(3, 64), x)
    resp = pb.ModelInferResponse(model_name="m")
    resp.outputs.add(name="y", datatype="FP32", shape=[3, 1])
    resp.raw_output_contents.append(np.arange(3, dtype="<f4").tobytes())
    assert load.decode_response(resp.SerializeToString())["y"].tolist() == [[0.0], [1.0], [2.0]]


def test_summary_merges_processes() -> None:
    cfg = load.LoadConfig(target="t", model="m", concurrency=4, duration_s=2.0)
    a = load.ProcessResult(np.array([0.001, 0.002]), {"UNAVAILABLE": 1}, cpu_s=0.5, wall_s=2.0)
    b = load.ProcessResult(np.array([0.003, 0.004]), {"UNAVAILABLE": 2, "INTERNAL": 1}, cpu_s=0.5, wall_s=2.0)
    s = load.summarise(cfg, [a, b], request_bytes=10)
    assert s["requests"] == 4 and s["throughput_rps"] == 2.0 and s["processes"] == 2
    assert s["errors"] == {"INTERNAL": 1, "UNAVAILABLE": 3} and s["error_count"] == 4
    assert s["max_ms"] == 4.0 and 2.0 <= s["p50_ms"] <= 3.0 and s["client_cores"] == 0.5


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("bench-load")
    repo = write_repository(root / "models", [MODEL], {MODEL.name: {"max_batch_size": 32}})
    proc = ServerProcess(Path(repo), root / "server.log")
    proc.start(timeout=60)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_closed_and_open_loop_against_real_server(server: ServerProcess) -> None:
    specs = asyncio.run(load.fetch_input_specs(server.target, MODEL.name))
    assert specs == [load.InputSpec(MODEL.input_name, "FP32", (-1, 64))]
    payloads = load.make_payloads(MODEL.name, specs, rows=1, count=8)

    before = scrape(server.metrics_url)
    cfg = load.LoadConfig(target=server.target, model=MODEL.name, concurrency=4, duration_s=2.0, warmup_s=0.3)
    closed = load.run_load(cfg, payloads)
    assert SUMMARY_KEYS <= set(closed)
    assert closed["mode"] == "closed" and closed["concurrency"] == 4 and closed["processes"] == 1
    assert closed["error_count"] == 0 and closed["errors"] == {}, closed
    assert closed["requests"] > 20 and closed["throughput_rps"] > 10
    assert 0 < closed["p50_ms"] <= closed["p95_ms"] <= closed["p99_ms"] <= closed["max_ms"]
    side = server_side(scrape(server.metrics_url), before, MODEL.name)
    assert side["rows"] >= closed["requests"] and side["executions"] >= 1 and side["avg_batch"] >= 1

    opened = load.run_load(
        load.LoadConfig(target=server.target, model=MODEL.name, rate=100.0, arrival="fixed", duration_s=1.0,
                        warmup_s=0.2),
        payloads,
    )
    assert opened["mode"] == "open" and opened["rate"] == 100.0 and opened["error_count"] == 0
    assert 90 <= opened["requests"] <= 110 and opened["dropped"] == 0


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_two_client_processes_merge(server: ServerProcess) -> None:
    payloads = load.make_payloads(MODEL.name, [load.InputSpec(MODEL.input_name, "FP32", (-1, 64))], count=4)
    cfg = load.LoadConfig(target=server.target, model=MODEL.name, concurrency=4, duration_s=1.0, warmup_s=0.2,
                          processes=2)
    result = load.run_load(cfg, payloads)
    assert result["processes"] == 2 and result["error_count"] == 0 and result["requests"] > 10


@pytest.mark.slow
@pytest.mark.timeout(30)
def test_served_output_equals_onnxruntime(server: ServerProcess) -> None:
    from serving.onnx_session import load_onnx

    x = MODEL.sample(1, seed=7)
    raw = asyncio.run(load.infer_once(server.target, load.build_infer_request(MODEL.name, {MODEL.input_name: x})))
    served = load.decode_response(raw)[MODEL.output_name]
    # The server's own loader and session options, on the CPU as the server here: a batch-1
    # request on an idle server runs as batch 1, so the floats are the very same.
    session = load_onnx(MODEL.build(), intra_op_threads=1, providers=["CPUExecutionProvider"])
    local = session.run({MODEL.input_name: x})[MODEL.output_name]
    assert served.shape == (1, 1) and served.dtype == np.float32
    np.testing.assert_array_equal(served, local)
