"""Smoke test of the stage timer: every stage runs on a few batches and is reported."""

from __future__ import annotations

import pytest

from benchmarks import ingest_stages


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_every_stage_is_timed(capsys: pytest.CaptureFixture[str]) -> None:
    assert ingest_stages.main(["--events", "20000", "--flush-every", "2"]) == 0
    out = capsys.readouterr().out
    for stage in ("parse_floor", "validate", "route", "fold", "running", "redis", "pipeline"):
        assert f"  {stage}" in out
