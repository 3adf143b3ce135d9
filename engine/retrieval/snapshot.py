"""ItemIndex snapshots: one ``.npz`` file, so that a restart skips the (minutes-long) HNSW build.

Contents (no pickles: ``np.load(..., allow_pickle=False)`` reads it): the serialised FAISS
main index (``faiss.serialize_index``; a GPU index is stored as its CPU copy), the main
segment's vectors and tombstones, the delta rows, and one JSON document with the config,
the item ids of every row and the metas. Written to a temporary file and renamed, so a
crash mid-save never leaves a torn snapshot. A snapshot loaded on a machine that would
build a different index (a GPU picks ``GpuIndexFlat`` for ``kind="hnsw"``) is rebuilt from
the stored vectors instead (:func:`~engine.retrieval.backends.backend_from_bytes`).
"""

from __future__ import annotations

import dataclasses
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import orjson

from engine.retrieval.backends import backend_from_bytes
from engine.retrieval.catalog import ItemMeta
from engine.retrieval.config import IndexConfig
from engine.retrieval.segments import DeltaBuffer, MainSegment

if TYPE_CHECKING:
    from engine.retrieval.index import ItemIndex

FORMAT = "rtml-item-index/1"
#: Fields of a loaded snapshot's config that may differ from the saved one (search-time knobs).
RUNTIME_FIELDS = frozenset({"ef_search", "nprobe", "use_gpu", "threads", "build_threads", "rebuild_after",
                            "auto_rebuild"})


def write_snapshot(index: ItemIndex, path: Path) -> Path:
    """Write ``index`` to ``path`` atomically (temporary file + rename); returns ``path``."""
    with index._lock:  # references and small copies only: the arrays below are immutable or copied
        main, delta, n = index._main, index._delta, index._delta.n
        main_alive, main_dead = main.alive.copy(), main.dead
        delta_alive, delta_vectors, delta_ids = delta.alive[:n].copy(), delta.vectors[:n], delta.ids[:n]
        metas = list(index._metas.values())
        generation = index._generation
    doc = {
        "format": FORMAT,
        "config": index.config.to_dict(),
        "generation": generation,
        "main_ids": main.ids.tolist(),
        "main_dead": main_dead,
        "delta_ids": delta_ids,
        "metas": [m.to_dict() for m in metas],
    }
    index_bytes = main.backend.to_bytes() if main.backend is not None else np.empty(0, np.uint8)
    buf = io.BytesIO()
    np.savez(buf, doc=np.frombuffer(orjson.dumps(doc), np.uint8), faiss=index_bytes, main_vectors=main.vectors,
             main_alive=main_alive, delta_vectors=delta_vectors, delta_alive=delta_alive)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.getbuffer())
    os.replace(tmp, path)
    return path


def _merge_config(saved: IndexConfig, given: IndexConfig | None) -> IndexConfig:
    if given is None:
        return saved
    fixed = {f.name for f in dataclasses.fields(IndexConfig)} - RUNTIME_FIELDS
    differing = sorted(name for name in fixed if getattr(saved, name) != getattr(given, name))
    if differing:
        raise ValueError(f"snapshot was built with a different {', '.join(differing)}; rebuild instead of loading")
    return given


def read_snapshot(cls: type[ItemIndex], path: Path, config: IndexConfig | None = None) -> ItemIndex:
    """The index stored at ``path`` (``config`` may change the :data:`RUNTIME_FIELDS` only)."""
    with np.load(path, allow_pickle=False) as z:
        doc = orjson.loads(z["doc"].tobytes())
        if doc.get("format") != FORMAT:
            raise ValueError(f"{path}: not an item index snapshot (format {doc.get('format')!r})")
        arrays = {name: z[name] for name in ("faiss", "main_vectors", "main_alive", "delta_vectors", "delta_alive")}
    cfg = _merge_config(IndexConfig.from_dict(doc["config"]), config)
    index = cls(cfg)
    ids = np.empty(len(doc["main_ids"]), dtype=object)
    ids[:] = doc["main_ids"]
    vectors = np.ascontiguousarray(arrays["main_vectors"], dtype=np.float32)
    vectors.setflags(write=False)
    backend = backend_from_bytes(arrays["faiss"], cfg, vectors, index._gpu) if len(ids) else None
    alive = arrays["main_alive"].astype(bool)
    index._main = MainSegment(backend, ids, vectors, alive, dead=int(doc["main_dead"]))
    index._main_pos = {item_id: pos for pos, item_id in enumerate(doc["main_ids"]) if alive[pos]}
    delta = DeltaBuffer(cfg.dim)
    live = [p for p, a in enumerate(arrays["delta_alive"].tolist()) if a]
    live_ids = [doc["delta_ids"][p] for p in live]
    if live:
        delta.append(live_ids, arrays["delta_vectors"][live])
    index._delta = delta
    index._delta_pos = {item_id: j for j, item_id in enumerate(live_ids)}
    index._metas = {m["item_id"]: ItemMeta.from_dict(m) for m in doc["metas"]}
    index._generation = int(doc["generation"])
    return index
