"""Prometheus series of Recommend (the table in docs/recommend.md)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# 50 us (a cached popular answer) .. 1 s.
STAGE_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
STAGES = ("user_features", "user_tower", "retrieval", "candidate_features", "rank", "rerank", "total")


class RecommendMetrics:
    """``rtml_recommend_*`` on ``registry`` (None: unregistered, for in-process use)."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.stage = Histogram(
            "rtml_recommend_stage_seconds", "Time spent in one funnel stage of a Recommend call.", ["stage"],
            buckets=STAGE_BUCKETS, registry=registry,
        )
        self.fallbacks = Counter(
            "rtml_recommend_fallbacks",
            "Recommend answers from the popular-items list: unknown_user, no_candidates.", ["reason"],
            registry=registry,
        )
        self.explore_slots = Counter(
            "rtml_recommend_explore_slots", "Exploration slots filled with a cold-start item.", registry=registry,
        )
        self.filtered = Counter(
            "rtml_recommend_filtered",
            "Retrieved candidates dropped before ranking: seen (shown to the user within the window), "
            "inactive (retired or gone from the index).", ["filter"], registry=registry,
        )
        self.candidates = Histogram(
            "rtml_recommend_candidates", "Candidates ranked per Recommend call (after filters).",
            buckets=(0, 10, 25, 50, 100, 200, 500, 1000), registry=registry,
        )
        self.impressions = Counter(
            "rtml_recommend_impressions",
            "Impression events handed to the events topic (result: queued, dropped).", ["result"],
            registry=registry,
        )
        self.index_items = Gauge(
            "rtml_recommend_index_items", "Items in the retrieval index.", registry=registry,
        )
        self.stage_children = {s: self.stage.labels(s) for s in STAGES}
        self.impressions_queued = self.impressions.labels("queued")
        self.impressions_dropped = self.impressions.labels("dropped")
