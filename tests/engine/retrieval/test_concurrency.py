"""Rebuilds swap in while other threads search: no errors, no missing or stale items."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from engine.retrieval.index import IndexConfig, ItemIndex
from tests.engine.retrieval.helpers import clustered, ids


@pytest.mark.parametrize("kind", ["hnsw", "flat"])
def test_rebuild_swap_under_concurrent_searches(kind: str) -> None:
    dim, n_stable = 16, 2_000
    x = clustered(n_stable, dim, seed=20, clusters=200, spread=0.3)
    churn = clustered(400, dim, seed=21, clusters=200, spread=0.3)
    index = ItemIndex(IndexConfig(dim=dim, kind=kind, use_gpu="never", rebuild_after=100, ef_search=128))
    index.upsert(ids(n_stable, "s"), x)
    index.rebuild()
    errors: list[BaseException] = []
    misses: list[str] = []
    stop = threading.Event()
    searches = [0]

    def searcher(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                rows = rng.integers(0, n_stable, 8)
                for row, hits in zip(rows, index.search(x[rows], 5)):
                    if f"s{row}" not in [i for i, _ in hits]:  # a stable item must always find itself
                        misses.append(f"s{row}")
                    if any(i.startswith("gone") for i, _ in hits):
                        misses.append("a removed item was returned")
                searches[0] += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=searcher, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    try:
        generation = index.generation
        for round_ in range(8):  # churn items: add, replace, remove; auto-rebuilds run in the background
            batch = [f"c{j}" for j in range(round_ * 50, round_ * 50 + 50)]
            index.upsert(batch, churn[round_ * 50:(round_ + 1) * 50])
            index.upsert([f"gone{round_}"], churn[:1])
            index.remove([f"gone{round_}"])
            index.upsert(batch[:10], -churn[round_ * 50:round_ * 50 + 10])
            index.rebuild()  # and synchronous ones racing the background ones
    finally:
        stop.set()
        for t in threads:
            t.join()
        index.close()
    assert not errors, errors
    assert not misses, misses[:5]
    assert searches[0] > 0 and index.generation >= generation + 8
    assert len(index) == n_stable + 400
    assert not any(i.startswith("gone") for i, _ in index.search(churn[:1], 50)[0])
    churned = [f"c{j}" for j in range(400)]
    current = index.vectors(churned)
    for item_id, hits in zip(churned, index.search(current, 5)):  # every churned item findable by its vector
        assert item_id in [i for i, _ in hits]
