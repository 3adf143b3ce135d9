"""Dynamic batching of inference requests onto one model version (asyncio).

Policy (Triton's, which FIELD-NOTES measured as the better one; MLServer's always-wait
policy lost 4x at low load):

* Whenever the runner is idle and requests are queued, it takes queued requests in arrival
  order up to ``max_batch_size`` rows and dispatches them at once.
* Only if that batch is partial *and* ``max_queue_delay_us > 0`` does it wait for more
  requests to top it up, until the batch is full or the *oldest* queued request has waited
  ``max_queue_delay_us`` in total. A batch that is already full never waits, and requests
  that queued while the runner was busy have usually used up their delay already.
* One ONNX Runtime call per batch, inputs concatenated along axis 0, outputs split back per
  request. A request is never split across batches. The call runs in a dedicated
  single-thread executor (a private thread, so inference never queues behind model loading
  or other work in the loop's default executor). Opt-in (``inline_compute_us > 0``): once
  the moving average of a version's batch compute time is below it, batches run on the event
  loop itself, because for a small model the two thread hand-offs per batch cost more CPU
  than the inference (measured on the serving benchmark's small MLP). A model that slows
  down (bigger batches, a busier machine) goes back to the thread by the same average.

Admission: the queue is bounded in *rows* (``queue_capacity``); a request that does not fit
is refused at once with :class:`~serving.errors.Overloaded`. A request whose deadline
(``time.monotonic()`` seconds) passes while it is queued fails with
:class:`~serving.errors.DeadlineExceeded` and is never computed; a cancelled request leaves
the queue at once. If a batch of several requests fails in ONNX Runtime, each of its requests
is run again alone so that one request with bad data (e.g. an out-of-range index) fails by
itself instead of failing its neighbours.

>>> import asyncio, numpy as np
>>> def double(feeds):
...     return {"y": feeds["x"] * 2}
>>> async def demo():
...     batcher = DynamicBatcher(double, max_batch_size=8, name="demo")
...     xs = [np.full((1, 1), i, np.float32) for i in range(4)]
...     outs = await asyncio.gather(*(batcher.submit({"x": x}, rows=1) for x in xs))
...     await batcher.close()
...     return [float(o["y"][0, 0]) for o in outs], batcher.stats.executions
>>> asyncio.run(demo())
([0.0, 2.0, 4.0, 6.0], 1)
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from serving.errors import DeadlineExceeded, InvalidInput, ModelUnavailable, Overloaded, ServingError
from serving.metrics import VersionMetrics

log = logging.getLogger(__name__)

# Batches computed on the inference thread before the inline decision is taken (the first
# runs of a session include one-off allocations), and the moving average's weight.
_INLINE_AFTER_BATCHES = 16
_COMPUTE_AVG_WEIGHT = 0.05

RunFn = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]
ErrorMapper = Callable[[Exception], ServingError]


def _default_error(exc: Exception) -> ServingError:
    if isinstance(exc, ServingError):
        return exc
    return ModelUnavailable(f"inference failed: {type(exc).__name__}: {exc}")


@dataclass(slots=True, eq=False)
class _Request:
    inputs: Mapping[str, np.ndarray]
    rows: int
    deadline: float | None
    future: asyncio.Future[dict[str, np.ndarray]]
    enqueued: float
    queued: bool = True
    timer: asyncio.TimerHandle | None = None


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """What the runner decided for one dispatched batch (kept for tests and debugging).

    ``topup_waited`` is True when the runner waited for more requests before dispatching
    (``topup_wait_s`` long); ``full`` when the batch reached ``max_batch_size`` rows.
    """

    rows: int
    requests: int
    full: bool
    topup_waited: bool
    topup_wait_s: float
    compute_s: float


@dataclass(slots=True)
class BatcherStats:
    """Counters since the batcher was created; ``history`` holds the last batches' records."""

    requests: int = 0  # admitted into the queue
    executions: int = 0  # ONNX Runtime calls for batches (isolation re-runs not counted)
    rows: int = 0  # rows in those calls
    topup_waits: int = 0
    expired: int = 0
    cancelled: int = 0
    overloaded: int = 0
    failed_batches: int = 0
    history: collections.deque[BatchRecord] = field(default_factory=lambda: collections.deque(maxlen=256))


class DynamicBatcher:
    """Batches requests for one model version; see the module docstring for the policy.

    ``run`` is the blocking inference function (feeds -> outputs), called from the batcher's
    own thread. ``max_batch_size=0`` means the model has no batch axis: every request runs
    alone, unchanged. ``map_error`` turns an exception from ``run`` into the
    :class:`~serving.errors.ServingError` the requests of the failed batch receive.

    The runner task starts on the first :meth:`submit`, in that caller's event loop; all
    calls must come from that loop.
    """

    def __init__(
        self,
        run: RunFn,
        *,
        max_batch_size: int,
        max_queue_delay_us: int = 0,
        queue_capacity: int = 1024,
        inline_compute_us: int = 0,
        name: str = "model",
        metrics: VersionMetrics | None = None,
        map_error: ErrorMapper = _default_error,
    ) -> None:
        if max_batch_size < 0 or max_queue_delay_us < 0 or queue_capacity < 1 or inline_compute_us < 0:
            raise ValueError(
                "max_batch_size, max_queue_delay_us and inline_compute_us must be >= 0, queue_capacity >= 1"
            )
        self._run = run
        self._batching = max_batch_size > 0
        # Without a batch axis every request is its own batch of "1 row".
        self._max_rows = max(1, max_batch_size)
        self._delay_s = max_queue_delay_us / 1e6
        self._capacity = queue_capacity
        self._name = name
        self._metrics = metrics
        self._map_error = map_error
        self._queue: collections.deque[_Request] = collections.deque()
        self._queued_rows = 0
        self._queued_requests = 0
        self._wake: asyncio.Event | None = None
        self._runner: asyncio.Task[None] | None = None
        self._busy = False
        self._closing = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"rtml-infer-{name}")
        self._inline_below_s = inline_compute_us / 1e6
        self._compute_avg_s: float | None = None  # moving average of batch compute time
        self._computed_batches = 0
        self.stats = BatcherStats()

    # -- introspection -------------------------------------------------------------------

    @property
    def pending_requests(self) -> int:
        """Requests queued, not yet dispatched."""
        return self._queued_requests

    @property
    def pending_rows(self) -> int:
        return self._queued_rows

    @property
    def busy(self) -> bool:
        """True while a batch is being computed."""
        return self._busy

    @property
    def inline(self) -> bool:
        """True while batches run on the event loop (the model is fast enough; see the policy)."""
        return (
            self._inline_below_s > 0
            and self._computed_batches >= _INLINE_AFTER_BATCHES
            and self._compute_avg_s is not None
            and self._compute_avg_s < self._inline_below_s
        )

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing running."""
        return self._queued_requests == 0 and not self._busy

    # -- requests ------------------------------------------------------------------------

    async def submit(
        self, inputs: Mapping[str, np.ndarray], rows: int = 1, deadline: float | None = None
    ) -> dict[str, np.ndarray]:
        """Queue one (already validated) request of ``rows`` rows and await its outputs.

        Raises Overloaded, DeadlineExceeded, ModelUnavailable (closed, or inference failed)
        or whatever ``map_error`` makes of an inference error.
        """
        if self._closing:
            raise ModelUnavailable(f"{self._name} is unloading")
        if not self._batching:
            rows = 1  # no batch axis: a request is one unit of work whatever its shape
        elif not 1 <= rows <= self._max_rows:
            # ServedModel.validate refuses these first; a direct caller must not be able to
            # queue a request that no batch could ever hold.
            raise InvalidInput(f"{self._name}: a request must have 1 to {self._max_rows} rows, got {rows}")
        now = time.monotonic()
        if deadline is not None and deadline <= now:
            self.stats.expired += 1
            raise DeadlineExceeded(f"{self._name}: deadline passed before the request was queued")
        if self._queued_rows + rows > self._capacity:
            self.stats.overloaded += 1
            raise Overloaded(
                f"{self._name}: queue full ({self._queued_rows} of {self._capacity} rows pending, "
                f"request has {rows})"
            )
        loop = asyncio.get_running_loop()
        if self._runner is None:
            self._wake = asyncio.Event()
            self._runner = loop.create_task(self._run_loop(), name=f"rtml-batcher-{self._name}")
        request = _Request(inputs, rows, deadline, loop.create_future(), now)
        self._queue.append(request)
        self._queued_rows += rows
        self._queued_requests += 1
        self.stats.requests += 1
        if self._metrics is not None:
            self._metrics.pending.inc()
        if deadline is not None:
            # Fail it promptly when the deadline passes in the queue, not when the runner
            # gets to it: the client has given up by then.
            request.timer = loop.call_later(deadline - now, self._expire, request)
        assert self._wake is not None
        self._wake.set()
        try:
            return await request.future
        except asyncio.CancelledError:
            if request.queued:
                self._unqueue(request)
                self.stats.cancelled += 1
            raise
        finally:
            if request.timer is not None:
                request.timer.cancel()

    def _unqueue(self, request: _Request) -> None:
        # The entry stays in the deque (removing from the middle is O(n)); the runner skips
        # entries that are no longer queued. The counters are what admission and the
        # "batch is full" test read, so they are exact at all times.
        request.queued = False
        self._queued_rows -= request.rows
        self._queued_requests -= 1
        if self._metrics is not None:
            self._metrics.pending.dec()

    def _expire(self, request: _Request) -> None:
        if request.queued:
            self._unqueue(request)
            self.stats.expired += 1
            if not request.future.done():
                request.future.set_exception(DeadlineExceeded(f"{self._name}: deadline passed while queued"))

    # -- runner --------------------------------------------------------------------------

    async def _run_loop(self) -> None:
        assert self._wake is not None
        wake = self._wake
        while True:
            while self._queued_requests == 0:
                if self._closing:
                    return
                wake.clear()
                await wake.wait()
            batch: list[_Request] = []
            try:
                waited, wait_s = False, 0.0
                if self._delay_s > 0 and self._queued_rows < self._max_rows:
                    waited, wait_s = await self._top_up()
                batch = self._take()  # empty if everything expired or was cancelled meanwhile
                if batch:
                    await self._execute(batch, waited, wait_s)
            except Exception:  # a dead runner would leave every later request hanging
                log.exception("%s: batch execution failed unexpectedly", self._name)
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(ModelUnavailable(f"{self._name}: internal error"))

    async def _top_up(self) -> tuple[bool, float]:
        """Wait until the batch is full or the oldest queued request has waited the delay."""
        assert self._wake is not None
        oldest = next(r for r in self._queue if r.queued)
        deadline = oldest.enqueued + self._delay_s
        started = time.monotonic()
        if deadline <= started:
            return False, 0.0
        self.stats.topup_waits += 1
        while self._queued_rows < self._max_rows and self._queued_requests > 0 and not self._closing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                break
        return True, time.monotonic() - started

    def _take(self) -> list[_Request]:
        """Pop queued requests in arrival order up to max rows; fail those already expired."""
        batch: list[_Request] = []
        rows = 0
        now = time.monotonic()
        queue = self._queue
        while queue:
            request = queue[0]
            if not request.queued:
                queue.popleft()
                continue
            if request.deadline is not None and request.deadline <= now:
                queue.popleft()
                self._expire(request)
                continue
            if batch and rows + request.rows > self._max_rows:
                break  # it starts the next batch: requests are never split
            queue.popleft()
            self._unqueue(request)
            if request.timer is not None:
                request.timer.cancel()
            batch.append(request)
            rows += request.rows
        return batch

    async def _execute(self, batch: list[_Request], waited: bool, wait_s: float) -> None:
        loop = asyncio.get_running_loop()
        rows = sum(r.rows for r in batch)
        dispatched = time.monotonic()
        if self._metrics is not None:
            for request in batch:
                self._metrics.observe_queue(dispatched - request.enqueued)
        self._busy = True
        inline = self.inline
        try:
            try:
                if inline:
                    results, compute_s = self._compute([r.inputs for r in batch], [r.rows for r in batch])
                else:
                    results, compute_s = await loop.run_in_executor(
                        self._executor, self._compute, [r.inputs for r in batch], [r.rows for r in batch]
                    )
            except Exception as exc:
                self.stats.failed_batches += 1
                await self._fail_or_isolate(batch, exc)
                return
        finally:
            self._busy = False
        self._observe_compute(compute_s)
        self.stats.executions += 1
        self.stats.rows += rows
        self.stats.history.append(BatchRecord(rows, len(batch), rows >= self._max_rows, waited, wait_s, compute_s))
        if self._metrics is not None:
            self._metrics.observe_execution(rows, compute_s)
        for request, result in zip(batch, results):
            if not request.future.done():  # cancelled while computing: the result is dropped
                request.future.set_result(result)
        if inline:
            # Let the answered requests reply and new ones arrive before the next batch is
            # taken: an inline runner never awaited anything during this batch.
            await asyncio.sleep(0)

    def _observe_compute(self, compute_s: float) -> None:
        self._computed_batches += 1
        avg = self._compute_avg_s
        self._compute_avg_s = compute_s if avg is None else avg + _COMPUTE_AVG_WEIGHT * (compute_s - avg)

    async def _fail_or_isolate(self, batch: list[_Request], exc: Exception) -> None:
        if len(batch) == 1:
            if not batch[0].future.done():
                batch[0].future.set_exception(self._map_error(exc))
            return
        log.info("%s: batch of %d requests failed (%s); running them one by one", self._name, len(batch), exc)
        loop = asyncio.get_running_loop()
        self._busy = True
        try:
            for request in batch:
                if request.future.done():
                    continue
                try:
                    (result,), _ = await loop.run_in_executor(
                        self._executor, self._compute, [request.inputs], [request.rows]
                    )
                except Exception as single_exc:
                    if not request.future.done():
                        request.future.set_exception(self._map_error(single_exc))
                else:
                    if not request.future.done():
                        request.future.set_result(result)
        finally:
            self._busy = False

    def _compute(
        self, inputs: list[Mapping[str, np.ndarray]], rows: list[int]
    ) -> tuple[list[dict[str, np.ndarray]], float]:
        """Runs in the batcher thread: concatenate, one ONNX Runtime call, split."""
        if len(inputs) == 1:
            feeds = inputs[0]
        else:
            feeds = {name: np.concatenate([i[name] for i in inputs], axis=0) for name in inputs[0]}
        started = time.perf_counter()
        outputs = self._run(feeds)
        compute_s = time.perf_counter() - started
        if len(inputs) == 1:
            return [dict(outputs)], compute_s
        total = sum(rows)
        for name, value in outputs.items():
            if value.ndim == 0 or value.shape[0] != total:
                # Splitting would hand rows to the wrong requests: refuse instead.
                raise ModelUnavailable(
                    f"{self._name}: output {name!r} has shape {list(value.shape)} for a batch of {total} rows"
                )
        results: list[dict[str, np.ndarray]] = []
        start = 0
        for n in rows:
            stop = start + n
            results.append({name: value[start:stop] for name, value in outputs.items()})
            start = stop
        return results, compute_s

    # -- shutdown ------------------------------------------------------------------------

    async def close(self, *, drain: bool = True) -> None:
        """Refuse new requests; finish (``drain``) or fail the queued ones; stop the thread.

        Requests already being computed always finish.
        """
        self._closing = True
        if not drain:
            while self._queue:
                request = self._queue.popleft()
                if request.queued:
                    self._unqueue(request)
                    if not request.future.done():
                        request.future.set_exception(ModelUnavailable(f"{self._name} is unloading"))
        if self._runner is not None:
            assert self._wake is not None
            self._wake.set()
            await asyncio.shield(self._runner)
        self._executor.shutdown(wait=False)
