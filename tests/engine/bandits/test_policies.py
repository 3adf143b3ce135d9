"""Bandit policies: regret on a fixed Bernoulli simulation, LinUCB vs MABWiser, state round trips."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.bandits.policies import (
    EpsilonGreedy,
    LinUCB,
    Policy,
    ThompsonSampling,
    UCB1,
    make_policy,
    policy_from_state,
)

N_ARMS = 20
# Fixed 20-arm Bernoulli environment: means 0.0, 0.0316, ..., 0.6 (best gap 0.0316).
MEANS = np.linspace(0.0, 0.6, N_ARMS)


def pseudo_regret(policy, rounds: int, seed: int) -> float:
    """Expected (pseudo-)regret sum(mu* - mu_chosen); rewards drawn from a seeded stream."""
    u = np.random.default_rng(seed).random(rounds)
    best, chosen_means = MEANS.max(), np.empty(rounds)
    for t in range(rounds):
        arm = policy.choose()
        mu = MEANS[arm]
        chosen_means[t] = mu
        policy.update(arm, 1.0 if u[t] < mu else 0.0)
    return float(best * rounds - chosen_means.sum())


def test_thompson_regret_100k_rounds() -> None:
    regret = pseudo_regret(ThompsonSampling(range(N_ARMS), rng=np.random.default_rng(0)), 100_000, seed=100)
    assert regret <= 390, regret  # issue 4 target; measured 265 on this seed


def test_epsilon_greedy_regret_100k_rounds() -> None:
    regret = pseudo_regret(EpsilonGreedy(range(N_ARMS), rng=np.random.default_rng(0), epsilon=0.01), 100_000, 100)
    assert 300 <= regret <= 1500, regret  # FIELD-NOTES order 554-811; measured 812 on this seed


def test_ucb1_regret_100k_rounds() -> None:
    regret = pseudo_regret(UCB1(range(N_ARMS)), 100_000, seed=100)
    assert 1000 <= regret <= 4000, regret  # FIELD-NOTES ~2.7k; measured ~1.65k on this seed


def test_regret_order_thompson_best_ucb1_worst() -> None:
    ts = pseudo_regret(ThompsonSampling(range(N_ARMS), rng=np.random.default_rng(3)), 20_000, seed=7)
    eg = pseudo_regret(EpsilonGreedy(range(N_ARMS), rng=np.random.default_rng(3), epsilon=0.01), 20_000, seed=7)
    ucb = pseudo_regret(UCB1(range(N_ARMS)), 20_000, seed=7)
    assert ts < ucb and eg < ucb, (ts, eg, ucb)


def _contextual_data(seed: int, n: int, d: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=(k, d))
    contexts = rng.normal(size=(n, d))
    decisions = rng.integers(k, size=n)
    rewards = np.einsum("nd,nd->n", contexts, theta[decisions]) + rng.normal(scale=0.5, size=n)
    return contexts, decisions, rewards


def test_linucb_equals_mabwiser_decision_for_decision() -> None:
    from mabwiser.mab import MAB, LearningPolicy

    d, k = 5, 8
    arms = [f"arm{i}" for i in range(k)]
    contexts, decisions, rewards = _contextual_data(seed=11, n=3_000, d=d, k=k)
    arm_names = [arms[i] for i in decisions]

    ref = MAB(arms=arms, learning_policy=LearningPolicy.LinUCB(alpha=1.0), seed=123)
    ref.fit(arm_names, rewards, contexts)
    ours = LinUCB(arms, n_features=d, alpha=1.0)
    for arm, reward, x in zip(arm_names, rewards, contexts):
        ours.update(arm, reward, x)

    test_contexts = np.random.default_rng(12).normal(size=(2_000, d))
    expected = ref.predict(test_contexts)
    got = [ours.choose(x) for x in test_contexts]
    assert got == expected
    ref_scores = ref.predict_expectations(test_contexts[:50])
    for x, scores in zip(test_contexts[:50], ref_scores):
        np.testing.assert_allclose(ours.scores(x), [scores[a] for a in arms], rtol=1e-9, atol=1e-12)


def test_linucb_online_loop_matches_mabwiser_partial_fit() -> None:
    """Choose -> reward -> update, one round at a time, in lockstep with MABWiser."""
    from mabwiser.mab import MAB, LearningPolicy

    d, k = 4, 5
    arms = list(range(k))
    rng = np.random.default_rng(5)
    theta = rng.normal(size=(k, d))
    warm_x, warm_a, warm_r = _contextual_data(seed=6, n=50, d=d, k=k)
    ref = MAB(arms=arms, learning_policy=LearningPolicy.LinUCB(alpha=1.0), seed=1)
    ref.fit(warm_a.tolist(), warm_r, warm_x)
    ours = LinUCB(arms, n_features=d, alpha=1.0)
    for a, r, x in zip(warm_a.tolist(), warm_r, warm_x):
        ours.update(a, r, x)
    for _ in range(300):
        x = rng.normal(size=d)
        arm = ours.choose(x)
        assert arm == ref.predict(x[None, :])
        reward = float(x @ theta[arm] + rng.normal(scale=0.5))
        ours.update(arm, reward, x)
        ref.partial_fit([arm], [reward], x[None, :])


def test_linucb_ties_go_to_first_arm_like_mabwiser() -> None:
    lin = LinUCB(["c", "a", "b"], n_features=3)
    assert lin.choose([1.0, 2.0, 3.0]) == "c"


@pytest.mark.parametrize(
    "kind,params",
    [("thompson", {"prior_alpha": 2.0}), ("ucb1", {}), ("epsilon_greedy", {"epsilon": 0.2}), ("linucb", {"n_features": 3, "alpha": 0.5})],
)
def test_state_round_trip_gives_identical_decisions(kind: str, params: dict) -> None:
    rng = np.random.default_rng(9)
    policy = make_policy(kind, ["a", "b", "c", "d"], rng=np.random.default_rng(1), **params)
    assert isinstance(policy, Policy)
    for _ in range(300):
        x = rng.normal(size=3)
        arm = policy.choose(x)
        policy.update(arm, float(rng.random() < 0.3 + 0.1 * policy.arm_index(arm)), x)
    state = json.loads(json.dumps(policy.state()))  # JSON-able
    clone = policy_from_state(state, rng=np.random.default_rng(2))
    assert clone.state() == policy.state()
    policy.rng = np.random.default_rng(2)
    contexts = rng.normal(size=(50, 3))
    assert [clone.choose(x) for x in contexts] == [policy.choose(x) for x in contexts]


def test_validation() -> None:
    with pytest.raises(ValueError):
        ThompsonSampling(["a", "a"])
    with pytest.raises(KeyError):
        UCB1(["a"]).update("zzz", 1.0)
    with pytest.raises(ValueError):
        ThompsonSampling(["a"]).update("a", 2.0)
    with pytest.raises(ValueError):
        LinUCB(["a"], n_features=2).choose([1.0, 2.0, 3.0])
    with pytest.raises(ValueError):
        policy_from_state({**UCB1(["a"]).state(), "kind": "nope"})
