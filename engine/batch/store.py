"""Where precomputed scores live in Redis, and how a run replaces the previous one atomically.

One hash per model version holds the scores of its *current* run::

    <prefix>:batch:<model>:<version>          field ""       run metadata (JSON, RunMeta)
                                              field <id>     packed score of one entity

A run writes into its own hash ``<prefix>:batch:<model>:<version>:run:<run_id>`` (readers
never look there) and :meth:`ScoreWriter.publish` swaps it in with one Lua script: the old
hash is renamed aside and UNLINKed (freed in the background, so a large run never blocks
Redis), the new one renamed into place, its expiry set. Readers see the whole old run or the
whole new one, never a mix; a rerun is a fresh run that replaces everything (entities that
disappeared lose their scores). A run that dies half-way leaves only its own hash, which
expires (``ttl_ms``).

Reading ``ids`` is one ``HMGET <hash> "" id1 id2 ...``: one command, one round trip,
answered from one consistent run (metadata included), however many instances a request has.

A packed score is little-endian ``int64 computed_ms, uint16 n`` then ``n`` float32 scores
(the model's first output row) then float64 input values, one per source of
``RunMeta.sources`` (what the predictions log records as the features).

>>> blob = pack_rows(1_700_000_000_000, np.array([[0.25, 1.5]], np.float32), np.array([[3.0]]))[0]
>>> len(blob), unpack_score(blob)
(26, StoredScore(computed_ms=1700000000000, scores=[0.25, 1.5], features=[3.0]))
>>> scores_key("rtml", "ranker", "2"), run_key("rtml", "ranker", "2", "r1")
('rtml:batch:ranker:2', 'rtml:batch:ranker:2:run:r1')
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import orjson
import redis

from engine.features.online import run_commands

META_FIELD = ""  # no entity id is empty: lookups and writes skip empty ids
_HEADER = struct.Struct("<qH")

# KEYS: live, run, retired. ARGV: meta JSON, ttl ms, expected field count (entities + meta).
_PUBLISH = """
redis.call('HSET', KEYS[2], '', ARGV[1])
local fields = redis.call('HLEN', KEYS[2])
if fields ~= tonumber(ARGV[3]) then
  redis.call('UNLINK', KEYS[2])
  return redis.error_reply('run incomplete: ' .. (fields - 1) .. ' of ' .. (ARGV[3] - 1) ..
    ' scores present (expired while writing? raise the TTL)')
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('RENAME', KEYS[1], KEYS[3])
  redis.call('UNLINK', KEYS[3])
end
redis.call('RENAME', KEYS[2], KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return fields - 1
"""


def scores_key(prefix: str, model: str, version: str) -> str:
    """The hash readers use: the current run of one model version."""
    return f"{prefix}:batch:{model}:{version}"


def run_key(prefix: str, model: str, version: str, run_id: str) -> str:
    """The hash a run writes before it is published."""
    return f"{scores_key(prefix, model, version)}:run:{run_id}"


@dataclass(frozen=True, slots=True)
class RunMeta:
    """What a published run says about itself (the hash's ``""`` field)."""

    run_id: str
    model: str
    version: str
    key: str  # the entity_ids field the scores are keyed by
    started_ms: int
    finished_ms: int
    entities: int
    sources: tuple[str, ...]  # feature sources, in the order of each score's input values
    output: str  # the model output the scores are the row of

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> "RunMeta":
        data = orjson.loads(raw)
        data["sources"] = tuple(data["sources"])
        return cls(**data)


@dataclass(frozen=True, slots=True)
class StoredScore:
    """One entity's precomputed score as read back."""

    computed_ms: int
    scores: list[float]
    features: list[float]


def pack_rows(computed_ms: int, scores: np.ndarray, features: np.ndarray) -> list[bytes]:
    """Pack ``n`` rows (``scores [n, k]`` float32, ``features [n, m]`` float64) in one numpy pass."""
    n, k = scores.shape
    m = features.shape[1] if features.ndim == 2 else 0
    row = np.dtype([("t", "<i8"), ("n", "<u2"), ("s", "<f4", (k,)), ("f", "<f8", (m,))])  # packed, no padding
    packed = np.empty(n, row)
    packed["t"] = computed_ms
    packed["n"] = k
    packed["s"] = scores
    if m:
        packed["f"] = features
    blob = packed.tobytes()
    size = row.itemsize
    return [blob[i * size:(i + 1) * size] for i in range(n)]


def unpack_score(raw: bytes) -> StoredScore:
    """Inverse of :func:`pack_rows` for one value."""
    computed_ms, k = _HEADER.unpack_from(raw)
    start = _HEADER.size
    scores = np.frombuffer(raw, "<f4", k, start)
    features = np.frombuffer(raw, "<f8", (len(raw) - start - 4 * k) // 8, start + 4 * k)
    return StoredScore(computed_ms, scores.tolist(), features.tolist())


def lookup_command(prefix: str, model: str, version: str, ids: Sequence[str]) -> tuple[str, ...]:
    """The one command that reads a run's metadata and ``ids``' scores (reply: meta, then per id)."""
    return ("HMGET", scores_key(prefix, model, version), META_FIELD, *ids)


def read_scores(
    client: redis.Redis, prefix: str, model: str, version: str, ids: Sequence[str]
) -> tuple[RunMeta | None, list[StoredScore | None]]:
    """The current run's metadata (None: no run published) and each id's score (tools, tests)."""
    reply = client.execute_command(*lookup_command(prefix, model, version, ids))
    meta = RunMeta.from_json(reply[0]) if reply[0] is not None else None
    return meta, [unpack_score(raw) if raw is not None else None for raw in reply[1:]]


class ScoreWriter:
    """Write one run's scores into its private hash, then publish it atomically.

    Each entity id must be written once per run: publication refuses a run whose hash holds
    fewer scores than were written (a duplicate id, or a run that expired while writing).
    ``ttl_ms`` bounds how long an unpublished (abandoned) run and a published one are kept.
    """

    def __init__(
        self, client: redis.Redis, prefix: str, model: str, version: str, ttl_ms: int, run_id: str | None = None
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.model = model
        self.version = version
        self.ttl_ms = ttl_ms
        self.run_id = run_id or uuid.uuid4().hex
        self.key = run_key(prefix, model, version, self.run_id)
        self.written = 0  # ids are distinct (checked at publication: HLEN must match)
        self._publish = client.register_script(_PUBLISH)
        self._expiring = False

    def write(self, items: Iterable[tuple[str, bytes]]) -> int:
        """Store ``(entity id, packed score)`` pairs: one HSET per call (plus the expiry once)."""
        hset: list[Any] = ["HSET", self.key]
        n = 0
        for entity, blob in items:
            if not entity:
                raise ValueError("an entity id is empty (empty ids cannot be looked up)")
            hset += (entity, blob)
            n += 1
        if n:
            commands: list[tuple[Any, ...]] = [tuple(hset)]
            if not self._expiring:  # first write: an abandoned run must not stay forever
                commands.append(("PEXPIRE", self.key, self.ttl_ms))
                self._expiring = True
            run_commands(self.client, commands)
            self.written += n
        return n

    def publish(self, meta: RunMeta) -> int:
        """Swap this run in for readers (atomic); returns the number of scores published."""
        live = scores_key(self.prefix, self.model, self.version)
        retired = f"{live}:retired:{self.run_id}"
        return int(self._publish(keys=[live, self.key, retired], args=[meta.to_json(), self.ttl_ms, self.written + 1]))

    def abort(self) -> None:
        """Drop an unpublished run."""
        self.client.unlink(self.key)
