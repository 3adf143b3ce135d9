"""Validated interactions of one batch as columns: a list per schema field.

What the features dataflow routes and aggregates: reading a field of every event is then
one list, not an attribute access per event and measure. Only schema fields exist (an
unknown top-level field reads as None, as on :class:`Interaction`), and ``context`` is
``{}`` where the event had none.

>>> cols = InteractionColumns.from_events([Interaction("u1", "i1", "click", 1_700_000_000_000, {"x": 2})])
>>> cols.field("user_id"), cols.field("context.x"), cols.field("nope"), len(cols)
(['u1'], [2], [None], 1)
>>> cols.row(0)
Interaction(user_id='u1', item_id='i1', event_type='click', event_time=1700000000000, context={'x': 2}, request_id=None)
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Iterable, Sequence

from engine.events.schemas import Interaction

_FIELDS = tuple(f.name for f in fields(Interaction))


@dataclass(slots=True)
class InteractionColumns:
    """Columns of valid interactions, in arrival order."""

    user_id: list[str] = field(default_factory=list)
    item_id: list[str] = field(default_factory=list)
    event_type: list[str] = field(default_factory=list)
    event_time: list[int] = field(default_factory=list)
    context: list[dict[str, Any]] = field(default_factory=list)
    request_id: list[str | None] = field(default_factory=list)

    @classmethod
    def from_events(cls, events: Iterable[Interaction]) -> "InteractionColumns":
        out = cls()
        for ev in events:
            out.append(ev)
        return out

    def append(self, ev: Interaction) -> None:
        self.user_id.append(ev.user_id)
        self.item_id.append(ev.item_id)
        self.event_type.append(ev.event_type)
        self.event_time.append(ev.event_time)
        self.context.append(ev.context)
        self.request_id.append(ev.request_id)

    def __len__(self) -> int:
        return len(self.event_time)

    def field(self, path: str) -> list[Any]:
        """Values of ``user_id`` or ``context.dwell_ms`` for every event (None where absent)."""
        if path.startswith("context."):
            key = path[len("context."):]
            return [c.get(key) for c in self.context]
        if path in _FIELDS:
            return getattr(self, path)
        return [None] * len(self)

    def row(self, i: int) -> Interaction:
        """Event ``i`` as an :class:`Interaction`."""
        return Interaction(self.user_id[i], self.item_id[i], self.event_type[i], self.event_time[i],
                           self.context[i], self.request_id[i])

    def at(self, positions: Sequence[int]) -> "ColumnsAt":
        """The events at ``positions``, in that order (a field is copied only when read)."""
        return ColumnsAt(self, positions)


class ColumnsAt:
    """Some events of :class:`InteractionColumns`, by position, read a field at a time."""

    def __init__(self, columns: InteractionColumns, positions: Sequence[int]) -> None:
        self.columns = columns
        self.positions = positions

    def __len__(self) -> int:
        return len(self.positions)

    def field(self, path: str) -> list[Any]:
        values = self.columns.field(path)
        return [values[i] for i in self.positions]
