"""Python's cyclic garbage collector, tuned for a long-lived dataflow process.

A dataflow holds much long-lived state (window tiles, label-join buffers, learners, drift
windows) and allocates many short-lived objects per batch. With CPython's default thresholds
the young generation overflows into full collections that walk all of that state again and
again: a quarter of the features dataflow's CPU (benchmarks/profile_ingest.py), and a third of
the learning dataflow's time (benchmarks.learning: 21.7k -> 31.5k examples/s once tuned).
"""

from __future__ import annotations

import contextlib
import gc
from typing import Iterator


def tune_gc() -> None:
    """Freeze what is alive now out of collection; collect the young generation 70x less often.

    Call it once the process has built its dataflow. The state the dataflow builds later is
    still collected, just less often; it holds no reference cycles in normal operation.

    >>> with tuned_gc():
    ...     gc.get_threshold()
    (50000, 50, 100)
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


@contextlib.contextmanager
def tuned_gc() -> Iterator[None]:
    """:func:`tune_gc` for a block (a dataflow run inside another process), then the old settings back."""
    thresholds = gc.get_threshold()
    tune_gc()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


__all__ = ["tune_gc", "tuned_gc"]
