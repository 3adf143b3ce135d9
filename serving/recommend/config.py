"""The Recommend configuration: a YAML file given to ``rtml serve --recommend FILE``.

::

    user_tower: recs_user            # model names in the model repository (served by the
    ranker: ranker                   # ModelManager: micro-batching, hot reload, versions)
    max_k: 50                        # largest k a request may ask for
    item_cache: 1s                   # candidates' item features reused this long (0: off)
    retrieval:
      candidates: 200                # FAISS top-N handed to the ranker
      index: {dim: 32, metric: ip}   # engine.retrieval.index.IndexConfig fields
      items_topic: items             # default: kafka.items_topic of the rtml config
      snapshot: /var/lib/rtml/items.faiss   # optional: loaded at start (then the stream)
      from_beginning: true
      threads: 0                     # FAISS search pool; 0 = one per core
      inline_max_items: 50000        # search on the event loop up to this index size (0: never)
    rerank:
      mmr_lambda: 0.7                # null: no MMR
      mmr_pool: 50                   # MMR picks among the best max(mmr_pool, 4k) by score
      category_caps: {default: 3, shoes: 2}   # at most N per category (null: no caps)
      freshness: {half_life: 6h, boost: 0.2}  # score * (1 + boost * 2^(-age/half_life))
      seen: {view: user_item, window: 24h}    # drop items the user saw within the window
      blocked_key: "blocked:{user_id}"        # Redis set of items never to show the user
    exploration:
      slots: 2
      positions: [2, 7]              # 0-based; default spread: 2, 7, 12, ...
      bandit: rec-explore            # dynamic-arm Thompson bandit (rewards: learning dataflow)
      prior_alpha: 1.0
      prior_beta: 1.0
      max_age: 1d                    # cold: created less than this ago ...
      max_impressions: 100           # ... or shown fewer times than this (item.impressions_24h)
    popular:
      source: item.clicks_24h        # a numeric column of an item view, ranked over the index
      size: 200                      # how many are kept
      refresh: 30s

Everything but the two model names has a default.

>>> cfg = RecommendConfig.model_validate({"user_tower": "u", "ranker": "r", "exploration": {"slots": 2}})
>>> cfg.retrieval.candidates, cfg.exploration.slot_positions(), cfg.rerank.freshness.half_life_ms
(200, [2, 7], 21600000)
>>> try:
...     RecommendConfig.model_validate({"user_tower": "u", "ranker": "r", "rerank": {"mmr_lambda": 2}})
... except ValueError as exc:
...     print(exc.errors()[0]["loc"], exc.errors()[0]["type"])
('rerank', 'mmr_lambda') less_than_equal
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.bandits.spec import BanditSpec
from serving.config import DurationMs, load_yaml_config


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class RetrievalConfig(_Section):
    """FAISS candidate generation."""

    candidates: int = Field(200, ge=1, le=10_000)
    index: dict[str, Any] = Field(default_factory=dict)  # engine.retrieval.index.IndexConfig fields
    items_topic: str | None = None  # None: kafka.items_topic of the rtml config
    snapshot: str | None = None
    from_beginning: bool = True
    threads: int = Field(0, ge=0)  # FAISS search threads in the pool (each search 1 OpenMP thread)
    # Searches run on the event loop (no thread hand-off) while the index holds at most this
    # many items; 0: always in the pool.
    inline_max_items: int = Field(50_000, ge=0)


class Freshness(_Section):
    """``score * (1 + boost * 2^(-age / half_life))``; ``boost: 0`` disables it."""

    half_life_ms: DurationMs = Field(6 * 3_600_000, alias="half_life", gt=0)
    boost: float = Field(0.0, ge=0)


class SeenFilter(_Section):
    """Items the user had an impression of within ``window`` (from a user x item view)."""

    view: str = "user_item"
    column: str = "impressions"  # the feature whose per-window columns are read
    window: str = "24h"  # the window suffix of the column: impressions_24h


class RerankConfig(_Section):
    """Re-ranking of the ranked candidates (serving/recommend/rerank.py)."""

    mmr_lambda: float | None = Field(None, ge=0, le=1)
    mmr_pool: int = Field(50, ge=1)
    category_caps: dict[str, int] | None = None  # "default" applies to unnamed categories
    freshness: Freshness = Field(default_factory=Freshness)
    seen: SeenFilter | None = Field(default_factory=SeenFilter)
    blocked_key: str | None = "blocked:{user_id}"  # under the Redis key prefix

    @field_validator("category_caps")
    @classmethod
    def _positive(cls, caps: dict[str, int] | None) -> dict[str, int] | None:
        if caps is not None and any(v < 1 for v in caps.values()):
            raise ValueError("category caps must be at least 1")
        return caps


class ExplorationConfig(_Section):
    """Exploration slots for cold-start items, chosen by a dynamic-arm Thompson bandit."""

    slots: int = Field(0, ge=0)
    positions: list[int] | None = None
    bandit: str = "rec-explore"
    prior_alpha: float = Field(1.0, gt=0)
    prior_beta: float = Field(1.0, gt=0)
    max_age_ms: DurationMs | None = Field(24 * 3_600_000, alias="max_age")
    max_impressions: int | None = Field(100, ge=0)
    impressions_source: str = "item.impressions_24h"

    @model_validator(mode="after")
    def _positions(self) -> "ExplorationConfig":
        if self.positions is not None:
            if len(self.positions) != self.slots or len(set(self.positions)) != len(self.positions):
                raise ValueError("exploration.positions must list one distinct position per slot")
            if any(p < 0 for p in self.positions):
                raise ValueError("exploration.positions are 0-based positions (>= 0)")
        return self

    def slot_positions(self) -> list[int]:
        """Where the slots go (0-based); the default spreads them: 2, 7, 12, ..."""
        if self.positions is not None:
            return sorted(self.positions)
        return [2 + 5 * i for i in range(self.slots)]

    def bandit_spec(self) -> BanditSpec:
        """The bandit spec the learning dataflow's bandit file must list for rewards to apply."""
        return BanditSpec(name=self.bandit, policy="thompson", dynamic_arms=True,
                          params={"prior_alpha": self.prior_alpha, "prior_beta": self.prior_beta})


class PopularConfig(_Section):
    """The popular-items fallback: the top ``size`` index items by an item feature."""

    source: str = "item.clicks_24h"
    size: int = Field(200, ge=1)
    refresh_ms: DurationMs = Field(30_000, alias="refresh", gt=0)


class RecommendConfig(_Section):
    """The whole file (module docstring)."""

    user_tower: str = Field(min_length=1)
    ranker: str = Field(min_length=1)
    ranker_output: str = "probability"
    max_k: int = Field(50, ge=1, le=1000)
    # Candidates' item-view rows read within this long are reused (0: read every request).
    item_cache_ms: DurationMs = Field(1000, alias="item_cache", ge=0)
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    rerank: RerankConfig = Field(default_factory=RerankConfig)
    exploration: ExplorationConfig = Field(default_factory=ExplorationConfig)
    popular: PopularConfig = Field(default_factory=PopularConfig)


def load_recommend_config(path: str | Path) -> RecommendConfig:
    """Read and validate the YAML file; ``ValueError`` naming the file and every problem."""
    return load_yaml_config(path, RecommendConfig, "recommend config")
