"""Multi-armed bandits: policies (:mod:`.policies`), shared Redis state (:mod:`.store`),
specs (:mod:`.spec`) and rewards from joined examples (:mod:`.rewards`)."""

from engine.bandits.policies import (
    EpsilonGreedy,
    LinUCB,
    Policy,
    ThompsonSampling,
    UCB1,
    make_policy,
    policy_from_state,
)
from engine.bandits.rewards import BanditRewarder
from engine.bandits.spec import BanditSpec, BanditSpecError, load_bandit_specs, parse_bandit_specs
from engine.bandits.store import RedisBandit

__all__ = [
    "BanditRewarder",
    "BanditSpec",
    "BanditSpecError",
    "EpsilonGreedy",
    "LinUCB",
    "Policy",
    "RedisBandit",
    "ThompsonSampling",
    "UCB1",
    "load_bandit_specs",
    "make_policy",
    "parse_bandit_specs",
    "policy_from_state",
]
