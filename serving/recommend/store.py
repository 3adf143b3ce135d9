"""The funnel's reads: one pipelined round trip for the user, one for all N candidates.

:class:`FunnelStore` sends Redis commands through an *executor* -- anything with
``async execute(commands) -> replies`` (one pipelined write, replies in order):

* serving passes its :class:`~serving.features.FeatureFetcher` (asyncio client, timeouts,
  outage fail-fast);
* the offline evaluation and benchmark floors pass :class:`MemoryHashes`, an in-process
  table of the same hashes, so they run the same funnel code without a server.

Reads:

1. :meth:`FunnelStore.read_user`: every user-keyed view the models read (``HMGET``), the
   presence of the user's ``user`` hash (its ``_t``: a user never seen is *unknown*) and
   the blocked set (``SMEMBERS <prefix>:<blocked_key>``);
2. :meth:`FunnelStore.read_candidates`: every item- and pair-keyed view for every candidate
   plus the exploration bandit's posteriors of the candidates (one ``HMGET``). Item-keyed
   rows read within ``item_cache_ms`` are reused (``features.item_cache``): the same items are
   candidates request after request, and their windows slide by minutes.

A Redis outage (``FeatureStoreUnavailable``) reads as "everything missing" (fail-open, as
Predict's default): the user is then unknown and gets the popular fallback.

>>> import asyncio
>>> hashes = MemoryHashes({"rtml:user:u1": {"clicks_1h": "3", "_t": "9000"}}, {"rtml:blocked:u1": {"i9"}})
>>> asyncio.run(hashes.execute([("HMGET", "rtml:user:u1", "clicks_1h", "_t"), ("SMEMBERS", "rtml:blocked:u1")]))
[[b'3', b'9000'], {b'i9'}]
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from engine.features.keys import composite_key
from engine.features.online import entity_key
from serving.features import FeatureStoreUnavailable, ResolvedView
from serving.recommend.inputs import FeaturePlan, decode_rows

log = logging.getLogger(__name__)

_ITEM_CACHE_MAX = 200_000  # cached item rows before the cache is cleared


class Executor(Protocol):
    async def execute(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]: ...


def _bytes(value: Any) -> bytes | None:
    if value is None:
        return None
    return value if isinstance(value, bytes) else str(value).encode()


class MemoryHashes:
    """Hashes and sets in memory, answering ``HMGET`` and ``SMEMBERS`` like Redis (offline use)."""

    def __init__(self, hashes: Mapping[str, Mapping[str, Any]] | None = None,
                 sets: Mapping[str, set[str]] | None = None) -> None:
        self.hashes: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (hashes or {}).items()}
        self.sets: dict[str, set[str]] = {k: set(v) for k, v in (sets or {}).items()}

    def hset(self, key: str, mapping: Mapping[str, Any]) -> None:
        self.hashes.setdefault(key, {}).update(mapping)

    async def execute(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        out: list[Any] = []
        for cmd in commands:
            op, key, *fields = cmd
            if op == "HMGET":
                h = self.hashes.get(key, {})
                out.append([_bytes(h.get(f)) for f in fields])
            elif op == "SMEMBERS":
                out.append({m.encode() for m in self.sets.get(key, ())})
            else:
                raise ValueError(f"MemoryHashes answers HMGET and SMEMBERS, not {op}")
        return out


@dataclass(slots=True)
class UserRead:
    """The user's online values by source, whether the user is known, and the blocked items."""

    values: dict[str, Any]
    known: bool
    blocked: set[str]


@dataclass(slots=True)
class CandidateRead:
    """Per candidate values by source (item- and pair-level), and bandit stored counts."""

    values: dict[str, list[Any]]
    bandit_reply: list[Any] | None


class BanditReader(Protocol):
    def read_command(self, arms: Sequence[str]) -> tuple[Any, ...]: ...


class FunnelStore:
    """Builds and decodes the two reads (module docstring)."""

    def __init__(
        self,
        executor: Executor,
        plan: FeaturePlan,
        *,
        prefix: str = "rtml",
        blocked_key: str | None = None,
        presence: ResolvedView | None = None,
        bandit: BanditReader | None = None,
        item_cache_ms: int = 0,
    ) -> None:
        self.executor = executor
        self.item_cache_ms = item_cache_ms
        self._item_cache: dict[str, tuple[float, tuple[list[Any] | None, ...]]] = {}
        self.plan = plan
        self.prefix = prefix
        self.blocked_key = blocked_key
        self.bandit = bandit
        # What read_user reads: the user views the plan needs, plus the presence view (its _t
        # tells a known user apart), and their value names -- fixed for the plan's lifetime.
        user_views = list(plan.views_at("user"))
        if presence is not None and all(v.name != presence.name for v in user_views):
            user_views.append(presence)
        self._user_reads = [(v, [f"{v.name}.{column}" for column in v.columns]) for v in user_views]
        self._item_views = plan.views_at("item")
        self._pair_views = plan.views_at("pair")
        self._warned = False

    async def _execute(self, commands: list[tuple[Any, ...]]) -> list[Any] | None:
        try:
            replies = await self.executor.execute(commands)
        except FeatureStoreUnavailable as exc:
            if not self._warned:
                log.warning("recommend: online features unavailable, answering with defaults: %s", exc)
                self._warned = True
            return None
        self._warned = False
        return replies

    async def read_user(self, user_id: str) -> UserRead:
        commands: list[tuple[Any, ...]] = [
            ("HMGET", entity_key(self.prefix, v.name, user_id), *v.fields) for v, _ in self._user_reads
        ]
        if self.blocked_key:
            commands.append(("SMEMBERS", f"{self.prefix}:{self.blocked_key.format(user_id=user_id)}"))
        replies = await self._execute(commands) if commands else []
        values: dict[str, Any] = {}
        known = False
        now_ms = int(time.time() * 1000)
        for i, (view, names) in enumerate(self._user_reads):
            row = decode_rows([replies[i]], view, now_ms)[0] if replies is not None else None
            known = known or row is not None
            for j, name in enumerate(names):
                values[name] = row[j] if row is not None else None
        blocked: set[str] = set()
        if self.blocked_key and replies is not None and not isinstance(replies[-1], BaseException):
            blocked = {m.decode() if isinstance(m, bytes) else str(m) for m in replies[-1]}
        return UserRead(values, known, blocked)

    async def read_candidates(self, user_id: str, item_ids: Sequence[str], *, bandit: bool = False) -> CandidateRead:
        n = len(item_ids)
        now_ms = int(time.time() * 1000)
        # Item-keyed rows change slowly (windows slide by minutes) and the same items are
        # candidates request after request: rows read within item_cache_ms are reused.
        cache = self._item_cache
        fresh_after = time.monotonic() - self.item_cache_ms / 1000
        item_rows: list[tuple[list[Any] | None, ...] | None] = [None] * n
        missing: list[int] = []
        for r, item in enumerate(item_ids):
            hit = cache.get(item)
            if hit is not None and hit[0] >= fresh_after:
                item_rows[r] = hit[1]
            else:
                missing.append(r)
        commands: list[tuple[Any, ...]] = []
        if self._item_views:
            for view in self._item_views:
                commands.extend(("HMGET", entity_key(self.prefix, view.name, item_ids[r]), *view.fields)
                                for r in missing)
        else:
            missing = []
        for view in self._pair_views:
            # composite_key([user_id, item]) with the user's part built once per request.
            head = entity_key(self.prefix, view.name, composite_key([user_id, ""]))
            fields = view.fields
            commands.extend(("HMGET", head + (i if "%" not in i and "|" not in i else _escape(i)), *fields)
                            for i in item_ids)
        want_bandit = bandit and self.bandit is not None and n > 0
        if want_bandit:
            assert self.bandit is not None
            commands.append(self.bandit.read_command(item_ids))
        replies = await self._execute(commands) if commands else []
        values: dict[str, list[Any]] = {}
        at = 0
        if missing:
            decoded = []
            for view in self._item_views:
                chunk = replies[at:at + len(missing)] if replies is not None else [None] * len(missing)
                decoded.append(decode_rows(chunk, view, now_ms))
                at += len(missing)
            stamp = time.monotonic()
            if len(cache) > _ITEM_CACHE_MAX:
                cache.clear()
            for j, r in enumerate(missing):
                rows = tuple(d[j] for d in decoded)
                item_rows[r] = rows
                if replies is not None and self.item_cache_ms > 0:
                    cache[item_ids[r]] = (stamp, rows)
        for v, view in enumerate(self._item_views):
            per_item = [rows[v] if rows is not None else None for rows in item_rows]
            _columns(values, view, per_item)
        for view in self._pair_views:
            chunk = replies[at:at + n] if replies is not None else [None] * n
            at += n
            _columns(values, view, decode_rows(chunk, view, now_ms))
        reply = None
        if want_bandit and replies is not None and not isinstance(replies[-1], BaseException):
            reply = list(replies[-1])
        return CandidateRead(values, reply)


def _escape(value: str) -> str:
    """One entity field escaped as :func:`~engine.features.keys.composite_key` escapes it."""
    return value.replace("%", "%25").replace("|", "%7C")


def _columns(values: dict[str, list[Any]], view: ResolvedView, rows: list[list[Any] | None]) -> None:
    """Per column of ``view``, one value per row (None for a missing row) into ``values``."""
    names = [f"{view.name}.{column}" for column in view.columns]
    if all(row is not None for row in rows):
        columns = list(zip(*rows)) if rows else [() for _ in names]
        for name, column in zip(names, columns):
            values[name] = list(column)
        return
    for j, name in enumerate(names):
        values[name] = [row[j] if row is not None else None for row in rows]


def as_float(values: Sequence[Any]) -> np.ndarray:
    """Numbers with nulls as nan (for thresholds on fetched values)."""
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
