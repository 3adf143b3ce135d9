"""Offline evaluation of the recommendation funnel, with the serving funnel's own code.

Two questions:

* **Retrieval**: how much does the approximate index lose against exact search?
  :func:`retrieval_recall` is Recall@K of ``ItemIndex.search`` against exact inner-product
  top-K over the same items (:func:`engine.retrieval.evaluation.index_recall`), per K.
* **The full funnel**: does it find what users went on to do? :func:`evaluate_funnel` runs
  :class:`serving.recommend.funnel.Funnel` in-process -- ONNX Runtime sessions of the
  registered user tower and ranker (:class:`OnnxScorer`), the real :class:`ItemIndex`, online
  features from :class:`~serving.recommend.store.MemoryHashes` in the Redis layout -- for every
  held-out user and scores the lists with Recall@K / NDCG@K
  (:mod:`engine.training.metrics`) against the user's held-out items, next to a popularity
  baseline (the most interacted-with training items) and retrieval alone (the index's top-K
  for the user-tower vector). Items the user interacted with in training are excluded from
  every list (the "already seen" filter).

``python -m engine.recommend.evaluation`` builds the synthetic world of
:mod:`engine.recommend.synthetic`, trains and registers the models, and prints the report as
JSON (about half a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from engine.retrieval.catalog import ItemMeta
from engine.retrieval.evaluation import index_recall
from engine.retrieval.index import IndexConfig, ItemIndex
from engine.training.metrics import ndcg_at_k, recall_at_k
from serving.features import default_feature_views
from serving.onnx_session import CPU, load_onnx
from serving.recommend.config import RecommendConfig
from serving.recommend.funnel import Funnel
from serving.recommend.inputs import InputLayout
from serving.recommend.popular import PopularList
from serving.recommend.store import MemoryHashes


class OnnxScorer:
    """A registered model version run directly by ONNX Runtime (one thread), as the funnel calls it."""

    def __init__(self, version_dir: str | Path, output: str) -> None:
        version_dir = Path(version_dir)
        meta = json.loads((version_dir / "metadata.json").read_text())
        self.layout = InputLayout.from_metadata(meta)
        self.ref = f"{meta.get('name', version_dir.parent.name)}/{meta.get('version', version_dir.name)}"
        self.model = load_onnx(version_dir / "model.onnx", intra_op_threads=1, providers=[CPU])
        self.input_names = [s.name for s in self.model.inputs]
        names = [s.name for s in self.model.outputs]
        self.output = output if output in names else names[0]

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        return self.model.run(feeds)[self.output]

    async def run(self, feeds: dict[str, np.ndarray], deadline: float | None) -> np.ndarray:
        return self(feeds)


class OfflineModels:
    """The latest version of the user tower and ranker in a model repository, via ONNX Runtime."""

    def __init__(self, repository: str | Path, config: RecommendConfig) -> None:
        root = Path(repository)

        def latest(name: str) -> Path:
            versions = [p for p in (root / name).iterdir() if p.name.isdigit()]
            return max(versions, key=lambda p: int(p.name))

        self._tower = OnnxScorer(latest(config.user_tower), "embedding")
        self._ranker = OnnxScorer(latest(config.ranker), config.ranker_output)

    def user_tower(self) -> OnnxScorer:
        return self._tower

    def ranker(self) -> OnnxScorer:
        return self._ranker


def build_index(item_ids: Sequence[str], vectors: np.ndarray, config: IndexConfig,
                categories: Sequence[str | None] | None = None, created_ms: int = 1) -> ItemIndex:
    """An :class:`ItemIndex` holding ``vectors`` (built once, as after a snapshot load)."""
    index = ItemIndex(config)
    metas = [ItemMeta(i, categories[j] if categories is not None else None, created_ms, created_ms)
             for j, i in enumerate(item_ids)]
    index.upsert(list(item_ids), np.asarray(vectors, np.float32), metas)
    index.rebuild()
    return index


def offline_funnel(config: RecommendConfig, repository: str | Path, hashes: MemoryHashes, index: ItemIndex,
                   popular: PopularList, *, prefix: str = "rtml", seed: int = 0) -> Funnel:
    """The serving funnel over in-process models, index and features (no server, no Redis)."""

    async def search(query: np.ndarray, n: int, exclude: set[str]) -> list[tuple[str, float]]:
        return index.search(query, n, [exclude])[0]

    return Funnel(config, OfflineModels(repository, config), index, hashes, search, views=default_feature_views(),
                  prefix=prefix, popular=lambda: popular, rng=np.random.default_rng(seed))


def retrieval_recall(index: ItemIndex, queries: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """Recall@K of the index against exact search, per K."""
    return {f"recall@{k}": index_recall(index, np.asarray(queries, np.float32), k) for k in ks}


def popularity(interactions: Sequence[str]) -> PopularList:
    """Items by interaction count, best first (ties by id)."""
    counts = Counter(interactions)
    return PopularList(sorted(((i, float(c)) for i, c in counts.items()), key=lambda kv: (-kv[1], kv[0])))


def _scores(ranked: list[list[str]], relevant: list[set[str]], code: dict[str, int], ks: Sequence[int]) -> dict:
    r = [[code[i] for i in row] for row in ranked]
    rel = [{code[i] for i in row} for row in relevant]
    out: dict[str, float] = {}
    for k in ks:
        out[f"recall@{k}"] = recall_at_k(r, rel, k)
        out[f"ndcg@{k}"] = ndcg_at_k(r, rel, k)
    return out


def evaluate_funnel(
    funnel: Funnel,
    users: Sequence[str],
    relevant: Sequence[set[str]],
    seen: Sequence[set[str]],
    popular: PopularList,
    ks: Sequence[int] = (10, 20),
) -> dict[str, Any]:
    """Recall@K / NDCG@K of the funnel, retrieval alone and the popularity baseline (module docstring)."""
    kmax = max(ks)
    code: dict[str, int] = {}

    def enc(items: Sequence[str]) -> None:
        for i in items:
            code.setdefault(i, len(code))

    async def run_all() -> tuple[list[list[str]], list[list[str]], float]:
        funnel_lists, retrieval_lists = [], []
        started = time.perf_counter()
        for user, excluded in zip(users, seen):
            rec = await funnel.recommend(user, kmax, exclude=sorted(excluded))
            funnel_lists.append([item.item_id for item in rec.items])
        elapsed = time.perf_counter() - started
        tower = funnel.models.user_tower()
        for user, excluded in zip(users, seen):
            u = await funnel.compiled(tower, funnel.models.ranker()).read_user(user)
            cols = {s: [user] if s == "user_id" else [u.values.get(s)] for s in tower.layout.sources}
            vec = await tower.run(tower.layout.feeds(cols, tower.input_names), None)
            retrieval_lists.append([i for i, _ in funnel.index.search(np.asarray(vec, np.float32), kmax,
                                                                       [excluded])[0]])
        return funnel_lists, retrieval_lists, elapsed

    funnel_lists, retrieval_lists, elapsed = asyncio.run(run_all())
    popular_lists = [[i for i, _ in popular.top(kmax, excluded)] for excluded in seen]
    for rows in (funnel_lists, retrieval_lists, popular_lists, relevant):
        for row in rows:
            enc(row)
    report: dict[str, Any] = {
        "users": len(users),
        "funnel": _scores(funnel_lists, list(relevant), code, ks),
        "retrieval_only": _scores(retrieval_lists, list(relevant), code, ks),
        "popularity": _scores(popular_lists, list(relevant), code, ks),
        "funnel_ms_per_user": 1000 * elapsed / max(len(users), 1),
    }
    return report


def evaluate_world(rw: Any, repository: str | Path, two_tower: Any, *, ks: Sequence[int] = (10, 20),
                   index_config: IndexConfig | None = None, max_users: int = 300) -> dict[str, Any]:
    """Both evaluations on a :class:`engine.recommend.synthetic.RecWorld` with trained, registered models."""
    from engine.recommend.synthetic import item_vectors

    now = int(time.time() * 1000)
    vectors = item_vectors(rw, two_tower)
    index_config = index_config or IndexConfig(dim=vectors.shape[1], kind="hnsw", use_gpu="never")
    index = build_index(rw.items, vectors, index_config, rw.categories, created_ms=now - 30 * 86_400_000)
    hashes = MemoryHashes(rw.hashes("rtml", now))
    train_items = rw.train.groupby("user_id")["item_id"].agg(set).to_dict()
    test_items = rw.test.groupby("user_id")["item_id"].agg(set).to_dict()
    users = sorted(u for u in test_items if test_items[u] - train_items.get(u, set()))[:max_users]
    relevant = [test_items[u] - train_items.get(u, set()) for u in users]
    seen = [train_items.get(u, set()) for u in users]
    config = RecommendConfig.model_validate({
        "user_tower": "recs_user", "ranker": "ranker", "max_k": max(ks),
        "retrieval": {"candidates": 200}, "rerank": {"seen": None, "blocked_key": None},
    })
    popular = popularity(rw.train["item_id"].tolist())
    funnel = offline_funnel(config, repository, hashes, index, popular)
    # Retrieval recall against exact search, with the users' own tower vectors as queries.
    tower = funnel.models.user_tower()
    cols: dict[str, list[Any]] = {s: [rw.user_row(int(u[1:]))[s] if s != "user_id" else u for u in users]
                                  for s in tower.layout.sources}
    queries = tower(tower.layout.feeds(cols, tower.input_names))
    report = {
        "index": {"kind": index_config.kind, "items": len(index), **retrieval_recall(index, queries, ks)},
        **evaluate_funnel(funnel, users, relevant, seen, popular, ks),
    }
    index.close()
    return report


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.recommend.evaluation", description=__doc__.split("\n")[0])
    p.add_argument("--users", type=int, default=500)
    p.add_argument("--items", type=int, default=1000)
    p.add_argument("--train", type=int, default=30_000)
    p.add_argument("--test", type=int, default=5_000)
    p.add_argument("--index", default="hnsw", choices=["hnsw", "ivf", "flat"])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from engine.recommend.synthetic import build_world, train_models

    rw = build_world(args.users, args.items, args.train, args.test, seed=args.seed)
    with tempfile.TemporaryDirectory() as repo:
        models = train_models(rw, repo, seed=args.seed)
        cfg = IndexConfig(dim=int(models["two_tower"].params.get("out_dim", 16)), kind=args.index, use_gpu="never")
        report = evaluate_world(rw, repo, models["two_tower"], index_config=cfg)
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
