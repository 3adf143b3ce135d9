"""ShardLogic's flush pacing: live spacing for freshness, cost-based spacing while catching up."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from engine.features.aggregates import ViewProgram
from engine.features.shard import ShardBatch
from engine.features.spec import FeatureView
from operators.aggregate import AggregateSettings, FlushPacer, ShardLogic

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

    out, _ = logic.on_batch([("u", _batch(50, 0), True)])
    assert len(out[0].running) == 50  # the first flush is immediate
    now[0] += 0.1
    out, _ = logic.on_batch([("u", _batch(50, 100), True)])
    assert out[0].running == []  # behind: writes coalesce for 50 x 10 ms / 0.1 = 5 s
    assert due_in() == pytest.approx(5.0 - 0.1, rel=0.01)
    now[0] += 0.1
    out, _ = logic.on_batch([("u", _batch(5, 200), False)])
    # Caught up: live spacing at once, so the pending values are written now.
    assert {r.entity for r in out[0].running} == {f"u{i}" for i in range(50)}
    now[0] += 0.001
    logic.on_batch([("u", _batch(1, 300), False)])
    assert due_in() == pytest.approx(0.019, abs=1e-3)
