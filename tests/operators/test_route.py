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


def _slow_partition_batch(first_offset: int, first_time: int, n: int = 50) -> ValidatedBatch:
    """A catch-up batch of a slow partition: n events 2 s apart (100 s of event time)."""
    events = [Interaction(f"user{i % 5}", "i", "click", first_time + i * 2_000, {}) for i in range(n)]
    offsets = list(range(first_offset, first_offset + n))
    return ValidatedBatch(InteractionColumns.from_events(events),
                          Origins("events", 0, offsets, [b"{}"] * n, [None] * n), backlog=10**6)


def test_a_batch_overtaken_by_a_later_one_of_its_partition_is_not_dead_lettered_as_late() -> None:
    # Checked on another process, batch 1 reaches the shard after batch 2 of the same
    # partition. Their events are 100 s apart, more than out-of-orderness + lateness (65 s).
    router = Router([ViewProgram(VIEW)], shards=1)
    first, second = (router.route(_slow_partition_batch(o, T + o * 2_000))[0][1][1] for o in (0, 50))
    shard = ShardAggregator(ViewProgram(VIEW), out_of_orderness_ms=5_000, allowed_lateness_ms=60_000,
                            idle_advance=False, sources=[("events", 0)], wall_now=0.0)
    assert shard.ingest(second, 0.0) == []
    assert shard.ingest(first, 0.0) == []  # judged as of before the batch that overtook it
    assert shard.accepted == 100
    # Without positions (any other source of batches) the same order does make them late.
    blind = ShardAggregator(ViewProgram(VIEW), out_of_orderness_ms=5_000, allowed_lateness_ms=60_000,
                            idle_advance=False, sources=[("events", 0)], wall_now=0.0)
    second.position = first.position = None
    blind.ingest(second, 0.0)
    assert len(blind.ingest(first, 0.0)) > 0


def test_an_overtaken_batch_keeps_events_that_were_late_anyway() -> None:
    router = Router([ViewProgram(VIEW)], shards=1)
    shard = ShardAggregator(ViewProgram(VIEW), out_of_orderness_ms=5_000, allowed_lateness_ms=60_000,
                            idle_advance=False, sources=[("events", 0)], wall_now=0.0)
    early = router.route(_slow_partition_batch(0, T + 10**6, n=1))[0][1][1]  # moves the watermark far on
    shard.ingest(early, 0.0)
    late, later = (router.route(_slow_partition_batch(o, T))[0][1][1] for o in (10, 100))
    shard.ingest(later, 0.0)
    assert len(shard.ingest(late, 0.0)) == len(late)  # late before `later` came, so late still
