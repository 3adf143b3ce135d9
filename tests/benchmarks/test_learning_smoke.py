"""Smoke test of the learning benchmark: two model kinds on a few thousand examples, every path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import learning


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_learning_benchmark_runs_every_path_for_each_kind(tmp_path: Path) -> None:
    assert learning.main(["--examples", "3000", "--kinds", "logistic_regression", "hoeffding_adaptive_tree",
                          "--out", str(tmp_path), "--no-readme"]) == 0
    result = json.loads((tmp_path / "learning.json").read_text())
    assert set(result["models"]) == {"logistic_regression", "hoeffding_adaptive_tree"}
    for kind, m in result["models"].items():
        assert m["examples"] == 3000, kind
        assert m["floor_per_s"] > 0 and m["learner_per_s"] > 0 and m["dataflow_per_s"] > 0 and m["job_per_s"] > 0
        assert m["ratio_to_floor"] == pytest.approx(m["job_per_s"] / m["floor_per_s"])
        assert m["ratio_to_floor_1_process"] == pytest.approx(m["dataflow_per_s"] / m["floor_per_s"])
        assert m["dataflow"]["learned"] == 3000 and m["learner_report"]["examples"] == 3000
        # The 2-process job learnt every example, in its second process.
        assert (m["job"]["learned"], m["job"]["learner_process"], m["job"]["processes"]) == (3000, 1, 2)
    table = learning.table(result)
    assert "HoeffdingAdaptiveTreeClassifier" in table and "target ≥ 0.8" in table
    assert "start-up included" in table
