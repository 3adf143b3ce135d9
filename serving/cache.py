"""A bounded TTL + LRU cache for repeated identical Predict requests.

Used from one event loop only (no locks). Entries expire ``ttl_ms`` after they were stored
(not after their last use, so a hot key still refreshes its features every ``ttl_ms``); when
``max_entries`` is reached the least recently used entry is evicted.

>>> clock = [0.0]
>>> cache = TTLCache(max_entries=2, ttl_ms=1000, clock=lambda: clock[0])
>>> cache.put("a", 1); cache.put("b", 2); cache.get("a")
1
>>> cache.put("c", 3)            # evicts "b", the least recently used
>>> cache.get("b") is None, len(cache)
(True, 2)
>>> clock[0] = 1.5               # 1.5 s later: everything expired
>>> cache.get("a") is None
True
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from typing import Callable, Generic, Hashable, Iterable, TypeVar

V = TypeVar("V")


def request_digest(parts: Iterable[bytes]) -> bytes:
    """A 128-bit BLAKE2b digest of a request's identifying parts (length-prefixed, so
    ``[b"ab", b"c"]`` and ``[b"a", b"bc"]`` differ)."""
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(len(part).to_bytes(4, "little"))
        h.update(part)
    return h.digest()


class TTLCache(Generic[V]):
    """Maps keys to values for ``ttl_ms``, holding at most ``max_entries`` (LRU eviction)."""

    def __init__(
        self, max_entries: int, ttl_ms: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_entries < 1 or ttl_ms < 1:
            raise ValueError("max_entries and ttl_ms must be >= 1")
        self.max_entries = max_entries
        self.ttl_s = ttl_ms / 1000
        self._clock = clock
        self._data: OrderedDict[Hashable, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: Hashable) -> V | None:
        """The live value for ``key`` (marking it recently used), else None."""
        item = self._data.get(key)
        if item is None:
            return None
        expires, value = item
        if self._clock() >= expires:
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return value

    def put(self, key: Hashable, value: V) -> None:
        """Store ``value`` for ``ttl_ms``; evict the least recently used entries beyond the bound."""
        data = self._data
        data[key] = (self._clock() + self.ttl_s, value)
        data.move_to_end(key)
        while len(data) > self.max_entries:
            data.popitem(last=False)

    def clear(self) -> None:
        self._data.clear()
