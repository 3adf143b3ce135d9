"""Read a running dataflow's progress from its Prometheus endpoints and the input topic."""

from __future__ import annotations

import urllib.request
from typing import Callable

from prometheus_client.parser import text_string_to_metric_families

from engine.config import RtmlConfig
from engine.runtime.topics import topic_end_offsets


def scrape(port: int, host: str = "127.0.0.1", timeout: float = 2.0) -> dict[str, float]:
    """Every sample of one /metrics endpoint, summed over labels, by sample name."""
    text = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout).read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


def scrape_job(cfg: RtmlConfig) -> dict[str, float]:
    """Samples of every process of the features job, summed (unreachable processes skipped)."""
    total: dict[str, float] = {}
    for i in range(cfg.pipeline.processes):
        try:
            samples = scrape(cfg.metrics.port + i)
        except OSError:
            continue
        for name, value in samples.items():
            total[name] = total.get(name, 0.0) + value
    return total


def histogram_buckets(ports: list[int], metric: str, host: str = "127.0.0.1") -> dict[float, float]:
    """Cumulative bucket counts ``{upper bound: count}`` of a histogram, summed over endpoints
    (unreachable ones skipped)."""
    buckets: dict[float, float] = {}
    for port in ports:
        try:
            text = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=2).read().decode()
        except OSError:
            continue
        for family in text_string_to_metric_families(text):
            if family.name != metric:
                continue
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    le = float(sample.labels["le"])
                    buckets[le] = buckets.get(le, 0.0) + sample.value
    return buckets


def histogram_quantile(ports: list[int], metric: str, q: float, host: str = "127.0.0.1") -> float | None:
    """Estimate a quantile of a histogram summed over endpoints (the upper bound of its bucket)."""
    buckets = histogram_buckets(ports, metric, host)
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total == 0:
        return None
    for le in bounds:
        if buckets[le] >= q * total:
            return le
    return bounds[-1]


def pipeline_progress(cfg: RtmlConfig) -> Callable[[], tuple[int, int]]:
    """``() -> (events consumed, events available)`` for the supervisor's stall check.

    "Consumed" is the sum of the sources' next offsets (``rtml_input_position``), which
    survives restarts (it resumes from the recovery snapshot) unlike a counter.
    """
    bootstrap = cfg.kafka.bootstrap or ""
    topic = cfg.kafka.events_topic

    def progress() -> tuple[int, int]:
        consumed = int(scrape_job(cfg).get("rtml_input_position", 0))
        available = sum(topic_end_offsets(bootstrap, topic).values())
        return consumed, available

    return progress
