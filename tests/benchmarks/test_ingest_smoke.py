"""Smoke test of the ingest benchmark: every phase on ~20k events, result shape and README table."""

from __future__ import annotations

import json

import pytest

from benchmarks import ingest
from benchmarks.report import machine_description, replace_between_markers, update_readme_table, write_result


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    buckets = {0.1: 50.0, 0.2: 100.0, float("inf"): 100.0}
    assert ingest.histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert ingest.histogram_quantile(0.75, buckets) == pytest.approx(0.15)
    assert ingest.histogram_quantile(0.5, {0.1: 0.0, float("inf"): 0.0}) is None
    assert ingest.histogram_quantile(0.99, {0.1: 0.0, float("inf"): 10.0}) == 0.1  # +Inf: highest finite bound


def test_generated_events_are_valid_and_ordered() -> None:
    ev = ingest.generate_events(2000, users=50, items=10, seed=3)
    assert len(ev) == 2000 and sum(ev.type_counts.values()) == 2000
    first = json.loads(ev.messages[0][1])
    assert set(first) == {"user_id", "item_id", "event_type", "event_time", "context"}
    assert ev.messages[0][0] == first["user_id"].encode()
    assert ev.first_ms <= first["event_time"] <= ev.last_ms
    assert all(t <= ev.last_ms for t in ev.final_times.values())


def test_readme_markers(tmp_path) -> None:
    readme = tmp_path / "README.md"
    assert not update_readme_table("ingest", "| x |", readme)  # missing file: printed, not written
    readme.write_text("a\n<!-- bench:ingest:start -->\nold\n<!-- bench:ingest:end -->\nb\n")
    assert update_readme_table("ingest", "| new |", readme)
    assert readme.read_text() == "a\n<!-- bench:ingest:start -->\n| new |\n<!-- bench:ingest:end -->\nb\n"
    assert replace_between_markers("no markers here", "ingest", "| x |") is None
    m = machine_description()
    assert m["cores"] and m["python"]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ingest_benchmark_runs_end_to_end_on_20k_events(stack, tmp_path) -> None:
    result = ingest.run_benchmark(
        20_000, processes=(1, 2), recovery=False, freshness_s=2.0, stack=stack, workdir=tmp_path / "work", repeats=2
    )
    assert result["benchmark"] == "ingest" and result["events"] == 20_000 and result["partitions"] == 3
    assert result["floor"]["events_per_s"] > 0
    assert set(result["pipeline"]) == {"1_process", "2_processes"}
    # The framework ceiling read every event, in one and in two processes.
    assert set(result["passthrough"]) == {"1_process", "2_processes"}
    for run in result["passthrough"].values():
        assert run["events_per_s"] > 0 and run["ratio_to_floor"] > 0 and run["startup_seconds"] >= 0
    assert len(result["floor"]["runs_events_per_s"]) == 2
    for run in result["pipeline"].values():
        assert len(run["runs_events_per_s"]) == len(run["ratio_to_floor_runs"]) == 2
        assert run["events_per_s"] == min(run["runs_events_per_s"])  # the lower middle of two
        assert run["events_in"] == 20_000
        assert run["events_aggregated"] + run["events_late"] + run["events_invalid"] == 20_000
        assert run["events_per_s"] > 0 and run["ratio_to_floor"] > 0 and run["seconds"] > 0
    fresh = result["freshness"]
    assert fresh["p50_ms"] is not None and fresh["p99_ms"] >= fresh["p50_ms"]
    assert fresh["probe"]["samples"] > 0 and fresh["method"]
    assert fresh["broker_floor"]["samples"] > 0
    assert result["targets"] == {"ratio_2_processes": 0.5, "freshness_p99_ms": 100}
    assert isinstance(result["notes"], list) and result["machine"]["cores"]
    path = write_result("ingest", result, tmp_path)
    assert json.loads(path.read_text())["pipeline"]["2_processes"]["processes"] == 2
    table = ingest.markdown_table(result)
    assert "2 processes" in table and "p99" in table and "framework ceiling" in table
