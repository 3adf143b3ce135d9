"""ShardAggregator against the pandas oracle and against the event-by-event reference, without a broker."""

from __future__ import annotations

import math
import pickle
import random
from typing import Any

import numpy as np
import pytest

from engine.features.aggregates import EventRows, ViewProgram
from engine.features.shard import ShardAggregator, ShardBatch
from engine.features.spec import FeatureView, default_views_path, load_views
from operators.route import shard_key
from tests.oracle import make_events, normalise_closed, oracle
from tests.reference_shard import RowProgram, RowShard

OOO, LATENESS, SHARDS = 5_000, 60_000, 4


def _run(view, events, batch=97):
    program = ViewProgram(view)
    shards: dict[str, ShardAggregator] = {}
    late: set[int] = set()
    closed = []
    running = {}
    for start in range(0, len(events), batch):
        per_shard: dict[str, list] = {}
        for i in range(start, min(start + batch, len(events))):
            ev = events[i]
            if not program.accepts(ev["event_type"]):
                continue
            entity = program.entity_key(ev)
            per_shard.setdefault(shard_key(view.name, entity, SHARDS), []).append((i, ev))
        for key, pairs in per_shard.items():
            shard = shards.setdefault(key, ShardAggregator(program, out_of_orderness_ms=OOO,
                                                           allowed_lateness_ms=LATENESS, idle_advance=False))
            batch_ = ShardBatch.of(program, [ev for _, ev in pairs], "p0", [i for i, _ in pairs])
            late.update(shard.ingest(batch_, wall_now=0.0))
            for r in shard.running(shard.take_dirty()):
                running[r.entity] = {**r.as_dict(), "_t": r.last_event_ms, "_asof": r.asof_ms}
            closed.extend(shard.close_windows(wall_now=0.0))
    return late, running, closed


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("view_name", ["user", "item", "user_item"])
def test_shard_matches_pandas_oracle(seed: int, view_name: str) -> None:
    import pandas as pd

    view = next(v for v in load_views(default_views_path()) if v.name == view_name)
    events = make_events(seed, 3000)
    late, running, closed = _run(view, events)
    want = oracle(view, events, out_of_orderness_ms=OOO, allowed_lateness_ms=LATENESS, shards=SHARDS)
    assert late == want.late
    assert len(late) > 10
    # _asof is when a hash was last (re)computed; values must equal the oracle's at the final time.
    assert {e: {k: v for k, v in r.items() if k != "_asof"} for e, r in running.items()} == {
        e: {k: v for k, v in r.items() if k != "_asof"} for e, r in want.running.items()}
    assert all(running[e]["_asof"] <= want.running[e]["_asof"] for e in running)
    got_closed = normalise_closed(pd.DataFrame(closed), view)
    assert len(got_closed) > 100
    assert got_closed == normalise_closed(want.closed, view)


def _one_count_view() -> ViewProgram:
    return ViewProgram(FeatureView.from_dict({"name": "v", "entity": "user_id", "windows": {"1s": "1s"},
                                              "features": [{"name": "n", "agg": "count"}]}))


def _batch(program: ViewProgram, source: str, *events: tuple[str, int, str]) -> ShardBatch:
    """Events (entity, time, reference) of one source partition."""
    return ShardBatch.of(program, [{"user_id": e, "event_time": t} for e, t, _ in events], source,
                         [ref for _, _, ref in events])


def test_watermark_never_moves_back_after_idle_advance() -> None:
    program = _one_count_view()
    shard = ShardAggregator(program, out_of_orderness_ms=0, allowed_lateness_ms=0, idle_advance=True)
    assert shard.ingest(_batch(program, "p0", ("a", 1_000, "e1")), wall_now=100.0) == []
    # 40 s of silence: the watermark advances with the wall clock and closes windows.
    closed = shard.close_windows(wall_now=140.0)
    assert [(r["window_end_ms"], r["n"]) for r in closed] == [(2_000, 1)]
    wm = shard.watermark_ms(140.0)
    assert wm >= 40_000
    # An event behind that watermark is late, even though it is newer than the last event.
    assert shard.ingest(_batch(program, "p0", ("a", 31_600, "e2")), wall_now=140.0) == ["e2"]
    assert shard.watermark_ms(140.0) >= wm


def test_watermark_waits_for_the_slowest_partition() -> None:
    program = _one_count_view()
    shard = ShardAggregator(program, out_of_orderness_ms=0, allowed_lateness_ms=0, idle_advance=False,
                            sources=("p0", "p1"))
    # Partition p1 was read far ahead; p0's older events are not late while p0 lags behind.
    assert shard.ingest(_batch(program, "p1", ("a", 100_000, "x")), wall_now=0.0) == []
    assert shard.ingest(_batch(program, "p0", ("b", 5_000, "y"), ("c", 6_000, "z")), wall_now=0.0) == []
    assert shard.watermark_ms(0.0) == 6_000
    assert shard.ingest(_batch(program, "p1", ("d", 5_500, "late")), wall_now=0.0) == ["late"]
    # Windows close only as far as the slowest partition has come.
    assert {r["window_end_ms"] for r in shard.close_windows(0.0)} == {6_000}


def test_a_silent_partition_stops_holding_the_watermark_back() -> None:
    program = _one_count_view()
    shard = ShardAggregator(program, out_of_orderness_ms=0, allowed_lateness_ms=0, idle_advance=False,
                            source_idle_ms=10_000, sources=("p0", "p1"))
    shard.ingest(_batch(program, "p1", ("a", 50_000, "x")), wall_now=0.0)
    assert shard.watermark_ms(5.0) is None  # p0 expected and not heard from yet
    assert shard.watermark_ms(11.0) == 50_000  # 11 s without a word from p0: ignored


# -- against the event-by-event reference (tests/reference_shard.py) ---------------------------

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
        {"name": "items", "agg": "distinct", "field": "item_id", "where": {"event_type": ["click", "view"]}},
        {"name": "cat", "agg": "last", "field": "context.cat", "dtype": "str"},
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
        if rng.random() < 0.5:
            ctx["cat"] = rng.choice(["a", "b", "c", 7])  # a number's text counts as text
        out.append({"user_id": f"u{rng.randrange(users)}", "item_id": f"i{rng.randrange(40)}",
                    "event_type": rng.choice(TYPES),
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


def _run_both(events, *, batch_sizes, ooo, lateness, idle_advance, snapshot_at=(), walls=None, view=VIEW,
              write_every=1):
    """Both shards over the same batches, outputs compared after every step.

    ``write_every`` > 1 is the production order: windows are closed on every batch, running
    values written only now and then (by the timer), so tiles go while rows are still dirty.
    """
    program = ViewProgram(view)
    kw = dict(out_of_orderness_ms=ooo, allowed_lateness_ms=lateness, idle_advance=idle_advance,
              sources=("p0", "p1", "p2"), source_idle_ms=10_000)
    row, col = RowShard(RowProgram(program), **kw), ShardAggregator(program, **kw)
    i = step = 0
    while i < len(events):
        size = batch_sizes[step % len(batch_sizes)]
        chunk = events[i:i + size]
        wall = walls(step) if walls else 0.0
        by_src: dict[str, list] = {}
        for e in chunk:
            by_src.setdefault(e["_src"], []).append(e)
        for src, evs in by_src.items():
            late_row = row.ingest([(program.entity_key(e), e["event_time"], row.program.inputs(e), src, e["_i"])
                                   for e in evs], wall)
            late_col = col.ingest(ShardBatch.of(program, evs, src, [e["_i"] for e in evs]), wall)
            assert late_row == late_col
        assert row.watermark_ms(wall) == col.watermark_ms(wall)
        row.expire(wall)
        col.expire(wall)
        if write_every > 1:
            _assert_rows_equal(row.close_windows(wall), col.close_windows(wall))
        if step % write_every == 0 or i + size >= len(events):
            want = {r.entity: (r.as_dict(), r.last_event_ms, r.asof_ms, r.has_new_events)
                    for r in row.running(row.take_dirty(), wall)}
            got = {r.entity: (r.as_dict(), r.last_event_ms, r.asof_ms, r.has_new_events)
                   for r in col.running(col.take_dirty(), wall)}
            assert want.keys() == got.keys()
            for e in want:
                assert want[e][1:] == got[e][1:], e
                _assert_rows_equal([want[e][0]], [got[e][0]])
        if write_every == 1:
            _assert_rows_equal(row.close_windows(wall), col.close_windows(wall))
        i += size
        step += 1
        if step in snapshot_at:
            fresh = ShardAggregator(program, **kw)
            fresh.restore(pickle.loads(pickle.dumps(col.snapshot())), wall)
            col = fresh
            restored = RowShard(RowProgram(program), **kw)
            restored.restore(row.snapshot(), wall)
            row = restored
    return row, col


@pytest.mark.parametrize("seed", range(6))
def test_shard_equals_the_event_by_event_reference(seed: int) -> None:
    events = _events(seed, 4000)
    row, col = _run_both(events, batch_sizes=[1, 7, 113, 400, 31], ooo=2_000, lateness=5_000, idle_advance=False)
    assert row.late == col.late > 0
    assert row.accepted == col.accepted


@pytest.mark.parametrize("seed", range(3))
def test_shard_equals_the_reference_across_snapshot_and_idle_time(seed: int) -> None:
    events = _events(100 + seed, 3000)
    # Wall time runs ahead of event time now and then: idle advance closes windows between batches.
    _run_both(events, batch_sizes=[50, 200, 3], ooo=1_000, lateness=0, idle_advance=True, snapshot_at=(9,),
              walls=lambda step: 1_000.0 + step * (5.0 if step % 4 else 40.0))


def _waves(seed: int, waves: int = 4, users: int = 1500, per_user: int = 2) -> list[dict[str, Any]]:
    """Each wave a new crowd of users, 20 minutes after the last: earlier ones age out of every window."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for w in range(waves):
        t0 = 1_767_225_600_000 + w * 1_200_000
        for k in range(users * per_user):
            ctx: dict[str, Any] = {"dwell": rng.randint(0, 5000), "price": rng.choice([1.5, 3]),
                                   "cat": rng.choice("abc")}
            out.append({"user_id": f"w{w}-{rng.randrange(users)}", "item_id": f"i{rng.randrange(5000)}",
                        "event_type": rng.choice(TYPES), "event_time": t0 + k * 30 + rng.randint(0, 20),
                        "context": ctx, "_i": len(out), "_src": f"p{rng.randrange(3)}"})
    return out


@pytest.mark.parametrize("seed", range(2))
def test_shard_equals_the_reference_through_growth_compaction_and_snapshots(seed: int) -> None:
    events = _waves(seed)
    # Production order (windows closed on every batch, writes now and then), a snapshot after
    # each wave's first batches; growth past the first 64 rows, and dead rows compacted.
    row, col = _run_both(events, batch_sizes=[500, 250, 1000], ooo=1_000, lateness=0, idle_advance=False,
                         snapshot_at=(3, 9, 14, 20), write_every=3)
    assert len(col._names) < 4 * 1500  # compacted: not every entity ever seen holds a row


@pytest.mark.parametrize("seed", range(2))
def test_default_user_view_equals_the_reference(seed: int) -> None:
    view = next(v for v in load_views(default_views_path()) if v.name == "user")  # 3 slide groups, sketches
    events = [{**e, "context": {"dwell_ms": e["context"]["dwell"]} if "dwell" in e["context"] else {}}
              for e in _events(seed, 3000)]
    _run_both(events, batch_sizes=[64, 300, 9], ooo=2_000, lateness=5_000, idle_advance=False, view=view,
              write_every=2, snapshot_at=(7,))


def test_far_apart_batches_purge_tiles_and_compact_rows() -> None:
    program = ViewProgram(VIEW)
    shard = ShardAggregator(program, out_of_orderness_ms=0, allowed_lateness_ms=0, idle_advance=False)
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


def test_input_columns_skip_what_the_row_inputs_skip() -> None:
    program = ViewProgram(VIEW)
    events = _events(9, 500)
    matrix, texts = program.input_columns(EventRows(events))
    assert texts
    for i, (e, got) in enumerate(zip(events, matrix)):
        row = [None if math.isnan(x) else x for x in got.tolist()]
        for j, values in texts.items():
            row[j] = values[i]
        want = RowProgram(program).inputs(e)
        assert row == [w if (w is None or isinstance(w, str)) else float(w) for w in want]
