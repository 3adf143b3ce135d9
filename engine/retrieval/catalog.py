"""What the index knows about an item besides its vector.

>>> m = ItemMeta("i1", "shoes", created_ms=1_000, updated_ms=1_000)
>>> later = ItemMeta("i1", "boots", created_ms=5_000, updated_ms=5_000)
>>> merged = later.replacing(m)
>>> merged.category, merged.created_ms, merged.updated_ms
('boots', 1000, 5000)
>>> ItemMeta.from_dict(merged.to_dict()) == merged
True
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class ItemMeta:
    """Catalogue facts the re-ranker uses: category filters/diversity, age for freshness boosts."""

    item_id: str
    category: str | None
    created_ms: int  # first time the item was seen (freshness boost)
    updated_ms: int
    active: bool = True

    def replacing(self, previous: ItemMeta | None) -> ItemMeta:
        """This meta as the successor of ``previous``: the item keeps its first-seen time."""
        if previous is None or previous.created_ms >= self.created_ms:
            return self
        return replace(self, created_ms=previous.created_ms)

    def to_dict(self) -> dict[str, Any]:
        return {"item_id": self.item_id, "category": self.category, "created_ms": self.created_ms,
                "updated_ms": self.updated_ms, "active": self.active}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ItemMeta:
        return cls(d["item_id"], d.get("category"), int(d["created_ms"]), int(d["updated_ms"]),
                   bool(d.get("active", True)))
