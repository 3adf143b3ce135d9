"""RedisBandit on the real embedded Redis: atomic shared state, concurrency, round trips."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import redis

from engine.bandits.policies import LinUCB, ThompsonSampling
from engine.bandits.store import RedisBandit

THREADS, PER_THREAD = 8, 500


def _run_threads(target) -> None:
    errors: list[BaseException] = []

    def wrapped(t: int) -> None:
        try:
            target(t)
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=wrapped, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors


def test_concurrent_thompson_rewards_lose_nothing(redis_client: redis.Redis, redis_url: str) -> None:
    arms = ["a", "b", "c"]
    RedisBandit(redis_client, "ts", "thompson", arms)
    plans = [np.random.default_rng(t) for t in range(THREADS)]
    plan = [(rng.integers(3, size=PER_THREAD), rng.random(PER_THREAD) < 0.4) for rng in plans]

    def worker(t: int) -> None:
        client = redis.Redis.from_url(redis_url)  # one client per "replica"
        try:
            bandit = RedisBandit(client, "ts", "thompson", arms, rng=t)
            for arm_i, hit in zip(*plan[t]):
                bandit.update(arms[arm_i], float(hit))
        finally:
            client.close()

    _run_threads(worker)
    all_arms = np.concatenate([p[0] for p in plan])
    all_hits = np.concatenate([p[1] for p in plan])
    state = RedisBandit(redis_client, "ts", "thompson", arms).state()
    assert state["version"] == THREADS * PER_THREAD
    for i in range(3):
        hits = int(all_hits[all_arms == i].sum())
        plays = int((all_arms == i).sum())
        assert state["counters"]["alpha"][i] == 1.0 + hits
        assert state["counters"]["beta"][i] == 1.0 + plays - hits


def test_concurrent_ucb1_choose_and_update(redis_client: redis.Redis, redis_url: str) -> None:
    arms = list(range(5))
    RedisBandit(redis_client, "ucb", "ucb1", arms)

    def worker(t: int) -> None:
        bandit = RedisBandit(redis.Redis.from_url(redis_url), "ucb", "ucb1", arms, refresh_s=0.01)
        rng = np.random.default_rng(t)
        for _ in range(PER_THREAD):
            arm = bandit.choose()
            bandit.update(arm, float(rng.random() < 0.1 * (arm + 1)))
        bandit.client.close()

    _run_threads(worker)
    state = RedisBandit(redis_client, "ucb", "ucb1", arms).state()
    assert sum(state["counters"]["n"]) == THREADS * PER_THREAD
    assert state["version"] == THREADS * PER_THREAD


def test_concurrent_linucb_rewards_lose_nothing(redis_client: redis.Redis, redis_url: str) -> None:
    arms, d = ["x", "y"], 4
    RedisBandit(redis_client, "lin", "linucb", arms, n_features=d)
    data = []
    for t in range(THREADS):
        rng = np.random.default_rng(100 + t)
        data.append((rng.integers(2, size=PER_THREAD), rng.normal(size=PER_THREAD), rng.normal(size=(PER_THREAD, d))))

    def worker(t: int) -> None:
        client = redis.Redis.from_url(redis_url)
        bandit = RedisBandit(client, "lin", "linucb", arms, n_features=d)
        for a, r, x in zip(*data[t]):
            bandit.update(arms[a], r, x)
        client.close()

    _run_threads(worker)
    expected = LinUCB(arms, n_features=d)
    for a_s, r_s, x_s in data:
        for a, r, x in zip(a_s, r_s, x_s):
            expected.update(arms[a], r, x)
    state = RedisBandit(redis_client, "lin", "linucb", arms, n_features=d).state()
    assert state["version"] == THREADS * PER_THREAD
    np.testing.assert_allclose(state["A"], expected.A, rtol=1e-12)
    np.testing.assert_allclose(state["b"], expected.b, rtol=1e-12, atol=1e-12)


def test_linucb_lua_update_is_bitwise_numpy(redis_client: redis.Redis) -> None:
    arms, d = [0, 1, 2], 3
    bandit = RedisBandit(redis_client, "lin1", "linucb", arms, n_features=d, alpha=1.0)
    local = LinUCB(arms, n_features=d, alpha=1.0)
    rng = np.random.default_rng(3)
    for _ in range(200):
        x = rng.normal(size=d)
        arm = bandit.choose(x)
        assert arm == local.choose(x)
        r = float(rng.normal())
        bandit.update(arm, r, x)
        local.update(arm, r, x)
    stored = bandit.state()
    assert np.array_equal(np.asarray(stored["A"]), local.A)
    assert np.array_equal(np.asarray(stored["b"]), local.b)


@pytest.mark.parametrize("kind,params", [("thompson", {}), ("epsilon_greedy", {"epsilon": 0.1}), ("linucb", {"n_features": 2})])
def test_state_round_trip(redis_client: redis.Redis, kind: str, params: dict) -> None:
    arms = ["a", "b", "c"]
    bandit = RedisBandit(redis_client, f"rt-{kind}", kind, arms, rng=1, **params)
    rng = np.random.default_rng(4)
    for _ in range(100):
        x = rng.normal(size=2)
        bandit.update(bandit.choose(x), float(rng.random() < 0.5), x)
    snapshot = bandit.state()
    assert snapshot["version"] == 100
    assert bandit.load().state() == {k: v for k, v in snapshot.items() if k != "version"}

    other = RedisBandit(redis_client, f"rt2-{kind}", kind, arms, **params)
    other.restore(snapshot)
    restored = other.state()
    assert {k: v for k, v in restored.items() if k != "version"} == {k: v for k, v in snapshot.items() if k != "version"}


def test_existing_hash_with_other_definition_is_rejected(redis_client: redis.Redis) -> None:
    RedisBandit(redis_client, "b", "thompson", ["a", "b"])
    with pytest.raises(ValueError, match="different bandit"):
        RedisBandit(redis_client, "b", "thompson", ["a", "b", "c"])
    with pytest.raises(ValueError, match="different bandit"):
        RedisBandit(redis_client, "b", "ucb1", ["a", "b"])
    assert redis_client.exists("rtml:bandit:b")
    assert isinstance(RedisBandit(redis_client, "b", "thompson", ["a", "b"]).load(), ThompsonSampling)


def test_prefix_and_key(redis_client: redis.Redis) -> None:
    bandit = RedisBandit(redis_client, "home", "ucb1", ["a"], prefix="svc")
    assert bandit.key == "svc:bandit:home"
    assert redis_client.type("svc:bandit:home") == b"hash"
    bandit.delete()
    with pytest.raises(KeyError):
        bandit.choose()
