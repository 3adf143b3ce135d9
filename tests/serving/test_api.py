"""The in-process API (serving.api): Predictor / SyncPredictor on the Predict pipeline, with real
Redis features and the real predictions topic, and the same answers as gRPC Predict."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import redis

from proto.rtml.v1 import serving_pb2 as rtml_pb
from proto.rtml.v1 import serving_pb2_grpc as rtml_grpc
from serving.api import Prediction, Predictor, SyncPredictor, make_request, to_instance
from serving.errors import InvalidInput, ModelNotFound, ServingError
from serving.manager import ModelManager
from serving.onnx_session import CPU
from serving.server import BackgroundServer, ServerOptions
from tests.serving.models import write_model
from tests.serving.test_predict import BINDINGS, consume, echo_model, expected_score, sample, write_features

INSTANCES = [
    {"entity_ids": {"user_id": "u1", "item_id": "i1"}, "features": {"price": 2.0}},
    {"entity_ids": {"user_id": "u2", "item_id": "i1"}},
]


@pytest.fixture()
def ranker(repo: Path, redis_client: redis.Redis) -> Path:
    write_model(repo, "ranker", 1, echo_model(5), {"features": BINDINGS})
    now = int(time.time() * 1000)
    write_features(redis_client, "user", "u1", {"clicks_1h": 3, "impressions_1h": 6}, now)
    write_features(redis_client, "item", "i1", {"ctr_1h": 0.5}, now)
    return repo


def test_async_predictor_features_log_and_metrics(ranker: Path, redis_url: str, kafka_bootstrap: str, unique_topic) -> None:
    topic = unique_topic("predictions")

    async def scenario() -> tuple[Prediction, float]:
        async with Predictor(
            ranker, redis_url=redis_url, kafka_bootstrap=kafka_bootstrap, predictions_topic=topic, poll_interval_s=0,
            providers=[CPU],
        ) as predictor:
            prediction = await predictor.predict("ranker", INSTANCES, request_id="api-1", outputs=["echo"])
            fetches = sample(predictor.registry, "rtml_feature_fetch_seconds_count", model="ranker")
        return prediction, fetches

    prediction, fetches = asyncio.run(scenario())
    assert (prediction.request_id, prediction.model, prediction.model_version, prediction.variant) == (
        "api-1", "ranker", "1", "")
    rows = [[3.0, 6.0, 0.5, 0.0, 2.0], [-1.0, 0.0, 0.5, 0.0, 9.0]]
    assert [r.outputs["echo"] for r in prediction.results] == rows
    np.testing.assert_allclose(prediction.scores[:, 0], [expected_score(r) for r in rows])
    assert prediction.scores.shape == (2, 1) and len(prediction.feature_age_ms) == 2
    assert fetches == 1
    records = consume(kafka_bootstrap, topic, 2)
    assert {r["request_id"] for _, r in records} == {"api-1"}
    assert sorted(r["score"] for _, r in records) == sorted(float(s) for s in prediction.scores[:, 0])


def test_in_process_and_grpc_answers_are_identical(ranker: Path, redis_url: str) -> None:
    request = make_request("ranker", INSTANCES, request_id="same", outputs=["echo"])
    with SyncPredictor(ranker, redis_url=redis_url, poll_interval_s=0, providers=[CPU]) as predictor:
        in_process = predictor.predict("ranker", INSTANCES, request_id="same", outputs=["echo"])
    options = ServerOptions(grpc_port=0, metrics_port=None, grace_s=1.0, redis_url=redis_url)
    with BackgroundServer(lambda: ModelManager(ranker, poll_interval_s=0, providers=[CPU]), options) as server:
        with grpc.insecure_channel(server.grpc_address) as channel:
            over_grpc = rtml_grpc.PredictionStub(channel).Predict(request, timeout=10)
    remote = Prediction.from_response(over_grpc)
    assert remote.results == in_process.results
    assert (remote.request_id, remote.model_version, remote.variant) == (
        in_process.request_id, in_process.model_version, in_process.variant)


def test_sync_predictor_from_threads_and_its_errors(repo: Path) -> None:
    write_model(repo, "echo", 1, echo_model(2))
    results: list[Any] = []
    with SyncPredictor(repo, poll_interval_s=0, providers=[CPU]) as predictor:

        def work(k: int) -> None:
            results.append(predictor.predict("echo", [{"tensors": {"features": np.array([k, 1.0])}}]).scores[0, 0])

        threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        with pytest.raises(ModelNotFound) as exc:
            predictor.predict("missing", [{"features": {"x": 1}}])
        assert exc.value.code == grpc.StatusCode.NOT_FOUND
        with pytest.raises(InvalidInput, match="needs 2 values per instance, got 3"):
            predictor.predict("echo", [{"tensors": {"features": [1, 2, 3]}}])
        with pytest.raises(ModelNotFound):
            predictor.predict("echo", [{"tensors": {"features": [1, 2]}}], version=7)
    assert sorted(results) == sorted(expected_score([k, 1.0]) for k in range(8))
    predictor.close()  # idempotent


def test_predictor_over_a_callers_manager_leaves_it_running(repo: Path) -> None:
    write_model(repo, "echo", 1, echo_model(1))

    async def scenario() -> tuple[float, bool]:
        manager = ModelManager(repo, poll_interval_s=0, providers=[CPU])
        await manager.start()
        try:
            async with Predictor(manager) as predictor:
                score = (await predictor.predict("echo", [{"features": {"features": 4.0}}], version=1)).scores[0, 0]
            return float(score), manager.is_ready("echo")
        finally:
            await manager.stop()

    assert asyncio.run(scenario()) == (4.0, True)


def test_predictor_must_be_started() -> None:
    predictor = Predictor(ModelManager(Path("."), poll_interval_s=0))
    with pytest.raises(RuntimeError, match="not started"):
        asyncio.run(predictor.predict("m", [{}]))


def test_instances_from_python_values() -> None:
    inst = to_instance({"entity_ids": {"user_id": 42}, "features": {"a": 1}, "tensors": {"x": np.ones((2, 2))}})
    assert dict(inst.entity_ids) == {"user_id": "42"} and inst.features["a"] == 1.0
    assert list(inst.tensors["x"].values) == [1.0] * 4
    message = rtml_pb.Instance(features={"a": 2.0})
    assert to_instance(message) is message
    for bad, fragment in [
        ({"feature": {}}, "unknown key"),
        ({"features": {"a": "x"}}, "instance 3"),
        ([1, 2], "expected a mapping"),
    ]:
        with pytest.raises(ServingError, match=fragment):
            to_instance(bad, 3)  # type: ignore[arg-type]
