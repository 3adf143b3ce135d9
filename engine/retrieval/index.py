"""ItemIndex: nearest-item search over a catalogue that changes while it is searched.

FAISS's fast CPU index (HNSW) cannot remove vectors, and rebuilding it per change is far too
slow, so the index is three parts (docs/retrieval.md has the reasoning and the numbers):

* a **main segment** built from a snapshot of the catalogue (HNSW, IVF or flat; on a GPU a
  ``GpuIndexFlat``/``GpuIndexIVFFlat``, see :class:`~engine.retrieval.config.IndexConfig`);
* a **delta**: vectors added or replaced since that snapshot, searched exactly (a new item is
  recommendable as soon as :meth:`ItemIndex.upsert` returns);
* **tombstones**: main rows whose item was removed or replaced, filtered out of every answer.
  Searches fetch more than ``k`` from the main segment, and more again when filtering leaves
  fewer than ``k``, so answers stay full.

When the delta plus tombstones reach ``rebuild_after``, a background thread builds a new main
segment from a snapshot and swaps it in under the lock (``generation`` counts swaps); changes
made during the build are carried over. Searches hold the lock only to read references.

>>> import numpy as np
>>> index = ItemIndex(IndexConfig(dim=2, kind="flat"), clock=lambda: 1_000)
>>> index.upsert(["a", "b"], np.array([[1, 0], [0, 1]], np.float32))
>>> index.search(np.array([[1, 0.2]], np.float32), 1)
[[('a', 1.0)]]
>>> index.upsert(["a"], np.array([[0, -1]], np.float32))    # replaced: the old vector is gone
>>> [i for i, _ in index.search(np.array([[1, 0.2]], np.float32), 2)[0]]
['b', 'a']
>>> index.remove(["b", "zzz"]), len(index)
(1, 1)
>>> index.search(np.array([[1, 0]], np.float32), 5, exclude=[{"a"}])
[[]]
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from engine.retrieval.backends import GPU_MAX_K, GpuContext, build_backend, choose_device, describe_plan, pin_threads
from engine.retrieval.catalog import ItemMeta
from engine.retrieval.config import IndexConfig
from engine.retrieval.segments import DeltaBuffer, MainSegment

__all__ = ["IndexConfig", "ItemIndex", "ItemMeta"]

log = logging.getLogger(__name__)

#: After a failed background rebuild, wait this long before trying again.
_REBUILD_RETRY_S = 30.0


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _cut_off(scores: np.ndarray, fetched: int, limit: int, floor: float) -> bool:
    """Could rows past the ``fetched`` best of a part still beat ``floor`` (the k-th merged score)?"""
    return fetched < limit and len(scores) > 0 and scores[-1] > floor


@dataclass
class _BuildPlan:
    """What a rebuild captured under the lock; the rest of the build runs without it."""

    main: MainSegment
    delta: DeltaBuffer
    delta_n: int
    main_alive: np.ndarray
    delta_alive: np.ndarray
    delta_vectors: np.ndarray


def _live(plan: _BuildPlan) -> tuple[np.ndarray, np.ndarray]:
    """The live ``(ids, vectors)`` of a capture, main segment first (new arrays)."""
    delta_ids = np.empty(plan.delta_n, dtype=object)
    delta_ids[:] = plan.delta.ids[:plan.delta_n]
    ids = np.concatenate([plan.main.ids[plan.main_alive], delta_ids[plan.delta_alive]])
    vectors = np.ascontiguousarray(np.concatenate([plan.main.vectors[plan.main_alive],
                                                   plan.delta_vectors[plan.delta_alive]]))
    return ids, vectors


class ItemIndex:
    """Thread-safe; searches never block on updates or rebuilds for long (see the module docstring).

    ``clock`` gives epoch ms for the metas of upserts made without one.
    """

    def __init__(self, config: IndexConfig, *, clock: Callable[[], int] = _now_ms) -> None:
        self.config = config
        self._clock = clock
        self.device = choose_device(config)  # raises early for use_gpu="always" without a GPU
        self._gpu = GpuContext() if self.device == "gpu" else None
        self._lock = threading.Lock()  # guards the fields below; held for short, bounded work only
        self._build_lock = threading.Lock()  # one build at a time
        self._main = MainSegment.empty(config.dim)
        self._delta = DeltaBuffer(config.dim)
        self._main_pos: dict[str, int] = {}
        self._delta_pos: dict[str, int] = {}
        self._metas: dict[str, ItemMeta] = {}
        self._generation = 0
        self._rebuilds = 0
        self._rebuild_errors = 0
        self._retry_at = 0.0
        self._thread: threading.Thread | None = None
        self._closed = False

    # ------------------------------------------------------------------ updates

    def _check_vectors(self, vectors: np.ndarray, rows: int) -> np.ndarray:
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim == 1 and rows == 1:
            x = x.reshape(1, -1)
        if x.shape != (rows, self.config.dim):
            raise ValueError(f"expected vectors of shape ({rows}, {self.config.dim}); got {tuple(np.shape(vectors))}")
        if not np.isfinite(x).all():
            raise ValueError("vectors must be finite (NaN or inf found)")
        return x

    def _kill(self, item_id: str) -> bool:
        pos = self._main_pos.pop(item_id, None)
        if pos is not None:
            self._main.kill(pos)
            return True
        pos = self._delta_pos.pop(item_id, None)
        if pos is not None:
            self._delta.kill(pos)
            return True
        return False

    def upsert(self, ids: Sequence[str], vectors: np.ndarray, metas: Sequence[ItemMeta] | None = None) -> None:
        """Add or replace items by id; searchable when this returns. A repeated id: the last one wins.

        Without ``metas`` an item keeps its category and first-seen time, with ``updated_ms``
        now; with them, the first-seen time of an existing item is kept (:meth:`ItemMeta.replacing`).
        """
        ids = list(ids)
        x = self._check_vectors(vectors, len(ids))
        if metas is not None:
            metas = list(metas)
            if len(metas) != len(ids) or any(m.item_id != i for m, i in zip(metas, ids)):
                raise ValueError("metas must be one ItemMeta per id, in the same order")
        if not ids:
            return
        last = {item_id: row for row, item_id in enumerate(ids)}
        if len(last) != len(ids):
            rows = sorted(last.values())
            ids, x = [ids[r] for r in rows], x[rows]
            metas = None if metas is None else [metas[r] for r in rows]
        now = self._clock()
        with self._lock:
            for item_id in ids:
                self._kill(item_id)
            start = self._delta.append(ids, x)
            for offset, item_id in enumerate(ids):
                self._delta_pos[item_id] = start + offset
                previous = self._metas.get(item_id)
                if metas is not None:
                    meta = metas[offset].replacing(previous)
                elif previous is not None:
                    meta = ItemMeta(item_id, previous.category, previous.created_ms, now)
                else:
                    meta = ItemMeta(item_id, None, now, now)
                self._metas[item_id] = meta
        self.maybe_rebuild()

    def update_meta(self, metas: Sequence[ItemMeta]) -> int:
        """Replace the metas of items already indexed (vectors unchanged); returns how many were."""
        done = 0
        with self._lock:
            for meta in metas:
                previous = self._metas.get(meta.item_id)
                if previous is not None:
                    self._metas[meta.item_id] = meta.replacing(previous)
                    done += 1
        return done

    def remove(self, ids: Sequence[str]) -> int:
        """Remove items by id; returns how many were present. Never returned by a later search."""
        removed = 0
        with self._lock:
            for item_id in dict.fromkeys(ids):
                if self._kill(item_id):
                    self._metas.pop(item_id, None)
                    removed += 1
        if removed:
            self.maybe_rebuild()
        return removed

    # ------------------------------------------------------------------ reads

    def search(self, queries: np.ndarray, k: int,
               exclude: Sequence[set[str]] | None = None) -> list[list[tuple[str, float]]]:
        """Per query, up to ``k`` best-first ``(item_id, score)``; ``exclude[i]`` is filtered from query ``i``.

        Scores: inner product (``metric="ip"``) or minus the squared L2 distance. Fewer than
        ``k`` only when the catalogue minus the exclusions is smaller.
        """
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q.reshape(1, -1)
        if q.ndim != 2 or q.shape[1] != self.config.dim:
            raise ValueError(f"expected queries of shape (n, {self.config.dim}); got {tuple(np.shape(queries))}")
        if exclude is not None and len(exclude) != len(q):
            raise ValueError(f"exclude must have one set per query ({len(q)}); got {len(exclude)}")
        if k <= 0 or len(q) == 0:
            return [[] for _ in range(len(q))]
        pin_threads(self.config.threads)
        with self._lock:
            main, delta, delta_n = self._main, self._delta, self._delta.n
        excluded = [set() if exclude is None else exclude[i] for i in range(len(q))]
        widest = max(len(e) for e in excluded)
        # First try per part: room for the exclusions plus as many dead rows as k. A query is
        # asked again (that part only worth doubling) while a part was cut off above its k-th
        # merged score: an unfetched row there could still belong in the answer.
        m_limit = min(main.n, k + widest + main.dead)
        if main.backend is not None and main.backend.device == "gpu":
            m_limit = min(m_limit, GPU_MAX_K)
        d_limit = min(delta_n, k + widest + delta.dead)
        m_fetch = min(m_limit, k + widest + min(main.dead, k))
        d_fetch = min(d_limit, k + widest + min(delta.dead, k))
        results: list[list[tuple[str, float]]] = [[] for _ in range(len(q))]
        todo = np.arange(len(q))
        while True:
            m_scores, m_pos = main.search(q[todo], m_fetch)
            d_scores, d_pos = delta.search(q[todo], delta_n, d_fetch, self.config.metric)
            again = []
            for row, i in enumerate(todo):
                out = results[i] = self._merge(main, m_scores[row], m_pos[row], delta, d_scores[row], d_pos[row],
                                               excluded[i], k)
                floor = out[-1][1] if len(out) == k else -np.inf
                if _cut_off(m_scores[row], m_fetch, m_limit, floor) or _cut_off(d_scores[row], d_fetch, d_limit, floor):
                    again.append(i)
            if not again:
                return results
            todo, m_fetch, d_fetch = np.array(again), min(m_limit, 2 * m_fetch), min(d_limit, 2 * d_fetch)

    @staticmethod
    def _merge(main: MainSegment, m_scores: np.ndarray, m_pos: np.ndarray, delta: DeltaBuffer,
               d_scores: np.ndarray, d_pos: np.ndarray, excluded: set[str], k: int) -> list[tuple[str, float]]:
        candidates: list[tuple[float, str]] = []
        alive, ids = main.alive, main.ids
        for score, pos in zip(m_scores.tolist(), m_pos.tolist()):
            if pos >= 0 and alive[pos]:
                item_id = ids[pos]
                if item_id not in excluded:
                    candidates.append((score, item_id))
        d_alive, d_ids = delta.alive, delta.ids
        for score, pos in zip(d_scores.tolist(), d_pos.tolist()):
            if pos >= 0 and d_alive[pos]:
                item_id = d_ids[pos]
                if item_id not in excluded:
                    candidates.append((score, item_id))
        candidates.sort(key=lambda c: -c[0])
        out: list[tuple[str, float]] = []
        seen: set[str] = set()
        for score, item_id in candidates:
            if item_id not in seen:  # an item replaced mid-search may show in both parts once
                seen.add(item_id)
                out.append((item_id, score))
                if len(out) == k:
                    break
        return out

    def meta(self, ids: Sequence[str]) -> list[ItemMeta | None]:
        """The meta of each id (None for an id not in the index)."""
        metas = self._metas
        return [metas.get(i) for i in ids]

    def vectors(self, ids: Sequence[str]) -> np.ndarray:
        """Current vectors, ``(len(ids), dim)``; an unknown id gives a row of zeros.

        (Zeros, not an error: an item removed between retrieval and re-ranking then simply
        looks unlike everything to MMR.)
        """
        out = np.zeros((len(ids), self.config.dim), np.float32)
        with self._lock:
            for row, item_id in enumerate(ids):
                pos = self._main_pos.get(item_id)
                if pos is not None:
                    out[row] = self._main.vectors[pos]
                    continue
                pos = self._delta_pos.get(item_id)
                if pos is not None:
                    out[row] = self._delta.vectors[pos]
        return out

    def items(self) -> tuple[list[str], np.ndarray]:
        """Every live item: ``(ids, vectors)`` (a copy; for exact-search evaluation and exports)."""
        ids, vectors = _live(self._capture())
        return ids.tolist(), vectors

    def _capture(self) -> _BuildPlan:
        """References to the segments and copies of their tombstones (small), under the lock."""
        with self._lock:
            main, delta, n = self._main, self._delta, self._delta.n
            return _BuildPlan(main, delta, n, main.alive.copy(), delta.alive[:n].copy(), delta.vectors[:n])

    def __len__(self) -> int:
        return len(self._metas)

    @property
    def size(self) -> int:
        """Live items (same as ``len``)."""
        return len(self._metas)

    @property
    def generation(self) -> int:
        """How many builds have been swapped in (0: everything is still in the delta)."""
        return self._generation

    def stats(self) -> dict[str, Any]:
        """Sizes, tombstones, builds: for /metrics and debugging."""
        with self._lock:
            main, delta = self._main, self._delta
            return {
                "size": len(self._metas),
                "generation": self._generation,
                "main_rows": main.n,
                "main_dead": main.dead,
                "delta_rows": delta.n,
                "delta_dead": delta.dead,
                "pending_changes": delta.n + main.dead,
                "rebuild_after": self.config.rebuild_after,
                "rebuilding": self._thread is not None and self._thread.is_alive(),
                "rebuilds": self._rebuilds,
                "rebuild_errors": self._rebuild_errors,
                "last_build_seconds": main.build_seconds,
                "index": main.backend.description if main.backend is not None else "none",
                "next_index": describe_plan(self.config, len(self._metas)),
                "device": self.device,
                "threads": self.config.threads,
            }

    # ------------------------------------------------------------------ rebuilds

    def maybe_rebuild(self) -> bool:
        """Start a background rebuild when ``rebuild_after`` changes are pending; True if one started."""
        if not self.config.auto_rebuild or self._closed:
            return False
        with self._lock:
            pending = self._delta.n + self._main.dead
            busy = self._thread is not None and self._thread.is_alive()
            if pending < self.config.rebuild_after or busy or time.monotonic() < self._retry_at:
                return False
            self._thread = threading.Thread(target=self._background_rebuild, name="item-index-rebuild", daemon=True)
            self._thread.start()
        return True

    def _background_rebuild(self) -> None:
        pin_threads(self.config.build_threads)
        try:
            self.rebuild()
        except Exception:  # a failed build leaves the old segments serving; retry later
            log.exception("item index rebuild failed; retrying in %.0f s", _REBUILD_RETRY_S)
            with self._lock:
                self._rebuild_errors += 1
                self._retry_at = time.monotonic() + _REBUILD_RETRY_S

    def rebuild(self) -> None:
        """Build a main segment from everything live and swap it in (synchronous)."""
        with self._build_lock:
            plan = self._capture()
            segment, positions = self._build(plan)
            with self._lock:
                self._swap(plan, segment, positions)

    def _build(self, plan: _BuildPlan) -> tuple[MainSegment, dict[str, int]]:
        started = time.perf_counter()
        ids, vectors = _live(plan)
        vectors.setflags(write=False)
        backend = build_backend(self.config, vectors, self._gpu) if len(ids) else None
        positions = {item_id: pos for pos, item_id in enumerate(ids.tolist())}
        segment = MainSegment(backend, ids, vectors, np.ones(len(ids), bool),
                              build_seconds=time.perf_counter() - started)
        return segment, positions

    def _swap(self, plan: _BuildPlan, segment: MainSegment, positions: dict[str, int]) -> None:
        """Install ``segment``; replay what changed since ``plan`` was captured (under the lock)."""
        old_main, old_delta, n = plan.main, plan.delta, plan.delta_n
        # Rows alive at capture and dead now were removed/replaced during the build.
        new_main_pos = np.cumsum(plan.main_alive) - 1
        new_delta_pos = np.cumsum(plan.delta_alive) - 1 + int(plan.main_alive.sum())
        killed = np.concatenate([new_main_pos[plan.main_alive & ~old_main.alive],
                                 new_delta_pos[plan.delta_alive & ~old_delta.alive[:n]]])
        for pos in killed.tolist():
            segment.kill(pos)
            positions.pop(segment.ids[pos], None)
        # Rows appended during the build form the new delta (dead ones are simply dropped).
        delta = DeltaBuffer(self.config.dim)
        delta_pos: dict[str, int] = {}
        tail = [p for p in range(n, old_delta.n) if old_delta.alive[p]]
        if tail:
            tail_ids = [old_delta.ids[p] for p in tail]
            start = delta.append(tail_ids, old_delta.vectors[tail])
            delta_pos = {item_id: start + j for j, item_id in enumerate(tail_ids)}
        self._main, self._delta = segment, delta
        self._main_pos, self._delta_pos = positions, delta_pos
        self._generation += 1
        self._rebuilds += 1

    # ------------------------------------------------------------------ snapshots, lifecycle

    def save(self, path: str | Path) -> Path:
        """Write a snapshot file (see :mod:`engine.retrieval.snapshot`); returns its path."""
        from engine.retrieval.snapshot import write_snapshot

        return write_snapshot(self, Path(path))

    @classmethod
    def load(cls, path: str | Path, config: IndexConfig | None = None) -> ItemIndex:
        """An index restored from :meth:`save` without rebuilding (``config``: runtime knobs to use instead)."""
        from engine.retrieval.snapshot import read_snapshot

        return read_snapshot(cls, Path(path), config)

    def close(self) -> None:
        """Stop starting rebuilds and wait for one in progress."""
        self._closed = True
        thread = self._thread
        if thread is not None:
            thread.join()

    def __enter__(self) -> ItemIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
