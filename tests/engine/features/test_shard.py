"""ShardAggregator against the pandas oracle, without a broker."""

from __future__ import annotations

import pytest

from engine.features.aggregates import ViewProgram
from engine.features.shard import ShardAggregator
from engine.features.spec import default_views_path, load_views
from operators.route import shard_key
from tests.oracle import make_events, normalise_closed, oracle

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
            per_shard.setdefault(shard_key(view.name, entity, SHARDS), []).append(
                (entity, ev["event_time"], program.inputs(ev), "p0", i))
        for key, rows in per_shard.items():
            shard = shards.setdefault(key, ShardAggregator(program, out_of_orderness_ms=OOO,
                                                           allowed_lateness_ms=LATENESS, idle_advance=False))
            late.update(shard.ingest(rows, wall_now=0.0))
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


def test_snapshot_restore_continues_identically() -> None:
    view = next(v for v in load_views(default_views_path()) if v.name == "user")
    program = ViewProgram(view)
    events = make_events(7, 1000, users=5)

    def feed(shard, evs):
        return shard.ingest([(program.entity_key(e), e["event_time"], program.inputs(e), "p0", i)
                             for i, e in enumerate(evs)], 0.0)

    def fresh():
        return ShardAggregator(program, out_of_orderness_ms=OOO, allowed_lateness_ms=LATENESS, idle_advance=False)

    a = fresh()
    feed(a, events[:500])
    b = fresh()
    b.restore(a.snapshot(), 0.0)
    feed(a, events[500:])
    feed(b, events[500:])
    ents = sorted({program.entity_key(e) for e in events})
    assert [r.as_dict() for r in a.running(ents)] == [r.as_dict() for r in b.running(ents)]
    assert a.close_windows(0.0) == b.close_windows(0.0)


def test_watermark_never_moves_back_after_idle_advance() -> None:
    from engine.features.spec import FeatureView

    view = FeatureView.from_dict({"name": "v", "entity": "user_id", "windows": {"1s": "1s"},
                                  "features": [{"name": "n", "agg": "count"}]})
    program = ViewProgram(view)
    shard = ShardAggregator(program, out_of_orderness_ms=0, allowed_lateness_ms=0, idle_advance=True)
    assert shard.ingest([("a", 1_000, (1,), "p0", "e1")], wall_now=100.0) == []
    # 40 s of silence: the watermark advances with the wall clock and closes windows.
    closed = shard.close_windows(wall_now=140.0)
    assert [(r["window_end_ms"], r["n"]) for r in closed] == [(2_000, 1)]
    wm = shard.watermark_ms(140.0)
    assert wm >= 40_000
    # An event behind that watermark is late, even though it is newer than the last event.
    assert shard.ingest([("a", 31_600, (1,), "p0", "e2")], wall_now=140.0) == ["e2"]
    assert shard.watermark_ms(140.0) >= wm


def test_watermark_waits_for_the_slowest_partition() -> None:
    from engine.features.spec import FeatureView

    view = FeatureView.from_dict({"name": "v", "entity": "user_id", "windows": {"1s": "1s"},
                                  "features": [{"name": "n", "agg": "count"}]})
    shard = ShardAggregator(ViewProgram(view), out_of_orderness_ms=0, allowed_lateness_ms=0, idle_advance=False,
                            sources=("p0", "p1"))
    # Partition p1 was read far ahead; p0's older events are not late while p0 lags behind.
    assert shard.ingest([("a", 100_000, (1,), "p1", "x"), ("b", 5_000, (1,), "p0", "y"),
                         ("c", 6_000, (1,), "p0", "z")], wall_now=0.0) == []
    assert shard.watermark_ms(0.0) == 6_000
    assert shard.ingest([("d", 5_500, (1,), "p1", "late")], wall_now=0.0) == ["late"]
    # Windows close only as far as the slowest partition has come.
    assert {r["window_end_ms"] for r in shard.close_windows(0.0)} == {6_000}


def test_a_silent_partition_stops_holding_the_watermark_back() -> None:
    from engine.features.spec import FeatureView

    view = FeatureView.from_dict({"name": "v", "entity": "user_id", "windows": {"1s": "1s"},
                                  "features": [{"name": "n", "agg": "count"}]})
    shard = ShardAggregator(ViewProgram(view), out_of_orderness_ms=0, allowed_lateness_ms=0, idle_advance=False,
                            source_idle_ms=10_000, sources=("p0", "p1"))
    shard.ingest([("a", 50_000, (1,), "p1", "x")], wall_now=0.0)
    assert shard.watermark_ms(5.0) is None  # p0 expected and not heard from yet
    assert shard.watermark_ms(11.0) is None or shard.watermark_ms(11.0) == 50_000
    assert shard.watermark_ms(11.0) == 50_000  # 11 s without a word from p0: ignored
