"""BanditRewarder on the real embedded Redis: joined examples become rewards, in one round trip."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from engine.bandits.policies import LinUCB
from engine.bandits.rewards import BanditRewarder
from engine.bandits.spec import parse_bandit_specs
from engine.bandits.store import RedisBandit
from engine.learning.records import JoinedExample, PredictionRecord, prediction_from_dict
from serving.bandits import BanditService

SPECS = parse_bandit_specs("""
bandits:
  - {name: ts, policy: thompson, arms: [a, b, c]}
  - {name: ucb, policy: ucb1, arms: [a, b]}
  - {name: lin, policy: linucb, arms: [x, y], context_dim: 3}
""")


def example(model: str, arm: str | None, label: float, context: list[float] | None = None) -> JoinedExample:
    prediction = PredictionRecord(
        request_id="r", model=model, version="0", variant="bandit", event_time_ms=1, score=None, arm=arm,
        context=context,
    )
    return JoinedExample(prediction, label, "implicit" if label else "window_closed", 2)


def exec_calls(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_exec", {}).get("calls", 0))


def test_counts_state_and_one_round_trip(redis_client: redis.Redis) -> None:
    rewarder = BanditRewarder(redis_client, SPECS)
    batch = [
        example("ts", "a", 1.0), example("ts", "a", 0.0), example("ts", "c", 1.0),
        example("ucb", "b", 0.25),
        example("ranker", None, 1.0),  # an ordinary prediction: no arm
        example("gone", "a", 1.0),  # a bandit that is no longer in the specs
        example("ts", "zz", 1.0),  # unknown arm
        example("ts", "b", 2.0),  # Thompson takes rewards in [0, 1]
        example("ucb", "a", float("nan")),
        example("lin", "x", 1.0),  # LinUCB without its context
        example("lin", "x", 1.0, [1.0, 2.0]),  # wrong length
        example("lin", "y", 0.5, [1.0, 0.0, -1.0]),
    ]
    before = exec_calls(redis_client)
    counts = rewarder.apply(iter(batch))  # any iterable, read once
    assert exec_calls(redis_client) - before == 1  # one MULTI/EXEC for the whole batch
    assert counts == {"ts": 3, "ucb": 1, "lin": 1, "no_arm": 1, "unknown_bandit": 1, "invalid": 5}

    ts = RedisBandit(redis_client, "ts", "thompson", ["a", "b", "c"]).state()
    assert ts["counters"] == {"alpha": [2.0, 1.0, 2.0], "beta": [2.0, 1.0, 1.0]} and ts["version"] == 3
    ucb = RedisBandit(redis_client, "ucb", "ucb1", ["a", "b"]).state()
    assert ucb["counters"] == {"n": [0.0, 1.0], "s": [0.0, 0.25]} and ucb["version"] == 1
    lin = SPECS[2].redis_bandit(redis_client).state()
    expected = LinUCB(["x", "y"], n_features=3)
    expected.update("y", 0.5, [1.0, 0.0, -1.0])
    assert np.array_equal(lin["A"], expected.A) and np.array_equal(lin["b"], expected.b) and lin["version"] == 1

    assert rewarder.apply([]) == {} and rewarder.apply([example("x", None, 0.0)]) == {"no_arm": 1}


def test_linucb_batch_equals_local_updates(redis_client: redis.Redis) -> None:
    rewarder = BanditRewarder(redis_client, SPECS)
    rng = np.random.default_rng(2)
    local = LinUCB(["x", "y"], n_features=3)
    batch = []
    for _ in range(300):
        x, arm, r = rng.normal(size=3).tolist(), ["x", "y"][int(rng.integers(2))], float(rng.normal())
        batch.append(example("lin", arm, r, x))
        local.update(arm, r, x)
    assert rewarder.apply(batch) == {"lin": 300}
    stored = SPECS[2].redis_bandit(redis_client).state()
    assert np.array_equal(stored["A"], local.A) and np.array_equal(stored["b"], local.b)  # bitwise
    assert stored["version"] == 300


def test_deleted_hash_is_counted_as_error_not_raised(redis_client: redis.Redis) -> None:
    rewarder = BanditRewarder(redis_client, SPECS)
    redis_client.delete("rtml:bandit:lin")
    counts = rewarder.apply([example("lin", "x", 1.0, [0.0, 1.0, 0.0]), example("ts", "b", 1.0)])
    assert counts == {"error": 1, "ts": 1}  # the rest of the batch still applies


def test_two_instances_share_state(redis_client: redis.Redis, redis_url: str) -> None:
    other_client = redis.Redis.from_url(redis_url)  # another replica's connection
    try:
        a = RedisBandit(redis_client, "ts", "thompson", ["a", "b", "c"], rng=1)
        b = RedisBandit(other_client, "ts", "thompson", ["a", "b", "c"], rng=2)
        a.update("c", 1.0)
        b.load()
        assert b.policy.counters["alpha"].tolist() == [1.0, 1.0, 2.0] and b.version == 1
        BanditRewarder(other_client, SPECS).apply([example("ts", "a", 0.0)])
        a.load()
        assert a.policy.counters["beta"].tolist() == [2.0, 1.0, 1.0] and a.version == 2
    finally:
        other_client.close()


class ListLogger:
    """Stands in for PredictionLogger: keeps what would be published."""

    def __init__(self) -> None:
        self.records: list[tuple[dict, str | None]] = []

    def log(self, record: dict, key: str | None) -> bool:
        self.records.append((record, key))
        return True


@pytest.mark.parametrize("policy", ["thompson", "ucb1", "epsilon_greedy"])
def test_rewards_through_the_store_make_the_better_arm_win(redis_client: redis.Redis, redis_url: str, policy: str) -> None:
    """Serve -> log -> join -> reward, batch after batch: regret stays low, the best arm wins.

    Decisions come from BanditService (the Choose path), rewards go back through the
    decision records it logs, parsed the way the learning side parses them.
    """
    spec = parse_bandit_specs({"bandits": [{"name": "sim", "policy": policy, "arms": [f"arm{i}" for i in range(5)],
                                            "refresh_s": 0}]})
    means = np.array([0.05, 0.1, 0.15, 0.2, 0.6])
    logger = ListLogger()
    service = BanditService(spec, redis_url, logger=logger, seed=0)
    rewarder = BanditRewarder(redis_client, spec)
    env = np.random.default_rng(100)
    rounds, batch, regret, picks = 3_000, 50, 0.0, []
    try:
        for start in range(0, rounds, batch):
            joined = []
            for _ in range(batch):
                decision = service.choose_sync("sim", entity_ids={"user_id": "u1"})
                record = prediction_from_dict(logger.records.pop()[0])
                i = int(record.arm[3:])
                picks.append(i)
                regret += means.max() - means[i]
                joined.append(JoinedExample(record, float(env.random() < means[i]), "implicit", 1))
                assert decision.arms == [record.arm]
            assert rewarder.apply(joined) == {"sim": batch}
        assert service.choose_sync("sim").version == rounds
    finally:
        service.close()
    late = np.array(picks[-1_000:])
    assert (late == 4).mean() > 0.8, np.bincount(late, minlength=5)
    # 3k rounds, feedback in batches of 50: measured Thompson 34, epsilon-greedy (0.01) 104, UCB1 115.
    assert regret < 300, regret
