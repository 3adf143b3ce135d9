"""Recommend end to end: a real server (gRPC, ModelManager, ONNX Runtime, FAISS), Redis and Kafka.

One trained world and one server for the module (training takes a few seconds); each test
uses its own users so that their state does not interfere.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import grpc
import numpy as np
import orjson
import pytest
import redis
import yaml
from confluent_kafka import Producer

from engine.events.codec import encode_json
from engine.events.schemas import ItemUpdate
from engine.events.topic_reader import read_topic
from engine.learning.records import parse_prediction
from engine.recommend.synthetic import RecWorld
from engine.runtime.topics import ensure_topics
from proto.rtml.v1 import serving_pb2 as rtml_pb
from proto.rtml.v1 import serving_pb2_grpc as rtml_grpc
from serving.manager import ModelManager
from serving.server import BackgroundServer, ServerOptions
from tests.serving.recommend.world import trained_world

pytestmark = pytest.mark.slow

K = 10
SLOTS = [2, 7]


def _config(path: Path, **overrides: Any) -> Path:
    cfg = {
        "user_tower": "recs_user", "ranker": "ranker", "max_k": 50,
        "retrieval": {"candidates": 100, "index": {"dim": 16, "kind": "flat", "use_gpu": "never"}},
        "rerank": {"mmr_lambda": 0.8, "freshness": {"half_life": "1h", "boost": 0.2}},
        "exploration": {"slots": 2, "positions": SLOTS, "max_age": "1h", "max_impressions": 10},
        "popular": {"refresh": "1s"},
        **overrides,
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def world() -> dict[str, Any]:
    return trained_world()


def _publish(bootstrap: str, topic: str, updates: list[ItemUpdate]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for u in updates:
        producer.produce(topic, encode_json(u), u.item_id)
    assert producer.flush(10) == 0


@pytest.fixture(scope="module")
def served(world: dict[str, Any], redis_url: str, kafka_bootstrap: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    rw: RecWorld = world["rw"]
    tag = uuid.uuid4().hex[:8]
    prefix = f"rec{tag}"
    topics = {"items": f"items-{tag}", "events": f"events-{tag}", "predictions": f"predictions-{tag}"}
    ensure_topics(kafka_bootstrap, list(topics.values()), partitions=1)
    client = redis.Redis.from_url(redis_url)
    now = int(time.time() * 1000)
    pipe = client.pipeline(transaction=False)
    for key, mapping in rw.hashes(prefix, now).items():
        pipe.hset(key, mapping=mapping)
    pipe.execute()
    # Established items: first seen a month ago (not cold by age; shown 1000 times).
    _publish(kafka_bootstrap, topics["items"], rw.item_updates(world["vectors"], now - 30 * 86_400_000))
    cfg = _config(tmp_path_factory.mktemp("cfg") / "recommend.yaml")
    options = ServerOptions(grpc_port=0, metrics_port=None, redis_url=redis_url, redis_key_prefix=prefix,
                            kafka_bootstrap=kafka_bootstrap, predictions_topic=topics["predictions"],
                            recommend=str(cfg), events_topic=topics["events"], items_topic=topics["items"])
    server = BackgroundServer(lambda: ModelManager(world["repo"], poll_interval_s=0), options).start()
    try:
        service = server.server.recommend
        deadline = time.monotonic() + 20
        while len(service.index) < len(rw.items) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(service.index) == len(rw.items)
        service.popular.refresh()
        with grpc.insecure_channel(server.grpc_address) as channel:
            yield {"stub": rtml_grpc.RecommendationsStub(channel), "server": server, "prefix": prefix,
                   "topics": topics, "client": client, **world}
    finally:
        server.stop()
        client.close()


def recommend(stub: Any, user: str, k: int = K, **fields: Any) -> rtml_pb.RecommendResponse:
    return stub.Recommend(rtml_pb.RecommendRequest(user_id=user, k=k, **fields), timeout=10)


def test_k_distinct_items_with_reasons_and_versions(served: dict[str, Any]) -> None:
    response = recommend(served["stub"], "u1", request_id="req-1")
    ids = [item.item_id for item in response.items]
    assert response.request_id == "req-1" and not response.fallback
    assert len(ids) == K and len(set(ids)) == K
    assert [item.position for item in response.items] == list(range(K))
    assert {item.reason for item in response.items} <= {"retrieved+ranked", "retrieved+ranked+fresh_boost",
                                                        "explore:cold_start"}
    ranked = [item for item in response.items if item.reason.startswith("retrieved")]
    assert all(0.0 <= item.rank_score <= 1.0 for item in ranked)
    assert response.versions["user_tower"] == "recs_user/1" and response.versions["ranker"] == "ranker/1"
    assert response.versions["index_items"] == str(len(served["rw"].items))


def test_seen_blocked_and_excluded_items_never_appear(served: dict[str, Any]) -> None:
    stub, client, prefix = served["stub"], served["client"], served["prefix"]
    first = [item.item_id for item in recommend(stub, "u2").items]
    blocked, seen, excluded = first[0], first[1], first[3]
    client.sadd(f"{prefix}:blocked:u2", blocked)
    client.hset(f"{prefix}:user_item:u2|{seen}", mapping={"impressions_24h": "1", "_t": str(int(time.time() * 1000))})
    for _ in range(3):
        again = {item.item_id for item in recommend(stub, "u2", exclude=[excluded]).items}
        assert not again & {blocked, seen, excluded}
        assert len(again) == K


def _user_vector(served: dict[str, Any], u: int) -> np.ndarray:
    from engine.recommend.synthetic import USER_COLUMNS
    from serving.recommend.inputs import InputLayout

    rw = served["rw"]
    layout = InputLayout.from_features(served["models"]["two_tower"].features["user"])
    cols: dict[str, list[Any]] = {c: [rw.user_row(u)[c]] for c in USER_COLUMNS}
    cols["user_id"] = [rw.users[u]]
    dense, sparse = layout.arrays(cols)
    return served["models"]["two_tower"].encode_users(dense, sparse)[0]


def test_a_new_item_is_recommended_within_seconds_in_an_exploration_slot(served: dict[str, Any]) -> None:
    stub = served["stub"]
    before = {item.item_id for item in recommend(stub, "u3").items}
    assert not any(item.reason.startswith("explore") for item in recommend(stub, "u3").items)  # nothing cold yet
    new_id = f"new-{uuid.uuid4().hex[:6]}"
    published = time.monotonic()
    _publish(served["server"].server.options.kafka_bootstrap,
             served["topics"]["items"],
             [ItemUpdate(new_id, int(time.time() * 1000), category="c-new",
                         embedding=_user_vector(served, 3).astype(float).tolist())])
    found = None
    while time.monotonic() - published < 5 and found is None:
        found = next((item for item in recommend(stub, "u3").items if item.item_id == new_id), None)
        if found is None:
            time.sleep(0.02)
    assert found is not None, "the new item was not recommended within 5 s"
    # It is the only cold candidate (new, never shown): the bandit puts it in the first slot.
    assert found.reason == "explore:cold_start" and found.position == SLOTS[0]
    assert 0 < found.score < 1 and new_id not in before


def test_unknown_user_gets_the_popular_fallback(served: dict[str, Any]) -> None:
    rw = served["rw"]
    served["client"].sadd(f"{served['prefix']}:blocked:nobody", rw.items[int(np.argmax(rw.world.popularity))])
    response = recommend(served["stub"], "nobody", k=5)
    assert response.fallback and {item.reason for item in response.items} == {"popular"}
    expected = [rw.items[i] for i in np.argsort(-rw.world.item_dense[:, 0], kind="stable")[1:6]]
    assert [item.item_id for item in response.items] == expected


def test_bad_requests_get_clear_status_codes(served: dict[str, Any]) -> None:
    stub = served["stub"]
    for fields, fragment in (({"user_id": "u1", "k": 0}, "k must be in 1..50"),
                             ({"user_id": "u1", "k": 51}, "k must be in 1..50"),
                             ({"user_id": "", "k": 3}, "user_id is required")):
        with pytest.raises(grpc.RpcError) as exc:
            stub.Recommend(rtml_pb.RecommendRequest(**fields), timeout=10)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and fragment in exc.value.details()


def test_missing_models_and_an_empty_index(world: dict[str, Any], redis_url: str, tmp_path: Path) -> None:
    for overrides, code, fragment in (({"ranker": "nope"}, grpc.StatusCode.NOT_FOUND, "model 'nope' not found"),
                                      ({}, grpc.StatusCode.UNAVAILABLE, "index is empty")):
        cfg = _config(tmp_path / f"r{code.name}.yaml", **overrides)
        prefix = f"rec{uuid.uuid4().hex[:8]}"
        client = redis.Redis.from_url(redis_url)
        client.hset(f"{prefix}:user:u1", mapping={"clicks_1h": "1", "_t": str(int(time.time() * 1000))})
        options = ServerOptions(grpc_port=0, metrics_port=None, redis_url=redis_url, redis_key_prefix=prefix,
                                recommend=str(cfg))
        with BackgroundServer(lambda: ModelManager(world["repo"], poll_interval_s=0), options) as server:
            with grpc.insecure_channel(server.grpc_address) as channel:
                with pytest.raises(grpc.RpcError) as exc:
                    rtml_grpc.RecommendationsStub(channel).Recommend(
                        rtml_pb.RecommendRequest(user_id="u1", k=3), timeout=10)
        client.close()
        assert exc.value.code() == code and fragment in exc.value.details()


def _records(bootstrap: str, topic: str, request_id: str, want: int, timeout_s: float = 10) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        found = [orjson.loads(r) for r in read_topic(bootstrap, topic, timeout_s=5)]
        found = [r for r in found if r.get("request_id") == request_id]
        if len(found) >= want or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_impressions_and_predictions_are_logged_with_request_ids(served: dict[str, Any]) -> None:
    from engine.events.validation import validate_interaction  # the features dataflow's check

    bootstrap = served["server"].server.options.kafka_bootstrap
    response = recommend(served["stub"], "u4", k=6, request_id="log-1", context={"surface": "home"})
    impressions = _records(bootstrap, served["topics"]["events"], "log-1", 6)
    assert sorted((r["item_id"], r["context"]["position"]) for r in impressions) == sorted(
        (item.item_id, item.position) for item in response.items)
    for raw in impressions:
        event = validate_interaction(orjson.dumps(raw), None, int(time.time() * 1000))
        assert event.event_type == "impression" and event.user_id == "u4" and event.context["surface"] == "home"
    predictions = [parse_prediction(orjson.dumps(r)) for r in _records(bootstrap, served["topics"]["predictions"],
                                                                         "log-1", 6)]
    assert len(predictions) == 6
    by_item = {p.item_id: p for p in predictions}
    for item in response.items:
        p = by_item[item.item_id]
        if item.reason.startswith("explore"):
            assert p.model == "rec-explore" and p.arm == item.item_id and p.variant == "bandit"
        else:
            assert p.model == "ranker" and p.version == "1" and p.score == pytest.approx(item.rank_score)
            assert p.features["item_id"] == item.item_id and "user.clicks_1h" in p.features
