"""Prometheus parsing, counter deltas and histogram_quantile against hand-computed values."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from engine.rollouts.scrape import VersionCounters, histogram_quantile, parse_metrics
from serving.metrics import ServingMetrics

INF = float("inf")


@pytest.mark.parametrize("q,buckets,expected", [
    # 100 observations: 50 <= 10 ms, 40 in (10, 50] ms, 10 in (50, 100] ms.
    (0.5, [(0.01, 50), (0.05, 90), (0.1, 100), (INF, 100)], 0.01),  # rank 50: the top of bucket 1
    (0.25, [(0.01, 50), (0.05, 90), (0.1, 100), (INF, 100)], 0.005),  # rank 25 of 50 in [0, 10 ms]
    (0.7, [(0.01, 50), (0.05, 90), (0.1, 100), (INF, 100)], 0.03),  # 0.01 + 0.04 * (70 - 50) / 40
    (0.99, [(0.01, 50), (0.05, 90), (0.1, 100), (INF, 100)], 0.095),  # 0.05 + 0.05 * 9 / 10
    (0.99, [(0.01, 50), (0.05, 90), (INF, 100)], 0.05),  # rank in +Inf: the highest finite bound
    (0.5, [(INF, 10), (0.1, 10), (0.2, 10)], 0.05),  # unsorted input; all in the first bucket
    (0.5, [(0.1, 6), (0.2, 4), (INF, 10)], 0.1 * 5 / 6),  # non-monotonic counts are raised first
    (0.5, [(-1.0, 10), (0.0, 10), (INF, 10)], -1.0),  # a first bucket at or below 0 answers its bound
])
def test_histogram_quantile_by_hand(q: float, buckets: list, expected: float) -> None:
    assert histogram_quantile(q, buckets) == pytest.approx(expected, rel=1e-12)


def test_histogram_quantile_edge_cases() -> None:
    assert math.isnan(histogram_quantile(0.5, [(0.1, 0), (INF, 0)]))  # no observations
    assert math.isnan(histogram_quantile(0.5, [(0.1, 3), (0.2, 4)]))  # no +Inf bucket
    assert math.isnan(histogram_quantile(0.5, [(INF, 4)]))  # fewer than two buckets
    assert histogram_quantile(-0.1, [(0.1, 1), (INF, 1)]) == -INF
    assert histogram_quantile(1.1, [(0.1, 1), (INF, 1)]) == INF


def test_parse_serving_metrics_and_take_deltas() -> None:
    registry = CollectorRegistry()
    metrics = ServingMetrics(registry)
    v1, v2, other = metrics.for_version("m", "1"), metrics.for_version("m", "2"), metrics.for_version("x", "1")
    for _ in range(3):
        v1.observe_success(0.002)
    v2.observe_success(0.2)
    v2.observe_failure("unavailable")
    v2.observe_failure("cancelled")
    other.observe_success(0.001)
    first = parse_metrics(generate_latest(registry).decode(), "m")
    assert set(first) == {"1", "2"}
    assert (first["1"].success, first["1"].requests) == (3.0, 3.0)
    assert first["2"].failures == {"unavailable": 1.0, "cancelled": 1.0} and first["2"].failed(["cancelled"]) == 1.0
    assert first["1"].buckets[0.0025] == 3.0 and first["1"].buckets[INF] == 3.0

    for _ in range(4):
        v2.observe_success(0.03)
    v2.observe_failure("unavailable")
    second = parse_metrics(generate_latest(registry).decode(), "m")
    window = second["2"].minus(first["2"])
    assert (window.success, window.failures) == (4.0, {"unavailable": 1.0, "cancelled": 0.0})
    assert window.quantile(0.5) == pytest.approx(0.025 + 0.025 * (2 / 4))  # 4 in (25, 50] ms: rank 2 of 4
    # A restarted server starts from zero: the window is everything since then.
    restarted = VersionCounters(2.0, {"unavailable": 0.0}, {0.01: 2.0, INF: 2.0})
    assert restarted.minus(second["2"]).success == 2.0
    assert VersionCounters().minus(None).requests == 0.0
