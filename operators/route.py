"""Fan validated events out to the shards of every feature view.

Each view's entities are spread over ``shards`` keys by a stable hash (crc32,
identical in every process), so a dataflow has ``views x shards`` stateful keys
whatever the number of entities: per-key overhead stays constant while each key
aggregates thousands of entities per call.
"""

from __future__ import annotations

import zlib
from typing import Iterable, Sequence

from engine.events.schemas import Interaction
from engine.features.aggregates import ViewProgram
from engine.features.shard import Row
from operators.validate import Origin


def shard_key(view: str, entity: str, shards: int) -> str:
    """Stateful key of the shard that owns ``entity`` of ``view``."""
    return f"{view}#{zlib.crc32(entity.encode()) % shards}"


def route_events(
    events: Iterable[tuple[Interaction, Origin]],
    programs: Sequence[ViewProgram],
    shards: int,
) -> list[tuple[str, tuple[str, list[Row]]]]:
    """Group one batch's events into ``(shard key, (view, rows))``; one item per touched shard."""
    grouped: dict[str, list[Row]] = {}
    for event, origin in events:
        source = (origin[0], origin[1])  # topic, partition: each holds the watermark separately
        for program in programs:
            if not program.accepts(event.event_type):
                continue
            entity = program.entity_key(event)
            if entity is None:
                continue
            key = shard_key(program.view.name, entity, shards)
            rows = grouped.get(key)
            if rows is None:
                rows = grouped[key] = []
            rows.append((entity, event.event_time, program.inputs(event), source, origin))
    return [(key, (key.split("#", 1)[0], rows)) for key, rows in grouped.items()]
