"""Serving's per-version counters from its Prometheus ``/metrics``, their deltas, and quantiles.

Reads, per version of one model, the cumulative series :mod:`serving.metrics` exports:
``rtml_inference_request_success_total``, ``rtml_inference_request_failure_total{reason}``
and the ``rtml_inference_request_duration_seconds`` histogram. Several URLs (one per
``rtml serve`` worker) are summed. The guard compares two scrapes: the difference of the
counters is what happened in between; a counter that went down (a restarted server) counts
from zero, as Prometheus's ``rate()`` does.

:func:`histogram_quantile` is Prometheus's: the bucket holding the rank ``q * count`` is found
and the value is interpolated linearly inside it (from 0 for the first bucket); a rank in the
``+Inf`` bucket answers the highest finite bound.

>>> buckets = [(0.01, 50.0), (0.05, 90.0), (0.1, 100.0), (float("inf"), 100.0)]
>>> histogram_quantile(0.5, buckets), round(histogram_quantile(0.95, buckets), 4)
(0.01, 0.075)
>>> text = '''
... rtml_inference_request_success_total{model="m",version="2"} 7.0
... rtml_inference_request_failure_total{model="m",version="2",reason="unavailable"} 3.0
... rtml_inference_request_duration_seconds_bucket{model="m",version="2",le="0.01"} 7.0
... rtml_inference_request_duration_seconds_bucket{model="m",version="2",le="+Inf"} 7.0
... '''
>>> parse_metrics(text, "m")["2"].requests
10.0
"""

from __future__ import annotations

import math
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from prometheus_client.parser import text_string_to_metric_families

SUCCESS = "rtml_inference_request_success_total"
FAILURE = "rtml_inference_request_failure_total"
DURATION_BUCKET = "rtml_inference_request_duration_seconds_bucket"


@dataclass(slots=True)
class VersionCounters:
    """Cumulative counters of one model version (or their difference between two scrapes)."""

    success: float = 0.0
    failures: dict[str, float] = field(default_factory=dict)  # by reason
    buckets: dict[float, float] = field(default_factory=dict)  # upper bound -> cumulative count

    @property
    def requests(self) -> float:
        return self.success + sum(self.failures.values())

    def failed(self, ignore: Iterable[str] = ()) -> float:
        skip = set(ignore)
        return sum(v for reason, v in self.failures.items() if reason not in skip)

    def add(self, other: "VersionCounters") -> None:
        self.success += other.success
        for reason, v in other.failures.items():
            self.failures[reason] = self.failures.get(reason, 0.0) + v
        for le, v in other.buckets.items():
            self.buckets[le] = self.buckets.get(le, 0.0) + v

    def minus(self, before: "VersionCounters | None") -> "VersionCounters":
        """What happened since ``before``; everything since zero when a counter went down (a reset)."""
        if before is None:
            return VersionCounters(self.success, dict(self.failures), dict(self.buckets))
        pairs = [(self.success, before.success)]
        pairs += [(v, before.failures.get(r, 0.0)) for r, v in self.failures.items()]
        pairs += [(v, before.buckets.get(le, 0.0)) for le, v in self.buckets.items()]
        reset = any(now < then for now, then in pairs) or any(r not in self.failures for r in before.failures)
        if reset:
            return self.minus(None)
        return VersionCounters(
            self.success - before.success,
            {r: v - before.failures.get(r, 0.0) for r, v in self.failures.items()},
            {le: v - before.buckets.get(le, 0.0) for le, v in self.buckets.items()},
        )

    def quantile(self, q: float) -> float:
        """``histogram_quantile(q)`` of the request durations (seconds); NaN without observations."""
        return histogram_quantile(q, sorted(self.buckets.items()))


@dataclass(slots=True)
class Scrape:
    """One scrape of a model's versions, at ``time`` (``time.monotonic()`` seconds)."""

    time: float
    versions: dict[str, VersionCounters]

    def get(self, version: str) -> VersionCounters:
        return self.versions.get(version) or VersionCounters()


def parse_metrics(text: str, model: str) -> dict[str, VersionCounters]:
    """The request counters of every version of ``model`` in a Prometheus text exposition."""
    out: dict[str, VersionCounters] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name not in (SUCCESS, FAILURE, DURATION_BUCKET) or s.labels.get("model") != model:
                continue
            counters = out.setdefault(s.labels.get("version", ""), VersionCounters())
            if s.name == SUCCESS:
                counters.success += s.value
            elif s.name == FAILURE:
                reason = s.labels.get("reason", "")
                counters.failures[reason] = counters.failures.get(reason, 0.0) + s.value
            else:
                le = float(s.labels["le"])
                counters.buckets[le] = counters.buckets.get(le, 0.0) + s.value
    return out


def scrape(urls: Sequence[str], model: str, timeout_s: float = 10.0) -> Scrape:
    """Fetch every URL and sum the counters of ``model``'s versions. Raises ``OSError`` when one fails."""
    versions: dict[str, VersionCounters] = {}
    for url in urls:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            text = response.read().decode("utf-8")
        for version, counters in parse_metrics(text, model).items():
            versions.setdefault(version, VersionCounters()).add(counters)
    return Scrape(time.monotonic(), versions)


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    """Prometheus's ``histogram_quantile`` over ``(upper bound, cumulative count)`` pairs.

    Needs a ``+Inf`` bucket and at least two buckets (NaN otherwise, and for no
    observations). Counts that go down between buckets (a scrape racing an observation) are
    raised to the previous count, as Prometheus does.
    """
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    ordered = sorted(buckets)
    if len(ordered) < 2 or not math.isinf(ordered[-1][0]):
        return math.nan
    bounds = [b for b, _ in ordered]
    counts: list[float] = []
    for _, c in ordered:
        counts.append(max(c, counts[-1]) if counts else c)
    total = counts[-1]
    if total == 0:
        return math.nan
    rank = q * total
    b = next((i for i in range(len(counts) - 1) if counts[i] >= rank), len(counts) - 1)
    if b == len(counts) - 1:
        return bounds[-2]
    if b == 0 and bounds[0] <= 0:
        return bounds[0]
    start, end, count = 0.0, bounds[b], counts[b]
    if b > 0:
        start = bounds[b - 1]
        count -= counts[b - 1]
        rank -= counts[b - 1]
    return start + (end - start) * (rank / count)
