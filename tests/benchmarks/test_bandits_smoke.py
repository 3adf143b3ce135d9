"""Smoke test of the bandits benchmark: a tiny run of every phase, result shape and table."""

from __future__ import annotations

import json

import pytest

from benchmarks import bandits
from benchmarks.report import write_result


def test_simulation_is_deterministic_and_matches_mabwiser_where_the_draws_agree() -> None:
    for kind in ("thompson", "ucb1"):
        # Same seeds: Thompson draws Beta(alpha_i, beta_i) in arm order from default_rng(seed) in
        # both libraries, and UCB1 is deterministic, so the two make the same decisions.
        ours = bandits.simulate(bandits.Ours(kind, 3), 1_500, seed=3)
        assert ours == bandits.simulate(bandits.Ours(kind, 3), 1_500, seed=3)
        assert ours == pytest.approx(bandits.simulate(bandits.Reference(kind, 3), 1_500, seed=3))
    assert bandits.simulate(bandits.Ours("epsilon_greedy", 0), 20, seed=0) == pytest.approx(
        bandits.MEANS.max() * 20 - bandits.MEANS.sum()  # the first round plays every arm once
    )


@pytest.mark.timeout(120)
def test_quick_run_end_to_end(redis_url: str, tmp_path) -> None:
    plan = bandits.Plan(rounds=1_000, seeds=(0, 1), decisions=1_000, reference_decisions=200, blocks=1, redis_ops=200)
    result = bandits.run_benchmark(plan, redis_url=redis_url)
    assert result["benchmark"] == "bandits" and result["machine"]["cores"]
    for kind in bandits.POLICIES:
        for library in ("rtml", "mabwiser"):
            regret = result["regret"][kind][library]
            assert len(regret["per_seed"]) == 2 and regret["min"] <= regret["mean"] <= regret["max"]
        assert result["regret"][kind]["rtml"]["per_seed"] == result["regret"][kind]["mabwiser"]["per_seed"] \
            or kind == "epsilon_greedy"  # exploration draws differ between the libraries
    for kind in (*bandits.POLICIES, "linucb"):
        entry = result["throughput"][kind]
        assert entry["rtml"]["decisions_per_s"] > 0 and entry["mabwiser"]["rounds_per_s"] > 0
        assert entry["ratio_to_floor"] == pytest.approx(
            entry["rtml"]["decisions_per_s"] / entry["mabwiser"]["decisions_per_s"], rel=1e-2
        )
    r = result["redis"]
    for key in ("decisions_from_snapshot", "decisions_refresh_every_time", "rewards_one_by_one", "rewards_batched_1000"):
        assert r[key]["per_s"] > 0 and r[key]["client_cpu_us_per_op"] > 0
    assert set(r["reload_ms"]) == {"thompson", "linucb (d=10)"}
    assert result["targets"]["thompson_max_regret"]["met"] is False  # only a 100k-round run can meet it
    assert result["targets"]["min_decisions_per_s_per_core"]["target"] == 20_000
    path = write_result("bandits", result, tmp_path)
    assert json.loads(path.read_text())["plan"]["rounds"] == 1_000
    table = bandits.markdown_table(result)
    assert "| thompson |" in table and "ratio to floor" in table and "BanditRewarder" in table


def test_cli_quick_without_redis(tmp_path, capsys) -> None:
    assert bandits.main(["--quick", "--rounds", "300", "--no-redis", "--no-readme", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "bandits.json").read_text())
    assert result["plan"]["rounds"] == 300 and result["redis"] is None
    assert "| ucb1 |" in capsys.readouterr().out
    assert bandits.main(["--from-json", str(tmp_path / "bandits.json"), "--no-readme"]) == 0
