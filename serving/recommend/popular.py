"""The popular-items fallback for users the funnel cannot personalise (never seen).

:class:`PopularList` is an immutable best-first list; :meth:`PopularList.top` answers ``k``
items not excluded (microseconds: no I/O on the request path). :class:`PopularRefresher`
rebuilds it in a background thread every ``refresh`` from the online store: every hash of
the item view named by ``popular.source`` (``SCAN <prefix>:item:*`` then pipelined
``HMGET <column> _t``), expired hashes skipped (the view's TTL), the ``size`` best kept, then
filtered by ``keep`` (serving keeps the items the index holds and marks active). A failed
refresh keeps the previous list and is retried at the next tick.

>>> p = PopularList([("a", 9.0), ("b", 5.0), ("c", 1.0)])
>>> p.top(2, exclude={"a"})
[('b', 5.0), ('c', 1.0)]
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Iterable, Sequence

import redis

from engine.features.spec import FeatureView
from serving.config import parse_source
from serving.features import TTL_FIELD

log = logging.getLogger(__name__)


class PopularList:
    """Items best first with their popularity score."""

    def __init__(self, items: Iterable[tuple[str, float]] = ()) -> None:
        self.items: list[tuple[str, float]] = list(items)

    def top(self, k: int, exclude: set[str] | frozenset[str] = frozenset()) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        for item, score in self.items:
            if item not in exclude:
                out.append((item, score))
                if len(out) == k:
                    break
        return out

    def __len__(self) -> int:
        return len(self.items)


def scan_popular(
    client: redis.Redis, prefix: str, view: FeatureView, column: str, size: int, *, batch: int = 1000
) -> PopularList:
    """The ``size`` items with the highest ``column`` in ``view`` (expired hashes skipped)."""
    now_ms = int(time.time() * 1000)
    head = f"{prefix}:{view.name}:"
    scored: list[tuple[str, float]] = []
    keys: list[bytes] = []

    def flush() -> None:
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(key, column, TTL_FIELD)
        for key, (value, t) in zip(keys, pipe.execute()):
            if value in (None, b"") or t is None:
                continue
            if view.ttl_ms is not None and now_ms - int(t) > view.ttl_ms:
                continue
            try:
                scored.append((key.decode()[len(head):], float(value)))
            except ValueError:
                continue
        keys.clear()

    for key in client.scan_iter(match=f"{head}*", count=batch):
        keys.append(key)
        if len(keys) >= batch:
            flush()
    if keys:
        flush()
    scored.sort(key=lambda kv: (-kv[1], kv[0]))
    return PopularList(scored[:size])


class PopularRefresher:
    """Keeps :attr:`current` fresh from Redis in a daemon thread (module docstring)."""

    def __init__(
        self,
        redis_url: str | None,
        prefix: str,
        views: dict[str, FeatureView],
        source: str,
        size: int,
        refresh_s: float,
        keep: Callable[[Sequence[str]], Sequence[bool]] | None = None,
    ) -> None:
        view_name, self.column = parse_source(source)
        if view_name not in views or self.column not in views[view_name].column_types():
            raise ValueError(f"popular.source {source!r} is not a column of the server's feature views")
        if tuple(views[view_name].entity) != ("item_id",):
            raise ValueError(f"popular.source {source!r}: view {view_name!r} is not keyed by item_id")
        self.view = views[view_name]
        self.prefix, self.size, self.refresh_s, self.keep = prefix, size, refresh_s, keep
        self.client = redis.Redis.from_url(redis_url, socket_timeout=2.0) if redis_url else None
        self.current = PopularList()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> PopularList:
        """Rebuild the list now (blocking); keeps the old one when Redis fails."""
        if self.client is None:
            return self.current
        try:
            # Over-fetch: some of the most popular may be gone from the index.
            fresh = scan_popular(self.client, self.prefix, self.view, self.column, self.size * 2)
        except (redis.RedisError, OSError) as exc:
            log.warning("popular items: refresh failed (%s); keeping %d items", exc, len(self.current))
            return self.current
        items = fresh.items
        if self.keep is not None and items:
            mask = self.keep([i for i, _ in items])
            items = [kv for kv, ok in zip(items, mask) if ok]
        self.current = PopularList(items[: self.size])
        return self.current

    def _loop(self) -> None:
        while not self._stop.wait(self.refresh_s):
            self.refresh()

    def start(self) -> "PopularRefresher":
        self.refresh()
        self._thread = threading.Thread(target=self._loop, name="rtml-popular", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        if self.client is not None:
            self.client.close()
