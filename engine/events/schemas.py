"""The three kinds of input events and their in-memory form.

Events arrive on three Kafka topics (``kafka.events_topic``,
``kafka.labels_topic``, ``kafka.items_topic``) and, once validated
(:mod:`engine.events.validation`), travel through the dataflows as these
slotted dataclasses. Times are epoch milliseconds everywhere.

>>> ev = Interaction("u1", "i9", EventType.CLICK, 1_700_000_000_000, {"device": "ios"})
>>> ev.event_type
'click'
>>> ev.to_dict()["context"]
{'device': 'ios'}
>>> Label("r1", 1.0, 1_700_000_005_000, user_id="u1").to_dict()["label"]
1.0
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeAlias

#: A context / attribute value: scalars only, so that maps stay flat and cheap to hash,
#: store in Redis and encode as a protobuf ``ContextValue``.
Scalar: TypeAlias = str | int | float | bool


class EventType(str, Enum):
    """What a user did with an item.

    A ``str`` enum so that members compare equal to their wire strings:

    >>> EventType("click") == "click"
    True
    >>> sorted(e.value for e in EventType)
    ['click', 'conversion', 'impression', 'view']
    """

    IMPRESSION = "impression"
    CLICK = "click"
    CONVERSION = "conversion"
    VIEW = "view"

    def __str__(self) -> str:
        return self.value


#: The wire strings accepted for ``Interaction.event_type``.
EVENT_TYPES: frozenset[str] = frozenset(e.value for e in EventType)


@dataclass(slots=True)
class Interaction:
    """A user interacting with an item.

    ``event_type`` holds the plain string (``EventType`` members are ``str``
    and are normalised to their value), so equality and hashing stay cheap.

    >>> Interaction("u1", "i2", "impression", 1_700_000_000_000, {}, request_id="r7").request_id
    'r7'
    """

    user_id: str
    item_id: str
    event_type: str
    event_time: int  # epoch ms
    context: dict[str, Scalar] = field(default_factory=dict)
    request_id: str | None = None

    def __post_init__(self) -> None:
        # Keep the stored value a plain str so that repr/to_dict/encoders never see the enum.
        if isinstance(self.event_type, EventType):
            self.event_type = self.event_type.value

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict of all fields (``context`` copied)."""
        return {
            "user_id": self.user_id,
            "item_id": self.item_id,
            "event_type": self.event_type,
            "event_time": self.event_time,
            "context": dict(self.context),
            "request_id": self.request_id,
        }


@dataclass(slots=True)
class Label:
    """The (delayed) outcome of a request, joined to its impression by ``request_id``.

    >>> Label("r7", 0.0, 1_700_000_009_000).item_id is None
    True
    """

    request_id: str
    label: float
    event_time: int  # epoch ms
    user_id: str | None = None
    item_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict of all fields."""
        return {
            "request_id": self.request_id,
            "label": self.label,
            "event_time": self.event_time,
            "user_id": self.user_id,
            "item_id": self.item_id,
        }


@dataclass(slots=True)
class ItemUpdate:
    """A new or changed catalogue item; ``active=False`` retires it.

    >>> it = ItemUpdate("i9", 1_700_000_000_000, category="shoes", embedding=[0.1, -0.2])
    >>> it.active, it.attributes
    (True, {})
    """

    item_id: str
    event_time: int  # epoch ms
    category: str | None = None
    embedding: list[float] | None = None
    active: bool = True
    attributes: dict[str, Scalar] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict of all fields (``embedding`` and ``attributes`` copied)."""
        return {
            "item_id": self.item_id,
            "event_time": self.event_time,
            "category": self.category,
            "embedding": None if self.embedding is None else list(self.embedding),
            "active": self.active,
            "attributes": dict(self.attributes),
        }


#: Any validated input event.
Event: TypeAlias = Interaction | Label | ItemUpdate
