"""The recommendation funnel, stage by stage (I/O injected, so serving and offline share it).

One :meth:`Funnel.recommend`:

1. **User read** (:meth:`FunnelStore.read_user`): the user's online features, whether the
   user was ever seen, the blocked set -- one round trip.
2. **Unknown user** (no hash in any user view) -> the popular list, reason ``popular``.
3. **User tower**: the user's inputs from the tower's registered layout
   (:class:`~serving.recommend.inputs.InputLayout`) -> embedding (micro-batched across
   concurrent requests by the model's DynamicBatcher when served).
4. **Retrieval**: FAISS top-N (``retrieval.candidates``) excluding blocked and request-excluded
   items, run by ``search`` (serving: a thread pool, one OpenMP thread per search, off the
   event loop). No candidate left -> the popular list.
5. **Candidate read** (:meth:`FunnelStore.read_candidates`): item and user x item features
   of the N candidates plus the exploration bandit's posteriors -- one round trip.
6. **Filters**: inactive or vanished items, and items the user saw within the window
   (``rerank.seen``: the pair view's impressions column > 0).
7. **Ranker**: one batched call for all candidates; its ``probability`` output.
8. **Exploration**: cold candidates (:func:`~serving.recommend.exploration.cold_mask`); the
   Thompson bandit picks one per slot that falls within ``k``.
9. **Re-ranking**: freshness boost, then MMR and/or category caps
   (:func:`~serving.recommend.rerank.select`) for the remaining positions; explored items go
   to their slots (:func:`~serving.recommend.exploration.place`).

Reasons: ``retrieved+ranked`` (``+fresh_boost`` when the boost raised the score by more than
1 %), ``explore:cold_start``, ``popular``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Protocol, Sequence

import grpc
import numpy as np

from engine.bandits.dynamic import choose_among, posteriors
from serving.errors import InvalidInput, ServingError
from serving.features import FeatureConfigError, ResolvedView
from serving.recommend.config import RecommendConfig
from serving.recommend.exploration import cold_mask, place
from serving.recommend.inputs import ITEM_ID, USER_ID, FeaturePlan, InputLayout
from serving.recommend.metrics import RecommendMetrics
from serving.recommend.popular import PopularList
from serving.recommend.rerank import freshness_factor, select
from serving.recommend.store import BanditReader, Executor, FunnelStore, as_float

RANKED, FRESH, EXPLORE, POPULAR = "retrieved+ranked", "retrieved+ranked+fresh_boost", "explore:cold_start", "popular"
_FRESH_REASON = 1.01  # a boost factor above this is named in the reason


class IndexEmpty(ServingError):
    """The retrieval index holds no item yet (and no popular item can answer instead)."""

    code = grpc.StatusCode.UNAVAILABLE


class ScoringModel(Protocol):
    """One loaded model version as the funnel calls it."""

    ref: str  # "name/version"
    layout: InputLayout
    input_names: list[str]

    async def run(self, feeds: dict[str, np.ndarray], deadline: float | None) -> np.ndarray: ...


class ModelSource(Protocol):
    """The current user tower and ranker (serving: the model manager's latest READY versions)."""

    def user_tower(self) -> ScoringModel: ...

    def ranker(self) -> ScoringModel: ...


Search = Callable[[np.ndarray, int, set[str]], Awaitable[list[tuple[str, float]]]]


@dataclass(slots=True)
class RecItem:
    """One item of a response, with what the logs need."""

    item_id: str
    score: float
    reason: str
    rank_score: float = math.nan
    position: int = 0
    features: dict[str, Any] | None = None  # the ranker's inputs by source (ranked items)


@dataclass(slots=True)
class Recommendation:
    items: list[RecItem]
    versions: dict[str, str]
    fallback: bool
    ranker: str | None = None  # ranker ref ("name/version") when the ranker scored the items
    timings: dict[str, float] = field(default_factory=dict)


class Funnel:
    """The pipeline (module docstring) over injected models, index, store and popular list."""

    def __init__(
        self,
        config: RecommendConfig,
        models: ModelSource,
        index: Any,
        executor: Executor,
        search: Search,
        *,
        views: dict[str, Any],
        prefix: str = "rtml",
        popular: Callable[[], PopularList] = PopularList,
        bandit: BanditReader | None = None,
        metrics: RecommendMetrics | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.config = config
        self.models = models
        self.index = index
        self.executor = executor
        self.search = search
        self.views = views
        self.prefix = prefix
        self.popular = popular
        self.bandit = bandit
        self.metrics = metrics
        self.rng = rng if rng is not None else np.random.default_rng()
        self._compiled: dict[tuple[str, str], FunnelStore] = {}
        rr, ex = config.rerank, config.exploration
        self._seen = f"{rr.seen.view}.{rr.seen.column}_{rr.seen.window}" if rr.seen is not None else None
        self._impressions = ex.impressions_source if ex.slots and ex.max_impressions is not None else None
        user = views.get("user")
        # The user's own hash says whether the user was ever seen (its _t), whatever the models read.
        self._presence = ResolvedView("user", tuple(user.entity), (), user.ttl_ms, ()) if user is not None else None

    # -- compile ----------------------------------------------------------------------------

    def compiled(self, tower: ScoringModel, ranker: ScoringModel) -> FunnelStore:
        """The store (and its feature plan, ``store.plan``) for this (user tower, ranker) version pair."""
        key = (tower.ref, ranker.ref)
        found = self._compiled.get(key)
        if found is not None:
            return found
        names = [*tower.layout.sources, *ranker.layout.sources]
        names += [n for n in (self._seen, self._impressions) if n is not None]
        plan = FeaturePlan.compile(names, self.views)
        wrong = [s for s in tower.layout.sources if plan.sources[s].level != "user"]
        if wrong:
            raise FeatureConfigError(f"user tower {tower.ref} reads non-user inputs {wrong}")
        store = FunnelStore(self.executor, plan, prefix=self.prefix, blocked_key=self.config.rerank.blocked_key,
                            presence=self._presence, bandit=self.bandit, item_cache_ms=self.config.item_cache_ms)
        self._compiled = {key: store}  # older versions' plans are dropped
        return self._compiled[key]

    # -- the call ---------------------------------------------------------------------------

    def _timer(self, timings: dict[str, float], stage: str, started: float) -> float:
        now = time.perf_counter()
        timings[stage] = now - started
        if self.metrics is not None:
            self.metrics.stage_children[stage].observe(now - started)
        return now

    async def recommend(
        self,
        user_id: str,
        k: int,
        *,
        exclude: Sequence[str] = (),
        deadline: float | None = None,
        now_ms: int | None = None,
    ) -> Recommendation:
        cfg = self.config
        if not user_id:
            raise InvalidInput("user_id is required")
        if k < 1 or k > cfg.max_k:
            raise InvalidInput(f"k must be in 1..{cfg.max_k} (recommend config max_k), got {k}")
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        timings: dict[str, float] = {}
        start = t = time.perf_counter()
        tower, ranker = self.models.user_tower(), self.models.ranker()
        store = self.compiled(tower, ranker)
        plan = store.plan
        versions = {"user_tower": tower.ref, "ranker": ranker.ref}

        user = await store.read_user(user_id)
        t = self._timer(timings, "user_features", t)
        excluded = user.blocked | set(exclude)
        if not user.known:
            return self._popular(k, excluded, versions, "unknown_user", timings, start)
        if len(self.index) == 0:
            raise IndexEmpty("the item index is empty: no item has arrived on the items topic yet")

        feeds = tower.layout.feeds(_user_columns(tower.layout.sources, user.values, user_id, 1), tower.input_names)
        embedding = await tower.run(feeds, deadline)
        t = self._timer(timings, "user_tower", t)

        hits = await self.search(np.asarray(embedding, np.float32).reshape(1, -1), cfg.retrieval.candidates, excluded)
        t = self._timer(timings, "retrieval", t)
        ids = [item for item, _ in hits if item not in excluded]
        metas = self.index.meta(ids) if ids else []
        keep = [i for i, m in enumerate(metas) if m is not None and m.active]
        if self.metrics is not None and len(keep) < len(ids):
            self.metrics.filtered.labels("inactive").inc(len(ids) - len(keep))
        ids, metas = [ids[i] for i in keep], [metas[i] for i in keep]

        explore_slots = [p for p in cfg.exploration.slot_positions() if p < k] if cfg.exploration.slots else []
        cands = await store.read_candidates(user_id, ids, bandit=bool(explore_slots))
        t = self._timer(timings, "candidate_features", t)
        if self._seen is not None and ids:
            seen = np.nan_to_num(as_float(cands.values[self._seen]), nan=0.0) > 0
            if seen.any():
                if self.metrics is not None:
                    self.metrics.filtered.labels("seen").inc(int(seen.sum()))
                rows = np.flatnonzero(~seen)
                ids, metas = [ids[i] for i in rows], [metas[i] for i in rows]
                cands.values = {s: [v[i] for i in rows] for s, v in cands.values.items()}
                if cands.bandit_reply is not None:
                    n0 = len(seen)
                    cands.bandit_reply = [cands.bandit_reply[i] for i in rows] + \
                        [cands.bandit_reply[n0 + i] for i in rows]
        if not ids:
            return self._popular(k, excluded, versions, "no_candidates", timings, start)
        if self.metrics is not None:
            self.metrics.candidates.observe(len(ids))

        n = len(ids)
        columns = _user_columns(ranker.layout.sources, user.values, user_id, n)
        for s in ranker.layout.sources:
            if s == ITEM_ID:
                columns[s] = ids
            elif plan.sources[s].level != "user" and s != USER_ID:
                columns[s] = cands.values[s]
        probs = np.asarray(await ranker.run(ranker.layout.feeds(columns, ranker.input_names), deadline),
                           dtype=np.float64).reshape(n, -1)[:, 0]
        t = self._timer(timings, "rank", t)

        items = self._rerank(k, ids, metas, probs, cands, explore_slots, now_ms, columns, ranker.layout.sources)
        self._timer(timings, "rerank", t)
        if self.metrics is not None:
            self.metrics.stage_children["total"].observe(time.perf_counter() - start)
        return Recommendation(items, versions, False, ranker.ref, timings)

    def _rerank(
        self, k: int, ids: list[str], metas: list[Any], probs: np.ndarray, cands: Any, explore_slots: list[int],
        now_ms: int, columns: dict[str, Sequence[Any]], sources: Sequence[str],
    ) -> list[RecItem]:
        cfg = self.config
        fresh = cfg.rerank.freshness
        created = np.array([m.created_ms for m in metas], dtype=np.int64)
        factor = freshness_factor(np.where(created > 0, now_ms - created, -1),
                                  half_life_ms=fresh.half_life_ms, boost=fresh.boost) if fresh.boost else np.ones(len(ids))
        final = probs * factor

        explored: list[str] = []
        explore_score: dict[str, float] = {}
        if explore_slots:
            ex = cfg.exploration
            impressions = as_float(cands.values[self._impressions]) if self._impressions else np.full(len(ids), np.nan)
            cold = cold_mask(created, impressions, now_ms=now_ms, max_age_ms=ex.max_age_ms,
                             max_impressions=ex.max_impressions)
            cold_rows = np.flatnonzero(cold)
            if len(cold_rows):
                reply = cands.bandit_reply
                n = len(ids)
                if reply is not None:
                    alpha, beta = posteriors([reply[i] for i in cold_rows] + [reply[n + i] for i in cold_rows],
                                             len(cold_rows), prior_alpha=ex.prior_alpha, prior_beta=ex.prior_beta)
                else:
                    alpha = np.full(len(cold_rows), ex.prior_alpha)
                    beta = np.full(len(cold_rows), ex.prior_beta)
                cold_ids = [ids[i] for i in cold_rows]
                explored = choose_among(cold_ids, alpha, beta, min(len(explore_slots), len(cold_ids)), self.rng)
                mean = dict(zip(cold_ids, (alpha / (alpha + beta)).tolist()))
                explore_score = {i: mean[i] for i in explored}
                if self.metrics is not None:
                    self.metrics.explore_slots.inc(len(explored))

        row_of = {item: r for r, item in enumerate(ids)}
        pool = np.array([r for r, item in enumerate(ids) if item not in explore_score], dtype=np.int64)
        rr = cfg.rerank
        if rr.mmr_lambda is not None and len(pool) > max(rr.mmr_pool, 4 * k):
            # MMR only reorders the head: the vectors of the rest are never needed.
            pool = pool[np.argsort(-final[pool], kind="stable")[:max(rr.mmr_pool, 4 * k)]]
        vectors = self.index.vectors([ids[r] for r in pool]) if rr.mmr_lambda is not None and len(pool) else None
        order = pool[select(final[pool], k - len(explored), vectors=vectors, mmr_lambda=rr.mmr_lambda,
                            categories=[metas[r].category for r in pool], category_caps=rr.category_caps)]
        out: list[RecItem] = []
        for pos, (item, is_explore) in enumerate(place([ids[r] for r in order], explored, explore_slots, k)):
            r = row_of[item]
            feats = {s: _plain(columns[s][r]) for s in sources}
            if is_explore:
                out.append(RecItem(item, explore_score[item], EXPLORE, float(probs[r]), pos, feats))
            else:
                reason = FRESH if factor[r] > _FRESH_REASON else RANKED
                out.append(RecItem(item, float(final[r]), reason, float(probs[r]), pos, feats))
        return out

    def _popular(
        self, k: int, excluded: set[str], versions: dict[str, str], why: str, timings: dict[str, float], start: float
    ) -> Recommendation:
        items = self.popular().top(k, excluded)
        if not items and len(self.index) == 0:
            raise IndexEmpty("the item index is empty and no popular items are known yet")
        if self.metrics is not None:
            self.metrics.fallbacks.labels(why).inc()
            self.metrics.stage_children["total"].observe(time.perf_counter() - start)
        return Recommendation(
            [RecItem(item, score, POPULAR, math.nan, pos) for pos, (item, score) in enumerate(items)],
            {"popular": why}, True, None, timings,
        )


def _user_columns(sources: Sequence[str], values: dict[str, Any], user_id: str, n: int) -> dict[str, list[Any]]:
    """User-level columns repeated for ``n`` rows (the user id and the user's online values)."""
    out: dict[str, list[Any]] = {}
    for s in sources:
        if s == USER_ID:
            out[s] = [user_id] * n
        elif s in values:
            out[s] = [values[s]] * n
    return out


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
