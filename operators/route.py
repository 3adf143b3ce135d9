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

# Entity -> shard key memo per view; cleared when it grows past this (it is only a cache).
_MEMO_LIMIT = 1_000_000


def shard_key(view: str, entity: str, shards: int) -> str:
    """Stateful key of the shard that owns ``entity`` of ``view``."""
    return f"{view}#{zlib.crc32(entity.encode()) % shards}"


class Router:
    """Groups each batch's events into ``(shard key, (view, rows))`` items.

    >>> from engine.features.spec import FeatureView
    >>> view = FeatureView.from_dict({"name": "u", "entity": "user_id", "windows": {"1h": "1h"},
    ...     "features": [{"name": "n", "agg": "count"}]})
    >>> event = Interaction("u1", "i1", "click", 1_767_225_600_000, {})
    >>> Router([ViewProgram(view)], shards=4).route([(event, ("events", 0, 7, b"{}", ()))])
    [('u#2', ('u', [('u1', 1767225600000, (1,), ('events', 0), ('events', 0, 7, b'{}', ()))]))]
    """

    def __init__(self, programs: Sequence[ViewProgram], shards: int) -> None:
        self.programs = list(programs)
        self.shards = shards
        self._memo: list[dict[str, str]] = [{} for _ in self.programs]

    def route(self, events: Iterable[tuple[Interaction, Origin]]) -> list[tuple[str, tuple[str, list[Row]]]]:
        """One item per touched shard, rows in arrival order."""
        grouped: dict[str, list[Row]] = {}
        plans = list(zip(self.programs, self._memo))
        for event, origin in events:
            source = (origin[0], origin[1])  # topic, partition: each holds the watermark separately
            for program, memo in plans:
                if not program.accepts(event.event_type):
                    continue
                entity = program.entity_key(event)
                if entity is None:
                    continue
                key = memo.get(entity)
                if key is None:
                    if len(memo) >= _MEMO_LIMIT:
                        memo.clear()
                    key = memo[entity] = shard_key(program.view.name, entity, self.shards)
                rows = grouped.get(key)
                if rows is None:
                    rows = grouped[key] = []
                rows.append((entity, event.event_time, program.inputs(event), source, origin))
        return [(key, (key.split("#", 1)[0], rows)) for key, rows in grouped.items()]
