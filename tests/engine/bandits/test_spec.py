"""Bandit specs: loading, strict validation with clear messages, building the policies."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.bandits.policies import EpsilonGreedy, LinUCB, ThompsonSampling, UCB1, make_policy
from engine.bandits.spec import BanditSpec, BanditSpecError, load_bandit_specs, parse_bandit_specs

SPECS = """
bandits:
  - name: home-banner
    policy: thompson
    arms: [hero, sale, new-in]
    params: {prior_alpha: 2.0, prior_beta: 3}
  - name: explore
    policy: ucb1
    arms: [a, b]
    refresh_s: 0
  - name: eg
    policy: epsilon_greedy
    arms: [x]
    params: {epsilon: 0.05}
  - name: slot.v2
    policy: linucb
    arms: [a, b, c]
    context_dim: 4
    params: {alpha: 0.5, l2_lambda: 2}
"""


def test_load_every_policy(tmp_path: Path) -> None:
    path = tmp_path / "bandits.yaml"
    path.write_text(SPECS)
    specs = load_bandit_specs(path)
    assert [s.name for s in specs] == ["home-banner", "explore", "eg", "slot.v2"]
    banner, explore, eg, slot = specs
    assert banner.arms == ["hero", "sale", "new-in"] and banner.refresh_s == 1.0 and not banner.contextual
    assert banner.policy_params() == {"prior_alpha": 2.0, "prior_beta": 3.0}
    assert explore.refresh_s == 0 and explore.policy_params() == {}
    assert slot.contextual and slot.policy_params() == {"alpha": 0.5, "l2_lambda": 2.0, "n_features": 4}
    built = [make_policy(s.policy, s.arms, **s.policy_params()) for s in specs]
    assert [type(p) for p in built] == [ThompsonSampling, UCB1, EpsilonGreedy, LinUCB]
    assert built[0].prior_beta == 3.0 and built[3].n_features == 4 and built[3].l2_lambda == 2.0
    assert parse_bandit_specs(SPECS) == specs
    with pytest.raises(Exception):  # frozen: a spec is shared by server and rewarder
        banner.refresh_s = 5  # type: ignore[misc]


def test_empty_file_and_other_sources(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_bandit_specs(empty) == []
    assert parse_bandit_specs("bandits: []") == []
    one = {"name": "b", "policy": "ucb1", "arms": ["a"]}
    assert parse_bandit_specs([one]) == parse_bandit_specs({"bandits": [one]}) == [BanditSpec(**one)]


@pytest.mark.parametrize(
    "bandit,message",
    [
        ({"policy": "ucb1", "arms": ["a"]}, "bandits.0.name: Field required"),
        ({"name": "b c", "policy": "ucb1", "arms": ["a"]}, "bandits.0.name: String should match pattern"),
        ({"name": "b:c", "policy": "ucb1", "arms": ["a"]}, "bandits.0.name: String should match pattern"),
        ({"name": "unknown_bandit", "policy": "ucb1", "arms": ["a"]}, "'unknown_bandit' is reserved"),
        ({"name": "b", "policy": "softmax", "arms": ["a"]}, "bandits.0.policy: Input should be 'thompson'"),
        ({"name": "b", "policy": "ucb1", "arms": []}, "bandits.0.arms: List should have at least 1 item"),
        ({"name": "b", "policy": "ucb1", "arms": [1, 2]}, "bandits.0.arms.0: Input should be a valid string"),
        ({"name": "b", "policy": "ucb1", "arms": ["a", ""]}, "arms must be non-empty strings"),
        ({"name": "b", "policy": "ucb1", "arms": ["a", "b", "a"]}, "bandits.0.arms: duplicate arms: ['a']"),
        ({"name": "b", "policy": "ucb1", "arms": ["a"], "param": {}}, "bandits.0.param: Extra inputs are not permitted"),
        ({"name": "b", "policy": "ucb1", "arms": ["a"], "params": {"epsilon": 0.1}},
         "unknown params ['epsilon'] for policy ucb1; allowed: ['c']"),
        ({"name": "b", "policy": "linucb", "arms": ["a"], "params": {"n_features": 3}, "context_dim": 3},
         "unknown params ['n_features'] for policy linucb; allowed: ['alpha', 'l2_lambda']"),
        ({"name": "b", "policy": "epsilon_greedy", "arms": ["a"], "params": {"epsilon": 1.5}},
         "params do not fit policy epsilon_greedy: epsilon must be in [0, 1]"),
        ({"name": "b", "policy": "thompson", "arms": ["a"], "params": {"prior_alpha": 0}},
         "Beta prior parameters must be positive"),
        ({"name": "b", "policy": "thompson", "arms": ["a"], "params": {"prior_alpha": "x"}},
         "bandits.0.params.prior_alpha: Input should be a valid number"),
        ({"name": "b", "policy": "linucb", "arms": ["a"]}, "policy linucb needs context_dim"),
        ({"name": "b", "policy": "linucb", "arms": ["a"], "context_dim": 0},
         "bandits.0.context_dim: Input should be greater than or equal to 1"),
        ({"name": "b", "policy": "thompson", "arms": ["a"], "context_dim": 3},
         "context_dim is for linucb only; policy thompson takes no context"),
        ({"name": "b", "policy": "ucb1", "arms": ["a"], "refresh_s": -1},
         "bandits.0.refresh_s: Input should be greater than or equal to 0"),
    ],
)
def test_invalid_specs_say_what_is_wrong(bandit: dict, message: str) -> None:
    with pytest.raises(BanditSpecError) as exc:
        parse_bandit_specs([bandit])
    assert message in str(exc.value)
    assert "errors.pydantic.dev" not in str(exc.value)  # one line, no documentation links
    assert isinstance(exc.value, ValueError)


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(BanditSpecError, match="duplicate bandit names: \\['x'\\]"):
        parse_bandit_specs("bandits: [{name: x, policy: ucb1, arms: [a]}, {name: x, policy: thompson, arms: [b]}]")
    with pytest.raises(BanditSpecError, match="expected a mapping with a 'bandits' list, got list"):
        parse_bandit_specs("[1, 2]")
    with pytest.raises(BanditSpecError, match="bandit: Extra inputs are not permitted"):
        parse_bandit_specs("bandit: []")
    with pytest.raises(BanditSpecError, match="not valid YAML"):
        parse_bandit_specs("bandits: [")
    missing = tmp_path / "nope.yaml"
    with pytest.raises(BanditSpecError, match=f"{missing}: cannot read bandit specs"):
        load_bandit_specs(missing)
    bad = tmp_path / "bad.yaml"
    bad.write_text("bandits:\n  - {name: b, policy: ucb1, arms: [a]}\n  - {name: c, policy: linucb, arms: [a]}\n")
    with pytest.raises(BanditSpecError) as exc:
        load_bandit_specs(bad)
    assert str(exc.value) == f"{bad}: invalid bandit specs: bandits.1: policy linucb needs context_dim " \
                             "(the length of its context vectors)"
