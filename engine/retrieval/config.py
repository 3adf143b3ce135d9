"""How an :class:`~engine.retrieval.index.ItemIndex` is built and searched.

>>> cfg = IndexConfig(dim=64)
>>> cfg.kind, cfg.metric, cfg.threads
('hnsw', 'ip', 1)
>>> IndexConfig(dim=64, kind="ivf", nprobe=0)
Traceback (most recent call last):
...
ValueError: nprobe must be >= 1, got 0
>>> IndexConfig.from_dict({"dim": 8, "kind": "flat"}).kind
'flat'
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, Mapping

Metric = Literal["ip", "l2"]
Kind = Literal["hnsw", "ivf", "flat"]
GpuPolicy = Literal["auto", "never", "always"]


@dataclass(frozen=True)
class IndexConfig:
    """Index shape and knobs; the defaults are the FIELD-NOTES operating point (HNSW32, ef 64).

    * ``metric``: ``"ip"`` for L2-normalised two-tower embeddings (cosine), ``"l2"`` otherwise.
      Scores are always "higher is better": the inner product, or minus the squared L2 distance.
    * ``kind``: the main index. ``hnsw`` (CPU; cannot remove, which the delta + tombstones
      design works around), ``ivf`` (``ivf_lists`` lists, default ``4·sqrt(n)``; trained at each
      build), ``flat`` (exact). ``use_gpu="auto"`` with a GPU present builds ``GpuIndexFlat`` for
      ``hnsw``/``flat`` (FAISS has no GPU HNSW; an exact GPU scan of a few million 64-d items
      takes well under a millisecond) and ``GpuIndexIVFFlat`` for ``ivf``.
    * ``threads``: OpenMP threads of one search, set in the *calling* thread before each search
      (libgomp keeps the setting per OS thread: see docs/retrieval.md). ``build_threads`` is the
      same for the background rebuild thread, which never slows the searching threads down.
    * ``rebuild_after``: changes (upserts + removals) since the last build that start a
      background rebuild; ``auto_rebuild=False`` leaves rebuilding to the caller.
    """

    dim: int
    metric: Metric = "ip"
    kind: Kind = "hnsw"
    hnsw_m: int = 32
    ef_search: int = 64
    ef_construction: int = 80
    ivf_lists: int | None = None
    nprobe: int = 32
    use_gpu: GpuPolicy = "auto"
    threads: int = 1
    build_threads: int = 1
    rebuild_after: int = 10_000
    auto_rebuild: bool = True

    def __post_init__(self) -> None:
        if self.metric not in ("ip", "l2"):
            raise ValueError(f"metric must be 'ip' or 'l2', got {self.metric!r}")
        if self.kind not in ("hnsw", "ivf", "flat"):
            raise ValueError(f"kind must be 'hnsw', 'ivf' or 'flat', got {self.kind!r}")
        if self.use_gpu not in ("auto", "never", "always"):
            raise ValueError(f"use_gpu must be 'auto', 'never' or 'always', got {self.use_gpu!r}")
        for name in ("dim", "hnsw_m", "ef_search", "ef_construction", "nprobe", "threads", "build_threads",
                     "rebuild_after"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be >= 1, got {value!r}")
        if self.ivf_lists is not None and self.ivf_lists < 1:
            raise ValueError(f"ivf_lists must be >= 1 or None, got {self.ivf_lists!r}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> IndexConfig:
        """From a config mapping; unknown keys raise ``TypeError`` (a typo must not pass silently)."""
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (snapshots store them)."""
        return dataclasses.asdict(self)
