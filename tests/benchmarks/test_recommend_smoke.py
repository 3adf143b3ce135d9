"""Smoke test of the Recommend benchmark: a tiny end-to-end run, result shape and table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import recommend


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_tiny_run_measures_floor_faiss_and_served(tmp_path: Path) -> None:
    argv = ["--users", "120", "--items", "400", "--train", "3000", "--candidates", "50", "--k", "10", "--pool", "32",
            "--concurrency", "4", "--duration", "1.5", "--warmup", "0.5", "--processes", "1",
            "--floor-seconds", "0.5", "--no-readme", "--out", str(tmp_path)]
    assert recommend.main(argv) == 0
    result = json.loads((tmp_path / "recommend.json").read_text())
    assert result["floor"]["throughput_rps_1_thread"] > 0
    fa = result["floor"]["faiss"]
    assert 0.0 <= fa["recall_at_10"] <= 1.0 and fa["qps"] > 0 and fa["flat_qps"] > 0
    [served] = result["served"]
    assert served["concurrency"] == 4 and served["throughput_rps"] > 0
    assert "recall@10" in recommend.markdown_table(result)
