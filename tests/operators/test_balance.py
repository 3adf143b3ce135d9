"""Spreading the input's checking over processes (operators/balance.py)."""

from __future__ import annotations

import time

import pytest

from operators.balance import MeteredSource, ReadMeter, Spreader
from operators.sources import FileBatchSource


def _meter(mine: int, partitions: int, workers: int = 2, read_s: float = 0.2, check_s: float = 0.3) -> ReadMeter:
    meter = ReadMeter(workers, [f"p{i}" for i in range(partitions)])
    meter.saw_read({f"p{i}": True for i in range(mine)}, now=0.0)
    meter.record_read(read_s, 1000)
    meter.record_check(check_s, 1000)
    return meter


@pytest.mark.parametrize(("mine", "partitions", "workers", "share"), [
    (2, 3, 2, 0.25 * 5 / 3),  # the heavy reader of 3 over 2
    (1, 3, 2, 0.0),  # the light one keeps everything
    (2, 4, 2, 0.0),  # even split
    (3, 4, 2, 1 / 3 * 5 / 3),
    (4, 5, 4, 0.0 + (4 - 5 / 4) / 4 * 5 / 3),
])
def test_share_evens_reading_and_checking(mine: int, partitions: int, workers: int, share: float) -> None:
    assert _meter(mine, partitions, workers).share(now=0.5) == pytest.approx(min(1.0, share))


def test_share_follows_partitions_that_run_out_but_never_a_slow_reader() -> None:
    meter = _meter(2, 3)
    meter.saw_folded({"p2": True}, now=0.0)
    assert meter.share(now=5.0) == pytest.approx(0.25 * 5 / 3)  # p2 last seen behind: still has data
    meter.saw_folded({"p2": False}, now=5.0)  # caught up
    assert meter.share(now=5.5) == pytest.approx(0.25 * 5 / 3)
    assert meter.share(now=6.5) == pytest.approx(0.5 * 5 / 3)  # and quiet since: 2 partitions, 1 each
    meter.saw_folded({"p2": True}, now=7.0)  # new data again
    assert meter.share(now=7.1) == pytest.approx(0.25 * 5 / 3)


def test_share_is_zero_before_anything_is_measured() -> None:
    meter = ReadMeter(2, ["a", "b", "c"])
    meter.saw_read({"a": True, "b": True})
    assert meter.share(now=time.monotonic()) == 0.0


def test_spreader_sends_its_share_evenly_to_the_other_workers() -> None:
    meter = _meter(3, 4, workers=3)  # share (3 - 4/3) / 3 * 5 / 3 ~ 0.93
    spreader = Spreader(meter, here=1, keys=["k0", "k1", "k2"])
    meter.saw_read({"p0": True, "p1": True, "p2": True})  # seen now, for the spreader's clock
    keys = [spreader.key(i)[0] for i in range(3000)]
    share = meter.share(time.monotonic())
    assert keys.count("k1") == pytest.approx(3000 * (1 - share), abs=2)
    assert keys.count("k0") == pytest.approx(keys.count("k2"), abs=1)


def test_spreader_keys_land_on_their_workers() -> None:
    from engine.runtime.placement import key_owners

    spreader = Spreader.for_process(ReadMeter(3), here=2)
    assert key_owners(spreader.keys, 3) == {key: w for w, key in enumerate(spreader.keys)}


def test_metered_source_counts_reads_and_partitions(tmp_path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("".join('{"n": %d}\n' % i for i in range(10)))
    meter = ReadMeter(2)
    source = MeteredSource(FileBatchSource([path], batch_size=4), meter)
    assert source.list_parts() == [str(path)] and source.source_ids() == [(str(path), 0)]
    part = source.build_part("events", str(path), None)
    sizes = []
    with pytest.raises(StopIteration):
        while True:
            sizes += [len(b) for b in part.next_batch()]
    assert sizes == [4, 4, 2] and meter.read_n == pytest.approx(4 * 0.98**2 + 4 * 0.98 + 2)
    assert part.snapshot() == 10
