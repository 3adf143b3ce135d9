"""Online features for rtml.v1 Predict: resolve a model's bindings, read Redis in one round trip.

Reads the layout the features dataflow writes (docs/features.md, "Online store: Redis
layout"): one hash per entity per view at ``<prefix>:<view>:<entity key>``, columns
``<feature>_<window>`` as text, ``_t`` the entity's latest event time. The rules are those
of :meth:`engine.features.online.OnlineStore.get`, applied here on an asyncio client so
that a fetch never blocks the event loop:

* a hash whose ``_t`` is absent or older than the view's TTL is *missing* (every column
  null) -- and so is one older than the model's ``max_feature_age_ms``;
* the empty string is null; int and float columns decode as numbers;
* ``age_ms = now_ms - _t``.

One :meth:`FeatureFetcher.fetch` sends every HMGET of a request (all instances, all views,
each distinct entity once) in one pipelined write and reads the replies: one round trip
however many instances and views a request has.

Failure policy: a fetcher that cannot reach Redis raises :class:`FeatureStoreUnavailable`;
the caller (``serving.predict``) answers with defaults (fail-open) or UNAVAILABLE
(fail-closed). After a connection failure the fetcher fails fast for ``retry_after_s``
instead of paying a connect timeout on every request of an outage, then tries again.

>>> views = resolve_bindings(
...     FeatureBindings.model_validate({"inputs": {"x": ["user.clicks_1h", "user_item.clicks_1h"]}}),
...     default_feature_views(),
... )
>>> [(v.name, v.entity, v.columns) for v in views.values()]
[('user', ('user_id',), ('clicks_1h',)), ('user_item', ('user_id', 'item_id'), ('clicks_1h',))]
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import grpc
import hiredis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from engine.features.online import entity_key
from engine.features.spec import FeatureView, default_views_path, load_views
from serving.config import REQUEST_SOURCE, FeatureBindings, parse_source
from serving.errors import ServingError

try:  # redis-py's hiredis parser (private): replies read in one loop when it is the one in use
    from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser
except ImportError:  # pragma: no cover - another redis-py layout: read_response per reply
    NOT_ENOUGH_DATA, _AsyncHiredisParser = object(), None

log = logging.getLogger(__name__)

TTL_FIELD = "_t"


class FeatureStoreUnavailable(ServingError):
    """Redis could not be read (down, timed out, not configured). Fail-closed models answer this."""

    code = grpc.StatusCode.UNAVAILABLE


class FeatureConfigError(ServingError):
    """A model's feature bindings do not fit the feature views or the model's inputs.

    A server-side configuration problem, not the caller's: FAILED_PRECONDITION.
    """

    code = grpc.StatusCode.FAILED_PRECONDITION


def default_feature_views(path: str | Path | None = None) -> dict[str, FeatureView]:
    """Feature views by name from a specs YAML (the packaged defaults when ``path`` is None)."""
    return {v.name: v for v in load_views(Path(path) if path is not None else default_views_path())}


@dataclass(frozen=True, slots=True)
class ResolvedView:
    """One view as a model reads it: entity fields, the columns it binds, TTL, column types."""

    name: str
    entity: tuple[str, ...]
    columns: tuple[str, ...]
    ttl_ms: int | None
    numeric: tuple[bool, ...]  # per column: known int/float column (False: unknown type)

    @property
    def fields(self) -> list[str]:
        """HMGET fields: the bound columns, then ``_t``."""
        return [*self.columns, TTL_FIELD]


def resolve_bindings(
    bindings: FeatureBindings, known_views: Mapping[str, FeatureView]
) -> dict[str, ResolvedView]:
    """The views a model's bindings read, with what is needed to key and decode them.

    A view declared in ``bindings.views`` wins over the feature specs (its columns are then
    not checked); a view from the specs must have every bound column, and a text column
    (``last`` with ``dtype: str``) cannot feed a numeric model input. Raises
    :class:`FeatureConfigError` naming the source and what exists.
    """
    columns: dict[str, list[str]] = {}
    for source in bindings.sources():
        view, column = parse_source(source)
        if view != REQUEST_SOURCE:
            columns.setdefault(view, []).append(column)
    resolved: dict[str, ResolvedView] = {}
    for view, cols in columns.items():
        declared = bindings.views.get(view)
        spec = known_views.get(view)
        if declared is None and spec is None:
            known = ", ".join(sorted(known_views)) or "none"
            raise FeatureConfigError(
                f"feature view {view!r} (source {view}.{cols[0]}) is neither in the server's feature specs "
                f"(views: {known}) nor declared under features.views in the model config"
            )
        if declared is not None:
            ttl = declared.ttl if declared.ttl is not None else (spec.ttl_ms if spec is not None else None)
            types = spec.column_types() if spec is not None else {}
            resolved[view] = ResolvedView(
                view, declared.entity, tuple(cols), ttl, tuple(types.get(c) in ("int", "float") for c in cols)
            )
            continue
        assert spec is not None
        types = spec.column_types()
        for col in cols:
            kind = types.get(col)
            if kind is None:
                raise FeatureConfigError(
                    f"feature view {view!r} has no column {col!r} (columns: {', '.join(types)})"
                )
            if kind == "str":
                raise FeatureConfigError(f"feature {view}.{col} holds text; model inputs take numbers")
        resolved[view] = ResolvedView(view, spec.entity, tuple(cols), spec.ttl_ms, (True,) * len(cols))
    return resolved


@dataclass(frozen=True, slots=True)
class FeatureRow:
    """One entity's bound columns as read: numbers (None = null/missing), age, found."""

    values: tuple[float | None, ...]
    age_ms: int | None  # now - _t when found
    found: bool


def _number(raw: bytes | None) -> float | None:
    if raw is None or raw == b"":
        return None
    try:
        return float(raw)
    except ValueError:
        return None  # a text value where a number was bound: treated as missing


def decode_row(
    raw: Sequence[bytes | None] | BaseException,
    view: ResolvedView,
    now_ms: int,
    max_age_ms: int | None,
) -> FeatureRow:
    """Decode one HMGET reply (columns then ``_t``), applying the TTL and max-age rules."""
    if isinstance(raw, BaseException):  # e.g. WRONGTYPE: a key that is not a hash
        return FeatureRow((None,) * len(view.columns), None, False)
    last = raw[-1]
    if last is None:
        return FeatureRow((None,) * len(view.columns), None, False)
    try:
        age = now_ms - int(last)
    except ValueError:
        return FeatureRow((None,) * len(view.columns), None, False)
    if (view.ttl_ms is not None and age > view.ttl_ms) or (max_age_ms is not None and age > max_age_ms):
        return FeatureRow((None,) * len(view.columns), None, False)
    return FeatureRow(tuple(_number(r) for r in raw[:-1]), age, True)


async def _read_hiredis(parser: Any, count: int) -> list[Any]:
    """``count`` replies from redis-py's hiredis parser, as ``read_response`` would return them
    (an error reply as the exception in its slot; a connection error raised)."""
    gets = parser._reader.gets
    replies: list[Any] = []
    while len(replies) < count:
        reply = gets()
        if reply is NOT_ENOUGH_DATA:
            await parser.read_from_socket()
            continue
        if isinstance(reply, RedisConnectionError) or (
            isinstance(reply, list) and reply and isinstance(reply[0], RedisConnectionError)
        ):
            raise reply if isinstance(reply, RedisConnectionError) else reply[0]
        replies.append(reply)
    return replies


class FeatureFetcher:
    """Reads feature hashes from Redis over an asyncio client, one pipelined round trip per call.

    ``url=None`` makes a fetcher without a store: every fetch raises
    :class:`FeatureStoreUnavailable` (so fail-open models answer with defaults and count the
    error, fail-closed ones answer UNAVAILABLE). ``timeout_s`` bounds connect and each read;
    ``retry_after_s`` is how long fetches fail fast after a connection failure.

    The client is created on first use, in the calling event loop; use one fetcher per loop.
    """

    def __init__(
        self,
        url: str | None,
        *,
        views: Mapping[str, FeatureView] | None = None,
        key_prefix: str = "rtml",
        timeout_s: float = 0.25,
        retry_after_s: float = 0.5,
    ) -> None:
        self.url = url
        self.key_prefix = key_prefix
        self.views: dict[str, FeatureView] = dict(views) if views is not None else default_feature_views()
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self._client: aioredis.Redis | None = None
        self._down_until = 0.0
        self._last_error = ""

    def _get_client(self) -> aioredis.Redis:
        if self._client is None:
            assert self.url is not None
            self._client = aioredis.Redis.from_url(
                self.url,
                socket_timeout=self.timeout_s,
                socket_connect_timeout=self.timeout_s,
                # No retries: a retry doubles the latency of every request during an outage,
                # and the pool already replaces connections that died while idle.
                retry=Retry(NoBackoff(), 0),
                health_check_interval=0,
            )
        return self._client

    async def fetch(self, lookups: Sequence[tuple[ResolvedView, str]]) -> list[list[bytes | None] | BaseException]:
        """HMGET ``(view, entity key)`` pairs in one pipelined round trip; replies in order.

        A per-key error reply (a key of the wrong type) comes back as the exception in its
        slot; losing the connection raises :class:`FeatureStoreUnavailable`.
        """
        prefix = self.key_prefix
        return await self.execute(
            [("HMGET", entity_key(prefix, view.name, entity), *view.fields) for view, entity in lookups]
        )

    async def execute(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Send Redis commands in one pipelined write and read every reply, in order.

        The same client, timeout and outage policy as :meth:`fetch` (which uses it); other
        serving readers of Redis (precomputed scores) share it. Error replies come back as
        exceptions in their slots; losing the connection raises :class:`FeatureStoreUnavailable`.
        """
        if not commands:
            return []
        if self.url is None:
            raise FeatureStoreUnavailable("no feature store configured (start the server with --redis-url)")
        now = time.monotonic()
        if now < self._down_until:
            raise FeatureStoreUnavailable(
                f"feature store {self._redacted()} unavailable ({self._last_error}); retrying in "
                f"{self._down_until - now:.2f}s"
            )
        client = self._get_client()
        # Every command packed by hiredis into one write, replies read back under one overall
        # timeout: redis-py's pipeline costs ~10 us of Python per command (packing, a timeout
        # context per reply), which dominated a 40-entity fetch.
        payload = b"".join(hiredis.pack_command(cmd) for cmd in commands)
        pool = client.connection_pool
        try:
            conn = await pool.get_connection()
            try:
                replies = await self._round_trip(conn, payload, len(commands))
            except BaseException:
                # Timed out, cancelled or broken mid-reply: the connection's state is unknown,
                # so it must never be reused with unread replies in it.
                await conn.disconnect(nowait=True)
                raise
            finally:
                await pool.release(conn)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            self._last_error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            self._down_until = time.monotonic() + self.retry_after_s
            raise FeatureStoreUnavailable(
                f"feature store {self._redacted()} unavailable ({self._last_error})"
            ) from exc
        except RedisError as exc:  # protocol / server errors for the whole batch
            raise FeatureStoreUnavailable(f"feature store error: {type(exc).__name__}: {exc}") from exc
        self._down_until = 0.0
        return replies

    async def _round_trip(self, conn: Any, payload: bytes, count: int) -> list[Any]:
        replies: list[Any] = []
        try:
            async with asyncio.timeout(self.timeout_s):
                await conn.send_packed_command(payload, check_health=False)
                parser = getattr(conn, "_parser", None)
                if _AsyncHiredisParser is not None and isinstance(parser, _AsyncHiredisParser) \
                        and parser._reader is not None:
                    # Every reply parsed by hiredis in one C call each, awaiting the socket only
                    # when its buffer runs dry: redis-py's read_response costs a few us of
                    # Python per reply (~20 % of a 200-command round trip).
                    return await _read_hiredis(parser, count)
                for _ in range(count):
                    try:
                        # math.inf: no per-reply timeout context (the block above bounds all).
                        replies.append(await conn.read_response(timeout=math.inf))
                    except ResponseError as exc:  # one key's error reply, e.g. WRONGTYPE
                        replies.append(exc)
        except TimeoutError as exc:
            raise RedisTimeoutError(f"no reply within {self.timeout_s * 1000:.0f} ms") from exc
        return replies

    def _redacted(self) -> str:
        # URLs may carry a password: never put it in a client-facing message or a log line.
        url = self.url or ""
        if "@" in url:
            scheme, _, rest = url.partition("://")
            return f"{scheme}://***@{rest.rpartition('@')[2]}"
        return url

    async def close(self) -> None:
        """Close the client's connections (idempotent)."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
