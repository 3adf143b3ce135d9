"""Predict answers from precomputed (``rtml batch-predict``) scores: hits with their age, misses
and stale scores per on_miss / on_stale, over real gRPC, Redis, ONNX Runtime and Kafka."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Mapping

import grpc
import numpy as np
import pytest
import redis
from prometheus_client import CollectorRegistry

from engine.batch.store import RunMeta, ScoreWriter, pack_rows
from engine.runtime.ports import free_port
from proto.rtml.v1 import serving_pb2_grpc as rtml_grpc
from serving.errors import ServingError
from serving.features import FeatureFetcher
from serving.manager import ModelManager
from serving.onnx_session import CPU
from serving.server import BackgroundServer, ServerOptions
from tests.serving.models import write_model
from tests.serving.test_predict import (
    consume,
    echo_model,
    expected_score,
    pipeline_for,
    request,
    sample,
    views,
    write_features,
)

SOURCES = ["user.clicks_1h", "user.impressions_1h", "request.price"]
FEATURES = {"inputs": {"features": SOURCES}, "defaults": {"request.price": 2.0}}


def config(**precomputed: Any) -> dict[str, Any]:
    return {"features": FEATURES, "precomputed": {"max_age": "1m", **precomputed}}


def publish(
    client: redis.Redis, model: str, version: str, scores: Mapping[str, tuple[float, int]],
    sources: list[str] = SOURCES, prefix: str = "rtml",
) -> None:
    """Publish a run whose user ``u`` has score ``scores[u][0]`` computed at ``scores[u][1]`` ms."""
    writer = ScoreWriter(client, prefix, model, version, ttl_ms=60_000)
    for user, (score, computed_ms) in scores.items():
        features = np.arange(len(sources), dtype=np.float64).reshape(1, -1) + score
        writer.write(zip([user], pack_rows(computed_ms, np.array([[score]], np.float32), features)))
    now = int(time.time() * 1000)
    writer.publish(RunMeta(writer.run_id, model, version, "user_id", now, now, len(scores), tuple(sources), "score"))


def users(*ids: str) -> list[dict[str, Any]]:
    return [{"entity_ids": {"user_id": u}} for u in ids]


def online(clicks: float, impressions: float, price: float = 2.0, offset: float = 0.0) -> float:
    return expected_score([clicks, impressions, price], offset)


def test_grpc_predict_serves_precomputed_scores_misses_and_rejects(
    repo: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    now = int(time.time() * 1000)
    write_model(repo, "ranker", 1, echo_model(3), config())
    write_model(repo, "strict", 1, echo_model(3), config(on_miss="reject", on_stale="reject"))
    write_features(redis_client, "user", "u2", {"clicks_1h": 1, "impressions_1h": 4}, now - 3000)
    for model in ("ranker", "strict"):
        publish(redis_client, model, "1", {"u1": (42.0, now - 5000), "old": (7.0, now - 3_600_000)})

    options = ServerOptions(grpc_port=0, metrics_port=0, grace_s=1.0, redis_url=redis_url)
    with BackgroundServer(lambda: ModelManager(repo, poll_interval_s=0, providers=[CPU]), options) as server:
        with grpc.insecure_channel(server.grpc_address) as channel:
            stub = rtml_grpc.PredictionStub(channel)
            response = stub.Predict(request("ranker", users("u1", "u2", "old")), timeout=10)
            assert [list(r.scores) for r in response.results] == [
                [42.0], [online(1, 4)], [online(0, 0)]  # hit; miss and stale computed online
            ]
            hit_age, miss_age, stale_age = response.feature_age_ms
            assert 5000 <= hit_age < 60_000 and 3000 <= miss_age < 60_000
            assert stale_age == -1  # "old" has no features: all defaults

            assert [list(r.scores) for r in stub.Predict(request("strict", users("u1")), timeout=10).results] == [[42.0]]
            with pytest.raises(grpc.RpcError) as missing:
                stub.Predict(request("strict", users("u1", "u2")), timeout=10)
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND
            assert "no precomputed score for user_id 'u2' (instance 1)" in missing.value.details()
            with pytest.raises(grpc.RpcError) as stale:
                stub.Predict(request("strict", users("old")), timeout=10)
            assert stale.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "over precomputed.max_age (60000 ms)" in stale.value.details()


def test_lookup_policy_metrics_cache_and_versions(repo: Path, redis_url: str, redis_client: redis.Redis) -> None:
    now = int(time.time() * 1000)
    routed = {**config(), "cache_ttl_ms": 60_000, "routing": {"primary": "2", "shadow": {"version": "1"}}}
    write_model(repo, "ranker", 1, echo_model(3), routed)
    write_model(repo, "ranker", 2, echo_model(3, offset=100.0), routed)
    write_model(repo, "other", 1, echo_model(3), config())
    write_features(redis_client, "user", "u1", {"clicks_1h": 2, "impressions_1h": 3}, now - 1000)
    publish(redis_client, "ranker", "2", {"u1": (42.0, now - 1000), "old": (8.0, now - 120_000)})
    # A run computed from other bindings must not answer (e.g. the config changed since).
    publish(redis_client, "other", "1", {"u1": (5.0, now)}, sources=["user.clicks_1h"])
    registry = CollectorRegistry()

    async def scenario() -> dict[str, Any]:
        async with pipeline_for(repo, redis_url=redis_url, registry=registry) as p:
            out: dict[str, Any] = {}
            out["v2"] = await p.predict(request("ranker", users("u1", "old", "nobody")))  # primary: 2
            out["cached"] = await p.predict(request("ranker", users("u1", "old", "nobody")))
            out["v1"] = await p.predict(request("ranker", users("u1"), version="1"))  # v1 has no run
            out["own"] = await p.predict(request("ranker", [{"entity_ids": {"user_id": "u1"}, "features": {"price": 5}}]))
            out["echo"] = await p.predict(request("ranker", users("u1"), outputs=["echo"]))
            out["other"] = await p.predict(request("other", users("u1")))
            return out

    out = asyncio.run(scenario())
    scores = {k: [list(r.scores) for r in v.results] for k, v in out.items()}
    assert scores["v2"] == [[42.0], [online(0, 0, offset=100)], [online(0, 0, offset=100)]]
    assert scores["cached"] == scores["v2"] and list(out["cached"].feature_age_ms) == list(out["v2"].feature_age_ms)
    assert scores["v1"] == [[online(2, 3)]]  # the routed version's scores only
    assert scores["own"] == [[online(2, 3, 5, offset=100)]]  # its own values: scored on them
    assert scores["echo"] == [[online(2, 3, offset=100)]]  # extra outputs are not stored: online
    assert list(out["echo"].results[0].outputs["echo"].values) == [2, 3, 2]
    assert scores["other"] == [[online(2, 3)]]
    got = {r: sample(registry, "rtml_precomputed_requests_total", model="ranker", result=r)
           for r in ("hit", "miss", "stale", "error")}
    # v2: hit, stale, miss; v1: miss; own values: miss; the cached answer and echo look nothing up.
    assert got == {"hit": 1, "miss": 3, "stale": 1, "error": 0}
    assert sample(registry, "rtml_precomputed_requests_total", model="other", result="miss") == 1
    # Shadow version 1 scored the online instances of the routed, uncached requests: v2, own, echo.
    assert sample(registry, "rtml_shadow_requests_total", model="ranker", version="1", result="ok") == 3
    assert sample(registry, "rtml_prediction_score_count", model="ranker", version="1") == 2 + 1 + 1 + 1


def test_redis_down_computes_online_or_rejects(repo: Path, redis_client: redis.Redis) -> None:
    write_model(repo, "ranker", 1, echo_model(3), config())
    write_model(repo, "strict", 1, echo_model(3), config(on_miss="reject"))
    registry = CollectorRegistry()
    down = f"redis://127.0.0.1:{free_port()}/0"

    async def scenario() -> tuple[Any, ServingError]:
        async with pipeline_for(repo, fetcher=FeatureFetcher(down, views=views()), registry=registry) as p:
            answer = await p.predict(request("ranker", users("u1")))
            with pytest.raises(ServingError) as refused:
                await p.predict(request("strict", users("u1")))
            return answer, refused.value

    answer, refused = asyncio.run(scenario())
    assert [list(r.scores) for r in answer.results] == [[online(0, 0)]]  # fail-open features: defaults
    assert sample(registry, "rtml_precomputed_requests_total", model="ranker", result="error") == 1
    assert refused.code == grpc.StatusCode.UNAVAILABLE and "on_miss is reject" in str(refused)


def test_predictions_log_marks_precomputed_predictions(
    repo: Path, redis_url: str, redis_client: redis.Redis, kafka_bootstrap: str, unique_topic: Any
) -> None:
    topic = unique_topic("predictions", partitions=1)
    now = int(time.time() * 1000)
    write_model(repo, "ranker", 1, echo_model(3), config())
    write_features(redis_client, "user", "u2", {"clicks_1h": 1, "impressions_1h": 4}, now - 3000)
    publish(redis_client, "ranker", "1", {"u1": (42.0, now - 5000)})

    async def scenario() -> None:
        async with pipeline_for(repo, redis_url=redis_url, kafka_bootstrap=kafka_bootstrap, topic=topic) as p:
            await p.predict(request("ranker", users("u1", "u2"), request_id="r-1"))

    asyncio.run(scenario())
    records = {value["entity_ids"]["user_id"]: value for _, value in consume(kafka_bootstrap, topic, 2)}
    hit, computed = records["u1"], records["u2"]
    assert hit["precomputed"] is True and computed["precomputed"] is False
    assert hit["score"] == 42.0 and hit["request_id"] == "r-1" and hit["version"] == "1"
    assert hit["features"] == dict(zip(SOURCES, [42.0, 43.0, 44.0]))  # the inputs the run scored
    assert 5000 <= hit["feature_age_ms"] < 60_000
    assert computed["score"] == pytest.approx(online(1, 4))
    assert computed["features"] == {"user.clicks_1h": 1.0, "user.impressions_1h": 4.0, "request.price": 2.0}
