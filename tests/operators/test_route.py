"""Routing a validated batch to shards, and what crosses to a shard in another process."""

from __future__ import annotations

import pickle
import zlib

import numpy as np

from engine.events.columns import InteractionColumns
from engine.events.schemas import Interaction
from engine.features.aggregates import ViewProgram
from engine.features.shard import ShardAggregator
from engine.features.spec import FeatureView
from operators.route import Router, shard_keys
from operators.validate import Origins, ValidatedBatch

T = 1_767_225_600_000
VIEW = FeatureView.from_dict({"name": "u", "entity": "user_id", "windows": {"1h": "1h"},
                              "features": [{"name": "n", "agg": "count"}], "event_types": ["click", "view"]})


def _batch(n: int) -> ValidatedBatch:
    events = [Interaction(f"user{i % 37}", "i", "click" if i % 5 else "impression", T + i * 1000, {}) for i in range(n)]
    raws = [b'{"n":%d}' % i for i in range(n)]
    headers = [None if i % 7 else [("h", b"%d" % i)] for i in range(n)]
    return ValidatedBatch(InteractionColumns.from_events(events), Origins("events", 2, list(range(100, 100 + n)), raws,
                                                                          headers))


def test_each_shard_gets_its_entities_in_arrival_order_with_their_origins() -> None:
    batch = _batch(500)
    keys = shard_keys("u", 8)
    items = Router([ViewProgram(VIEW)], shards=8).route(batch)
    seen = 0
    for key, (view, shard_batch, backlog) in items:
        assert view == "u" and backlog == 0
        positions = [refs[2] - 100 for refs in (shard_batch.refs[i] for i in range(len(shard_batch)))]
        assert positions == sorted(positions)  # arrival order within a shard
        for i, pos in enumerate(positions):
            entity = batch.events.user_id[pos]
            assert shard_batch.entities[i] == entity and batch.events.event_type[pos] != "impression"
            assert key == keys[zlib.crc32(entity.encode()) % 8]
            assert shard_batch.times[i] == batch.events.event_time[pos]
            assert shard_batch.refs[i] == batch.origins[pos]
        seen += len(shard_batch)
    assert seen == sum(t != "impression" for t in batch.events.event_type)


def test_a_shard_batch_pickled_to_another_process_keeps_late_events_origins() -> None:
    batch = _batch(300)
    (_, (_, shard_batch, _)), *_ = Router([ViewProgram(VIEW)], shards=1).route(batch)
    crossed = pickle.loads(pickle.dumps(shard_batch))
    assert crossed.entities == shard_batch.entities and np.array_equal(crossed.inputs, shard_batch.inputs)
    assert [crossed.refs[i] for i in range(len(crossed))] == [shard_batch.refs[i] for i in range(len(shard_batch))]
    # Folded after a newer event moved the watermark on, every event is late and dead-lettered as it came.
    shard = ShardAggregator(ViewProgram(VIEW), out_of_orderness_ms=0, allowed_lateness_ms=0, idle_advance=False,
                            sources=[("events", 2)], wall_now=0.0)
    newer = pickle.loads(pickle.dumps(Router([ViewProgram(VIEW)], shards=1).route(_batch(2))[0][1][1]))
    newer.times[:] = T + 10**9
    shard.ingest(newer, 0.0)
    late = shard.ingest(crossed, 0.0)
    assert late == [batch.origins[i] for i in range(300) if batch.events.event_type[i] != "impression"]
