"""Smoke test of the FAISS benchmark: the quick run end to end, result shape and table."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import faiss_index


def test_quick_run_writes_results_with_recall_and_ratio(tmp_path: Path) -> None:
    assert faiss_index.main(["--quick", "--out", str(tmp_path), "--no-readme"]) == 0
    result = json.loads((tmp_path / "faiss_index.json").read_text())
    rows = result["rows"]
    assert rows
    for row in rows:
        assert 0.0 <= row["recall_at_10"] <= 1.0 and row["qps"] > 0
