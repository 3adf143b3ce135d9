"""Recommend over real gRPC at C = 16 and 64 against its floor, measured in the same run.

::

    python -m benchmarks.recommend                 # writes benchmarks/results/recommend.json
    python -m benchmarks.recommend --from-json benchmarks/results/recommend.json

1. **World and models**: :mod:`engine.recommend.synthetic` (users, items, two-tower user tower
   and DeepFM ranker trained and registered into a temporary model repository; their
   online features written to Redis in the features dataflow's layout).
2. **Stack**: an embedded Kafka (Tansu) and Redis (:class:`engine.runtime.stack.LocalStack`);
   every item published on the items topic with its item-tower vector.
3. **Served**: ``python -m serving.server --recommend FILE`` as a subprocess
   (:class:`benchmarks.serving.ServerProcess`); the load is pre-serialised
   ``RecommendRequest`` messages for a pool of known users, sent by the project's load
   harness (:mod:`benchmarks.load`, closed loop, client spread over processes) at each
   concurrency. Every request runs the whole funnel: two Redis round trips, user tower
   (micro-batched), FAISS search (1 thread; on the event loop, the index being smaller than
   ``retrieval.inline_max_items``), ranker on all candidates
   (batched), re-ranking with MMR, exploration slots, and impressions + predictions logged
   to Kafka.
4. **Floor**: the same user-tower, FAISS and ranker calls in-process, one request at a time
   on one thread, with inputs built beforehand for the same users: what the models and the
   index cost when nothing else (protocol, Redis, logging, batching) is paid. The served
   figures are read against it (``served / floor``).
5. **Funnel in-process** (between the two): the whole :class:`~serving.recommend.funnel.Funnel`
   (features from in-memory hashes, re-ranking, exploration; no gRPC, Redis or Kafka), one
   request at a time: the Python cost of the funnel's own stages.

Per served run, ``stage_ms`` is the mean time of each funnel stage from the server's own
``rtml_recommend_stage_seconds`` histogram (scraped before and after the run).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from benchmarks import load
from benchmarks.report import fmt_rate, machine_description, machine_line, publish, reprint_from_json
from benchmarks.serving import ServerProcess, log

NAME = "recommend"
RECOMMEND = "/rtml.v1.Recommendations/Recommend"
PREFIX = "rtml"


def _recommend_config(path: Path, dim: int, candidates: int) -> Path:
    path.write_text(yaml.safe_dump({
        "user_tower": "recs_user", "ranker": "ranker", "max_k": 50,
        "retrieval": {"candidates": candidates, "index": {"dim": dim, "kind": "hnsw", "use_gpu": "auto"}},
        "rerank": {"mmr_lambda": 0.8, "freshness": {"half_life": "6h", "boost": 0.1}},
        "exploration": {"slots": 2},
        "popular": {"refresh": "30s"},
    }))
    return path


def _payloads(users: Sequence[str], k: int) -> list[bytes]:
    from proto.rtml.v1 import serving_pb2 as rtml_pb

    return [rtml_pb.RecommendRequest(user_id=u, k=k, context={"surface": "bench"}).SerializeToString()
            for u in users]


async def _wait_index(target: str, user: str, items: int, timeout_s: float = 120.0) -> None:
    """Until the server's index holds every item (read from a response's versions)."""
    import grpc

    from proto.rtml.v1 import serving_pb2 as rtml_pb
    from proto.rtml.v1 import serving_pb2_grpc as rtml_grpc

    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(target) as channel:
        stub = rtml_grpc.RecommendationsStub(channel)
        while True:
            try:
                r = await stub.Recommend(rtml_pb.RecommendRequest(user_id=user, k=10), timeout=5)
                if int(r.versions.get("index_items", "0")) >= items:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server's index did not reach {items} items in {timeout_s:.0f} s")
            await asyncio.sleep(0.2)


def measure_floor(repo: Path, rw: Any, vectors: np.ndarray, users: Sequence[str], candidates: int,
                  seconds: float) -> dict[str, Any]:
    """The funnel's model and index calls alone, in-process, one request at a time (module docstring)."""
    from engine.recommend.evaluation import OnnxScorer, build_index
    from engine.retrieval.index import IndexConfig
    from serving.recommend.inputs import InputLayout

    tower = OnnxScorer(repo / "recs_user" / "1", "embedding")
    ranker = OnnxScorer(repo / "ranker" / "1", "probability")
    index = build_index(rw.items, vectors, IndexConfig(dim=vectors.shape[1], kind="hnsw", use_gpu="auto"),
                        rw.categories)
    user_layout: InputLayout = tower.layout
    tower_feeds, ranker_feeds, queries = [], [], []
    for u in users:
        row = rw.user_row(int(u[1:]))
        cols = {s: [u] if s == "user_id" else [row[s]] for s in user_layout.sources}
        feeds = user_layout.feeds(cols, tower.input_names)
        vec = tower(feeds)
        queries.append(np.asarray(vec, np.float32).reshape(-1))
        hits = index.search(np.asarray(vec, np.float32), candidates)[0]
        items = [int(i[1:]) for i, _ in hits]
        frame = rw.frame(np.full(len(items), int(u[1:])), np.array(items), np.zeros(len(items)))
        tower_feeds.append(feeds)
        ranker_feeds.append(ranker.layout.feeds({c: frame[c].tolist() for c in ranker.layout.sources},
                                                ranker.input_names))
    lat: list[float] = []
    perf = time.perf_counter
    end = perf() + seconds
    i = 0
    while perf() < end:
        j = i % len(users)
        t = perf()
        vec = tower(tower_feeds[j])
        index.search(np.asarray(vec, np.float32), candidates)
        ranker(ranker_feeds[j])
        lat.append(perf() - t)
        i += 1
    faiss_stats = chosen_index_recall(index, np.vstack(queries))
    index.close()
    return latency_summary(lat) | {"candidates": candidates, "faiss": faiss_stats}


def chosen_index_recall(index: Any, queries: np.ndarray, k: int = 10) -> dict[str, Any]:
    """Recall@k of the served index config against IndexFlatIP on the same items and the users'
    tower vectors, with batch-1 single-thread QPS of both (the flat index is the floor)."""
    import faiss

    from benchmarks.faiss_index import qps
    from engine.retrieval.evaluation import index_recall

    _, vectors = index.items()
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(np.ascontiguousarray(vectors, dtype=np.float32))
    ours, floor = qps(lambda q: index.search(q, k), queries), qps(lambda q: flat.search(q, k), queries)
    return {"index": index.config.kind, "items": int(len(vectors)), "queries": int(len(queries)),
            "recall_at_10": round(index_recall(index, queries, k), 4), "qps": round(ours, 1),
            "flat_qps": round(floor, 1), "ratio_to_floor": round(ours / floor, 2)}


def funnel_inprocess(repo: Path, rw: Any, vectors: np.ndarray, users: Sequence[str], config_path: Path,
                     seconds: float) -> dict[str, Any]:
    """The whole funnel in-process over in-memory features, one request at a time."""
    from engine.recommend.evaluation import build_index, offline_funnel, popularity
    from engine.retrieval.index import IndexConfig
    from serving.recommend.config import load_recommend_config
    from serving.recommend.store import MemoryHashes

    now = int(time.time() * 1000)
    config = load_recommend_config(config_path)
    index = build_index(rw.items, vectors, IndexConfig(dim=vectors.shape[1], kind="hnsw", use_gpu="auto"),
                        rw.categories, created_ms=now - 30 * 86_400_000)
    funnel = offline_funnel(config, repo, MemoryHashes(rw.hashes(PREFIX, now)), index,
                            popularity(rw.train["item_id"].tolist()), prefix=PREFIX)
    k = 20

    async def run() -> list[float]:
        lat: list[float] = []
        end = time.perf_counter() + seconds
        i = 0
        while time.perf_counter() < end:
            t = time.perf_counter()
            await funnel.recommend(users[i % len(users)], k)
            lat.append(time.perf_counter() - t)
            i += 1
        return lat

    lat = asyncio.run(run())
    index.close()
    return latency_summary(lat)


def latency_summary(lat: Sequence[float]) -> dict[str, Any]:
    """Requests, single-thread throughput and p50/p99 (ms) of back-to-back calls' latencies (s)."""
    arr = np.asarray(lat)
    return {"requests": len(arr), "throughput_rps_1_thread": round(float(len(arr) / arr.sum()), 1),
            "p50_ms": round(float(np.percentile(arr, 50)) * 1000, 3),
            "p99_ms": round(float(np.percentile(arr, 99)) * 1000, 3)}


def stage_sums(url: str) -> dict[str, tuple[float, float]]:
    """``{stage: (sum seconds, count)}`` of the server's rtml_recommend_stage_seconds."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list[float]] = {}
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    for family in text_string_to_metric_families(text):
        if family.name != "rtml_recommend_stage_seconds":
            continue
        for sample in family.samples:
            slot = out.setdefault(sample.labels.get("stage", ""), [0.0, 0.0])
            if sample.name.endswith("_sum"):
                slot[0] = sample.value
            elif sample.name.endswith("_count"):
                slot[1] = sample.value
    return {k: (v[0], v[1]) for k, v in out.items()}


def stage_means(after: dict[str, tuple[float, float]], before: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Mean milliseconds per stage between two :func:`stage_sums` scrapes."""
    out = {}
    for stage, (total, count) in after.items():
        t0, c0 = before.get(stage, (0.0, 0.0))
        if count > c0:
            out[stage] = round(1000 * (total - t0) / (count - c0), 3)
    return out


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    from confluent_kafka import Producer

    import redis

    from engine.config import load_config
    from engine.events.codec import encode_json
    from engine.recommend.synthetic import build_world, item_vectors, train_models
    from engine.runtime.stack import LocalStack

    work = Path(tempfile.mkdtemp(prefix="rtml-bench-recs-"))
    repo = work / "models"
    log(f"training on {args.users} users x {args.items} items ...")
    rw = build_world(args.users, args.items, args.train, 1000, seed=0)
    models = train_models(rw, repo, epochs=2, ranker_batch=max(1024, args.candidates * 4))
    vectors = item_vectors(rw, models["two_tower"])
    users = [rw.users[i] for i in np.random.default_rng(0).choice(len(rw.users), args.pool, replace=False)]
    log("floor (in-process model and index calls) ...")
    floor = measure_floor(repo, rw, vectors, users, args.candidates, args.floor_seconds)
    log(f"floor: {floor}")
    rec_cfg = _recommend_config(work / "recommend.yaml", vectors.shape[1], args.candidates)
    inproc = funnel_inprocess(repo, rw, vectors, users, rec_cfg, args.floor_seconds)
    log(f"funnel in-process: {inproc}")

    stack = LocalStack(load_config(path=None, env={})).start()
    try:
        stack.ensure_topics()
        cfg = stack.config
        client = redis.Redis.from_url(stack.redis_url)
        now = int(time.time() * 1000)
        pipe = client.pipeline(transaction=False)
        for key, mapping in rw.hashes(PREFIX, now).items():
            pipe.hset(key, mapping=mapping)
        pipe.execute()
        client.close()
        producer = Producer({"bootstrap.servers": stack.bootstrap, "linger.ms": 5})
        for update in rw.item_updates(vectors, now - 30 * 86_400_000):
            producer.produce(cfg.kafka.items_topic, encode_json(update), update.item_id)
        producer.flush(30)
        server = ServerProcess(repo, work / "server.log", extra_args=[
            "--recommend", str(rec_cfg), "--redis-url", stack.redis_url, "--redis-key-prefix", PREFIX,
            "--kafka-bootstrap", stack.bootstrap, "--items-topic", cfg.kafka.items_topic,
            "--events-topic", cfg.kafka.events_topic, "--predictions-topic", cfg.learning.predictions_topic,
        ])
        with server:
            asyncio.run(_wait_index(server.target, users[0], len(rw.items)))
            payloads = _payloads(users, args.k)
            served = []
            for c in args.concurrency:
                log(f"served: C={c} for {args.duration:.0f}s ...")
                lc = load.LoadConfig(target=server.target, model="recommend", concurrency=c, duration_s=args.duration,
                                     warmup_s=args.warmup, processes=args.processes, method=RECOMMEND)
                before = stage_sums(server.metrics_url)
                result = load.run_load(lc, payloads)
                result["stage_ms"] = stage_means(stage_sums(server.metrics_url), before)
                result["vs_floor_throughput"] = round(result["throughput_rps"] / floor["throughput_rps_1_thread"], 3)
                served.append(result)
                log(f"  {result['throughput_rps']} req/s, p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
                    f"errors {result['errors']}")
    finally:
        stack.stop()
    return {
        "benchmark": NAME,
        "machine": machine_description(),
        "world": {"users": args.users, "items": args.items, "candidates": args.candidates, "k": args.k,
                  "user_pool": args.pool},
        "floor": floor,
        "funnel_inprocess": inproc,
        "served": served,
        "ranker_auc": models["ranker_run"].metrics["valid"].get("auc"),
    }


def markdown_table(result: dict[str, Any]) -> str:
    f = result["floor"]
    lines = [
        f"Recommend (k={result['world']['k']}, {result['world']['candidates']} candidates, "
        f"{result['world']['items']} items) — {machine_line(result.get('machine'))}",
        "",
        "| run | throughput req/s | p50 ms | p99 ms | vs floor |",
        "|---|---:|---:|---:|---:|",
        f"| floor: tower + FAISS + ranker in-process, 1 thread | {fmt_rate(f['throughput_rps_1_thread'])} | "
        f"{f['p50_ms']:.2f} | {f['p99_ms']:.2f} | 1.00 |",
    ]
    g = result.get("funnel_inprocess")
    if g:
        lines.append(f"| whole funnel in-process (in-memory features), 1 thread | {fmt_rate(g['throughput_rps_1_thread'])} | "
                     f"{g['p50_ms']:.2f} | {g['p99_ms']:.2f} | "
                     f"{g['throughput_rps_1_thread'] / f['throughput_rps_1_thread']:.2f} |")
    for r in result["served"]:
        lines.append(f"| served gRPC, C={r['concurrency']} | {fmt_rate(r['throughput_rps'])} | {r['p50_ms']:.2f} | "
                     f"{r['p99_ms']:.2f} | {r['vs_floor_throughput']:.2f} |")
    fa = f.get("faiss")
    if fa:
        lines += ["", f"FAISS, the served index ({fa['index']}) on the benchmark's {fa['items']:,} items and "
                      f"{fa['queries']} users' tower vectors: recall@10 {fa['recall_at_10']:.3f} against IndexFlatIP, "
                      f"{fmt_rate(fa['qps'])} QPS vs {fmt_rate(fa['flat_qps'])} for the flat floor (batch 1, one "
                      f"thread; ratio {fa['ratio_to_floor']:.2f}). At the 200k × 64 anchor: "
                      "`python -m benchmarks.faiss_index` (HNSW32 efSearch 64 recall 0.984)."]
    for r in result["served"]:
        if r.get("stage_ms"):
            stages = ", ".join(f"{k} {v:.2f}" for k, v in r["stage_ms"].items())
            lines.append(f"\nC={r['concurrency']} server-side mean ms per stage: {stages}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.recommend", description=__doc__.split("\n")[0])
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--items", type=int, default=5000)
    p.add_argument("--train", type=int, default=30_000)
    p.add_argument("--candidates", type=int, default=200)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--pool", type=int, default=256, help="distinct users in the request pool")
    p.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--processes", type=int, default=2, help="client processes")
    p.add_argument("--floor-seconds", type=float, default=5.0)
    p.add_argument("--from-json", default=None, help="print the table of an earlier result file")
    p.add_argument("--no-readme", action="store_true", help="do not update the README table")
    p.add_argument("--out", default=None, help="results directory (default benchmarks/results)")
    args = p.parse_args(argv)
    if args.from_json:
        return reprint_from_json(args.from_json, NAME, markdown_table, readme=not args.no_readme)
    result = run_benchmark(args)
    path = publish(NAME, result, markdown_table, args.out, readme=not args.no_readme)
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
