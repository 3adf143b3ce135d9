"""Dynamic-arm Thompson bandit: spec, Redis state, and rewards through BanditRewarder."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from engine.bandits.dynamic import DynamicThompson
from engine.bandits.rewards import BanditRewarder
from engine.bandits.spec import BanditSpecError, parse_bandit_specs
from engine.learning.records import JoinedExample, PredictionRecord


def test_spec_accepts_dynamic_thompson_only() -> None:
    spec = parse_bandit_specs("bandits: [{name: rec-explore, policy: thompson, dynamic_arms: true}]")[0]
    assert spec.dynamic_arms and spec.arms == []
    with pytest.raises(BanditSpecError, match="thompson only"):
        parse_bandit_specs("bandits: [{name: b, policy: ucb1, dynamic_arms: true}]")
    with pytest.raises(BanditSpecError, match="takes no arms list"):
        parse_bandit_specs("bandits: [{name: b, policy: thompson, dynamic_arms: true, arms: [a]}]")


def _decision(arm: str, request_id: str = "r1") -> PredictionRecord:
    return PredictionRecord(request_id, "rec-explore", "dynamic", "bandit", 1_000, None,
                            entity_ids={"user_id": "u1", "item_id": arm}, arm=arm)


def test_rewards_through_the_rewarder_move_the_posteriors(redis_client: redis.Redis) -> None:
    specs = parse_bandit_specs(
        "bandits: [{name: rec-explore, policy: thompson, dynamic_arms: true, params: {prior_alpha: 2}}]")
    rewarder = BanditRewarder(redis_client, specs, prefix="t")
    counts = rewarder.apply([JoinedExample(_decision("i1"), 1.0, "implicit", 2_000),
                             JoinedExample(_decision("i1"), 0.0, "window_closed", 3_000),
                             JoinedExample(_decision("i2"), 1.0, "implicit", 2_000),
                             JoinedExample(_decision("i3"), 7.0, "label", 2_000)])
    assert counts == {"rec-explore": 3, "invalid": 1}
    bandit = specs[0].redis_bandit(redis_client, prefix="t", rng=0)
    assert isinstance(bandit, DynamicThompson)
    alpha, beta = bandit.posteriors(["i1", "i2", "new"])
    assert alpha.tolist() == [3.0, 3.0, 2.0] and beta.tolist() == [2.0, 1.0, 1.0]
    # A clearly better arm wins almost every draw.
    for _ in range(20):
        bandit.update("good", 1.0)
        bandit.update("bad", 0.0)
    picks = [bandit.choose_n(["bad", "good"], 1)[0] for _ in range(50)]
    assert picks.count("good") >= 45
    with pytest.raises(ValueError, match="different bandit"):
        DynamicThompson(redis_client, "rec-explore", prefix="t", prior_alpha=5.0)


def test_choose_among_is_reproducible() -> None:
    from engine.bandits.dynamic import choose_among

    a, b = np.ones(5), np.ones(5)
    arms = list("abcde")
    assert choose_among(arms, a, b, 3, np.random.default_rng(1)) == choose_among(arms, a, b, 3, np.random.default_rng(1))
    assert len(set(choose_among(arms, a, b, 5, np.random.default_rng(2)))) == 5
    assert choose_among(arms, a, b, 0, np.random.default_rng(2)) == []
