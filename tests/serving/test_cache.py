"""The Predict TTL cache: LRU/TTL mechanics, hit/miss counters, what the key covers, and that
a hit skips both the feature fetch and inference."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import redis

from serving.cache import TTLCache, request_digest
from tests.serving.models import write_model
from tests.serving.test_predict import echo_model, pipeline_for, request, sample, write_features


def test_ttl_cache_expires_and_evicts_least_recently_used() -> None:
    now = [100.0]
    cache: TTLCache[str] = TTLCache(max_entries=3, ttl_ms=500, clock=lambda: now[0])
    for key in "abc":
        cache.put(key, key.upper())
    assert cache.get("a") == "A"  # a is now the most recently used
    cache.put("d", "D")  # evicts b
    assert (cache.get("b"), cache.get("c"), cache.get("d"), len(cache)) == (None, "C", "D", 3)
    now[0] += 0.499
    assert cache.get("a") == "A"
    now[0] += 0.002  # 501 ms after a was stored: a hit does not extend the TTL
    assert cache.get("a") is None and len(cache) == 2
    cache.put("c", "C2")
    assert cache.get("c") == "C2"


def test_request_digest_is_unambiguous() -> None:
    assert request_digest([b"ab", b"c"]) != request_digest([b"a", b"bc"])
    assert request_digest([b"x"]) == request_digest([b"x"])


def _instances(user: str, x: float) -> list[dict]:
    return [{"entity_ids": {"user_id": user}, "tensors": {"features": [x]}}]


def test_hits_misses_and_what_the_key_covers(repo: Path) -> None:
    write_model(repo, "ranker", 1, echo_model(1), {"cache_ttl_ms": 300})
    write_model(repo, "plain", 1, echo_model(1))

    async def scenario() -> dict[str, Any]:
        async with pipeline_for(repo) as p:
            registry = p.manager.registry
            first = await p.predict(request("ranker", _instances("u1", 1.0), request_id="a"))
            second = await p.predict(request("ranker", _instances("u1", 1.0), request_id="b"))
            await p.predict(request("ranker", _instances("u1", 2.0)))  # other inputs: miss
            await p.predict(request("ranker", _instances("u2", 1.0)))  # other entity: miss
            await p.predict(request("ranker", _instances("u1", 1.0), outputs=["echo"]))  # other outputs: miss
            executions = p.manager.get("ranker").batcher.stats.executions
            await asyncio.sleep(0.35)
            await p.predict(request("ranker", _instances("u1", 1.0)))  # expired: miss
            await p.predict(request("plain", _instances("u1", 1.0)))
            await p.predict(request("plain", _instances("u1", 1.0)))
            return {
                "first": first, "second": second, "executions": executions,
                "hits": sample(registry, "rtml_cache_requests_total", model="ranker", result="hit"),
                "misses": sample(registry, "rtml_cache_requests_total", model="ranker", result="miss"),
                "plain": sample(registry, "rtml_cache_requests_total", model="plain", result="miss")
                + sample(registry, "rtml_cache_requests_total", model="plain", result="hit"),
            }

    out = asyncio.run(scenario())
    assert (out["hits"], out["misses"]) == (1, 5)
    assert out["executions"] == 4  # the hit ran no inference
    assert out["plain"] == 0  # cache_ttl_ms 0: no cache, no counts
    first, second = out["first"], out["second"]
    assert (first.request_id, second.request_id) == ("a", "b")  # each answer keeps its own id
    assert list(second.results[0].scores) == list(first.results[0].scores)
    assert second.model_version == first.model_version == "1"


def test_a_hit_skips_the_feature_fetch_until_the_ttl_passes(
    repo: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    write_model(repo, "ranker", 1, echo_model(1), {
        "features": {"inputs": {"features": ["user.clicks_1h"]}}, "cache_ttl_ms": 400,
    })
    write_features(redis_client, "user", "u1", {"clicks_1h": 1}, int(time.time() * 1000))
    instance = [{"entity_ids": {"user_id": "u1"}}]

    async def scenario() -> tuple[list[float], float]:
        async with pipeline_for(repo, redis_url=redis_url) as p:
            scores = [(await p.predict(request("ranker", instance))).results[0].scores[0]]
            write_features(redis_client, "user", "u1", {"clicks_1h": 2}, int(time.time() * 1000))
            response = await p.predict(request("ranker", instance))
            scores.append(response.results[0].scores[0])
            ages = list(response.feature_age_ms)
            await asyncio.sleep(0.45)
            scores.append((await p.predict(request("ranker", instance))).results[0].scores[0])
            fetches = sample(p.manager.registry, "rtml_feature_fetch_seconds_count", model="ranker")
            assert len(ages) == 1 and ages[0] >= 0  # a hit reports the cached answer's ages
            return scores, fetches

    scores, fetches = asyncio.run(scenario())
    assert scores == [1.0, 1.0, 2.0]  # within the TTL the cached answer stands, then it refreshes
    assert fetches == 2
