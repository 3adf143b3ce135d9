"""The rtml.v1 Predict pipeline end to end: predictions log on real Kafka, gRPC Predict with
online features from real Redis through BackgroundServer, and the CLI flags that wire them.

Also holds the helpers the other feature/routing/cache/API tests share (an "echo" ONNX model
whose second output is its input row, a Kafka reader, a pipeline factory).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Iterable, Mapping

import grpc
import numpy as np
import onnx
import orjson
import pytest
import redis
from confluent_kafka import Consumer, TopicPartition
from onnx import TensorProto, helper, numpy_helper
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from engine.features.online import OnlineStore
from engine.features.shard import RunningValues
from engine.features.spec import FeatureView
from engine.runtime.ports import free_port
from proto.rtml.v1 import serving_pb2 as rtml_pb
from proto.rtml.v1 import serving_pb2_grpc as rtml_grpc
from serving.api import make_request
from serving.features import FeatureFetcher, default_feature_views
from serving.manager import ModelManager
from serving.onnx_session import CPU
from serving.predict import PredictPipeline
from serving.predictions_log import PredictionLogger
from serving.server import BackgroundServer, ServerOptions, _parser
from tests.serving.models import IR_VERSION, OPSET, write_model

# -- shared helpers --------------------------------------------------------------------------


def echo_model(width: int, offset: float = 0.0, input_name: str = "features") -> onnx.ModelProto:
    """``features [N, width]`` -> ``score [N, 1]`` = features . (1, 2, ..., width) + offset, and
    ``echo [N, width]`` = the input itself (so a test sees the exact row the model got).

    ``offset`` tells versions apart by their scores.
    """
    weights = np.arange(1, width + 1, dtype=np.float32).reshape(width, 1)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", [input_name, "w"], ["dot"]),
            helper.make_node("Add", ["dot", "offset"], ["score"]),
            helper.make_node("Identity", [input_name], ["echo"]),
        ],
        "echo",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", width])],
        [
            helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1]),
            helper.make_tensor_value_info("echo", TensorProto.FLOAT, ["N", width]),
        ],
        [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(np.array([offset], np.float32), "offset")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def expected_score(row: Iterable[float], offset: float = 0.0) -> float:
    """What :func:`echo_model` answers for one row (float32 arithmetic)."""
    x = np.asarray(list(row), np.float32).reshape(1, -1)
    w = np.arange(1, x.shape[1] + 1, dtype=np.float32).reshape(-1, 1)
    return float((x @ w + np.float32(offset))[0, 0])


def views() -> dict[str, FeatureView]:
    return default_feature_views()


def write_features(
    client: redis.Redis, view: str, entity: str, values: Mapping[str, Any], last_event_ms: int, prefix: str = "rtml"
) -> None:
    """Write one entity's hash the way the features dataflow does (OnlineStore.write_running)."""
    spec = views()[view]
    columns = spec.feature_names()
    store = OnlineStore(client, list(views().values()), prefix)
    row = RunningValues(entity, columns, [values.get(c) for c in columns], last_event_ms, last_event_ms)
    store.write_running(view, [row])


def consume(bootstrap: str, topic: str, expected: int, timeout_s: float = 20.0) -> list[tuple[bytes | None, dict]]:
    """Read ``expected`` JSON records (key, value) from every partition of ``topic`` via assign()."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4().hex}", "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
        got: list[tuple[bytes | None, dict]] = []
        deadline = time.monotonic() + timeout_s
        while len(got) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            got.append((msg.key(), orjson.loads(msg.value())))
        return got
    finally:
        consumer.close()


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """A metric sample's value, 0.0 when the series does not exist (yet)."""
    return registry.get_sample_value(name, labels) or 0.0


@contextlib.asynccontextmanager
async def pipeline_for(
    repo: Path,
    *,
    redis_url: str | None = None,
    kafka_bootstrap: str | None = None,
    topic: str = "predictions",
    retry_after_s: float = 0.5,
    fetcher: FeatureFetcher | None = None,
    **kwargs: Any,
) -> AsyncIterator[PredictPipeline]:
    """A started manager over ``repo`` and a pipeline on it (closed afterwards)."""
    manager = ModelManager(repo, poll_interval_s=0, providers=[CPU])
    await manager.start()
    logger = (
        PredictionLogger(kafka_bootstrap, topic, registry=manager.registry, create_topic=False).start()
        if kafka_bootstrap
        else None
    )
    if fetcher is None:
        fetcher = FeatureFetcher(redis_url, views=views(), retry_after_s=retry_after_s)
    pipeline = PredictPipeline(manager, fetcher=fetcher, logger=logger, **kwargs)
    try:
        yield pipeline
    finally:
        await pipeline.close()
        await manager.stop()


def request(model: str, instances: list[dict], version: str | None = None, **kwargs: Any) -> rtml_pb.PredictRequest:
    return make_request(model, instances, version, **kwargs)


BINDINGS = {
    "inputs": {"features": ["user.clicks_1h", "user.impressions_1h", "item.ctr_1h", "user_item.clicks_1h", "request.price"]},
    "defaults": {"user.clicks_1h": -1.0, "request.price": 9.0},
}


# -- predictions log ---------------------------------------------------------------------------


def test_predictions_topic_carries_every_prediction(
    repo: Path, redis_url: str, redis_client: redis.Redis, kafka_bootstrap: str, unique_topic
) -> None:
    topic = unique_topic("predictions", partitions=3)
    write_model(repo, "ranker", 1, echo_model(5), {"features": BINDINGS})
    now = int(time.time() * 1000)
    write_features(redis_client, "user", "u1", {"clicks_1h": 3, "impressions_1h": 10}, now - 1000)
    write_features(redis_client, "item", "i1", {"ctr_1h": 0.25}, now - 5000)

    async def scenario() -> rtml_pb.PredictResponse:
        async with pipeline_for(repo, redis_url=redis_url, kafka_bootstrap=kafka_bootstrap, topic=topic) as p:
            return await p.predict(
                request(
                    "ranker",
                    [
                        {"entity_ids": {"user_id": "u1", "item_id": "i1"}, "features": {"price": 2.5}},
                        {"entity_ids": {"user_id": "u2", "item_id": "i1"}},
                    ],
                    request_id="req-42",
                )
            )

    response = asyncio.run(scenario())
    records = consume(kafka_bootstrap, topic, 2)
    assert len(records) == 2
    by_user = {value["entity_ids"]["user_id"]: (key, value) for key, value in records}
    key, first = by_user["u1"]
    assert key == b"u1"  # keyed by user: one user's predictions stay ordered in one partition
    assert first["request_id"] == "req-42" and first["model"] == "ranker" and first["version"] == "1"
    assert first["variant"] == "primary" and first["cached"] is False
    assert first["entity_ids"] == {"user_id": "u1", "item_id": "i1"}
    assert first["features"] == {
        "user.clicks_1h": 3.0, "user.impressions_1h": 10.0, "item.ctr_1h": 0.25, "user_item.clicks_1h": 0.0,
        "request.price": 2.5,
    }
    assert first["feature_defaults"] == ["user_item.clicks_1h"]
    assert first["score"] == pytest.approx(expected_score([3, 10, 0.25, 0, 2.5]))
    assert first["scores"] == [first["score"]] == list(response.results[0].scores)
    assert 5000 <= first["feature_age_ms"] < 60_000  # the oldest view used: item, 5 s
    assert abs(first["event_time_ms"] - time.time() * 1000) < 60_000
    _, second = by_user["u2"]
    assert second["features"]["user.clicks_1h"] == -1.0 and second["features"]["request.price"] == 9.0
    assert set(second["feature_defaults"]) == {"user.clicks_1h", "user.impressions_1h", "user_item.clicks_1h",
                                               "request.price"}


def test_raw_predictions_are_logged_and_request_id_generated(
    repo: Path, kafka_bootstrap: str, unique_topic
) -> None:
    topic = unique_topic("predictions")
    write_model(repo, "echo", 1, echo_model(3))

    async def scenario() -> rtml_pb.PredictResponse:
        async with pipeline_for(repo, kafka_bootstrap=kafka_bootstrap, topic=topic) as p:
            return await p.predict(request("echo", [{"tensors": {"features": [1, 2, 3]}, "entity_ids": {"item_id": "i9"}}]))

    response = asyncio.run(scenario())
    assert len(response.request_id) == 32 and response.variant == "" and list(response.feature_age_ms) == []
    [(key, record)] = consume(kafka_bootstrap, topic, 1)
    assert key == b"i9"  # no user_id: the first entity id
    assert record["request_id"] == response.request_id
    assert record["features"] == {"features": [1.0, 2.0, 3.0]}
    assert record["score"] == expected_score([1, 2, 3]) and record["feature_age_ms"] is None


def test_full_producer_queue_drops_and_counts_without_failing_predictions(repo: Path) -> None:
    """Kafka unreachable and the local queue full: predictions still answer, drops are counted."""
    write_model(repo, "echo", 1, echo_model(1))
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there

    async def scenario() -> tuple[int, float, float]:
        manager = ModelManager(repo, poll_interval_s=0, providers=[CPU])
        await manager.start()
        logger = PredictionLogger(
            dead, "predictions", registry=manager.registry, queue_max_messages=3, create_topic=False,
            message_timeout_ms=1000,
        ).start()
        pipeline = PredictPipeline(manager, logger=logger)
        answered = 0
        try:
            for i in range(10):
                response = await pipeline.predict(request("echo", [{"features": {"features": float(i)}}]))
                answered += len(response.results)
            full = sample(manager.registry, "rtml_predictions_log_dropped_total", reason="queue_full")
        finally:
            await pipeline.close(timeout_s=0.5)
            await manager.stop()
        queued = sample(manager.registry, "rtml_predictions_log_dropped_total", reason="delivery_failed") + sample(
            manager.registry, "rtml_predictions_log_dropped_total", reason="shutdown"
        )
        return answered, full, queued

    answered, full, queued = asyncio.run(scenario())
    assert answered == 10
    assert full == 7  # the queue holds 3
    assert queued == 3  # the 3 queued ones never reached Kafka either, and are counted


# -- gRPC end to end ---------------------------------------------------------------------------


def test_grpc_predict_with_features_routing_and_log_through_background_server(
    repo: Path, redis_url: str, redis_client: redis.Redis, kafka_bootstrap: str, unique_topic
) -> None:
    topic = unique_topic("predictions")
    config = {"features": BINDINGS, "routing": {"ab": {"variants": {"a": {"version": 1, "weight": 1},
                                                                     "b": {"version": 2, "weight": 1}}}}}
    write_model(repo, "ranker", 1, echo_model(5, offset=0.0), config)
    write_model(repo, "ranker", 2, echo_model(5, offset=1000.0), config)
    now = int(time.time() * 1000)
    write_features(redis_client, "user", "u1", {"clicks_1h": 4, "impressions_1h": 8}, now)
    write_features(redis_client, "user_item", "u1|i1", {"clicks_1h": 2}, now)
    options = ServerOptions(
        grpc_port=0, metrics_port=0, grace_s=1.0, redis_url=redis_url, kafka_bootstrap=kafka_bootstrap,
        predictions_topic=topic,
    )
    with BackgroundServer(lambda: ModelManager(repo, poll_interval_s=0, providers=[CPU]), options) as server:
        with grpc.insecure_channel(server.grpc_address) as channel:
            stub = rtml_grpc.PredictionStub(channel)
            req = request("ranker", [{"entity_ids": {"user_id": "u1", "item_id": "i1"}, "features": {"price": 1.5}}],
                          request_id="g-1", outputs=["echo"])
            response = stub.Predict(req, timeout=10)
            again = stub.Predict(req, timeout=10)
            pinned = stub.Predict(request("ranker", [{"entity_ids": {"user_id": "u1", "item_id": "i1"}}], version="1"),
                                  timeout=10)
            with pytest.raises(grpc.RpcError) as exc:
                stub.Predict(request("ranker", [{"entity_ids": {"item_id": "i1"}}]), timeout=10)
            assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "entity_ids has no 'user_id'" in exc.value.details()
        text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    families = {f.name: f.samples for f in text_string_to_metric_families(text)}

    def value(family: str, sample_name: str, **labels: str) -> float:
        return sum(s.value for s in families.get(family, []) if s.name == sample_name
                   and all(s.labels.get(k) == v for k, v in labels.items()))
    assert response.request_id == "g-1" and response.variant in ("a", "b")
    assert (response.model_version, again.model_version, again.variant) == (
        {"a": "1", "b": "2"}[response.variant], response.model_version, response.variant)  # sticky
    row = [4.0, 8.0, 0.0, 2.0, 1.5]
    assert list(response.results[0].outputs["echo"].values) == row
    offset = 1000.0 if response.model_version == "2" else 0.0
    assert response.results[0].scores[0] == pytest.approx(expected_score(row, offset))
    assert 0 <= response.feature_age_ms[0] < 60_000
    assert pinned.model_version == "1" and pinned.variant == ""
    assert value("rtml_feature_fetch_seconds", "rtml_feature_fetch_seconds_count", model="ranker") == 3
    # Routed: the two unpinned good requests and the invalid one (decided before validation).
    assert value("rtml_routing_requests", "rtml_routing_requests_total", model="ranker") == 3
    assert value("rtml_routing_requests", "rtml_routing_requests_total", model="ranker", variant=response.variant) >= 2
    assert value("rtml_prediction_score", "rtml_prediction_score_count", model="ranker") == 3
    assert value("rtml_feature_fetch_errors", "rtml_feature_fetch_errors_total") == 0
    records = consume(kafka_bootstrap, topic, 3)
    assert [r["request_id"] for _, r in records].count("g-1") == 2
    assert {r["variant"] for _, r in records if r["request_id"] == "g-1"} == {response.variant}
    assert any(r["variant"] == "primary" and r["version"] == "1" for _, r in records)


def test_cli_flags_reach_the_server_options() -> None:
    args = _parser().parse_args(
        ["--models", "m", "--redis-url", "redis://h:1/0", "--kafka-bootstrap", "k:9092", "--predictions-topic", "p",
         "--redis-key-prefix", "x", "--feature-specs", "f.yaml"]
    )
    assert (args.redis_url, args.kafka_bootstrap, args.predictions_topic, args.redis_key_prefix, args.feature_specs) == (
        "redis://h:1/0", "k:9092", "p", "x", "f.yaml"
    )
    defaults = _parser().parse_args(["--models", "m"])
    assert (defaults.redis_url, defaults.kafka_bootstrap, defaults.predictions_topic) == (None, None, "predictions")
