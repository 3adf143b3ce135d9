"""Per-model routing of rtml.v1 Predict: primary, canary, A/B and shadow versions.

A request that names a version gets that version and is not routed. Otherwise the model's
``routing`` config (see :class:`~serving.config.Routing`) decides, per request:

* **canary** -- ``percent`` % of entities go to the canary version. The entity is
  ``entity_ids[key]`` of the request's first instance that has it (a ranking request scores
  many items for one user: all of them share the decision).
* **ab** -- entities are split between named variants in proportion to their weights; the
  variant's name comes back in ``PredictResponse.variant``.
* **shadow** -- additionally scores the same inputs with the shadow version, off the response
  path (see :mod:`serving.predict`).

Splits use a *stable* hash: BLAKE2b of ``<model>/<kind>/<entity>`` into 10 000 buckets
(basis points), never Python's ``hash()`` (randomised per process), so an entity sees the
same variant in every process and after every restart, and a model's canary and A/B splits
are independent of each other and of other models'. A request without the routing key
falls back to its request id: routed by the same rule, but not sticky.

>>> from serving.config import Routing
>>> router = Router("ranker", Routing.model_validate({"canary": {"version": "2", "percent": 25}}))
>>> [router.choose(f"user-{i}").variant for i in range(6)]
['primary', 'primary', 'canary', 'primary', 'primary', 'primary']
>>> router.choose("user-0") == router.choose("user-0")
True
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Iterable, Sequence

from serving.config import Routing

BUCKETS = 10_000  # basis points: percentages with two decimals are exact
PRIMARY = "primary"
CANARY = "canary"
SHADOW = "shadow"


def stable_bucket(salt: str, key: str, buckets: int = BUCKETS) -> int:
    """``key``'s bucket in ``[0, buckets)``, the same in every process (BLAKE2b, 64 bits).

    >>> stable_bucket("m/canary", "u42") == stable_bucket("m/canary", "u42")
    True
    """
    digest = hashlib.blake2b(f"{salt}/{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % buckets


@dataclass(frozen=True, slots=True)
class Route:
    """Where one request goes: ``version`` (None = the primary version) and variant name."""

    variant: str
    version: str | None


class Router:
    """Routing decisions for one model's :class:`~serving.config.Routing` (pure, no I/O)."""

    def __init__(self, model: str, routing: Routing) -> None:
        self.model = model
        self.routing = routing
        self.shadow_version: str | None = routing.shadow.version if routing.shadow else None
        self.key_field: str | None = None
        self._canary_cut = 0
        self._ab_names: list[str] = []
        self._ab_versions: list[str] = []
        self._ab_cuts: list[int] = []
        if routing.canary is not None:
            self.key_field = routing.canary.key
            self._canary_cut = round(routing.canary.percent * BUCKETS / 100)
        elif routing.ab is not None:
            self.key_field = routing.ab.sticky_key
            variants = list(routing.ab.variants.items())
            total = sum(v.weight for _, v in variants)
            # Cumulative bucket boundaries; the last one is BUCKETS exactly, so every bucket
            # belongs to some variant whatever the float rounding of the weights.
            cuts = [round(c * BUCKETS / total) for c in accumulate(v.weight for _, v in variants)]
            cuts[-1] = BUCKETS
            self._ab_names = [name for name, _ in variants]
            self._ab_versions = [v.version for _, v in variants]
            self._ab_cuts = cuts
        # Versions that serve only routed traffic: the primary (default) skips them.
        self.excluded: frozenset[str] = frozenset(
            v
            for v in (
                self.shadow_version,
                routing.canary.version if routing.canary else None,
            )
            if v is not None
        )

    @property
    def splits(self) -> bool:
        """True when requests are split by entity (canary or A/B)."""
        return self.key_field is not None

    def routing_key(self, entity_ids: Iterable[Any], fallback: str) -> str:
        """The first instance's ``entity_ids[key]`` that is set, else ``fallback`` (the request id)."""
        field = self.key_field
        if field is not None:
            for ids in entity_ids:
                value = ids.get(field)
                if value:
                    return value
        return fallback

    def choose(self, key: str) -> Route:
        """The variant for a routing key (an entity id)."""
        routing = self.routing
        if routing.canary is not None:
            if stable_bucket(f"{self.model}/canary", key) < self._canary_cut:
                return Route(CANARY, routing.canary.version)
            return Route(PRIMARY, routing.primary)
        if self._ab_cuts:
            index = bisect_right(self._ab_cuts, stable_bucket(f"{self.model}/ab", key))
            return Route(self._ab_names[index], self._ab_versions[index])
        return Route(PRIMARY, routing.primary)

    def pick_primary(self, ready_versions: Sequence[str]) -> str | None:
        """The configured primary, else the highest READY version not reserved for routed traffic.

        ``ready_versions`` in ascending order. Falls back to the highest READY version when
        every one is reserved (a lone canary still answers).
        """
        if self.routing.primary is not None:
            return self.routing.primary
        for version in reversed(ready_versions):
            if version not in self.excluded:
                return version
        return ready_versions[-1] if ready_versions else None
