"""DynamicBatcher: exactness, the Triton batching policy, deadlines, overload, cancellation, failures.

Policy tests assert on the batcher's own records (``stats.history``), not on wall-clock
latency; where time is involved the margins are an order of magnitude wide.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Mapping

import numpy as np
import pytest

from serving.batcher import DynamicBatcher
from serving.errors import DeadlineExceeded, InvalidInput, ModelUnavailable, Overloaded
from serving.manager import map_ort_error
from serving.onnx_session import OnnxModel


class Gate:
    """A run function that blocks until released and records the rows it computed."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.started = threading.Event()
        self.seen: list[float] = []

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.started.set()
        self.open.wait(10)
        x = feeds["x"]
        self.seen.extend(x[:, 0].tolist())
        return {"y": x * 2}


def row(value: float) -> dict[str, np.ndarray]:
    return {"x": np.full((1, 1), value, np.float32)}


async def wait_thread_event(event: threading.Event) -> None:
    assert await asyncio.to_thread(event.wait, 10)


def test_concurrent_single_rows_equal_unbatched_bitwise(mlp: OnnxModel) -> None:
    rng = np.random.default_rng(42)
    xs = rng.standard_normal((200, 64)).astype(np.float32)
    expected = [mlp.run({"input": xs[i : i + 1]})["output"] for i in range(len(xs))]

    async def main() -> DynamicBatcher:
        batcher = DynamicBatcher(mlp.run, max_batch_size=64, name="mlp")
        outs = await asyncio.gather(*(batcher.submit({"input": xs[i : i + 1]}, rows=1) for i in range(len(xs))))
        for i, out in enumerate(outs):
            assert out["output"].shape == (1, 1)
            assert np.array_equal(out["output"], expected[i]), i
        await batcher.close()
        return batcher

    batcher = asyncio.run(main())
    assert batcher.stats.rows == 200
    assert batcher.stats.executions < batcher.stats.rows  # batches > 1 formed
    assert max(r.rows for r in batcher.stats.history) == 64
    assert all(not r.topup_waited for r in batcher.stats.history)


def test_mixed_request_sizes_are_split_back_exactly(mlp: OnnxModel) -> None:
    rng = np.random.default_rng(7)
    sizes = rng.integers(1, 9, size=60).tolist()
    xs = [rng.standard_normal((n, 64)).astype(np.float32) for n in sizes]

    async def main() -> DynamicBatcher:
        batcher = DynamicBatcher(mlp.run, max_batch_size=16, name="mlp")
        outs = await asyncio.gather(*(batcher.submit({"input": x}, rows=len(x)) for x in xs))
        for x, out in zip(xs, outs):
            single = np.concatenate([mlp.run({"input": x[i : i + 1]})["output"] for i in range(len(x))])
            assert np.array_equal(out["output"], single)
        await batcher.close()
        return batcher

    batcher = asyncio.run(main())
    assert batcher.stats.rows == sum(sizes)
    assert all(r.rows <= 16 for r in batcher.stats.history)
    assert batcher.stats.executions < len(sizes)


def test_no_delay_lone_request_never_waits() -> None:
    async def main() -> DynamicBatcher:
        batcher = DynamicBatcher(lambda f: {"y": f["x"]}, max_batch_size=64, max_queue_delay_us=0)
        for i in range(5):
            await batcher.submit(row(i))
        await batcher.close()
        return batcher

    batcher = asyncio.run(main())
    assert [(r.rows, r.topup_waited) for r in batcher.stats.history] == [(1, False)] * 5
    assert batcher.stats.topup_waits == 0


def test_partial_batch_waits_up_to_the_delay_to_top_up() -> None:
    async def main() -> tuple[DynamicBatcher, float]:
        batcher = DynamicBatcher(lambda f: {"y": f["x"]}, max_batch_size=8, max_queue_delay_us=200_000)
        started = time.monotonic()
        await batcher.submit(row(1))
        elapsed = time.monotonic() - started
        await batcher.close()
        return batcher, elapsed

    batcher, elapsed = asyncio.run(main())
    (record,) = batcher.stats.history
    assert record.topup_waited and not record.full
    assert record.topup_wait_s >= 0.15  # the wait is enforced: a lower bound is not flaky
    assert elapsed >= 0.15


def test_full_batch_never_waits_even_with_a_long_delay() -> None:
    async def main() -> DynamicBatcher:
        batcher = DynamicBatcher(lambda f: {"y": f["x"]}, max_batch_size=8, max_queue_delay_us=30_000_000)
        await asyncio.wait_for(asyncio.gather(*(batcher.submit(row(i)) for i in range(8))), timeout=10)
        await batcher.close()
        return batcher

    batcher = asyncio.run(main())
    (record,) = batcher.stats.history
    assert (record.rows, record.full, record.topup_waited) == (8, True, False)


def test_top_up_stops_as_soon_as_the_batch_is_full() -> None:
    async def main() -> DynamicBatcher:
        batcher = DynamicBatcher(lambda f: {"y": f["x"]}, max_batch_size=4, max_queue_delay_us=30_000_000)
        first = asyncio.ensure_future(batcher.submit(row(0)))
        await asyncio.sleep(0.05)
        rest = [batcher.submit(row(i)) for i in (1, 2, 3)]
        outs = await asyncio.wait_for(asyncio.gather(first, *rest), timeout=10)
        assert [float(o["y"][0, 0]) for o in outs] == [0, 1, 2, 3]
        await batcher.close()
        return batcher

    batcher = asyncio.run(main())
    (record,) = batcher.stats.history
    assert (record.rows, record.requests, record.full, record.topup_waited) == (4, 4, True, True)
    assert record.topup_wait_s < 10


def test_requests_queued_while_busy_do_not_wait_again() -> None:
    """The delay counts from the oldest request's arrival: time spent behind a busy runner counts."""

    def slow(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        time.sleep(0.3)
        return {"y": feeds["x"]}

    async def main() -> DynamicBatcher:
        batcher = DynamicBatcher(slow, max_batch_size=8, max_queue_delay_us=50_000)
        first = asyncio.ensure_future(batcher.submit(row(0)))
        await asyncio.sleep(0.1)  # the first batch (1 row, after a 50 ms top-up) is computing now
        assert batcher.busy
        await asyncio.gather(first, batcher.submit(row(1)), batcher.submit(row(2)))
        await batcher.close()
        return batcher

    batcher = asyncio.run(main())
    first, second = batcher.stats.history
    assert first.rows == 1 and first.topup_waited
    assert second.rows == 2 and not second.topup_waited


def test_expired_requests_are_skipped_never_computed() -> None:
    gate = Gate()

    async def main() -> DynamicBatcher:
        batcher = DynamicBatcher(gate, max_batch_size=4, name="gate")
        running = asyncio.ensure_future(batcher.submit(row(1)))
        await wait_thread_event(gate.started)  # the runner is busy with row 1
        doomed = asyncio.ensure_future(batcher.submit(row(99), deadline=time.monotonic() + 0.05))
        kept = asyncio.ensure_future(batcher.submit(row(2), deadline=time.monotonic() + 30))
        with pytest.raises(DeadlineExceeded):
            await asyncio.wait_for(doomed, timeout=5)  # fails promptly, while still queued
        assert batcher.pending_requests == 1
        with pytest.raises(DeadlineExceeded):  # already past on arrival: refused at once
            await batcher.submit(row(98), deadline=time.monotonic() - 1)
        gate.open.set()
        await asyncio.gather(running, kept)
        await batcher.close()
        return batcher

    batcher = asyncio.run(main())
    assert gate.seen == [1.0, 2.0]
    assert batcher.stats.expired == 2


def test_queue_is_bounded_in_rows() -> None:
    gate = Gate()

    async def main() -> DynamicBatcher:
        batcher = DynamicBatcher(gate, max_batch_size=4, queue_capacity=4, name="gate")
        running = asyncio.ensure_future(batcher.submit(row(0)))
        await wait_thread_event(gate.started)
        queued = [asyncio.ensure_future(batcher.submit({"x": np.zeros((3, 1), np.float32)}, rows=3))]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="queue full"):
            await batcher.submit({"x": np.zeros((2, 1), np.float32)}, rows=2)  # 3 + 2 > 4
        queued.append(asyncio.ensure_future(batcher.submit(row(5))))  # 3 + 1 fits
        await asyncio.sleep(0)
        assert batcher.pending_rows == 4
        with pytest.raises(Overloaded):
            await batcher.submit(row(6))
        gate.open.set()
        await asyncio.gather(running, *queued)
        await batcher.close()
        return batcher

    batcher = asyncio.run(main())
    assert batcher.stats.overloaded == 2
    assert batcher.pending_rows == 0


def test_cancelled_request_leaves_the_queue() -> None:
    gate = Gate()

    async def main() -> DynamicBatcher:
        batcher = DynamicBatcher(gate, max_batch_size=4, queue_capacity=4, name="gate")
        running = asyncio.ensure_future(batcher.submit(row(0)))
        await wait_thread_event(gate.started)
        victim = asyncio.ensure_future(batcher.submit({"x": np.full((4, 1), 7, np.float32)}, rows=4))
        await asyncio.sleep(0)
        assert batcher.pending_rows == 4
        victim.cancel()
        with pytest.raises(asyncio.CancelledError):
            await victim
        assert batcher.pending_rows == 0 and batcher.pending_requests == 0
        after = asyncio.ensure_future(batcher.submit(row(3)))  # capacity is free again
        gate.open.set()
        await asyncio.gather(running, after)
        await batcher.close()
        return batcher

    batcher = asyncio.run(main())
    assert gate.seen == [0.0, 3.0]
    assert batcher.stats.cancelled == 1


def test_bad_data_fails_alone_in_a_shared_batch(two_inputs: OnnxModel) -> None:
    """An out-of-range id fails inside ONNX Runtime: only that request fails, its batch-mates succeed."""
    rng = np.random.default_rng(0)
    requests = [
        {"dense": rng.standard_normal((1, 8)).astype(np.float32), "ids": rng.integers(0, 10, (1, 2))}
        for _ in range(6)
    ]
    requests[3]["ids"] = np.array([[1, 1000]], np.int64)

    async def main() -> tuple[DynamicBatcher, list[object]]:
        batcher = DynamicBatcher(two_inputs.run, max_batch_size=8, name="two", map_error=map_ort_error)
        outs = await asyncio.gather(*(batcher.submit(r) for r in requests), return_exceptions=True)
        await batcher.close()
        return batcher, outs

    batcher, outs = asyncio.run(main())
    assert isinstance(outs[3], InvalidInput) and "out of data bounds" in str(outs[3])
    for i, out in enumerate(outs):
        if i != 3:
            assert isinstance(out, dict)
            assert np.array_equal(out["score"], two_inputs.run(requests[i])["score"])
    assert batcher.stats.failed_batches == 1


def test_runtime_failure_is_unavailable_and_the_batcher_survives() -> None:
    calls = {"n": 0}

    def flaky(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("device lost")
        return {"y": feeds["x"]}

    async def main() -> None:
        batcher = DynamicBatcher(flaky, max_batch_size=4)
        with pytest.raises(ModelUnavailable, match="device lost"):
            await batcher.submit(row(1))
        assert float((await batcher.submit(row(2)))["y"][0, 0]) == 2.0
        await batcher.close()

    asyncio.run(main())


def test_output_without_batch_axis_is_never_split_wrongly() -> None:
    async def main() -> None:
        batcher = DynamicBatcher(lambda f: {"y": f["x"].sum(keepdims=True)[0]}, max_batch_size=4)
        outs = await asyncio.gather(batcher.submit(row(1)), batcher.submit(row(2)), return_exceptions=True)
        # The batch of 2 is refused, then each request runs alone (and is correct alone).
        assert [float(o["y"][0]) for o in outs] == [1.0, 2.0]  # type: ignore[index]
        await batcher.close()

    asyncio.run(main())


def test_close_drains_queued_requests_then_refuses() -> None:
    gate = Gate()

    async def main() -> None:
        batcher = DynamicBatcher(gate, max_batch_size=1, name="gate")
        futures = [asyncio.ensure_future(batcher.submit(row(i))) for i in range(3)]
        await wait_thread_event(gate.started)
        closing = asyncio.ensure_future(batcher.close())
        await asyncio.sleep(0)
        with pytest.raises(ModelUnavailable):
            await batcher.submit(row(9))
        gate.open.set()
        await closing
        assert [float(f.result()["y"][0, 0]) for f in futures] == [0, 2, 4]

    asyncio.run(main())


def test_no_batch_axis_runs_each_request_alone() -> None:
    shapes: list[tuple[int, ...]] = []

    def run(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        shapes.append(feeds["x"].shape)
        return {"y": feeds["x"]}

    async def main() -> None:
        batcher = DynamicBatcher(run, max_batch_size=0, max_queue_delay_us=1_000_000)
        await asyncio.gather(*(batcher.submit({"x": np.zeros((3, 4), np.float32)}) for _ in range(3)))
        await batcher.close()

    asyncio.run(main())
    assert shapes == [(3, 4)] * 3


def test_direct_submit_of_an_impossible_row_count_is_refused() -> None:
    async def main() -> None:
        batcher = DynamicBatcher(lambda f: {"y": f["x"]}, max_batch_size=4)
        for rows in (0, 5):
            with pytest.raises(InvalidInput, match="1 to 4 rows"):
                await batcher.submit({"x": np.zeros((max(rows, 1), 1), np.float32)}, rows=rows)
        assert batcher.pending_rows == 0
        await batcher.close()

    asyncio.run(main())


class ThreadRecorder:
    """A run function that records which thread ran each batch (optionally slowly)."""

    def __init__(self, seconds: float = 0.0, fail_on: float | None = None) -> None:
        self.seconds = seconds
        self.fail_on = fail_on
        self.threads: list[int] = []

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.threads.append(threading.get_ident())
        if self.seconds:
            time.sleep(self.seconds)
        x = feeds["x"]
        if self.fail_on is not None and (x == self.fail_on).any():
            raise ValueError(f"bad value {self.fail_on}")
        return {"y": x * 2}


async def _sequential(batcher: DynamicBatcher, values: range) -> list[float]:
    return [float((await batcher.submit(row(v)))["y"][0, 0]) for v in values]


def test_a_fast_model_moves_onto_the_event_loop_after_its_first_batches() -> None:
    run = ThreadRecorder()

    async def main() -> tuple[list[float], int, bool]:
        batcher = DynamicBatcher(run, max_batch_size=8, inline_compute_us=50_000)
        out = await _sequential(batcher, range(40))
        inline = batcher.inline
        await batcher.close()
        return out, threading.get_ident(), inline

    out, loop_thread, inline = asyncio.run(main())
    assert out == [2.0 * v for v in range(40)]
    assert inline
    # The first batches ran on the inference thread (the decision needs measurements) ...
    assert all(t != loop_thread for t in run.threads[:16])
    # ... the rest on the event loop's thread.
    assert all(t == loop_thread for t in run.threads[16:])


def test_a_slow_model_and_a_zero_threshold_stay_on_the_inference_thread() -> None:
    slow, off = ThreadRecorder(seconds=0.002), ThreadRecorder()

    async def main() -> tuple[int, bool, bool]:
        slow_batcher = DynamicBatcher(slow, max_batch_size=8, inline_compute_us=500)  # 2 ms > 0.5 ms
        off_batcher = DynamicBatcher(off, max_batch_size=8, inline_compute_us=0)
        await _sequential(slow_batcher, range(30))
        await _sequential(off_batcher, range(30))
        flags = slow_batcher.inline, off_batcher.inline
        await slow_batcher.close()
        await off_batcher.close()
        return threading.get_ident(), *flags

    loop_thread, slow_inline, off_inline = asyncio.run(main())
    assert not slow_inline and not off_inline
    assert loop_thread not in slow.threads and loop_thread not in off.threads


def test_inline_batches_keep_batching_and_isolate_a_bad_request() -> None:
    run = ThreadRecorder(fail_on=13.0)

    async def main() -> tuple[DynamicBatcher, list[object]]:
        batcher = DynamicBatcher(run, max_batch_size=8, inline_compute_us=50_000)
        await _sequential(batcher, range(20, 40))  # warm up past the decision
        assert batcher.inline
        outs = await asyncio.gather(*(batcher.submit(row(v)) for v in range(10, 20)), return_exceptions=True)
        await batcher.close()
        return batcher, outs

    batcher, outs = asyncio.run(main())
    assert isinstance(outs[3], ModelUnavailable) and "bad value 13.0" in str(outs[3])
    assert [float(o["y"][0, 0]) for i, o in enumerate(outs) if i != 3] == [  # type: ignore[index]
        2.0 * v for v in range(10, 20) if v != 13
    ]
    assert max(r.rows for r in batcher.stats.history) > 1  # concurrent requests still share batches
    assert batcher.stats.failed_batches == 1


def test_negative_inline_threshold_is_refused() -> None:
    with pytest.raises(ValueError, match="inline_compute_us"):
        DynamicBatcher(lambda f: f, max_batch_size=4, inline_compute_us=-1)
