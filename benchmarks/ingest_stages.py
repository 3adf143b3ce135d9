"""Where the features pipeline's CPU goes, stage by stage, without Kafka or Bytewax.

``python -m benchmarks.ingest_stages [--events 500000]`` takes the ingest benchmark's
events and feature view, and runs the pipeline's own stages in this process on batches of
5,000 messages, timing each with ``perf_counter`` (deterministic, unlike a sampling
profile of the running job):

* ``parse_floor`` -- ``orjson.loads`` of every message (what the ingest floor parses);
* ``validate`` -- :func:`operators.validate.validate_batch` (parse + checks, to columns);
* ``route`` -- :class:`operators.route.Router` (entities, shard keys, input columns);
* ``fold`` -- :meth:`ShardAggregator.ingest` of every shard batch;
* ``running`` + ``redis`` -- one flush of every dirty entity every ``--flush-every`` batches
  (the catch-up pacing coalesces about that many events per write): running values, then
  :meth:`OnlineStore.write_running` to a real Redis server.

It prints µs per event for each stage. The running 2-process job adds, per worker thread,
the source (~0.4 µs an event it reads) and pickling what crosses processes; see
docs/architecture.md ("Columns and arrays ..."). Not a benchmark of record: no results
file, no README table.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from tempfile import TemporaryDirectory

import orjson
import redis
import yaml

from benchmarks.ingest import FEATURE_SPEC, generate_events
from engine.config import load_config
from engine.features.aggregates import ViewProgram
from engine.features.online import OnlineStore
from engine.features.shard import ShardAggregator
from engine.features.spec import load_views
from engine.runtime.gc_tuning import tuned_gc
from engine.runtime.stack import LocalStack
from operators.route import Router
from operators.sources import RawBatch
from operators.validate import validate_batch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ingest_stages", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--flush-every", type=int, default=40, help="batches between flushes of every dirty entity")
    args = parser.parse_args(argv)

    views = load_views(yaml.safe_load(FEATURE_SPEC))
    programs = [ViewProgram(v) for v in views]
    values = [v for _, v in generate_events(args.events).messages]
    batches = [RawBatch("events", 0, list(range(i, i + len(chunk))), chunk, [None] * len(chunk), 10**6)
               for i in range(0, len(values), args.batch) for chunk in [values[i:i + args.batch]]]
    spent: dict[str, float] = defaultdict(float)
    # The dataflow processes run with a tuned collector (engine/runtime/gc_tuning.py).
    with TemporaryDirectory() as tmp, LocalStack(load_config(env={}, overrides={"data_dir": tmp})) as stack, \
            tuned_gc():
        store = OnlineStore(redis.Redis.from_url(stack.redis_url or ""), views, "stages")
        router = Router(programs, args.shards)
        shards: dict[str, tuple[str, ShardAggregator]] = {}  # key -> (view, shard)
        by_name = {p.view.name: p for p in programs}
        now = time.time()
        for i, batch in enumerate(batches):
            t0 = time.perf_counter()
            for raw in batch.values:
                orjson.loads(raw)
            t1 = time.perf_counter()
            checked = validate_batch(batch, max_future_ms=10**12)
            t2 = time.perf_counter()
            items = router.route(checked)
            t3 = time.perf_counter()
            for key, (view, shard_batch, _) in items:
                if key not in shards:
                    shards[key] = (view, ShardAggregator(by_name[view], out_of_orderness_ms=2_000,
                                                         allowed_lateness_ms=60_000, idle_advance=False,
                                                         sources=[("events", 0)], wall_now=now))
                shards[key][1].ingest(shard_batch, now)
            t4 = time.perf_counter()
            spent["parse_floor"] += t1 - t0
            spent["validate"] += t2 - t1
            spent["route"] += t3 - t2
            spent["fold"] += t4 - t3
            if (i + 1) % args.flush_every == 0 or i == len(batches) - 1:
                for view, shard in shards.values():
                    t5 = time.perf_counter()
                    rows = shard.running(shard.take_dirty(), now)
                    t6 = time.perf_counter()
                    store.write_running(view, rows)
                    t7 = time.perf_counter()
                    spent["running"] += t6 - t5
                    spent["redis"] += t7 - t6
    n = len(values)
    print(f"{n:,} events, batches of {args.batch:,}, {args.shards} shards per view, a flush every "
          f"{args.flush_every} batches")
    for stage, seconds in spent.items():
        print(f"  {stage:12s} {seconds / n * 1e6:6.2f} µs/event")
    pipeline = sum(v for k, v in spent.items() if k != "parse_floor")
    print(f"  {'pipeline':12s} {pipeline / n * 1e6:6.2f} µs/event (validate + route + fold + running + redis)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
