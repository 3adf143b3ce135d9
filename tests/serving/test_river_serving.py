"""River snapshots served by the ModelManager: scores equal the learner's, batching, hot swap,
refused snapshots (tampered, unsigned, wrong key) next to a serving version, KServe metadata,
and rtml.v1 Predict over gRPC with the features read from Redis."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, Iterator

import grpc
import numpy as np
import pytest
from river import linear_model, preprocessing, tree

from engine.learning.snapshots import publish_snapshot
from engine.runtime.redis_server import EmbeddedRedis
from proto.inference import open_inference_grpc_pb2 as pb
from proto.inference import open_inference_grpc_pb2_grpc as pb_grpc
from proto.rtml.v1 import serving_pb2_grpc as rtml_grpc
from serving.errors import ModelUnavailable
from serving.manager import ModelManager, ModelState
from serving.onnx_session import CPU
from serving.server import BackgroundServer, ServerOptions
from tests.serving.models import mlp_model, write_model
from tests.serving.test_manager import with_manager
from tests.serving.test_predict import request, write_features

FEATURES = ["user.clicks_1h", "user.impressions_1h", "request.price"]


def trained(seed: int = 0, n: int = 300) -> Any:
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    rng = np.random.default_rng(seed)
    for _ in range(n):
        x = dict(zip(FEATURES, rng.normal(size=3).tolist()))
        model.learn_one(x, x["user.clicks_1h"] - 0.5 * x["request.price"] > 0)
    return model


def publish(root: Path, model: Any, **kwargs: Any) -> str:
    return publish_snapshot(root, "ctr", model, features=FEATURES, kind="logistic_regression", **kwargs)


def expected(model: Any, x: np.ndarray) -> np.ndarray:
    """The learner's own positive-class probabilities, one row at a time."""
    return np.array([[model.predict_proba_one(dict(zip(FEATURES, row.tolist())))[True]] for row in x])


def test_scores_equal_the_learner_batched_and_unbatched(repo: Path) -> None:
    model = trained()
    publish(repo, model)
    x = np.random.default_rng(1).normal(size=(37, 3))

    async def body(manager: ModelManager) -> None:
        served = manager.get("ctr")
        assert (served.version, served.platform, served.providers) == ("1", "river", ["river"])
        assert [(s.name, s.datatype, s.shape) for s in served.inputs] == [("features", "FP64", (-1, 3))]
        assert [(s.name, s.datatype, s.shape) for s in served.outputs] == [("probability", "FP32", (-1, 1))]
        assert served.config.features is not None  # the publisher's bindings
        want = expected(model, x).astype(np.float32)
        batched = (await served.infer({"features": x}))["probability"]
        concurrent = await asyncio.gather(*(served.infer({"features": x[i : i + 1]}) for i in range(len(x))))
        unbatched = np.concatenate([out["probability"] for out in concurrent])
        assert batched.dtype == np.float32 and batched.shape == (37, 1)
        # Only rounding to the output's FP32 separates the served scores from the learner's.
        np.testing.assert_array_equal(batched, want)
        np.testing.assert_array_equal(unbatched, want)
        np.testing.assert_array_equal(served.run_unbatched({"features": x})["probability"], want)

    with_manager(repo, body)


def test_a_model_without_a_positive_class_yet_scores_zero(repo: Path) -> None:
    learner = tree.HoeffdingAdaptiveTreeClassifier()
    learner.learn_one(dict.fromkeys(FEATURES, 0.0), False)  # only negatives so far
    publish(repo, learner)

    async def body(manager: ModelManager) -> None:
        out = await manager.get("ctr").infer({"features": np.ones((2, 3))})
        assert out["probability"].tolist() == [[0.0], [0.0]]

    with_manager(repo, body)


def test_new_snapshot_hot_swaps_and_a_tampered_one_fails_while_the_old_serves(
    repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = trained(0), trained(1)
    publish(repo, first)
    x = np.random.default_rng(2).normal(size=(5, 3))

    async def body(manager: ModelManager) -> None:
        assert manager.get("ctr").version == "1"
        publish(repo, second)
        await manager.refresh()
        served = manager.get("ctr")
        assert served.version == "2"
        np.testing.assert_array_equal((await served.infer({"features": x}))["probability"],
                                      expected(second, x).astype(np.float32))
        assert manager.get("ctr", "1").version == "1"  # every version stays addressable

        bad = repo / "ctr" / publish(repo, trained(2))
        blob = bytearray((bad / "model.pkl").read_bytes())
        blob[-5] ^= 0xFF
        (bad / "model.pkl").write_bytes(bytes(blob))
        with caplog.at_level(logging.WARNING, logger="serving.manager"):
            await manager.refresh()
        status = {s.version: s for s in manager.models()}
        assert status["3"].state == ModelState.FAILED and "sha256 of model.pkl does not match" in status["3"].reason
        assert manager.get("ctr").version == "2"
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any(str(bad / "model.pkl") in w and "version is FAILED, latest READY version 2 keeps serving" in w
                   for w in warnings), warnings
        with pytest.raises(ModelUnavailable, match="version 3 is FAILED"):
            manager.get("ctr", "3")

    with_manager(repo, body)


def test_snapshot_key_refuses_unsigned_and_foreign_snapshots(repo: Path) -> None:
    publish(repo, trained(0), key=b"ours")
    publish(repo, trained(1))  # unsigned
    publish(repo, trained(2), key=b"theirs")

    async def body(manager: ModelManager) -> None:
        status = {s.version: (s.state, s.reason) for s in manager.models()}
        assert status["1"] == (ModelState.READY, "")
        assert status["2"][0] == ModelState.FAILED and "unsigned" in status["2"][1]
        assert status["3"][0] == ModelState.FAILED and "hmac_sha256 does not match" in status["3"][1]
        assert manager.get("ctr").version == "1"

    with_manager(repo, body, snapshot_key=b"ours")


def test_onnx_and_river_versions_side_by_side_with_kserve_metadata(repo: Path) -> None:
    write_model(repo, "mlp", 1, mlp_model(seed=0))
    model = trained()
    publish(repo, model)
    options = ServerOptions(grpc_port=0, metrics_port=None, grace_s=1.0)
    with BackgroundServer(lambda: ModelManager(repo, poll_interval_s=0, providers=[CPU]), options) as server:
        with grpc.insecure_channel(server.grpc_address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            river_meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="ctr"), timeout=10)
            onnx_meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="mlp"), timeout=10)
            assert (river_meta.platform, onnx_meta.platform) == ("river", "onnxruntime_onnx")
            assert [(t.name, t.datatype, list(t.shape)) for t in river_meta.inputs] == [("features", "FP64", [-1, 3])]
            x = np.array([[0.5, -1.0, 0.25]])
            infer = stub.ModelInfer(pb.ModelInferRequest(
                model_name="ctr",
                inputs=[pb.ModelInferRequest.InferInputTensor(
                    name="features", datatype="FP64", shape=[1, 3],
                    contents=pb.InferTensorContents(fp64_contents=x.ravel()),
                )],
            ), timeout=10)
            got = np.frombuffer(infer.raw_output_contents[0], np.float32)  # outputs are always raw
            np.testing.assert_array_equal(got.reshape(1, 1), expected(model, x).astype(np.float32))


@pytest.fixture()
def own_redis() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis().start()
    try:
        yield server
    finally:
        server.close()


def test_grpc_predict_with_entity_ids_reads_the_features_from_redis(repo: Path, own_redis: EmbeddedRedis) -> None:
    import redis

    model = trained()
    publish(repo, model)  # writes config.yaml binding the input to FEATURES
    client = redis.Redis.from_url(own_redis.url)
    try:
        write_features(client, "user", "u1", {"clicks_1h": 4, "impressions_1h": 8}, int(time.time() * 1000))
    finally:
        client.close()
    options = ServerOptions(grpc_port=0, metrics_port=None, grace_s=1.0, redis_url=own_redis.url)
    with BackgroundServer(lambda: ModelManager(repo, poll_interval_s=0, providers=[CPU]), options) as server:
        with grpc.insecure_channel(server.grpc_address) as channel:
            response = rtml_grpc.PredictionStub(channel).Predict(
                request("ctr", [{"entity_ids": {"user_id": "u1"}, "features": {"price": 1.5}},
                                {"entity_ids": {"user_id": "nobody"}, "features": {"price": 2.0}}]),
                timeout=10,
            )
    assert response.model_version == "1"
    # u1's features from Redis; an unknown user gets the documented default 0.0.
    want = expected(model, np.array([[4.0, 8.0, 1.5], [0.0, 0.0, 2.0]])).astype(np.float32)
    assert [r.scores[0] for r in response.results] == pytest.approx(want.ravel().tolist(), abs=0)


def test_cli_snapshot_key_from_the_named_variable_or_the_rtml_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.server import _parser, _with_config_defaults, serve_main

    monkeypatch.delenv("RTML_CONFIG", raising=False)
    monkeypatch.delenv("RTML_LEARNING_SNAPSHOT_KEY", raising=False)
    assert _with_config_defaults(_parser().parse_args(["--models", "m"])).snapshot_key is None
    monkeypatch.setenv("RTML_LEARNING_SNAPSHOT_KEY", "from-config")
    assert _with_config_defaults(_parser().parse_args(["--models", "m"])).snapshot_key == b"from-config"
    monkeypatch.setenv("MY_SNAPSHOT_KEY", "from-flag")
    args = _parser().parse_args(["--models", "m", "--snapshot-key-env", "MY_SNAPSHOT_KEY"])
    assert _with_config_defaults(args).snapshot_key == b"from-flag"
    # Told to verify with a key it cannot find: refuse to start rather than accept unsigned snapshots.
    monkeypatch.delenv("MY_SNAPSHOT_KEY")
    with pytest.raises(SystemExit) as exc:
        serve_main(["--models", "m", "--snapshot-key-env", "MY_SNAPSHOT_KEY"])
    assert exc.value.code == 2
