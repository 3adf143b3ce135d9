"""Spreading the input's checking over processes (operators/balance.py)."""

from __future__ import annotations

import time

import pytest

from operators.balance import MeteredSource, ReadMeter, Spreader
from operators.sources import FileBatchSource


def _meter(mine: int, partitions: int, workers: int = 2, read_s: float = 0.2, check_s: float = 0.3) -> ReadMeter:
    meter = ReadMeter(workers, [f"p{i}" for i in range(partitions)])
    meter.saw_read({f"p{i}": 1000 for i in range(mine)}, now=0.0)
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


def test_share_follows_the_input_left_and_partitions_that_run_out() -> None:
    meter = _meter(2, 3)
    meter.saw_folded({"p2": 1000}, now=0.0)
    assert meter.share(now=5.0) == pytest.approx(0.25 * 5 / 3)  # p2 last seen with a backlog: still has input
    meter.saw_folded({"p2": 4000}, now=5.0)  # p2 has fallen behind this process's partitions
    assert meter.share(now=5.1) == 0.0
    meter.saw_read({"p0": 500, "p1": 500}, now=5.2)  # and this process ran ahead: 1002 vs 4001
    assert meter.share(now=5.3) == 0.0
    meter.saw_read({"p0": 3000, "p1": 3000}, now=5.4)  # this one lags: (6002 - 10003 / 2) / 6002
    assert meter.share(now=5.5) == pytest.approx((6002 - 10003 / 2) / 6002 * 5 / 3)
    meter.saw_folded({"p2": 0}, now=6.0)  # caught up
    meter.saw_read({"p0": 0, "p1": 0}, now=6.0)
    assert meter.share(now=6.5) == pytest.approx(0.25 * 5 / 3)  # keeping up: partitions weigh the same
    assert meter.share(now=7.5) == 0.0  # and quiet since: no input anywhere
    meter.saw_read({"p0": 0, "p1": 0}, now=7.6)
    assert meter.share(now=7.7) == pytest.approx(0.5 * 5 / 3)  # p2 quiet: 2 partitions, 1 each


def test_share_is_zero_before_anything_is_measured() -> None:
    meter = ReadMeter(2, ["a", "b", "c"])
    meter.saw_read({"a": 10, "b": 10})
    assert meter.share(now=time.monotonic()) == 0.0


def test_spreader_sends_its_share_evenly_to_the_other_workers() -> None:
    meter = _meter(3, 4, workers=3)  # share (3 - 4/3) / 3 * 5 / 3 ~ 0.93
    spreader = Spreader(meter, here=1, keys=["k0", "k1", "k2"])
    meter.saw_read({"p0": 1000, "p1": 1000, "p2": 1000})  # seen now, for the spreader's clock
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


def test_empty_polls_are_not_counted_as_reading() -> None:
    from operators.balance import _MeteredPartition
    from operators.sources import RawBatch

    class Polls:
        def __init__(self) -> None:
            self.results = [[], [], [RawBatch("t", 0, [1, 2], [b"a", b"b"], [None, None], 5)], []]

        def next_batch(self) -> list[RawBatch]:
            return self.results.pop(0)

    meter = ReadMeter(2)
    part = _MeteredPartition(Polls(), meter)  # type: ignore[arg-type]
    for _ in range(4):
        part.next_batch()
    assert meter.read_n == 2  # one batch of two events; the empty polls left no trace
    assert meter._mine == {("t", 0)}
