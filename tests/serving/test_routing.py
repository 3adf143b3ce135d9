"""Routing: canary and A/B split ratios and stickiness by a stable hash, primary selection,
fallback, and shadow scoring off the response path (logged to real Kafka, never failing the
primary answer)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis

from serving.config import ModelConfig, Routing
from serving.routing import BUCKETS, Router, stable_bucket
from tests.serving.models import two_input_model, write_broken_model, write_model
from tests.serving.test_predict import (
    consume,
    echo_model,
    expected_score,
    pipeline_for,
    request,
    sample,
    write_features,
)

ENTITIES = [f"user-{i}" for i in range(10_000)]
REPO_ROOT = Path(__file__).resolve().parents[2]


def _routing(data: dict) -> Routing:
    routing = ModelConfig.model_validate({"routing": data}).routing
    assert routing is not None
    return routing


# -- split ratios and stability (pure) ---------------------------------------------------------


@pytest.mark.parametrize("percent", [1, 10, 25, 50])
def test_canary_share_of_10k_entities_within_2_points_and_stable(percent: float) -> None:
    router = Router("ranker", _routing({"canary": {"version": 2, "percent": percent}}))
    routes = [router.choose(e) for e in ENTITIES]
    share = 100 * sum(r.variant == "canary" for r in routes) / len(ENTITIES)
    assert abs(share - percent) <= 2, share
    assert {r.version for r in routes if r.variant == "canary"} == {"2"}
    assert {r.version for r in routes if r.variant == "primary"} == {None}  # None: the primary version
    again = Router("ranker", _routing({"canary": {"version": 2, "percent": percent}}))
    assert [again.choose(e) for e in ENTITIES] == routes  # same entity, same answer


def test_canary_grows_monotonically() -> None:
    """Raising the percentage only moves entities into the canary, never out of it."""
    small = Router("m", _routing({"canary": {"version": 2, "percent": 5}}))
    large = Router("m", _routing({"canary": {"version": 2, "percent": 20}}))
    in_small = {e for e in ENTITIES if small.choose(e).variant == "canary"}
    in_large = {e for e in ENTITIES if large.choose(e).variant == "canary"}
    assert in_small < in_large


def test_ab_weights_within_2_points_and_sticky() -> None:
    router = Router("ranker", _routing({"ab": {"variants": {
        "control": {"version": 1, "weight": 50}, "blue": {"version": 2, "weight": 30}, "green": {"version": 3, "weight": 20},
    }, "sticky_key": "user_id"}}))
    routes = {e: router.choose(e) for e in ENTITIES}
    counts = Counter(r.variant for r in routes.values())
    for variant, weight in (("control", 50), ("blue", 30), ("green", 20)):
        assert abs(100 * counts[variant] / len(ENTITIES) - weight) <= 2, counts
    assert {r.version for r in routes.values() if r.variant == "blue"} == {"2"}
    assert all(router.choose(e) == routes[e] for e in ENTITIES[:1000])


def test_hash_is_stable_across_processes_not_pythons_hash() -> None:
    """Another interpreter with a different PYTHONHASHSEED puts every entity in the same bucket."""
    code = (
        "from serving.routing import stable_bucket; "
        "print(','.join(str(stable_bucket('ranker/canary', f'user-{i}')) for i in range(200)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO_ROOT)},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ",".join(str(stable_bucket("ranker/canary", f"user-{i}")) for i in range(200))
    assert all(0 <= stable_bucket("x", e) < BUCKETS for e in ENTITIES[:100])


def test_splits_are_independent_per_model() -> None:
    a = Router("model-a", _routing({"canary": {"version": 2, "percent": 50}}))
    b = Router("model-b", _routing({"canary": {"version": 2, "percent": 50}}))
    same = sum(a.choose(e).variant == b.choose(e).variant for e in ENTITIES)
    assert 4_000 < same < 6_000  # uncorrelated, not identical


def test_primary_is_the_highest_ready_version_not_reserved() -> None:
    router = Router("m", _routing({"canary": {"version": 3, "percent": 5}, "shadow": {"version": 4}}))
    assert router.pick_primary(["1", "2", "3", "4"]) == "2"
    assert router.pick_primary(["3"]) == "3"  # only the canary is up: it answers
    assert Router("m", _routing({"primary": 1, "canary": {"version": 2, "percent": 5}})).pick_primary(["1", "2"]) == "1"


def test_routing_config_errors() -> None:
    for bad, fragment in [
        ({"canary": {"version": 2, "percent": 5}, "ab": {"variants": {"a": {"version": 1, "weight": 1}}}},
         "cannot both be set"),
        ({"canary": {"version": 2, "percent": 101}}, "less than or equal to 100"),
        ({"ab": {"variants": {"shadow": {"version": 1, "weight": 1}}}}, "reserved"),
        ({"ab": {"variants": {"a": {"version": 1, "weight": 0}}}}, "greater than 0"),
        ({}, "at least one of"),
    ]:
        with pytest.raises(ValueError, match=fragment):
            ModelConfig.model_validate({"routing": bad})


# -- through the pipeline ----------------------------------------------------------------------


def _versions(repo: Path, config: dict, versions: tuple[int, ...] = (1, 2)) -> None:
    for v in versions:
        write_model(repo, "ranker", v, echo_model(1, offset=1000.0 * v), config)


def test_canary_through_predict(repo: Path) -> None:
    config = {"routing": {"canary": {"version": 2, "percent": 30}}}
    _versions(repo, config)
    router = Router("ranker", _routing(config["routing"]))
    users = [f"u{i}" for i in range(300)]

    async def scenario() -> tuple[list[Any], Any, float, float]:
        async with pipeline_for(repo) as p:
            responses = [
                await p.predict(request("ranker", [{"entity_ids": {"user_id": u}, "tensors": {"features": [1.0]}}]))
                for u in users
            ]
            pinned = await p.predict(request("ranker", [{"entity_ids": {"user_id": users[0]},
                                                         "tensors": {"features": [1.0]}}], version="2"))
            registry = p.manager.registry
            return (responses, pinned, sample(registry, "rtml_routing_requests_total", model="ranker",
                                              variant="canary", version="2"),
                    sample(registry, "rtml_routing_requests_total", model="ranker", variant="primary", version="1"))

    responses, pinned, canary_count, primary_count = asyncio.run(scenario())
    for user, response in zip(users, responses):
        route = router.choose(user)
        assert response.variant == route.variant
        assert response.model_version == ("2" if route.variant == "canary" else "1")
        assert response.results[0].scores[0] == expected_score([1.0], 1000.0 * int(response.model_version))
    assert canary_count + primary_count == len(users) and 50 < canary_count < 130
    assert pinned.model_version == "2" and pinned.variant == ""  # a pinned version is not routed


def test_ab_variant_is_returned_and_sticky_across_instances(repo: Path) -> None:
    config = {"routing": {"ab": {"variants": {"control": {"version": 1, "weight": 1},
                                              "treatment": {"version": 2, "weight": 1}}}}}
    _versions(repo, config)
    router = Router("ranker", _routing(config["routing"]))

    async def scenario() -> list[Any]:
        async with pipeline_for(repo) as p:
            out = []
            for u in ("alice", "bob", "carol", "dave", "erin", "frank"):
                # A ranking request: one user, several items; the user decides the arm.
                instances = [{"entity_ids": {"user_id": u, "item_id": f"i{k}"}, "tensors": {"features": [k]}}
                             for k in range(3)]
                first = await p.predict(request("ranker", instances))
                second = await p.predict(request("ranker", instances[:1]))
                out.append((u, first, second))
            return out

    for user, first, second in asyncio.run(scenario()):
        route = router.choose(user)
        assert first.variant == second.variant == route.variant
        assert first.model_version == second.model_version == route.version


def test_unavailable_canary_falls_back_to_primary(repo: Path) -> None:
    config = {"routing": {"canary": {"version": 2, "percent": 100}}}
    write_model(repo, "ranker", 1, echo_model(1), config)
    write_broken_model(repo, "ranker", 2)

    async def scenario() -> tuple[Any, float]:
        async with pipeline_for(repo) as p:
            response = await p.predict(request("ranker", [{"entity_ids": {"user_id": "u1"}, "tensors": {"features": [2.0]}}]))
            return response, sample(p.manager.registry, "rtml_routing_fallbacks_total", model="ranker", variant="canary")

    response, fallbacks = asyncio.run(scenario())
    assert (response.model_version, response.variant) == ("1", "primary")
    assert fallbacks == 1


# -- shadow ------------------------------------------------------------------------------------


def test_shadow_is_scored_and_logged_off_the_response_path(
    repo: Path, redis_url: str, redis_client: redis.Redis, kafka_bootstrap: str, unique_topic
) -> None:
    topic = unique_topic("predictions")
    config = {
        "features": {"inputs": {"features": ["user.clicks_1h"]}},
        "routing": {"shadow": {"version": 2}},
    }
    _versions(repo, config)
    write_features(redis_client, "user", "u1", {"clicks_1h": 5}, int(time.time() * 1000))

    async def scenario() -> tuple[Any, float]:
        async with pipeline_for(repo, redis_url=redis_url, kafka_bootstrap=kafka_bootstrap, topic=topic) as p:
            response = await p.predict(request("ranker", [{"entity_ids": {"user_id": "u1"}}], request_id="s-1"))
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not sample(
                p.manager.registry, "rtml_shadow_requests_total", model="ranker", version="2", result="ok"
            ):
                await asyncio.sleep(0.01)
            return response, sample(p.manager.registry, "rtml_shadow_requests_total", model="ranker", version="2",
                                    result="ok")

    response, shadow_ok = asyncio.run(scenario())
    # Primary = highest READY version that is not the shadow: 1. The response is the primary's.
    assert (response.model_version, response.variant) == ("1", "primary")
    assert response.results[0].scores[0] == expected_score([5.0], 1000.0)
    assert shadow_ok == 1
    records = {r["variant"]: r for _, r in consume(kafka_bootstrap, topic, 2)}
    assert set(records) == {"primary", "shadow"}
    assert records["shadow"]["version"] == "2" and records["primary"]["version"] == "1"
    assert records["shadow"]["request_id"] == records["primary"]["request_id"] == "s-1"
    assert records["shadow"]["features"] == records["primary"]["features"] == {"user.clicks_1h": 5.0}
    assert records["shadow"]["score"] == expected_score([5.0], 2000.0)
    assert records["primary"]["score"] == expected_score([5.0], 1000.0)


@pytest.mark.parametrize("broken", ["unloadable", "wrong_inputs"])
def test_broken_shadow_never_affects_the_primary_answer(repo: Path, broken: str) -> None:
    config = {"routing": {"primary": 1, "shadow": {"version": 2}}}
    write_model(repo, "ranker", 1, echo_model(1), config)
    if broken == "unloadable":
        write_broken_model(repo, "ranker", 2)  # FAILED: get() raises
    else:
        write_model(repo, "ranker", 2, two_input_model(), config)  # loads; refuses the inputs

    async def scenario() -> tuple[list[Any], float]:
        async with pipeline_for(repo) as p:
            responses = [
                await p.predict(request("ranker", [{"entity_ids": {"user_id": f"u{i}"}, "tensors": {"features": [1.0]}}]))
                for i in range(5)
            ]
            await asyncio.sleep(0)  # let the shadow tasks run
            deadline = time.monotonic() + 5
            registry = p.manager.registry
            while time.monotonic() < deadline and sample(registry, "rtml_shadow_requests_total", model="ranker",
                                                         version="2", result="error") < 5:
                await asyncio.sleep(0.01)
            return responses, sample(registry, "rtml_shadow_requests_total", model="ranker", version="2", result="error")

    responses, errors = asyncio.run(scenario())
    assert [(r.model_version, r.results[0].scores[0]) for r in responses] == [("1", 1.0)] * 5
    assert errors == 5


def test_shadow_backlog_is_bounded(repo: Path) -> None:
    config = {"routing": {"primary": 1, "shadow": {"version": 2}}}
    _versions(repo, config)

    async def scenario() -> tuple[float, float]:
        async with pipeline_for(repo, shadow_max_pending=2) as p:
            # Concurrent requests: the shadow tasks of the first two are still pending when
            # the others finish, so those are skipped rather than queued without bound.
            await asyncio.gather(*(
                p.predict(request("ranker", [{"tensors": {"features": [1.0]}}])) for _ in range(10)
            ))
            skipped = sample(p.manager.registry, "rtml_shadow_requests_total", model="ranker", version="2",
                             result="skipped")
            await asyncio.sleep(0.2)
            ok = sample(p.manager.registry, "rtml_shadow_requests_total", model="ranker", version="2", result="ok")
        return skipped, ok

    skipped, ok = asyncio.run(scenario())
    assert skipped >= 1 and skipped + ok == 10


def test_plain_kserve_infer_gets_the_primary_not_the_canary(repo: Path) -> None:
    """KServe clients without a version must not land on a version reserved for the canary."""
    import numpy as np
    import tritonclient.grpc as tc

    from serving.manager import ModelManager
    from serving.server import BackgroundServer, ServerOptions

    _versions(repo, {"routing": {"canary": {"version": 2, "percent": 30}}})
    options = ServerOptions(grpc_port=0, metrics_port=None)
    with BackgroundServer(lambda: ModelManager(repo, poll_interval_s=0, providers=["CPUExecutionProvider"]),
                          options) as server:
        client = tc.InferenceServerClient(server.grpc_address)
        x = tc.InferInput("features", [1, 1], "FP32")
        x.set_data_from_numpy(np.ones((1, 1), np.float32))
        result = client.infer("ranker", [x])
        assert result.get_response().model_version == "1"
        assert client.infer("ranker", [x], model_version="2").get_response().model_version == "2"
