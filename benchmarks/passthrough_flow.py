"""The ingest benchmark's framework ceiling: Bytewax reading Kafka and parsing, nothing else.

``python -m bytewax.run "benchmarks.passthrough_flow:flow_from_env()" [-i I -a ADDRS]`` reads a topic with the
features dataflow's own source (:class:`operators.sources.KafkaBatchSource`, bounded: it ends at
the topic's end), ``orjson.loads`` every value -- the floor's work -- and counts. No validation,
no aggregation, no Redis. With the same processes as the features dataflow it shows what Bytewax
and the source cost on their own, so the gap between the floor and the pipeline can be split
into "the framework" and "rtml's own per-event work".

Configured by environment variables (set by :func:`benchmarks.ingest.measure_passthrough`):
``RTML_PT_BOOTSTRAP``, ``RTML_PT_TOPIC`` and ``RTML_PT_OUT``; each process writes
``<RTML_PT_OUT>.<worker>`` = ``events first_write_unix_s close_unix_s``.
"""

from __future__ import annotations

import os
import time
import bytewax.operators as op
import orjson
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from engine.config import load_config
from operators.sources import KafkaBatchSource, RawBatch


def parse_count(batch: RawBatch) -> int:
    """Parse every message of a batch (the floor's work); the number parsed."""
    loads = orjson.loads
    for value in batch.values:
        loads(value or b"null")
    return len(batch)


class CountSink(DynamicSink[int]):
    """Sums counts per worker; on close writes the total and the first and last write times."""

    def __init__(self, out_prefix: str) -> None:
        self.out_prefix = out_prefix

    def build(self, step_id: str, worker_index: int, worker_count: int) -> "_CountPartition":
        return _CountPartition(f"{self.out_prefix}.{worker_index}")


class _CountPartition(StatelessSinkPartition[int]):
    def __init__(self, path: str) -> None:
        self.path = path
        self.events = 0
        self.first: float | None = None

    def write_batch(self, items: list[int]) -> None:
        if self.first is None:
            self.first = time.time()
        self.events += sum(items)

    def close(self) -> None:
        with open(self.path, "w") as fh:
            fh.write(f"{self.events} {self.first or 0.0} {time.time()}\n")


def build_flow(source: KafkaBatchSource, out_prefix: str) -> Dataflow:
    """Source -> parse -> count."""
    flow = Dataflow("rtml_passthrough")
    batches = op.input("inputs", flow, source)
    op.output("count", op.map("parse", batches, parse_count), CountSink(out_prefix))
    return flow


def flow_from_env() -> Dataflow:
    """Entry point for ``python -m bytewax.run``: the topic of ``RTML_PT_*``, read with the
    ``kafka`` settings of the rtml configuration (``RTML_*``) like the features dataflow."""
    cfg = load_config()
    source = KafkaBatchSource(
        os.environ["RTML_PT_BOOTSTRAP"], [os.environ["RTML_PT_TOPIC"]], bounded=True,
        batch_size=cfg.kafka.consume_batch_size, fetch_wait_max_ms=cfg.kafka.fetch_wait_max_ms,
    )
    return build_flow(source, os.environ["RTML_PT_OUT"])
