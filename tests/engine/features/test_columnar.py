"""ColumnarShard against the row shard (ShardAggregator): same events, same outputs."""

from __future__ import annotations

import math
import pickle
import random
from typing import Any

import numpy as np
import pytest

from engine.features.aggregates import EventRows, ViewProgram
from engine.features.columnar import ColumnarShard, ShardBatch
from engine.features.shard import ShardAggregator
from engine.features.spec import FeatureView

VIEW = FeatureView.from_dict({
    "name": "u", "entity": "user_id",
    "windows": {"10s": "10s", "1m": {"size": "1m", "slide": "10s"}, "5m": {"size": "5m", "slide": "1m"}},
    "features": [
        {"name": "imps", "agg": "count", "where": {"event_type": "impression"}},
        {"name": "clicks", "agg": "count", "where": {"event_type": "click"}},
        {"name": "ctr", "agg": "ratio", "numerator": "clicks", "denominator": "imps"},
        {"name": "n", "agg": "count"},
        {"name": "dwell_sum", "agg": "sum", "field": "context.dwell", "where": {"event_type": ["view", "click"]}},
        {"name": "dwell_mean", "agg": "mean", "field": "context.dwell"},
        {"name": "dwell_min", "agg": "min", "field": "context.dwell"},
        {"name": "dwell_max", "agg": "max", "field": "context.dwell", "where": {"event_type": "view"}},
        {"name": "price", "agg": "last", "field": "context.price"},
    ],
})
TYPES = ("impression", "click", "view", "conversion")


def _events(seed: int, n: int, users: int = 25) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    t = 1_767_225_600_000
    out = []
    for i in range(n):
        t += rng.randint(0, 400)
        jitter = rng.randint(-3_000, 500)
        if rng.random() < 0.02:
            jitter = -rng.randint(60_000, 200_000)  # far behind: late for some settings
        ctx: dict[str, Any] = {}
        if rng.random() < 0.7:
            ctx["dwell"] = rng.choice([rng.randint(0, 5000), rng.random() * 100, "text", True])
        if rng.random() < 0.5:
            ctx["price"] = rng.choice([1.5, 2.0, 3, 7.25])  # ties in time keep the larger value
        out.append({"user_id": f"u{rng.randrange(users)}", "event_type": rng.choice(TYPES),
                    "event_time": t + jitter, "context": ctx, "_i": i, "_src": f"p{rng.randrange(3)}"})
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-9)
    return a == b


def _assert_rows_equal(want: list[dict[str, Any]], got: list[dict[str, Any]]) -> None:
    assert len(want) == len(got)
    for w, g in zip(want, got):
        assert w.keys() == g.keys()
        for k in w:
            assert _same(w[k], g[k]), (k, w, g)


def _run_both(events, *, batch_sizes, ooo, lateness, idle_advance, snapshot_at=None, walls=None):
    program = ViewProgram(VIEW)
    kw = dict(out_of_orderness_ms=ooo, allowed_lateness_ms=lateness, idle_advance=idle_advance,
              sources=("p0", "p1", "p2"), source_idle_ms=10_000)
    row, col = ShardAggregator(program, **kw), ColumnarShard(program, **kw)
    i = step = 0
    while i < len(events):
        size = batch_sizes[step % len(batch_sizes)]
        chunk = events[i:i + size]
        wall = walls(step) if walls else 0.0
        by_src: dict[str, list] = {}
        for e in chunk:
            by_src.setdefault(e["_src"], []).append(e)
        for src, evs in by_src.items():
            late_row = row.ingest([(program.entity_key(e), e["event_time"], program.inputs(e), src, e["_i"])
                                   for e in evs], wall)
            late_col = col.ingest(ShardBatch.of(program, evs, src, [e["_i"] for e in evs]), wall)
            assert late_row == late_col
        assert row.watermark_ms(wall) == col.watermark_ms(wall)
        row.expire(wall)
        col.expire(wall)
        want = {r.entity: (r.as_dict(), r.last_event_ms, r.asof_ms, r.has_new_events)
                for r in row.running(row.take_dirty(), wall)}
        got = {r.entity: (r.as_dict(), r.last_event_ms, r.asof_ms, r.has_new_events)
               for r in col.running(col.take_dirty(), wall)}
        assert want.keys() == got.keys()
        for e in want:
            assert want[e][1:] == got[e][1:], e
            _assert_rows_equal([want[e][0]], [got[e][0]])
        _assert_rows_equal(row.close_windows(wall), col.close_windows(wall))
        i += size
        step += 1
        if snapshot_at is not None and step == snapshot_at:
            fresh = ColumnarShard(program, **kw)
            fresh.restore(pickle.loads(pickle.dumps(col.snapshot())), wall)
            col = fresh
            restored = ShardAggregator(program, **kw)
            restored.restore(row.snapshot(), wall)
            row = restored
    return row, col


@pytest.mark.parametrize("seed", range(6))
def test_columnar_equals_row_shard(seed: int) -> None:
    events = _events(seed, 4000)
    row, col = _run_both(events, batch_sizes=[1, 7, 113, 400, 31], ooo=2_000, lateness=5_000, idle_advance=False)
    assert row.late == col.late > 0
    assert row.accepted == col.accepted


@pytest.mark.parametrize("seed", range(3))
def test_columnar_equals_row_shard_across_snapshot_and_idle_time(seed: int) -> None:
    events = _events(100 + seed, 3000)
    # Wall time runs ahead of event time now and then: idle advance closes windows between batches.
    _run_both(events, batch_sizes=[50, 200, 3], ooo=1_000, lateness=0, idle_advance=True, snapshot_at=9,
              walls=lambda step: 1_000.0 + step * (5.0 if step % 4 else 40.0))


def test_far_apart_batches_purge_tiles_and_compact_rows() -> None:
    program = ViewProgram(VIEW)
    shard = ColumnarShard(program, out_of_orderness_ms=0, allowed_lateness_ms=0, idle_advance=False)
    t0 = 1_767_225_600_000
    for wave in range(3):  # each wave has new entities; earlier ones age out of every window
        t = t0 + wave * 3_600_000
        evs = [{"user_id": f"w{wave}-{i}", "event_type": "click", "event_time": t + i, "context": {}}
               for i in range(1500)]
        shard.ingest(ShardBatch.of(program, evs, "p0", list(range(len(evs)))), 0.0)
        shard.running(shard.take_dirty())
        shard.close_windows(0.0)
    # The first waves' entities were zeroed and dropped: rows were renumbered.
    assert len(shard._names) <= 3000
    assert shard._names[-1] == "w2-1499"
    got = {r.entity: r.as_dict()["clicks_10s"] for r in shard.running(np.arange(len(shard._names)))}
    assert got["w2-0"] == 1


def test_input_matrix_skips_what_the_row_inputs_skip() -> None:
    program = ViewProgram(VIEW)
    events = _events(9, 500)
    matrix = program.input_matrix(EventRows(events))
    for e, got in zip(events, matrix):
        want = program.inputs(e)
        assert [None if math.isnan(x) else x for x in got.tolist()] == [
            None if w is None else float(w) for w in want]


def test_views_with_sketches_are_refused() -> None:
    view = FeatureView.from_dict({"name": "v", "entity": "user_id", "windows": {"1h": "1h"},
                                  "features": [{"name": "d", "agg": "distinct", "field": "item_id"}]})
    with pytest.raises(ValueError, match="not numbers"):
        ColumnarShard(ViewProgram(view), out_of_orderness_ms=0, allowed_lateness_ms=0, idle_advance=False)
