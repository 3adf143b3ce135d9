"""RecommendService._search: on the event loop for a small index, in the search pool beyond
``retrieval.inline_max_items`` -- the same answer either way."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from engine.retrieval.index import IndexConfig, ItemIndex
from serving.features import FeatureFetcher
from serving.recommend.config import RecommendConfig
from serving.recommend.service import RecommendService


def _service(inline_max_items: int, index: ItemIndex) -> RecommendService:
    config = RecommendConfig.model_validate({"user_tower": "u", "ranker": "r",
                                             "retrieval": {"inline_max_items": inline_max_items}})
    service = RecommendService(config, None, FeatureFetcher(None), redis_url=None, index=index)
    service._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rtml-faiss")
    return service


def test_inline_and_pooled_searches_agree_and_run_where_configured() -> None:
    rng = np.random.default_rng(0)
    index = ItemIndex(IndexConfig(dim=8, kind="flat"))
    index.upsert([f"i{j}" for j in range(50)], rng.normal(size=(50, 8)).astype(np.float32))
    query = rng.normal(size=(1, 8)).astype(np.float32)
    threads: dict[str, str] = {}
    search = index.search

    def recording(*args: object) -> object:
        threads[threading.current_thread().name.split("_")[0]] = "x"
        return search(*args)

    index.search = recording  # type: ignore[method-assign]

    async def run(service: RecommendService) -> list[tuple[str, float]]:
        try:
            return await service._search(query, 10, {"i3"})
        finally:
            assert service._pool is not None
            service._pool.shutdown()

    inline = asyncio.run(run(_service(50, index)))
    assert set(threads) == {"MainThread"}
    pooled = asyncio.run(run(_service(49, index)))
    assert set(threads) == {"MainThread", "rtml-faiss"}
    assert inline == pooled and len(inline) == 10 and "i3" not in {i for i, _ in inline}
