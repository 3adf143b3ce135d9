"""ShardLogic's flush pacing: live spacing for freshness, cost-based spacing while catching up."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from engine.features.aggregates import ViewProgram
from engine.features.shard import ShardBatch
from engine.features.spec import FeatureView
from operators.aggregate import AggregateSettings, FlushPacer, ShardLogic

BEHIND = 10_000  # a backlog at the default catch_up_backlog: catching up
VIEW = FeatureView.from_dict({"name": "u", "entity": "user_id", "windows": {"1m": "1m"},
                              "features": [{"name": "n", "agg": "count"}]})
T0 = 1_767_225_600_000


def test_pacer_keeps_the_live_gap_while_flushing_is_cheap() -> None:
    pacer = FlushPacer(min_gap_s=0.02, share=0.1)
    for _ in range(4):
        pacer.register_shard()
    pacer.record_write(10, 0.001)  # 100 us an entity
    assert pacer.write_s_per_entity == pytest.approx(1e-4)
    assert pacer.gap(0.0001, 2) == 0.02  # (0.1 + 0.2 ms) x 4 shards / 0.1 = 12 ms < 20 ms
    # 1,000 dirty entities: 100 ms to write, x 4 shards / 0.1 share.
    assert pacer.gap(0.0, 1000) == pytest.approx(4.0)
    pacer.record_write(10, 0.002)  # a moving average, not the last write alone
    assert pacer.write_s_per_entity == pytest.approx(0.8e-4 + 0.2 * 2e-4)


def _batch(n: int, start: int) -> ShardBatch:
    program = ViewProgram(VIEW)
    events = [{"user_id": f"u{i}", "event_time": T0 + start + i} for i in range(n)]
    return ShardBatch.of(program, events, ("events", 0), list(range(n)))


def test_shard_paces_flushes_only_while_catching_up() -> None:
    now = [1000.0]
    pacer = FlushPacer(min_gap_s=0.02, share=0.1)
    pacer.record_write(1, 0.01)  # 10 ms an entity: flushing is expensive
    settings = AggregateSettings(0, 60_000, False, 20)
    logic = ShardLogic({"u": ViewProgram(VIEW)}, settings, None, lambda: now[0], pacer)

    def due_in() -> float:
        at = logic.notify_at()
        assert at is not None
        return (at - datetime.fromtimestamp(now[0], tz=timezone.utc)).total_seconds()

    def flushed() -> set[str]:
        outs, _ = logic.on_notify()
        return {r.entity for out in outs for r in out.running}

    out, _ = logic.on_batch([("u", _batch(50, 0), BEHIND)])
    assert out[0].running == []  # writes go out from the timer, aligned across shards
    assert due_in() == 0.0
    assert len(flushed()) == 50  # the first flush is due at once
    # Batches read behind keep coming: writes coalesce for 50 x 10 ms / 0.1 = 5 s; the timer
    # only checks, every hold (0.1 s), whether catching up is over.
    for i in range(40):
        now[0] += 0.05
        logic.on_batch([("u", _batch(50, 100 + i), BEHIND)])
        assert 0.0 < due_in() <= 0.1
        assert flushed() == set()
    # No batch read behind for the hold: back to live spacing, and the pending values go out.
    now[0] += 0.1
    assert due_in() == 0.0
    assert flushed() == {f"u{i}" for i in range(50)}
    logic.on_batch([("u", _batch(1, 300), 0)])
    assert 0.0 < due_in() <= 0.02


def test_a_partition_read_behind_keeps_the_shard_catching_up() -> None:
    now = [1000.0]
    pacer = FlushPacer(min_gap_s=0.02, share=0.1)
    pacer.record_write(1, 0.01)
    logic = ShardLogic({"u": ViewProgram(VIEW)}, AggregateSettings(0, 60_000, False, 20), None, lambda: now[0], pacer)
    logic.on_batch([("u", _batch(20, 0), BEHIND)])
    logic.on_notify()
    writes = 0
    for i in range(100):  # 1 s: one partition behind, another live, alternating batches
        now[0] += 0.01
        logic.on_batch([("u", _batch(20, 100 + i), BEHIND if i % 2 == 0 else 0)])
        outs, _ = logic.on_notify()
        writes += sum(1 for out in outs if out.running)
    assert writes == 0  # paced (20 x 10 ms / 0.1 = 2 s), not every live step


def test_flushes_fall_on_a_grid_shared_by_the_shards() -> None:
    now = [1000.005]
    pacer = FlushPacer(min_gap_s=0.02, share=0.1)
    settings = AggregateSettings(0, 60_000, False, 20)
    shards = [ShardLogic({"u": ViewProgram(VIEW)}, settings, None, lambda: now[0], pacer) for _ in range(3)]
    for i, logic in enumerate(shards):
        now[0] += 0.003  # batches reach the shards at different moments
        logic.on_batch([("u", _batch(3, 10 * i), 0)])
        logic.on_notify()  # each one's first flush is due at once
    now[0] += 0.004
    for i, logic in enumerate(shards):
        logic.on_batch([("u", _batch(3, 100 + 10 * i), 0)])
    dues = {logic.notify_at() for logic in shards}
    assert len(dues) == 1  # one wall-clock step for all: one timer round, one Redis round trip
    due = dues.pop().timestamp()
    assert due == pytest.approx(round(due / 0.02) * 0.02, abs=1e-6)


def test_a_timer_that_fires_late_does_not_skip_a_step() -> None:
    now = [1000.0]
    pacer = FlushPacer(min_gap_s=0.02, share=0.1)
    logic = ShardLogic({"u": ViewProgram(VIEW)}, AggregateSettings(0, 60_000, False, 20), None, lambda: now[0], pacer)
    logic.on_batch([("u", _batch(3, 0), 0)])
    logic.on_notify()
    for step in range(1, 6):
        logic.on_batch([("u", _batch(1, 10 * step), 0)])
        at = logic.notify_at()
        assert at is not None and at.timestamp() == pytest.approx(1000.0 + 0.02 * step, abs=1e-6)
        now[0] = at.timestamp() + 0.0015  # the timer runs 1.5 ms late
        outs, _ = logic.on_notify()
        assert outs and outs[0].running
