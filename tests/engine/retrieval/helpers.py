"""Shared helpers of the retrieval tests."""

from __future__ import annotations

from engine.retrieval.evaluation import clustered_unit_vectors as clustered

__all__ = ["clustered", "ids"]


def ids(n: int, prefix: str = "i") -> list[str]:
    return [f"{prefix}{j}" for j in range(n)]
