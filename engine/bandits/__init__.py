"""Multi-armed bandits: policies (:mod:`.policies`) and shared Redis state (:mod:`.store`)."""

from engine.bandits.policies import (
    EpsilonGreedy,
    LinUCB,
    Policy,
    ThompsonSampling,
    UCB1,
    make_policy,
    policy_from_state,
)
from engine.bandits.store import RedisBandit

__all__ = [
    "EpsilonGreedy",
    "LinUCB",
    "Policy",
    "RedisBandit",
    "ThompsonSampling",
    "UCB1",
    "make_policy",
    "policy_from_state",
]
