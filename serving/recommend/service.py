"""``rtml.v1.Recommendations/Recommend``: the funnel over the server's models, Redis and Kafka.

:class:`RecommendService` wires :class:`~serving.recommend.funnel.Funnel` to

* the **model manager**: the user tower and ranker are ordinary repository models (hot
  reload, versions, a DynamicBatcher each, so concurrent requests share user-tower and
  ranker batches); their input layouts are read from each version's ``metadata.json``;
* the **item index** (:class:`engine.retrieval.index.ItemIndex`), loaded from
  ``retrieval.snapshot`` when present and kept current by an
  :class:`~engine.retrieval.stream.ItemStreamUpdater` on the items topic (a new item is
  searchable as soon as its batch is applied: tens of milliseconds);
* a **search pool**: a thread pool (``retrieval.threads``, default one per core); each search
  pins FAISS to ``IndexConfig.threads`` OpenMP threads (1) in its own thread, off the loop.
  While the index holds at most ``retrieval.inline_max_items`` items the search runs on the
  event loop instead (a small index answers in ~0.1 ms, less than the hand-off);
* **Redis** through the Predict pipeline's :class:`~serving.features.FeatureFetcher`
  (two pipelined round trips per request), the exploration bandit
  (:class:`~engine.bandits.dynamic.DynamicThompson`) and the popular list's refresher;
* **Kafka**: one ``impression`` :class:`~engine.events.schemas.Interaction` per returned item
  on the events topic (``request_id``, ``context.position``, ``context.reason`` and the
  request's context), and on the predictions topic one record per item -- the ranker's
  prediction (the :mod:`serving.predictions_log` format plus ``position``) for ranked items,
  a bandit decision (``arm`` = item) for explored ones -- so a click carrying the request id
  joins (the label join matches on request id and item) and rewards the right model. Both are
  non-blocking (:class:`~serving.predictions_log.PredictionLogger`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from engine.events.schemas import EventType
from engine.learning.records import PredictionRecord
from engine.retrieval.index import IndexConfig, ItemIndex
from proto.rtml.v1 import serving_pb2 as rtml_pb
from serving.features import FeatureConfigError, FeatureFetcher
from serving.kserve import deadline_from
from serving.recommend.config import RecommendConfig
from serving.recommend.funnel import Funnel, Recommendation
from serving.recommend.inputs import InputLayout
from serving.recommend.metrics import RecommendMetrics
from serving.recommend.popular import PopularRefresher
from serving.predictions_log import PredictionLogger, PredictionLogMetrics, prediction_record

log = logging.getLogger(__name__)

RECOMMEND_SERVICE = "rtml.v1.Recommendations"
_IMPRESSION = EventType.IMPRESSION.value
_random_bits = random.getrandbits  # the module generator: seeded from os.urandom, reseeded after fork
METADATA = "metadata.json"


class _ServedScorer:
    """One served model version as the funnel calls it (input layout from its metadata.json)."""

    def __init__(self, served: Any, output: str) -> None:
        meta_path = Path(served.path).parent / METADATA if served.path is not None else None
        if meta_path is None or not meta_path.exists():
            raise FeatureConfigError(
                f"model {served.name!r} version {served.version} has no {METADATA}: Recommend needs the input "
                "layout that engine.registry.register_run records"
            )
        self.layout = InputLayout.from_metadata(json.loads(meta_path.read_text()))
        self.served = served
        self.ref = f"{served.name}/{served.version}"
        self.input_names = [s.name for s in served.inputs]
        names = [s.name for s in served.outputs]
        if output not in names:
            output = names[0]
        self.output = output

    async def run(self, feeds: dict[str, np.ndarray], deadline: float | None) -> np.ndarray:
        served, rows = self.served, len(next(iter(feeds.values())))
        cap = served.max_batch_size
        if cap <= 0 or rows <= cap:
            return (await served.infer(feeds, deadline=deadline))[self.output]
        # More candidates than the model's max_batch_size: split, run the parts concurrently.
        parts = await asyncio.gather(*(
            served.infer({k: v[s:s + cap] for k, v in feeds.items()}, deadline=deadline)
            for s in range(0, rows, cap)
        ))
        return np.concatenate([p[self.output] for p in parts])


class ManagerModels:
    """The latest READY user tower and ranker of a :class:`~serving.manager.ModelManager`."""

    def __init__(self, manager: Any, user_tower: str, ranker: str, ranker_output: str) -> None:
        self.manager = manager
        self.names = (user_tower, ranker)
        self.ranker_output = ranker_output
        self._scorers: dict[int, _ServedScorer] = {}

    def _scorer(self, name: str, output: str) -> _ServedScorer:
        served = self.manager.get(name)  # ModelNotFound / ModelUnavailable -> the caller's status
        scorer = self._scorers.get(id(served))
        if scorer is None or scorer.served is not served:
            scorer = self._scorers[id(served)] = _ServedScorer(served, output)
            if len(self._scorers) > 16:  # old reloads: forget all but this one
                self._scorers = {id(served): scorer}
        return scorer

    def user_tower(self) -> _ServedScorer:
        return self._scorer(self.names[0], "embedding")

    def ranker(self) -> _ServedScorer:
        return self._scorer(self.names[1], self.ranker_output)


class RecommendService:
    """Everything Recommend needs, started and stopped with the server (module docstring)."""

    def __init__(
        self,
        config: RecommendConfig,
        manager: Any,
        fetcher: FeatureFetcher,
        *,
        redis_url: str | None,
        prefix: str = "rtml",
        kafka_bootstrap: str | None = None,
        events_topic: str = "events",
        items_topic: str = "items",
        predictions: PredictionLogger | None = None,
        registry: CollectorRegistry | None = None,
        metrics: RecommendMetrics | None = None,
        index: ItemIndex | None = None,
        seed: int | None = None,
    ) -> None:
        self.config = config
        self.manager = manager
        self.fetcher = fetcher
        self.redis_url = redis_url
        self.prefix = prefix
        self.kafka_bootstrap = kafka_bootstrap
        self.events_topic = events_topic
        self.items_topic = config.retrieval.items_topic or items_topic
        self.predictions = predictions
        # A registry takes one set of series: a server restarted in-process passes its own.
        self.metrics = metrics if metrics is not None else RecommendMetrics(registry)
        self.index = index
        self.seed = seed
        self.updater: Any = None
        self.impressions: PredictionLogger | None = None
        self.popular: PopularRefresher | None = None
        self.bandit: Any = None
        self.funnel: Funnel | None = None
        self._pool: ThreadPoolExecutor | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> "RecommendService":
        cfg = self.config
        if self.index is None:
            snapshot = cfg.retrieval.snapshot
            index_cfg = IndexConfig.from_dict(cfg.retrieval.index) if cfg.retrieval.index else None
            if snapshot and Path(snapshot).exists():
                self.index = await asyncio.to_thread(ItemIndex.load, snapshot, index_cfg)
            else:
                if index_cfg is None:
                    raise ValueError("recommend config: retrieval.index needs at least 'dim' (no snapshot to load)")
                self.index = ItemIndex(index_cfg)
        index = self.index
        self.metrics.index_items.set_function(lambda: len(index))
        self._pool = ThreadPoolExecutor(max_workers=cfg.retrieval.threads or os.cpu_count() or 1,
                                        thread_name_prefix="rtml-faiss")
        if self.kafka_bootstrap:
            from engine.retrieval.stream import ItemStreamUpdater  # the items topic must exist (rtml up creates it)
            self.updater = ItemStreamUpdater(index, self.kafka_bootstrap, self.items_topic,
                                             from_beginning=cfg.retrieval.from_beginning)
            await asyncio.to_thread(self.updater.start)
            # Its own producer (metrics unregistered: the events topic is not the predictions log).
            # Delivery reports only for failures: a Python callback per delivered message (k per
            # request) would compete for the GIL with the event loop, for a counter nobody reads.
            self.impressions = PredictionLogger(self.kafka_bootstrap, self.events_topic,
                                                metrics=PredictionLogMetrics(None),
                                                producer_config={"delivery.report.only.error": True}).start()
        if cfg.exploration.slots and self.redis_url:
            self.bandit = await asyncio.to_thread(self._make_bandit)
        self.popular = PopularRefresher(
            self.redis_url, self.prefix, self.fetcher.views, cfg.popular.source, cfg.popular.size,
            cfg.popular.refresh_ms / 1000, keep=self._in_index,
        )
        await asyncio.to_thread(self.popular.start)
        popular = self.popular
        self.funnel = Funnel(
            cfg, ManagerModels(self.manager, cfg.user_tower, cfg.ranker, cfg.ranker_output), index, self.fetcher,
            self._search, views=self.fetcher.views, prefix=self.prefix, popular=lambda: popular.current,
            bandit=self.bandit, metrics=self.metrics, rng=np.random.default_rng(self.seed),
        )
        return self

    def _make_bandit(self) -> Any:
        import redis

        try:
            return self.config.exploration.bandit_spec().redis_bandit(
                redis.Redis.from_url(self.redis_url, socket_timeout=1.0), prefix=self.prefix, rng=self.seed)
        except (redis.RedisError, OSError) as exc:
            # Without the stored posteriors exploration still works, from the prior.
            log.warning("recommend: exploration bandit state unavailable (%s); exploring from the prior", exc)
            return None

    def _in_index(self, ids: list[str]) -> list[bool]:
        assert self.index is not None
        return [m is not None and m.active for m in self.index.meta(ids)]

    async def _search(self, query: np.ndarray, n: int, exclude: set[str]) -> list[tuple[str, float]]:
        assert self.index is not None
        if len(self.index) <= self.config.retrieval.inline_max_items:
            # A small index answers in ~0.1 ms, mostly Python holding the GIL anyway: a thread
            # hand-off (and the loop's wake-up after it) costs more than the search itself.
            return self.index.search(query, n, [exclude])[0]
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self._pool, self.index.search, query, n, [exclude])
        return result[0]

    async def close(self) -> None:
        if self.updater is not None:
            await asyncio.to_thread(self.updater.stop)
            self.updater = None
        if self.popular is not None:
            await asyncio.to_thread(self.popular.stop)
            self.popular = None
        if self.impressions is not None:
            await asyncio.to_thread(self.impressions.close)
            self.impressions = None
        if self.bandit is not None:
            self.bandit.client.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    # -- the call ------------------------------------------------------------------------------

    async def recommend(self, request: rtml_pb.RecommendRequest, deadline: float | None = None) -> rtml_pb.RecommendResponse:
        assert self.funnel is not None, "RecommendService.start() first"
        # 128 random bits as 32 hex digits, like uuid4().hex but without its os.urandom
        # system call on the event loop (a syscall gives the GIL away to the model threads).
        request_id = request.request_id or f"{_random_bits(128):032x}"
        rec = await self.funnel.recommend(request.user_id, int(request.k), exclude=list(request.exclude),
                                          deadline=deadline)
        self._log(request_id, request, rec)
        response = rtml_pb.RecommendResponse(request_id=request_id, fallback=rec.fallback)
        response.versions.update(rec.versions)
        response.versions["index_items"] = str(len(self.index) if self.index is not None else 0)
        if self.config.exploration.slots:
            response.versions["explore_bandit"] = self.config.exploration.bandit
        add = response.items.add
        for item in rec.items:
            add(item_id=item.item_id, score=item.score, reason=item.reason, rank_score=item.rank_score,
                position=item.position)
        return response

    def _log(self, request_id: str, request: rtml_pb.RecommendRequest, rec: Recommendation) -> None:
        now_ms = int(time.time() * 1000)
        user_id = request.user_id
        context: dict[str, Any] = dict(request.context)
        impressions, predictions = self.impressions, self.predictions
        if impressions is not None:
            queued = 0
            for item in rec.items:
                # Interaction(user, item, IMPRESSION, now_ms, context, request_id).to_dict(), built directly.
                queued += impressions.log({
                    "user_id": user_id, "item_id": item.item_id, "event_type": _IMPRESSION, "event_time": now_ms,
                    "context": {**context, "position": item.position, "reason": item.reason},
                    "request_id": request_id,
                }, user_id)
            if queued:
                self.metrics.impressions_queued.inc(queued)
            if queued < len(rec.items):
                self.metrics.impressions_dropped.inc(len(rec.items) - queued)
        if predictions is None:
            return
        name, _, version = (rec.ranker or "").rpartition("/")
        for item in rec.items:
            ids = {"user_id": user_id, "item_id": item.item_id}
            if item.reason.startswith("explore"):
                record = PredictionRecord(request_id, self.config.exploration.bandit, "dynamic", "bandit", now_ms,
                                          None, {}, ids, arm=item.item_id).to_dict()
                record["position"] = item.position
                predictions.log(record, user_id)
            elif rec.ranker is not None:
                record = prediction_record(request_id, name, version, "primary", ids, [item.rank_score], now_ms,
                                           features=item.features)
                record["position"] = item.position
                predictions.log(record, user_id)


class RecommendationsServicer:
    """``rtml.v1.Recommendations``: Recommend through :class:`RecommendService`."""

    def __init__(self, service: RecommendService) -> None:
        self._service = service

    async def Recommend(self, request: rtml_pb.RecommendRequest, context: Any) -> rtml_pb.RecommendResponse:
        return await self._service.recommend(request, deadline=deadline_from(context))
