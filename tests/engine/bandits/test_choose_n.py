"""choose_n: n distinct arms by repeated choice with exclusions, same draws as choose()."""

from __future__ import annotations

import numpy as np
import pytest

from engine.bandits.policies import make_policy

KINDS = [("thompson", {}), ("ucb1", {}), ("epsilon_greedy", {"epsilon": 0.3}), ("linucb", {"n_features": 3})]
ARMS = ["a", "b", "c", "d", "e"]


def _trained(kind: str, params: dict, seed: int = 1):
    policy = make_policy(kind, ARMS, rng=np.random.default_rng(seed), **params)
    rng = np.random.default_rng(7)
    for _ in range(200):
        x = rng.normal(size=3)
        arm = policy.choose(x)
        policy.update(arm, float(rng.random() < 0.15 * (policy.arm_index(arm) + 1)), x)
    return policy


@pytest.mark.parametrize("kind,params", KINDS)
def test_choose_n_1_is_choose_with_the_same_draws(kind: str, params: dict) -> None:
    a, b = _trained(kind, params), _trained(kind, params)
    contexts = np.random.default_rng(3).normal(size=(100, 3))
    assert [a.choose_n(1, context=x) for x in contexts] == [[b.choose(x)] for x in contexts]


@pytest.mark.parametrize("kind,params", KINDS)
def test_choose_n_distinct_excluded_and_deterministic(kind: str, params: dict) -> None:
    a, b = _trained(kind, params, seed=5), _trained(kind, params, seed=5)
    x = [0.5, -1.0, 2.0]
    for _ in range(50):
        got = a.choose_n(3, exclude=["b"], context=x)
        assert len(set(got)) == 3 and "b" not in got
        assert got == b.choose_n(3, exclude=["b"], context=x)  # same rng, same answer
    assert sorted(a.choose_n(5, context=x)) == ARMS
    assert a.choose_n(1, exclude=["a", "b", "c", "d"], context=x) == ["e"]


@pytest.mark.parametrize("kind,params", KINDS)
def test_choose_n_errors(kind: str, params: dict) -> None:
    policy = _trained(kind, params)
    x = [0.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="cannot choose 6 distinct arms: the bandit has 5 arms"):
        policy.choose_n(6, context=x)
    with pytest.raises(ValueError, match="4 after excluding 1"):
        policy.choose_n(5, exclude=["a"], context=x)
    with pytest.raises(ValueError):
        policy.choose_n(0, context=x)
    with pytest.raises(KeyError, match="unknown arm 'zz'"):
        policy.choose_n(1, exclude=["zz"], context=x)


def test_first_slot_is_the_greedy_choice_and_later_slots_follow_the_ranking() -> None:
    # epsilon = 0: pure exploitation, so the slots come out in order of the empirical means.
    policy = make_policy("epsilon_greedy", ARMS, rng=0, epsilon=0.0)
    for arm, mean in zip(ARMS, [0.1, 0.5, 0.3, 0.9, 0.2]):
        policy.update(arm, mean)
    assert policy.choose_n(5) == ["d", "b", "c", "e", "a"]
    assert policy.choose_n(2, exclude=["d"]) == ["b", "c"]


def test_ucb1_tries_untried_allowed_arms_first_even_when_excluded_ones_are_untried() -> None:
    policy = make_policy("ucb1", ARMS)
    policy.update("a", 1.0)
    assert policy.choose_n(2, exclude=["b"]) == ["c", "d"]
    for arm in ["c", "d", "e"]:
        policy.update(arm, 0.0)
    # Only excluded "b" is untried: the bound is computed for the allowed arms, no warnings.
    with np.errstate(all="raise"):
        assert policy.choose_n(1, exclude=["b"]) == ["a"]
