"""Fan validated events out to the shards of every feature view.

Each view's entities are spread over ``shards`` keys by a stable hash (crc32,
identical in every process), so a dataflow has ``views x shards`` stateful keys
whatever the number of entities: per-key overhead stays constant while each key
aggregates thousands of entities per call.

A shard gets its events as a :class:`ShardBatch` of columns (entities, event times,
the measures' inputs), cut from the batch with one stable sort by shard. Hashing, sorting
and reordering the columns are compiled (engine/features/_kernels.c).
"""

from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np

from engine.events.columns import InteractionColumns
from engine.features._kernels import shard_groups, take
from engine.features.aggregates import ViewProgram
from engine.features.shard import ShardBatch
from engine.runtime.placement import spread_keys
from operators.aggregate import ShardInput
from operators.validate import ValidatedBatch

def shard_of(entity: str, shards: int) -> int:
    """Shard number of ``entity`` (stable across processes and runs)."""
    return zlib.crc32(entity.encode()) % shards


def shard_keys(view: str, shards: int) -> list[str]:
    """Stateful keys of a view's shards, by number: ``view#n``, salted so that Bytewax
    spreads them evenly over the job's workers (:func:`engine.runtime.placement.spread_keys`)."""
    return spread_keys([f"{view}#{s}" for s in range(shards)])


def shard_key(view: str, entity: str, shards: int) -> str:
    """Stateful key of the shard that owns ``entity`` of ``view``."""
    return shard_keys(view, shards)[shard_of(entity, shards)]


class Router:
    """Groups each batch's events into ``(shard key, (view, columns, backlog))`` items.

    ``backlog``: how many messages were still waiting in the batch's partition when it was read.

    >>> from engine.events.schemas import Interaction
    >>> from engine.features.spec import FeatureView
    >>> from operators.validate import Origins
    >>> view = FeatureView.from_dict({"name": "u", "entity": "user_id", "windows": {"1h": "1h"},
    ...     "features": [{"name": "n", "agg": "count"}]})
    >>> batch = ValidatedBatch(InteractionColumns.from_events([Interaction("u1", "i1", "click", 1_767_225_600_000, {})]),
    ...                        Origins("events", 0, [7], [b"{}"], [None]))
    >>> [(key, view, b.entities, b.times.tolist(), b.refs[0]) for key, (view, b, _) in
    ...  Router([ViewProgram(view)], shards=4).route(batch)]
    [('u#2~1710', 'u', ['u1'], [1767225600000], ('events', 0, 7, b'{}', ()))]
    """

    def __init__(self, programs: Sequence[ViewProgram], shards: int) -> None:
        self.programs = list(programs)
        self.shards = shards
        self._keys = [shard_keys(p.view.name, shards) for p in self.programs]

    def route(self, batch: ValidatedBatch) -> list[tuple[str, ShardInput]]:
        """One item per touched shard and view, events in arrival order."""
        out: list[tuple[str, ShardInput]] = []
        events, origins = batch.events, batch.origins
        if not len(events):
            return out
        source = (origins.topic, origins.partition)  # each partition holds the watermark separately
        backlog = batch.backlog
        for program, keys in zip(self.programs, self._keys):
            positions, entities = self._select(program, events)
            if not entities:
                continue
            name = program.view.name
            # Events shard by shard (arrival order within each), as int64 positions.
            order, groups = shard_groups(entities, self.shards)
            index = np.frombuffer(order, np.int64)
            chosen = events if positions is None else events.at(positions)
            times = np.asarray(chosen.field("event_time"), np.int64)[index]
            inputs, texts = program.input_columns(chosen)
            inputs = inputs[index]
            sorted_entities = take(entities, order)
            sorted_origins = origins.take(order if positions is None else np.asarray(positions, np.int64)[index])
            sorted_texts = {j: take(vals, order) for j, vals in texts.items()}
            for shard, lo, hi in groups:
                shard_batch = ShardBatch(sorted_entities[lo:hi], times[lo:hi], inputs[lo:hi], source,
                                         sorted_origins.slice(lo, hi), {j: vals[lo:hi] for j, vals in sorted_texts.items()})
                out.append((keys[shard], (name, shard_batch, backlog)))
        return out

    @staticmethod
    def _select(program: ViewProgram, events: InteractionColumns) -> tuple[list[int] | None, list[str]]:
        """Positions of the events the view takes (None: all of them), and their entities."""
        keys = program.entity_column(events)
        allowed = program.event_types
        if allowed is None:
            if None not in keys:
                return None, keys  # type: ignore[return-value]
            pairs = [(i, e) for i, e in enumerate(keys) if e is not None]
        else:
            pairs = [(i, e) for i, (e, t) in enumerate(zip(keys, events.event_type)) if t in allowed and e is not None]
        return [i for i, _ in pairs], [e for _, e in pairs]
