"""The online store: one Redis hash per entity (layout in docs/features.md).

Key ``<prefix>:<view>:<entity>``; fields ``<feature>_<window>`` hold absolute
values as text (never increments, so replayed writes are idempotent), plus:

* ``_t``    latest event time of the entity (ms) — feature age and TTL are read from it;
* ``_asof`` event time the running windows were computed as of (ms);
* ``_w``    wall-clock time of the write (ms).

The key's expiry (the view's TTL) is refreshed at least every ttl/8 while the
entity is written, so an idle key disappears between 7/8 ttl and ttl after its
last write; readers also treat a hash whose ``_t`` is older than the TTL as
missing (Redis 7.0 has no per-field expiry).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import hiredis
import orjson
import redis

from engine.features._resp import hset_running
from engine.features.shard import RunningValues
from engine.features.spec import FeatureView

META_FIELDS = ("_t", "_asof", "_w")


def entity_key(prefix: str, view: str, entity: str) -> str:
    """The Redis key of one entity's hash."""
    return f"{prefix}:{view}:{entity}"


def encode_value(value: Any) -> str:
    """Text form of a feature value; ``None`` is the empty string."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def decode_value(raw: bytes | str | None, value_type: str) -> Any:
    """Inverse of :func:`encode_value` for a column of the given type."""
    if raw is None:
        return None
    text = raw.decode() if isinstance(raw, bytes) else raw
    if text == "":
        return None
    if value_type == "int":
        return int(text)
    if value_type == "float":
        return float(text)
    return text


def run_commands(client: redis.Redis, commands: Sequence[tuple[Any, ...]]) -> None:
    """Send many commands in one socket write and read every reply.

    Same effect as a non-transactional redis-py pipeline at about half the client
    cost (commands packed by hiredis, no per-command callbacks), which matters on
    the write path of every feature update. Raises the first error reply, after
    reading all replies so the connection stays in sync.
    """
    if commands:
        run_packed(client, b"".join(hiredis.pack_command(cmd) for cmd in commands), len(commands))


def run_packed(client: redis.Redis, payload: bytes, replies: int) -> None:
    """Send ``payload`` (``replies`` RESP-encoded commands) in one write and read every reply.

    Raises the first error reply, after reading all replies so the connection stays in sync.
    """
    if not replies:
        return
    pool = client.connection_pool
    conn = pool.get_connection()
    first_error: redis.ResponseError | None = None
    try:
        conn.send_packed_command([payload])
        for _ in range(replies):
            try:
                conn.read_response()
            except redis.ResponseError as exc:
                first_error = first_error or exc
    except BaseException:
        conn.disconnect()  # unknown state: never hand a half-read connection back
        raise
    finally:
        pool.release(conn)
    if first_error is not None:
        raise first_error


@dataclass(slots=True)
class OnlineRow:
    """Features of one entity as read: values (None when missing/expired) and age."""

    entity: str
    values: dict[str, Any]
    age_ms: int | None  # now - latest event time; None when absent or expired
    found: bool


class OnlineStore:
    """Read and write feature hashes for a set of views."""

    def __init__(self, client: redis.Redis, views: Sequence[FeatureView], prefix: str = "rtml") -> None:
        self.client = client
        self.prefix = prefix
        self.views = {v.name: v for v in views}
        self._types = {v.name: v.column_types() for v in views}
        # key -> wall ms of its last PEXPIRE: the TTL is refreshed every ttl/8, not on every write.
        self._expiry_set: dict[str, int] = {}

    def write_running(self, view: str, rows: Iterable[RunningValues], wall_ms: int | None = None) -> int:
        """Write running values in one pipelined round trip; returns the number of hashes."""
        wall_ms = int(time.time() * 1000) if wall_ms is None else wall_ms
        rows = rows if isinstance(rows, list) else list(rows)
        ttl_ms = self.views[view].ttl_ms
        refresh_before = wall_ms - ttl_ms // 8
        expiry_set = self._expiry_set
        prefix = f"{self.prefix}:{view}:"
        # The HSETs are encoded in C (engine/features/_resp.c), exactly as encode_value writes.
        payload = [hset_running(prefix.encode(), rows, wall_ms, orjson.dumps)]
        expiring = 0
        for row in rows:
            key = prefix + row.entity
            if expiry_set.get(key, -1) < refresh_before:
                # After the HSETs: a PEXPIRE of a key that does not exist yet does nothing.
                payload.append(hiredis.pack_command(("PEXPIRE", key, ttl_ms)))
                expiry_set[key] = wall_ms
                expiring += 1
        run_packed(self.client, b"".join(payload), len(rows) + expiring)
        return len(rows)

    def get(
        self,
        view: str,
        entities: Sequence[str],
        features: Sequence[str] | None = None,
        now_ms: int | None = None,
    ) -> list[OnlineRow]:
        """Features of many entities in one pipelined round trip, TTL enforced at read.

        ``now_ms`` defaults to the wall clock; pass the event time for replays.
        """
        spec = self.views[view]
        types = self._types[view]
        names = list(features) if features is not None else list(types)
        unknown = [n for n in names if n not in types]
        if unknown:
            raise KeyError(f"view {view} has no feature(s) {', '.join(unknown)}")
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        pipe = self.client.pipeline(transaction=False)
        for entity in entities:
            pipe.hmget(entity_key(self.prefix, view, entity), [*names, "_t"])
        out = []
        for entity, raw in zip(entities, pipe.execute()):
            last = raw[-1]
            fresh = last is not None and now_ms - int(last) <= spec.ttl_ms
            if not fresh:
                out.append(OnlineRow(entity, {n: None for n in names}, None, False))
                continue
            values = {n: decode_value(r, types[n]) for n, r in zip(names, raw[:-1])}
            out.append(OnlineRow(entity, values, now_ms - int(last), True))
        return out

    def read_all(self, view: str) -> dict[str, dict[str, Any]]:
        """Every stored entity of a view with decoded values and meta fields (tests, tools)."""
        types = self._types[view]
        out: dict[str, dict[str, Any]] = {}
        pattern = entity_key(self.prefix, view, "*")
        start = len(entity_key(self.prefix, view, ""))
        for key in self.client.scan_iter(match=pattern, count=1000):
            raw: Mapping[bytes, bytes] = self.client.hgetall(key)
            name = key.decode() if isinstance(key, bytes) else key
            row: dict[str, Any] = {}
            for field, value in raw.items():
                f = field.decode()
                if f in META_FIELDS:
                    row[f] = int(value)
                elif f in types:
                    row[f] = decode_value(value, types[f])
            out[name[start:]] = row
        return out
