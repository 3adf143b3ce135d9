"""The two parts of an :class:`~engine.retrieval.index.ItemIndex`: the built main segment and the delta.

* :class:`MainSegment`: a FAISS index built from a snapshot of the catalogue, immutable
  except for its ``alive`` flags (tombstones of items removed or replaced since the build).
* :class:`DeltaBuffer`: the vectors added or replaced since that snapshot, append-only and
  searched exactly with one matrix product (small: at most ``rebuild_after`` rows).

Rows are addressed by position; an item's current version lives in exactly one live row.
Rows below a reader's captured count never change, so searches read them without a lock.

>>> import numpy as np
>>> d = DeltaBuffer(dim=2)
>>> d.append(["a", "b"], np.array([[1, 0], [0, 1]], np.float32))
0
>>> d.kill(0)
>>> scores, pos = d.search(np.array([[1, 0.5]], np.float32), d.n, 2, "ip")
>>> pos.tolist(), scores.tolist()  # the dead row still ranks, as -1
([[-1, 1]], [[1.0, 0.5]])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import faiss
import numpy as np

from engine.retrieval.backends import Backend


@dataclass
class MainSegment:
    """A build: ``backend`` indexes ``vectors`` row by row; ``ids[pos]`` names row ``pos``."""

    backend: Backend | None  # None: nothing built yet (empty)
    ids: np.ndarray  # object array of str
    vectors: np.ndarray  # (n, dim) float32, read-only
    alive: np.ndarray  # bool per row; False: removed or replaced since the build
    dead: int = 0
    build_seconds: float = 0.0

    @classmethod
    def empty(cls, dim: int) -> MainSegment:
        return cls(None, np.empty(0, dtype=object), np.empty((0, dim), np.float32), np.empty(0, bool))

    @property
    def n(self) -> int:
        return len(self.ids)

    def kill(self, pos: int) -> None:
        if self.alive[pos]:
            self.alive[pos] = False
            self.dead += 1

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.backend is None or k <= 0:
            empty = np.empty((len(queries), 0))
            return empty.astype(np.float32), empty.astype(np.int64)
        return self.backend.search(queries, k)


@dataclass
class DeltaBuffer:
    """Append-only rows since the last build; grows by doubling (readers keep the old arrays)."""

    dim: int
    vectors: np.ndarray = field(init=False)
    alive: np.ndarray = field(init=False)
    ids: list[str] = field(default_factory=list)
    n: int = 0
    dead: int = 0

    def __post_init__(self) -> None:
        self.vectors = np.empty((64, self.dim), np.float32)
        self.alive = np.zeros(64, bool)

    def append(self, ids: Sequence[str], vectors: np.ndarray) -> int:
        """Add rows (call under the index lock); returns the first new position."""
        start, end = self.n, self.n + len(ids)
        if end > len(self.vectors):
            cap = max(end, 2 * len(self.vectors))
            # New arrays, never resized in place: a concurrent search keeps reading the old ones.
            vectors_, alive_ = np.empty((cap, self.dim), np.float32), np.zeros(cap, bool)
            vectors_[:start], alive_[:start] = self.vectors[:start], self.alive[:start]
            self.vectors, self.alive = vectors_, alive_
        self.vectors[start:end] = vectors
        self.alive[start:end] = True
        self.ids.extend(ids)
        self.n = end  # last: readers that see the new count see the rows
        return start

    def kill(self, pos: int) -> None:
        if self.alive[pos]:
            self.alive[pos] = False
            self.dead += 1

    def search(self, queries: np.ndarray, n: int, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """Exact best-first ``(scores, positions)`` over the first ``n`` rows; dead rows come back as -1.

        ``faiss.knn`` rather than a numpy product: numpy's BLAS runs its own thread pool, and
        on a busy 2-core box a 1x64 by 64x11k product took 20 µs or 2 ms depending on whether
        its second thread got a core (FIELD-NOTES' thread warning); FAISS honours the pinned
        OpenMP thread count. Dead rows come back blanked (the caller over-fetches).
        """
        k = min(n, k)
        if n == 0 or k <= 0:
            empty = np.empty((len(queries), 0))
            return empty.astype(np.float32), empty.astype(np.int64)
        kind = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
        dist, pos = faiss.knn(queries, self.vectors[:n], k, metric=kind)
        scores = dist if metric == "ip" else -dist
        dead = pos >= 0
        dead[dead] = ~self.alive[pos[dead]]
        pos[dead] = -1
        return scores, pos
