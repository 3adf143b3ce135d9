"""Offline funnel evaluation: the serving funnel in-process, against exact search and popularity."""

from __future__ import annotations

import numpy as np
import pytest

from engine.recommend.evaluation import build_index, evaluate_world, popularity, retrieval_recall
from engine.retrieval.index import IndexConfig
from tests.serving.recommend.world import trained_world


def test_exact_index_has_recall_one_and_popularity_orders_by_count() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(200, 8)).astype(np.float32)
    index = build_index([f"i{k}" for k in range(200)], vectors, IndexConfig(dim=8, kind="flat", use_gpu="never"))
    assert retrieval_recall(index, rng.normal(size=(20, 8)), [5, 10]) == {"recall@5": 1.0, "recall@10": 1.0}
    index.close()
    assert popularity(["b", "a", "b", "c", "a", "b"]).top(2) == [("b", 3.0), ("a", 2.0)]


@pytest.mark.slow
def test_funnel_beats_chance_and_reports_every_list() -> None:
    world = trained_world()
    rw = world["rw"]
    report = evaluate_world(rw, world["repo"], world["models"]["two_tower"], ks=(10,),
                            index_config=IndexConfig(dim=16, kind="hnsw", use_gpu="never"))
    assert report["index"]["recall@10"] > 0.95  # HNSW against exact search on 300 items
    chance = 10 / len(rw.items)
    for name in ("funnel", "retrieval_only", "popularity"):
        assert set(report[name]) == {"recall@10", "ndcg@10"}
        assert report[name]["recall@10"] > chance, name
    assert report["users"] > 50 and report["funnel_ms_per_user"] > 0
