"""FAISS retrieval benchmark: recall@10 against exact search, and single-thread QPS, of rtml's ItemIndex.

Run from the repository root::

    python -m benchmarks.faiss_index            # ~1-1.5 minutes on 2 cores (200k x 64)
    python -m benchmarks.faiss_index --quick    # ~3 s: 20k x 64, fewer queries
    python -m benchmarks.faiss_index --no-readme --out DIR

Data: ``n`` seeded, clustered, L2-normalised vectors (1,000 centres, noise ``spread`` 1.1,
:func:`engine.retrieval.evaluation.clustered_unit_vectors`) and held-out queries from the
same distribution. ``IndexFlatIP`` is the floor and the ground truth: its exact top-10 per
query. For each index: recall@10 (``|found ∩ exact| / 10``, mean over queries), QPS of one
thread answering one query per call (FAISS pinned to 1 OpenMP thread, like the server),
build time (1 thread), and ``ratio_to_floor`` = QPS / flat QPS. ``faiss`` rows time the
FAISS call alone; the ``ItemIndex`` rows add rtml's layer (tombstone filter, exact delta,
id mapping). The churn section replaces and removes items through ``ItemIndex`` without a
rebuild (the worst case before a background rebuild starts) and measures upserts/s, the
cost of a removal, the time until an upserted item is searchable, and recall/QPS with
those changes pending; then a snapshot save/load (the fast restart).

Anchor (FIELD-NOTES): HNSW32 efSearch 64 recall 0.984 at ~1.7k QPS per thread on 200k x 64.
No GPU here: ``use_gpu="auto"`` would pick ``GpuIndexFlatIP`` for ``kind="hnsw"`` on a GPU
machine; ``--gpu`` runs the flat/IVF GPU rows when FAISS sees one.

Results: ``benchmarks/results/faiss_index.json`` and the README table between
``<!-- bench:faiss_index:start -->`` / ``<!-- bench:faiss_index:end -->`` (when present).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import faiss
import numpy as np

from benchmarks.report import fmt_rate, machine_description, machine_line, publish, reprint_from_json
from engine.retrieval.backends import gpu_count, pin_threads
from engine.retrieval.evaluation import clustered_unit_vectors, exact_top_k, index_recall, recall_at_k
from engine.retrieval.index import IndexConfig, ItemIndex

NAME = "faiss_index"
K = 10
ANCHOR = {"index": "HNSW32 efSearch 64", "recall_at_10": 0.984, "qps_per_thread": 1_700, "n": 200_000, "dim": 64}


def log(message: str) -> None:
    print(f"[faiss_index] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class Plan:
    n: int = 200_000
    dim: int = 64
    clusters: int = 1_000
    spread: float = 1.1
    queries: int = 1_000  # recall queries (held out)
    timed_queries: int = 2_000  # batch-1 calls per QPS measurement (flat: a tenth)
    ef_searches: tuple[int, ...] = (64, 128)
    ivf_lists: int = 1_024
    nprobes: tuple[int, ...] = (16, 32)
    churn: int = 10_000  # items replaced through ItemIndex (= the default rebuild_after)
    removals: int = 1_000
    seed: int = 0

    @classmethod
    def quick(cls) -> Plan:
        return cls(n=20_000, clusters=200, queries=200, timed_queries=500, ivf_lists=128, nprobes=(8, 16),
                   churn=1_000, removals=200)


def qps(search_one: Callable[[np.ndarray], Any], queries: np.ndarray) -> float:
    """Calls per second of ``search_one(queries[i:i+1])`` in this (single, pinned) thread."""
    search_one(queries[:1])  # warm
    started = time.perf_counter()
    for i in range(len(queries)):
        search_one(queries[i:i + 1])
    return len(queries) / (time.perf_counter() - started)


def _ids(prefix: str, n: int, start: int = 0) -> list[str]:
    return [f"{prefix}{j}" for j in range(start, start + n)]


def item_index(config: IndexConfig, ids: list[str], x: np.ndarray) -> tuple[ItemIndex, float]:
    """An ItemIndex over ``ids``/``x`` and the seconds its main index took to build."""
    index = ItemIndex(config)
    index.upsert(ids, x)
    t0 = time.perf_counter()
    index.rebuild()
    return index, time.perf_counter() - t0


def _row(name: str, kind: str, layer: str, recall: float, rate: float, floor: float, **extra: Any) -> dict[str, Any]:
    return {"index": name, "kind": kind, "layer": layer, "recall_at_10": round(recall, 4), "qps": round(rate, 1),
            "ratio_to_floor": round(rate / floor, 2), **extra}


def _faiss_recall(index: Any, queries: np.ndarray, truth: np.ndarray) -> float:
    _, found = index.search(queries, K)
    return recall_at_k(found.tolist(), truth.tolist(), K)


def run_benchmark(plan: Plan, with_gpu: bool = False) -> dict[str, Any]:
    started = time.perf_counter()
    pin_threads(1)
    data = clustered_unit_vectors(plan.n + plan.queries, plan.dim, plan.seed, plan.clusters, plan.spread)
    x, q = data[:plan.n], data[plan.n:]
    timed = q[np.arange(plan.timed_queries) % len(q)]
    ids = _ids("i", plan.n)
    rows: list[dict[str, Any]] = []

    log(f"exact floor: IndexFlatIP over {plan.n:,} x {plan.dim}")
    flat = faiss.IndexFlatIP(plan.dim)
    flat.add(x)
    truth = exact_top_k(x, q, K)
    flat_qps = qps(lambda one: flat.search(one, K), timed[: max(50, plan.timed_queries // 10)])
    rows.append(_row("IndexFlatIP (exact)", "flat", "faiss", 1.0, flat_qps, flat_qps, build_s=0.0))

    log("HNSW32 (efConstruction 80), 1 build thread")
    hnsw_cfg = IndexConfig(dim=plan.dim, kind="hnsw", use_gpu="never", auto_rebuild=False)
    hnsw, hnsw_build = item_index(hnsw_cfg, ids, x)
    raw = hnsw._main.backend.index  # the FAISS index itself, for the faiss-only rows
    for ef in plan.ef_searches:
        raw.hnsw.efSearch = ef
        rows.append(_row(f"HNSW32 efSearch {ef}", "hnsw", "faiss", _faiss_recall(raw, q, truth),
                         qps(lambda one: raw.search(one, K), timed), flat_qps, build_s=round(hnsw_build, 1)))
    raw.hnsw.efSearch = hnsw_cfg.ef_search
    hnsw_item_qps = qps(lambda one: hnsw.search(one, K), timed)
    rows.append(_row(f"HNSW32 efSearch {hnsw_cfg.ef_search}", "hnsw", "ItemIndex", index_recall(hnsw, q, K),
                     hnsw_item_qps, flat_qps, build_s=round(hnsw_build, 1)))

    log(f"IVF{plan.ivf_lists} (flat lists), 1 build thread")
    ivf, ivf_build = item_index(IndexConfig(dim=plan.dim, kind="ivf", ivf_lists=plan.ivf_lists, use_gpu="never",
                                            auto_rebuild=False), ids, x)
    raw_ivf = ivf._main.backend.index
    for nprobe in plan.nprobes:
        raw_ivf.nprobe = nprobe
        rows.append(_row(f"IVF{plan.ivf_lists} nprobe {nprobe}", "ivf", "faiss", _faiss_recall(raw_ivf, q, truth),
                         qps(lambda one: raw_ivf.search(one, K), timed), flat_qps, build_s=round(ivf_build, 1)))
    ivf.close()

    gpu_rows = _gpu_rows(plan, ids, x, q, truth, timed, flat_qps) if with_gpu else []

    log(f"churn through ItemIndex: {plan.churn:,} replacements, {plan.removals:,} removals, no rebuild")
    rng = np.random.default_rng(plan.seed + 1)
    replaced = rng.choice(plan.n, plan.churn, replace=False)
    fresh = clustered_unit_vectors(plan.churn + 1, plan.dim, plan.seed + 2, plan.clusters, plan.spread)
    t0 = time.perf_counter()
    for s in range(0, plan.churn, 100):
        hnsw.upsert([ids[j] for j in replaced[s:s + 100]], fresh[s:s + 100])
    upsert_batched = plan.churn / (time.perf_counter() - t0)
    singles = min(1_000, plan.churn)
    t0 = time.perf_counter()
    for s in range(singles):
        hnsw.upsert([ids[replaced[s]]], fresh[s:s + 1])
    upsert_single = singles / (time.perf_counter() - t0)
    removed = [ids[j] for j in rng.choice(np.setdiff1d(np.arange(plan.n), replaced), plan.removals, replace=False)]
    t0 = time.perf_counter()
    for item_id in removed:
        hnsw.remove([item_id])
    remove_us = (time.perf_counter() - t0) / plan.removals * 1e6
    t0 = time.perf_counter()
    hnsw.upsert(["brand-new"], fresh[-1:])  # a vector no other item has
    visible = hnsw.search(fresh[-1:], 1)[0][0][0] == "brand-new"
    fresh_ms = (time.perf_counter() - t0) * 1e3
    pending = hnsw.stats()
    churn_qps = qps(lambda one: hnsw.search(one, K), timed)
    rows.append(_row(f"HNSW32 efSearch {hnsw_cfg.ef_search} + {pending['delta_rows']:,} delta rows, "
                     f"{pending['main_dead']:,} tombstones", "hnsw", "ItemIndex", index_recall(hnsw, q, K),
                     churn_qps, flat_qps))

    log("snapshot save / load")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path = hnsw.save(Path(tmp) / "items.npz")
        save_s = time.perf_counter() - t0
        size_mb = path.stat().st_size / 2**20
        t0 = time.perf_counter()
        loaded = ItemIndex.load(path)
        load_s = time.perf_counter() - t0
        same = loaded.search(q[:50], K) == hnsw.search(q[:50], K)
    hnsw.close()

    return {
        "name": NAME,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "machine": machine_description(),
        "faiss": faiss.__version__,
        "gpus": gpu_count(),
        "plan": asdict(plan),
        "anchor": ANCHOR,
        "floor": {"index": "IndexFlatIP", "qps": round(flat_qps, 1)},
        "rows": rows + gpu_rows,
        "churn": {
            "upserts_per_s_batch_100": round(upsert_batched),
            "upserts_per_s_single": round(upsert_single),
            "remove_us_per_call": round(remove_us, 1),
            "upsert_to_searchable_ms": round(fresh_ms, 3),
            "visible_after_upsert": visible,
            "pending": {k: pending[k] for k in ("delta_rows", "main_dead", "pending_changes")},
            "qps_with_pending": round(churn_qps, 1),
            "qps_change_vs_clean": round(churn_qps / hnsw_item_qps - 1, 3),
        },
        "snapshot": {"save_s": round(save_s, 2), "load_s": round(load_s, 2), "size_mib": round(size_mb, 1),
                     "rebuild_s_avoided": round(hnsw_build, 1), "same_results": same},
        "seconds": round(time.perf_counter() - started, 1),
    }


def _gpu_rows(plan: Plan, ids: list[str], x: np.ndarray, q: np.ndarray, truth: np.ndarray, timed: np.ndarray,
              floor: float) -> list[dict[str, Any]]:
    """ItemIndex on the GPU (what ``use_gpu="auto"`` builds there); empty without one."""
    if gpu_count() == 0:
        log("no GPU: skipping the GPU rows")
        return []
    rows = []
    for kind in ("hnsw", "ivf"):
        index, build = item_index(IndexConfig(dim=plan.dim, kind=kind, ivf_lists=plan.ivf_lists, use_gpu="always",
                                              auto_rebuild=False), ids, x)
        name = index.stats()["index"]
        rows.append(_row(name, kind, "ItemIndex (GPU)", index_recall(index, q, K),
                         qps(lambda one: index.search(one, K), timed), floor, build_s=round(build, 2)))
        index.close()
    return rows


def markdown_table(result: Mapping[str, Any]) -> str:
    """The README block: one row per index and layer, then the churn and snapshot figures."""
    plan, churn, snap = result["plan"], result["churn"], result["snapshot"]
    lines = [
        f"FAISS {result['faiss']} retrieval, {plan['n']:,} x {plan['dim']} clustered unit vectors "
        f"({plan['clusters']:,} centres, spread {plan['spread']}), {plan['queries']:,} held-out queries, recall@10 "
        f"against IndexFlatIP; QPS: one thread, one query per call ({machine_line(result['machine'])}; "
        f"{result['date']}).",
        "",
        "| index | layer | recall@10 | QPS (1 thread) | ratio to floor | build s (1 thread) |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        build = r.get("build_s")
        lines.append(f"| {r['index']} | {r['layer']} | {r['recall_at_10']:.3f} | {fmt_rate(r['qps'])} "
                     f"| {r['ratio_to_floor']:.1f} | {'—' if build is None else build} |")
    a = result["anchor"]
    lines += [
        "",
        f"Churn through ItemIndex (HNSW main, no rebuild): {fmt_rate(churn['upserts_per_s_batch_100'])} upserts/s in "
        f"batches of 100, {fmt_rate(churn['upserts_per_s_single'])}/s one by one; a removal "
        f"{churn['remove_us_per_call']:.0f} µs a call; an upserted item is returned by the next search "
        f"({churn['upsert_to_searchable_ms']:.2f} ms for upsert + search). Snapshot: save {snap['save_s']} s, load "
        f"{snap['load_s']} s ({snap['size_mib']} MiB) instead of a {snap['rebuild_s_avoided']} s HNSW build. "
        f"Anchor (FIELD-NOTES): {a['index']} recall {a['recall_at_10']} at ~{fmt_rate(a['qps_per_thread'])} QPS "
        f"per thread. Reproduce: `python -m benchmarks.faiss_index`.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.faiss_index", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="20k x 64, fewer queries (~3 s)")
    p.add_argument("--gpu", action="store_true", help="also time ItemIndex on a GPU (when FAISS sees one)")
    p.add_argument("--out", default=None, help="results directory (default benchmarks/results)")
    p.add_argument("--name", default=NAME, help="result file name without .json (default faiss_index)")
    p.add_argument("--no-readme", action="store_true", help="do not update the README table")
    p.add_argument("--from-json", default=None, metavar="PATH",
                   help="run nothing: print the table of an earlier result file (and update the README)")
    args = p.parse_args(argv)
    if args.from_json:
        return reprint_from_json(args.from_json, args.name, markdown_table, not args.no_readme)
    result = run_benchmark(Plan.quick() if args.quick else Plan(), with_gpu=args.gpu)
    path = publish(args.name, result, markdown_table, args.out, readme=not args.no_readme)
    log(f"wrote {path} in {result['seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
