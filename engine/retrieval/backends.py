"""The FAISS index behind a build: which one, on which device, searched how.

A :class:`Backend` indexes the rows ``0..n-1`` of one matrix (positions, not item ids:
:class:`~engine.retrieval.segments.MainSegment` maps them back), so every FAISS index type
works the same way, GPU ones included (``GpuIndexFlat`` has no ``add_with_ids``).

>>> import numpy as np
>>> cfg = IndexConfig(dim=4, kind="flat", use_gpu="never")
>>> x = np.eye(4, dtype=np.float32)
>>> b = build_backend(cfg, x)
>>> b.description, b.device
('IndexFlatIP', 'cpu')
>>> scores, pos = b.search(x[:1], 2)
>>> pos[0].tolist(), scores[0].tolist()
([0, 1], [1.0, 0.0])
>>> choose_device(IndexConfig(dim=4), gpus=1), choose_device(IndexConfig(dim=4, use_gpu="never"), gpus=1)
('gpu', 'cpu')
>>> describe_plan(IndexConfig(dim=4, kind="hnsw"), n=1_000, gpus=1)
'GpuIndexFlatIP'
>>> describe_plan(IndexConfig(dim=4, kind="ivf"), n=1_000_000, gpus=0)
'IndexIVFFlat(nlist=4000, nprobe=32)'
"""

from __future__ import annotations

import math
import threading
from typing import Any, Literal

import faiss
import numpy as np

from engine.retrieval.config import IndexConfig

Device = Literal["cpu", "gpu"]

#: FAISS GPU indexes answer at most this many neighbours per query (and probe at most this many lists).
GPU_MAX_K = 2048
#: k-means wants >= 39 points per list (FAISS warns below that): fewer lists on small catalogues.
_MIN_POINTS_PER_LIST = 39


def pin_threads(threads: int) -> None:
    """Use ``threads`` OpenMP threads for FAISS calls made *by the calling OS thread*.

    libgomp (the runtime in the FAISS wheels) keeps ``omp_set_num_threads`` per thread that
    is not inside a parallel region: the main thread's setting does not reach a gRPC worker
    thread, so every searching thread pins itself (cheap: it sets one thread-local value).
    """
    if faiss.omp_get_max_threads() != threads:
        faiss.omp_set_num_threads(threads)


def gpu_count() -> int:
    """GPUs FAISS can use (0 on a CPU-only machine, also with the GPU wheel installed)."""
    try:
        return int(faiss.get_num_gpus())
    except AttributeError:  # a faiss-cpu build
        return 0


def choose_device(config: IndexConfig, gpus: int | None = None) -> Device:
    """``"gpu"`` when the policy allows one and one is present; ``use_gpu="always"`` without one raises."""
    gpus = gpu_count() if gpus is None else gpus
    if config.use_gpu == "never":
        return "cpu"
    if gpus > 0:
        return "gpu"
    if config.use_gpu == "always":
        raise RuntimeError("IndexConfig.use_gpu='always' but FAISS sees no GPU")
    return "cpu"


def ivf_lists(config: IndexConfig, n: int) -> int:
    """Inverted lists for ``n`` vectors: ``ivf_lists`` or ``4·sqrt(n)``, at most ``n / 39``.

    >>> ivf_lists(IndexConfig(dim=8, kind="ivf"), 200_000), ivf_lists(IndexConfig(dim=8, kind="ivf"), 100)
    (1788, 2)
    """
    wanted = config.ivf_lists or max(1, int(4 * math.sqrt(n)))
    return max(1, min(wanted, n // _MIN_POINTS_PER_LIST))


def _metric(config: IndexConfig) -> int:
    return faiss.METRIC_INNER_PRODUCT if config.metric == "ip" else faiss.METRIC_L2


def _flat_name(config: IndexConfig) -> str:
    return "IndexFlatIP" if config.metric == "ip" else "IndexFlatL2"


def describe_plan(config: IndexConfig, n: int, gpus: int | None = None) -> str:
    """The index a build of ``n`` vectors makes (what ``use_gpu="auto"`` picks, for docs and stats)."""
    device = choose_device(config, gpus)
    if config.kind == "ivf":
        lists = ivf_lists(config, n)
        name = "GpuIndexIVFFlat" if device == "gpu" else "IndexIVFFlat"
        return f"{name}(nlist={lists}, nprobe={min(config.nprobe, lists)})"
    if device == "gpu":
        return "Gpu" + _flat_name(config)  # no GPU HNSW in FAISS: an exact GPU scan instead
    if config.kind == "hnsw":
        return f"IndexHNSWFlat(M={config.hnsw_m}, efSearch={config.ef_search})"
    return _flat_name(config)


class Backend:
    """One built FAISS index over positions ``0..n-1``; scores are "higher is better"."""

    def __init__(self, index: Any, config: IndexConfig, device: Device, description: str,
                 gpu_lock: threading.Lock | None = None) -> None:
        self.index, self.config, self.device, self.description = index, config, device, description
        self.n = int(index.ntotal)
        # GpuResources are not thread-safe: GPU calls of one ItemIndex go through one lock.
        self._gpu_lock = gpu_lock

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, positions)``, each ``(len(queries), k')`` with ``k' = min(k, n)``; position -1: none."""
        k = min(k, self.n, GPU_MAX_K) if self.device == "gpu" else min(k, self.n)
        if k <= 0:
            empty = np.empty((len(queries), 0))
            return empty.astype(np.float32), empty.astype(np.int64)
        if self._gpu_lock is not None:
            with self._gpu_lock:
                dist, pos = self.index.search(queries, k)
        else:
            dist, pos = self.index.search(queries, k)
        scores = dist if self.config.metric == "ip" else -dist  # L2 distances: smaller is better
        return scores, pos

    def to_bytes(self) -> np.ndarray:
        """The index serialised (a CPU copy of a GPU index), for snapshots."""
        index = self.index
        if self.device == "gpu":
            with self._gpu_lock or threading.Lock():
                index = faiss.index_gpu_to_cpu(index)
        return faiss.serialize_index(index)


class GpuContext:
    """The ``StandardGpuResources`` and lock one ItemIndex shares between its builds (created lazily)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._resources: Any = None

    @property
    def resources(self) -> Any:
        if self._resources is None:
            self._resources = faiss.StandardGpuResources()
        return self._resources


def _set_search_params(index: Any, config: IndexConfig, device: Device) -> None:
    if device == "gpu":
        if isinstance(index, faiss.GpuIndexIVF):
            faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", min(config.nprobe, index.nlist, GPU_MAX_K))
        return
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = config.ef_search
    elif isinstance(index, faiss.IndexIVF):
        index.nprobe = min(config.nprobe, index.nlist)


def _cpu_index(config: IndexConfig, vectors: np.ndarray) -> Any:
    dim, metric = config.dim, _metric(config)
    if config.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, config.hnsw_m, metric)
        index.hnsw.efConstruction = config.ef_construction
    elif config.kind == "ivf":
        quantizer = faiss.IndexFlatIP(dim) if config.metric == "ip" else faiss.IndexFlatL2(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, ivf_lists(config, len(vectors)), metric)
        index.train(vectors)
    else:
        index = faiss.IndexFlatIP(dim) if config.metric == "ip" else faiss.IndexFlatL2(dim)
    index.add(vectors)
    return index


def _gpu_index(config: IndexConfig, vectors: np.ndarray, gpu: GpuContext) -> Any:
    res, dim, metric = gpu.resources, config.dim, _metric(config)
    if config.kind == "ivf":
        index = faiss.GpuIndexIVFFlat(res, dim, ivf_lists(config, len(vectors)), metric)
        index.train(vectors)
    else:
        index = faiss.GpuIndexFlatIP(res, dim) if config.metric == "ip" else faiss.GpuIndexFlatL2(res, dim)
    index.add(vectors)
    return index


def build_backend(config: IndexConfig, vectors: np.ndarray, gpu: GpuContext | None = None) -> Backend:
    """Build the configured index over ``vectors`` (float32, C-contiguous, ``n >= 1``)."""
    device = choose_device(config)
    description = describe_plan(config, len(vectors))
    if device == "gpu":
        gpu = gpu or GpuContext()
        with gpu.lock:
            index = _gpu_index(config, vectors, gpu)
            _set_search_params(index, config, device)
        return Backend(index, config, device, description, gpu.lock)
    index = _cpu_index(config, vectors)
    _set_search_params(index, config, device)
    return Backend(index, config, device, description)


def backend_from_bytes(data: np.ndarray, config: IndexConfig, vectors: np.ndarray,
                       gpu: GpuContext | None = None) -> Backend:
    """A snapshot's index over ``vectors``, as this machine would build it.

    The serialised index is reused when it is what this machine builds (HNSW or IVF on a
    CPU; IVF moved to a GPU); otherwise, e.g. a CPU machine's HNSW snapshot loaded where a
    GPU picks an exact ``GpuIndexFlat``, the index is built again from ``vectors``.
    """
    device = choose_device(config)
    index = faiss.deserialize_index(data)
    reusable = (isinstance(index, faiss.IndexIVF) if config.kind == "ivf"
                else device == "cpu" and isinstance(index, faiss.IndexHNSW if config.kind == "hnsw" else faiss.IndexFlat))
    if not reusable or int(index.ntotal) != len(vectors):
        return build_backend(config, vectors, gpu)
    description = describe_plan(config, len(vectors))
    if device == "gpu":
        gpu = gpu or GpuContext()
        with gpu.lock:
            index = faiss.index_cpu_to_gpu(gpu.resources, 0, index)
            _set_search_params(index, config, device)
        return Backend(index, config, device, description, gpu.lock)
    _set_search_params(index, config, device)
    return Backend(index, config, device, description)
