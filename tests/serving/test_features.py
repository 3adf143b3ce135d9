"""Online features for Predict against a real Redis: values, binding order, defaults, TTL, the
one-round-trip fetch, request overrides, config errors, and a Redis outage (fail-open,
fail-closed, recovery) on a Redis of the test's own that it stops and restarts."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import grpc
import pytest
import redis

from engine.features.aggregates import ViewProgram
from engine.features.online import OnlineStore
from engine.runtime.redis_server import EmbeddedRedis
from serving.config import FeatureBindings, ModelConfig
from serving.errors import InvalidInput, ServingError
from engine.features.keys import composite_key
from serving.features import (
    FeatureConfigError,
    FeatureFetcher,
    FeatureStoreUnavailable,
    ResolvedView,
    decode_row,
    resolve_bindings,
)
from tests.serving.models import mlp_model, write_model
from tests.serving.test_predict import (
    BINDINGS,
    echo_model,
    expected_score,
    pipeline_for,
    request,
    sample,
    views,
    write_features,
)

UI = {"user_id": "u1", "item_id": "i1"}


def _echo(response: Any) -> list[list[float]]:
    return [list(r.outputs["echo"].values) for r in response.results]


def _predict(repo: Path, redis_url: str | None, instances: list[dict], **kwargs: Any) -> Any:
    async def scenario() -> Any:
        async with pipeline_for(repo, redis_url=redis_url) as p:
            return await p.predict(request("ranker", instances, outputs=["echo"], **kwargs))

    return asyncio.run(scenario())


# -- keys and decoding -------------------------------------------------------------------------


@pytest.mark.parametrize(("user", "item"), [("u42", "i7"), ("u%1", "i|1"), ("a|b%7C", "%%||")])
def test_composite_key_matches_the_dataflow(user: str, item: str) -> None:
    program = ViewProgram(views()["user_item"])
    assert composite_key((user, item)) == program.entity_key({"user_id": user, "item_id": item})
    assert composite_key((user,)) == user


def test_decode_row_applies_ttl_max_age_and_nulls() -> None:
    view = ResolvedView("user", ("user_id",), ("a", "b", "c"), 1000, (True, True, True))
    now = 10_000
    assert decode_row([b"1", b"", b"2.5", b"9500"], view, now, None).values == (1.0, None, 2.5)
    assert decode_row([b"1", b"", b"2.5", b"9500"], view, now, None).age_ms == 500
    expired = decode_row([b"1", b"", b"2.5", b"8999"], view, now, None)
    assert (expired.found, expired.age_ms, expired.values) == (False, None, (None, None, None))
    assert not decode_row([b"1", b"2", b"3", b"9500"], view, now, 400).found  # max_feature_age_ms
    assert not decode_row([None, None, None, None], view, now, None).found
    assert decode_row([b"x", b"1", b"1", b"9999"], view, now, None).values[0] is None  # unreadable text


# -- values from Redis -------------------------------------------------------------------------


def test_fetched_features_equal_what_online_store_wrote_in_binding_order(
    repo: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    write_model(repo, "ranker", 1, echo_model(5), {"features": BINDINGS})
    now = int(time.time() * 1000)
    user_item_key = ViewProgram(views()["user_item"]).entity_key(UI)
    write_features(redis_client, "user", "u1", {"clicks_1h": 3, "impressions_1h": 12}, now - 2_000)
    write_features(redis_client, "item", "i1", {"ctr_1h": 0.125}, now - 30_000)
    write_features(redis_client, "user_item", user_item_key, {"clicks_1h": 2}, now - 1_000)

    response = _predict(repo, redis_url, [{"entity_ids": UI, "features": {"price": 4.5}}])

    store = OnlineStore(redis_client, list(views().values()))
    read_at = int(time.time() * 1000)
    written = [
        store.get("user", ["u1"], ["clicks_1h"], read_at)[0].values["clicks_1h"],
        store.get("user", ["u1"], ["impressions_1h"], read_at)[0].values["impressions_1h"],
        store.get("item", ["i1"], ["ctr_1h"], read_at)[0].values["ctr_1h"],
        store.get("user_item", [user_item_key], ["clicks_1h"], read_at)[0].values["clicks_1h"],
        4.5,
    ]
    assert _echo(response) == [written] == [[3.0, 12.0, 0.125, 2.0, 4.5]]
    assert response.results[0].scores[0] == pytest.approx(expected_score(written))
    # The oldest view used (item, written 30 s ago) sets the age.
    assert 30_000 <= response.feature_age_ms[0] < 30_000 + 60_000


def test_unknown_entities_get_documented_defaults_and_no_age(
    repo: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    bindings = {**BINDINGS, "default": 0.5}
    write_model(repo, "ranker", 1, echo_model(5), {"features": bindings})
    write_features(redis_client, "user", "known", {"clicks_1h": 7}, int(time.time() * 1000))

    async def scenario() -> tuple[Any, float, float]:
        async with pipeline_for(repo, redis_url=redis_url) as p:
            response = await p.predict(request(
                "ranker",
                [{"entity_ids": {"user_id": "nobody", "item_id": "nothing"}},
                 {"entity_ids": {"user_id": "known", "item_id": "nothing"}, "features": {"price": 1.0}}],
                outputs=["echo"],
            ))
            registry = p.manager.registry
            return (response, sample(registry, "rtml_feature_missing_total", model="ranker", view="item"),
                    sample(registry, "rtml_feature_missing_total", model="ranker", view="user"))

    response, missing_items, missing_users = asyncio.run(scenario())
    # Per-source defaults first (user.clicks_1h: -1, request.price: 9), then `default` (0.5).
    assert _echo(response)[0] == [-1.0, 0.5, 0.5, 0.5, 9.0]
    # A found entity whose column is null (never written) also gets the default.
    assert _echo(response)[1] == [7.0, 0.5, 0.5, 0.5, 1.0]
    assert response.feature_age_ms[0] == -1.0 and 0 <= response.feature_age_ms[1] < 60_000
    assert missing_items == 1  # "nothing" read once for both instances
    assert missing_users == 1


def test_ttl_expired_and_too_old_features_count_as_missing(
    repo: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    write_model(repo, "ranker", 1, echo_model(2), {"features": {
        "inputs": {"features": ["user_item.clicks_1h", "item.clicks_1h"]}, "max_feature_age_ms": 3_600_000,
    }})
    now = int(time.time() * 1000)
    day = 86_400_000
    # user_item's TTL is 1d: 25 h old is expired although the key still exists in Redis.
    write_features(redis_client, "user_item", "u1|i1", {"clicks_1h": 5}, now - day - 3_600_000)
    # item's TTL is 2d, but the model accepts at most 1 h old values.
    write_features(redis_client, "item", "i1", {"clicks_1h": 6}, now - 2 * 3_600_000)
    write_features(redis_client, "item", "i2", {"clicks_1h": 8}, now - 60_000)
    assert redis_client.exists("rtml:user_item:u1|i1")
    store = OnlineStore(redis_client, list(views().values()))
    assert store.get("user_item", ["u1|i1"], ["clicks_1h"])[0].found is False  # the same rule as the store

    response = _predict(repo, redis_url, [{"entity_ids": UI}, {"entity_ids": {"user_id": "u1", "item_id": "i2"}}])
    assert _echo(response) == [[0.0, 0.0], [0.0, 8.0]]
    assert response.feature_age_ms[0] == -1.0  # nothing found: reported as no age
    assert 60_000 <= response.feature_age_ms[1] < 120_000


def test_one_pipelined_round_trip_per_request_each_entity_once(
    repo: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    write_model(repo, "ranker", 1, echo_model(5), {"features": BINDINGS})
    now = int(time.time() * 1000)
    for item in range(20):
        write_features(redis_client, "item", f"i{item}", {"ctr_1h": item / 100}, now)
    write_features(redis_client, "user", "u1", {"clicks_1h": 1}, now)

    class CountingFetcher(FeatureFetcher):
        calls: list[int] = []

        async def fetch(self, lookups: Sequence[tuple[ResolvedView, str]]) -> Any:
            self.calls.append(len(lookups))
            return await super().fetch(lookups)

    fetcher = CountingFetcher(redis_url, views=views())

    async def scenario() -> Any:
        async with pipeline_for(repo, fetcher=fetcher) as p:
            redis_client.config_resetstat()
            # One user ranking 20 items: 1 user + 20 items + 20 user_item hashes.
            return await p.predict(request(
                "ranker", [{"entity_ids": {"user_id": "u1", "item_id": f"i{i}"}} for i in range(20)],
                outputs=["echo"],
            ))

    response = asyncio.run(scenario())
    assert fetcher.calls == [41]
    assert redis_client.info("commandstats")["cmdstat_hmget"]["calls"] == 41
    assert [row[2] for row in _echo(response)] == pytest.approx([i / 100 for i in range(20)])


def test_request_values_override_and_complement_fetched_ones(
    repo: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    # Two inputs: "features" bound, "extra" taken from the request as without bindings.
    write_model(repo, "ranker", 1, _two_input_echo(), {"features": {
        "inputs": {"features": ["user.clicks_1h", "request.hour"]}}})
    write_features(redis_client, "user", "u1", {"clicks_1h": 3}, int(time.time() * 1000))
    instances = [
        {"entity_ids": {"user_id": "u1"}, "features": {"hour": 7, "extra": 1}},
        {"entity_ids": {"user_id": "u1"}, "features": {"hour": 7, "user.clicks_1h": 99, "extra": 2}},
        {"features": {"extra": 3}, "tensors": {"features": [5, 6]}},  # whole row given: no fetch, no ids needed
    ]

    async def scenario() -> Any:
        async with pipeline_for(repo, redis_url=redis_url) as p:
            return await p.predict(request("ranker", instances, outputs=["echo", "extra_echo"]))

    response = asyncio.run(scenario())
    assert _echo(response) == [[3.0, 7.0], [99.0, 7.0], [5.0, 6.0]]
    assert [list(r.outputs["extra_echo"].values) for r in response.results] == [[1.0], [2.0], [3.0]]
    assert response.feature_age_ms[1] == -1.0  # its only online value was overridden

    for bad, fragment in [
        ({"entity_ids": {"user_id": "u1"}, "features": {"extra": 1}}, "missing request feature 'hour'"),
        ({"features": {"hour": 1, "extra": 1}}, "entity_ids has no 'user_id'"),
        ({"entity_ids": {"user_id": "u1"}, "features": {"hour": 1, "extra": 1, "oops": 2}}, "unknown feature 'oops'"),
        ({"entity_ids": {"user_id": "u1"}, "features": {"hour": 1}}, "missing input 'extra'"),
        ({"features": {"extra": 1}, "tensors": {"features": [1, 2, 3]}}, "needs 2 values per instance, got 3"),
    ]:
        async def failing(bad: dict = bad) -> None:
            async with pipeline_for(repo, redis_url=redis_url) as p:
                await p.predict(request("ranker", [bad]))

        with pytest.raises(InvalidInput, match=fragment):
            asyncio.run(failing())


def _two_input_echo() -> Any:
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from tests.serving.models import IR_VERSION, OPSET

    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["features", "axis1"], ["score"], keepdims=1),
            helper.make_node("Identity", ["features"], ["echo"]),
            helper.make_node("Identity", ["extra"], ["extra_echo"]),
        ],
        "two",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 2]),
         helper.make_tensor_value_info("extra", TensorProto.FLOAT, ["N", 1])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1]),
         helper.make_tensor_value_info("echo", TensorProto.FLOAT, ["N", 2]),
         helper.make_tensor_value_info("extra_echo", TensorProto.FLOAT, ["N", 1])],
        [numpy_helper.from_array(np.array([1], np.int64), "axis1")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model


# -- configuration errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("inputs", "extra", "fragment"),
    [
        ({"features": ["nope.clicks_1h"]}, {}, "feature view 'nope'"),
        ({"features": ["user.clicks_2h"]}, {}, "has no column 'clicks_2h'"),
        ({"features": ["user.last_item_1h"]}, {}, "holds text"),
        ({"other": ["user.clicks_1h"]}, {}, "input(s) 'other' the model does not have"),
        ({"features": ["user.clicks_1h", "user.ctr_1h"]}, {}, "bound to 2 source(s)"),
    ],
)
def test_binding_errors_are_failed_precondition(
    repo: Path, inputs: dict, extra: dict, fragment: str
) -> None:
    write_model(repo, "ranker", 1, echo_model(1), {"features": {"inputs": inputs, **extra}})

    async def scenario() -> None:
        async with pipeline_for(repo, redis_url=None) as p:
            await p.predict(request("ranker", [{"entity_ids": UI}]))

    with pytest.raises(FeatureConfigError) as exc:
        asyncio.run(scenario())
    assert exc.value.code == grpc.StatusCode.FAILED_PRECONDITION and fragment in str(exc.value)


def test_views_declared_in_the_model_config(repo: Path, redis_url: str, redis_client: redis.Redis) -> None:
    """A view the feature specs lack: its entity fields and TTL come from ``features.views``."""
    bindings = FeatureBindings.model_validate({
        "inputs": {"features": ["session.depth", "session.dwell"]},
        "views": {"session": {"entity": ["session_id", "device"], "ttl": "1h"}},
    })
    resolved = resolve_bindings(bindings, views())
    assert resolved["session"] == ResolvedView("session", ("session_id", "device"), ("depth", "dwell"), 3_600_000,
                                               (False, False))
    write_model(repo, "ranker", 1, echo_model(2), {"features": bindings.model_dump()})
    now = int(time.time() * 1000)
    redis_client.hset("rtml:session:s1|phone", mapping={"depth": "4", "dwell": "2.5", "_t": now})
    response = _predict(repo, redis_url, [{"entity_ids": {"session_id": "s1", "device": "phone"}}])
    assert _echo(response) == [[4.0, 2.5]]
    assert ModelConfig.model_validate({"features": bindings.model_dump()}).features == bindings


# -- Redis outage ------------------------------------------------------------------------------


@pytest.fixture()
def own_redis() -> Iterator[EmbeddedRedis]:
    """A Redis only this test uses, so stopping it cannot disturb the session's."""
    server = EmbeddedRedis().start()
    try:
        yield server
    finally:
        server.close()


def test_redis_outage_fail_open_fail_closed_and_recovery(repo: Path, own_redis: EmbeddedRedis) -> None:
    write_model(repo, "open", 1, echo_model(2), {"features": {"inputs": {"features": ["user.clicks_1h", "item.clicks_1h"]}}})
    write_model(repo, "closed", 1, echo_model(2), {"features": {
        "inputs": {"features": ["user.clicks_1h", "item.clicks_1h"]}, "fail_open": False}})
    client = redis.Redis.from_url(own_redis.url)

    def seed() -> None:
        now = int(time.time() * 1000)
        write_features(client, "user", "u1", {"clicks_1h": 2}, now)
        write_features(client, "item", "i1", {"clicks_1h": 3}, now)

    seed()
    instance = [{"entity_ids": UI}]

    async def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with pipeline_for(repo, redis_url=own_redis.url, retry_after_s=0.2) as p:
            registry = p.manager.registry
            out["before"] = _echo(await p.predict(request("open", instance, outputs=["echo"])))
            await asyncio.to_thread(own_redis.stop)
            started = time.perf_counter()
            down = await p.predict(request("open", instance, outputs=["echo"]))
            out["down_s"] = time.perf_counter() - started
            out["down"] = (_echo(down), list(down.feature_age_ms))
            # While failing fast (retry_after_s), answers stay defaults without touching Redis.
            out["down_again"] = _echo(await p.predict(request("open", instance, outputs=["echo"])))
            out["errors_open"] = sample(registry, "rtml_feature_fetch_errors_total", model="open")
            with pytest.raises(ServingError) as exc:
                await p.predict(request("closed", instance))
            out["closed_error"] = exc.value
            out["errors_closed"] = sample(registry, "rtml_feature_fetch_errors_total", model="closed")
            await asyncio.to_thread(own_redis.start)
            await asyncio.to_thread(seed)  # no persistence: the dataflow would rewrite the hashes
            await asyncio.sleep(0.3)  # past retry_after_s
            out["after_open"] = _echo(await p.predict(request("open", instance, outputs=["echo"])))
            out["after_closed"] = _echo(await p.predict(request("closed", instance, outputs=["echo"])))
            out["fetches"] = sample(registry, "rtml_feature_fetch_seconds_count", model="open")
        return out

    out = asyncio.run(scenario())
    client.close()
    assert out["before"] == [[2.0, 3.0]]
    assert out["down"] == ([[0.0, 0.0]], [-1.0])
    assert out["down_again"] == [[0.0, 0.0]]
    assert out["down_s"] < 1.0  # a refused connection fails fast; defaults, not an error
    assert out["errors_open"] == 2
    assert isinstance(out["closed_error"], FeatureStoreUnavailable)
    assert out["closed_error"].code == grpc.StatusCode.UNAVAILABLE
    assert "fail-closed" in str(out["closed_error"]) and own_redis.url in str(out["closed_error"])
    assert out["errors_closed"] == 1
    assert out["after_open"] == [[2.0, 3.0]] and out["after_closed"] == [[2.0, 3.0]]
    assert out["fetches"] == 4  # the fetch histogram times failed fetches too


def test_bound_model_without_a_feature_store_behaves_as_an_outage(repo: Path) -> None:
    write_model(repo, "ranker", 1, echo_model(1), {"features": {"inputs": {"features": ["user.clicks_1h"]}}})
    response = _predict(repo, None, [{"entity_ids": {"user_id": "u1"}}])
    assert _echo(response) == [[0.0]]


def test_models_without_bindings_never_touch_redis(repo: Path) -> None:
    write_model(repo, "ranker", 1, mlp_model(seed=0))

    async def scenario() -> Any:
        # An unreachable store: any fetch would fail (and count an error).
        async with pipeline_for(repo, redis_url="redis://127.0.0.1:1/0") as p:
            response = await p.predict(request("ranker", [{"tensors": {"input": [0.0] * 64}, "entity_ids": UI}]))
            return response, sample(p.manager.registry, "rtml_feature_fetch_errors_total", model="ranker")

    response, errors = asyncio.run(scenario())
    assert len(response.results) == 1 and list(response.feature_age_ms) == [] and errors == 0


def test_slow_redis_times_out_to_defaults_and_leaves_no_stale_replies(repo: Path, own_redis: EmbeddedRedis) -> None:
    """A Redis that stops answering (CLIENT PAUSE) costs at most the fetch timeout; the timed-out
    connection is dropped, so its late replies can never be read as another request's features."""
    write_model(repo, "ranker", 1, echo_model(1), {"features": {"inputs": {"features": ["user.clicks_1h"]}}})
    client = redis.Redis.from_url(own_redis.url)
    write_features(client, "user", "u1", {"clicks_1h": 1}, int(time.time() * 1000))
    write_features(client, "user", "u2", {"clicks_1h": 2}, int(time.time() * 1000))
    fetcher = FeatureFetcher(own_redis.url, views=views(), timeout_s=0.1, retry_after_s=0.05)

    async def scenario() -> tuple[list[float], float, float]:
        async with pipeline_for(repo, fetcher=fetcher) as p:
            first = await p.predict(request("ranker", [{"entity_ids": {"user_id": "u1"}}]))
            await asyncio.to_thread(client.execute_command, "CLIENT", "PAUSE", 400)
            started = time.perf_counter()
            paused = await p.predict(request("ranker", [{"entity_ids": {"user_id": "u1"}}]))
            waited = time.perf_counter() - started
            await asyncio.sleep(0.5)  # the pause ends; u1's late reply is sent to a closed socket
            after = await p.predict(request("ranker", [{"entity_ids": {"user_id": "u2"}}]))
            errors = sample(p.manager.registry, "rtml_feature_fetch_errors_total", model="ranker")
            return [r.results[0].scores[0] for r in (first, paused, after)], waited, errors

    scores, waited, errors = asyncio.run(scenario())
    client.close()
    assert scores == [1.0, 0.0, 2.0]
    assert waited < 0.35 and errors == 1


def test_a_key_of_the_wrong_type_defaults_alone(repo: Path, redis_url: str, redis_client: redis.Redis) -> None:
    """WRONGTYPE for one key (not a hash) fails only that lookup; the replies after it stay aligned."""
    write_model(repo, "ranker", 1, echo_model(1), {"features": {"inputs": {"features": ["user.clicks_1h"]}}})
    now = int(time.time() * 1000)
    write_features(redis_client, "user", "u1", {"clicks_1h": 1}, now)
    redis_client.set("rtml:user:bad", "not a hash")
    write_features(redis_client, "user", "u3", {"clicks_1h": 3}, now)
    response = _predict(repo, redis_url, [{"entity_ids": {"user_id": u}} for u in ("u1", "bad", "u3")])
    assert [r.scores[0] for r in response.results] == [1.0, 0.0, 3.0]
    assert response.feature_age_ms[1] == -1.0
