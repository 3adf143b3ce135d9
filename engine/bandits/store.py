"""Bandit state in Redis, shared by every serving replica and worker.

One hash per bandit, ``<prefix>:bandit:<name>``:

============== ===================================================================
field          value
============== ===================================================================
``meta``       JSON ``{"kind", "arms", "params"}`` (written once, with ``HSETNX``)
``version``    integer, +1 per applied reward
``c:<k>:<i>``  counter ``k`` (e.g. ``alpha``/``beta`` or ``n``/``s``) of arm position ``i``,
               a decimal float updated with ``HINCRBYFLOAT``
``A:<i>``      LinUCB: ``A`` of arm position ``i``, ``d*d`` little-endian float64 bytes
``b:<i>``      LinUCB: ``b`` of arm position ``i``, ``d`` little-endian float64 bytes
============== ===================================================================

Atomicity:

* Counter policies (Thompson, UCB1, epsilon-greedy): a reward is a few ``HINCRBYFLOAT``
  plus ``HINCRBY version`` sent as one ``MULTI/EXEC`` pipeline. Increments commute, so
  concurrent writers never lose one, and ``MULTI`` keeps an arm's pair (``alpha``/``beta``,
  ``n``/``s``) consistent for readers. One round trip, no retries.
* LinUCB: ``A += x x^T`` and ``b += r x`` on packed float64 bytes are read-modify-write,
  so they run in a Lua script (:data:`LINUCB_UPDATE_LUA`), which Redis executes atomically.
  We chose Lua over a ``WATCH``/``MULTI`` optimistic transaction because under contention
  (many workers rewarding the same popular arm) optimistic transactions abort and retry,
  each retry costing two more round trips and shipping ``d*d*8`` bytes both ways; the script
  costs one round trip and never retries. The script does the same IEEE-754 double
  operations as numpy (``a + x_p*x_q``, ``b + r*x_p``, each rounded once), so the stored
  matrices equal a local :class:`~engine.bandits.policies.LinUCB` fed the same rewards.

Decisions are made locally from a snapshot (``HGETALL``, one round trip) refreshed at
most every ``refresh_s`` seconds (0 = before every choice); :attr:`RedisBandit.version` is
the stored version that snapshot was taken at. A caller that must not block on Redis (an
event loop) checks :meth:`RedisBandit.needs_refresh`, runs :meth:`RedisBandit.load` in a
thread and then decides with ``bandit.policy``.

Rewards can be queued on a caller's pipeline (:meth:`RedisBandit.queue_update`), so many
rewards, for any number of bandits, cost one round trip (:mod:`engine.bandits.rewards`).

Usage (needs a Redis server; exercised in ``tests/engine/bandits/test_store.py``)::

    bandit = RedisBandit(redis.Redis(), "home-banner", "thompson", ["a", "b", "c"], rng=7)
    arm = bandit.choose()
    bandit.update(arm, 1.0)
"""

from __future__ import annotations

import json
import math
import struct
import time
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import redis

from engine.bandits.policies import (
    Arm,
    CounterPolicy,
    LinUCB,
    POLICIES,
    RngLike,
    _rng,
    make_policy,
    policy_from_state,
)

__all__ = ["RedisBandit", "bandit_key", "LINUCB_UPDATE_LUA"]

META, VERSION = "meta", "version"

LINUCB_UPDATE_LUA = """
-- KEYS[1] bandit hash; ARGV[1] arm position; ARGV[2] d; ARGV[3] reward (<d); ARGV[4] x (d x <d)
local key, i, d = KEYS[1], ARGV[1], tonumber(ARGV[2])
local r = struct.unpack('<d', ARGV[3])
local xs = ARGV[4]
if #xs ~= 8 * d then return redis.error_reply('context has the wrong length') end
local A = redis.call('HGET', key, 'A:' .. i)
local b = redis.call('HGET', key, 'b:' .. i)
if not A or not b or #A ~= 8 * d * d or #b ~= 8 * d then
  return redis.error_reply('bandit state for arm ' .. i .. ' is missing or malformed')
end
local x = {}
for p = 1, d do x[p] = struct.unpack('<d', xs, 8 * (p - 1) + 1) end
local outA, outb = {}, {}
for p = 1, d do
  local xp = x[p]
  for q = 1, d do
    local k = (p - 1) * d + q
    outA[k] = struct.pack('<d', struct.unpack('<d', A, 8 * (k - 1) + 1) + xp * x[q])
  end
  outb[p] = struct.pack('<d', struct.unpack('<d', b, 8 * (p - 1) + 1) + r * xp)
end
redis.call('HSET', key, 'A:' .. i, table.concat(outA), 'b:' .. i, table.concat(outb))
return redis.call('HINCRBY', key, 'version', 1)
"""


def bandit_key(prefix: str, name: str) -> str:
    """``<prefix>:bandit:<name>``.

    >>> bandit_key("rtml", "home")
    'rtml:bandit:home'
    """
    return f"{prefix}:bandit:{name}"


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisBandit:
    """A bandit whose statistics live in one Redis hash; any number of instances share it.

    ``RedisBandit(client, name, policy_kind, arms, prefix="rtml", rng=None, refresh_s=0.0,
    **params)`` creates the hash if absent (every field with ``HSETNX``, so racing creators
    agree) and checks that an existing one has the same kind, arms and params.

    * :meth:`choose` / :meth:`choose_n` -- refresh the local snapshot if older than
      ``refresh_s``, then decide.
    * :meth:`update` -- apply a reward atomically in Redis (and to the local snapshot);
      :meth:`queue_update` -- queue it on a pipeline the caller executes.
    * :meth:`state` / :meth:`restore` -- the policy's JSON-able snapshot out of / into Redis.
    """

    def __init__(
        self,
        client: redis.Redis,
        name: str,
        policy_kind: str,
        arms: Sequence[Arm],
        *,
        prefix: str = "rtml",
        rng: RngLike = None,
        refresh_s: float = 0.0,
        **params: Any,
    ) -> None:
        if policy_kind not in POLICIES:
            raise ValueError(f"unknown bandit kind {policy_kind!r}; known: {sorted(POLICIES)}")
        for arm in arms:
            if not isinstance(arm, (str, int)) or isinstance(arm, bool):
                raise TypeError(f"arms must be str or int to be stored, got {arm!r}")
        self.client = client
        self.name = name
        self.key = bandit_key(prefix, name)
        self.rng = _rng(rng)
        self.refresh_s = float(refresh_s)
        self.policy: Any = make_policy(policy_kind, arms, rng=self.rng, **params)
        self.kind = policy_kind
        self.arms: list[Arm] = list(self.policy.arms)
        self._meta = {"kind": policy_kind, "arms": self.arms, "params": self.policy.params()}
        self._loaded_at = -float("inf")
        # Stored version of the snapshot in self.policy (None until the first load); rewards
        # applied through this instance move the local policy but not this number.
        self.version: int | None = None
        self._linucb = client.register_script(LINUCB_UPDATE_LUA)
        self._create()

    # -- layout ---------------------------------------------------------------------------

    def _fields(self, policy: Any) -> dict[str, bytes | str]:
        if isinstance(policy, LinUCB):
            fields: dict[str, bytes | str] = {}
            for i in range(len(policy.arms)):
                fields[f"A:{i}"] = policy.A[i].astype("<f8").tobytes()
                fields[f"b:{i}"] = policy.b[i].astype("<f8").tobytes()
            return fields
        return {
            f"c:{name}:{i}": repr(float(v))
            for name, values in policy.counters.items()
            for i, v in enumerate(values)
        }

    def _create(self) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.hsetnx(self.key, META, json.dumps(self._meta))
        pipe.hsetnx(self.key, VERSION, 0)
        for field, value in self._fields(self.policy).items():
            pipe.hsetnx(self.key, field, value)
        pipe.hget(self.key, META)
        stored = json.loads(pipe.execute()[-1])
        if stored != json.loads(json.dumps(self._meta)):
            raise ValueError(f"{self.key} holds a different bandit: {stored!r}, not {self._meta!r}")

    def _parse(self, raw: Mapping[bytes, bytes]) -> dict[str, Any]:
        fields = {_str(k): v for k, v in raw.items()}
        if META not in fields:
            raise KeyError(f"bandit {self.key} does not exist (deleted?)")
        state: dict[str, Any] = json.loads(fields[META])
        k = len(state["arms"])
        if state["kind"] == LinUCB.kind:
            d = int(state["params"]["n_features"])
            state["A"] = [np.frombuffer(fields[f"A:{i}"], dtype="<f8").reshape(d, d).tolist() for i in range(k)]
            state["b"] = [np.frombuffer(fields[f"b:{i}"], dtype="<f8").tolist() for i in range(k)]
        else:
            cls = POLICIES[state["kind"]]
            state["counters"] = {
                name: [float(fields[f"c:{name}:{i}"]) for i in range(k)]
                for name in cls.COUNTERS  # type: ignore[union-attr]
            }
        state["version"] = int(fields.get(VERSION, 0))
        return state

    # -- API -----------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The policy snapshot as stored now (policy ``state()`` format plus ``version``)."""
        return self._parse(self.client.hgetall(self.key))

    def load(self) -> Any:
        """Replace the local policy with the stored state and return it.

        The new policy is built completely (LinUCB's inverses included) before it replaces
        the old one, so this can run in a thread while decisions use the previous snapshot.
        """
        state = self.state()
        version = int(state.pop("version"))
        policy = policy_from_state(state, rng=self.rng)
        if isinstance(policy, LinUCB):
            policy.precompute()
        self.policy, self.version = policy, version
        self._loaded_at = time.monotonic()
        return policy

    def needs_refresh(self) -> bool:
        """Whether the snapshot is older than ``refresh_s`` (or was never loaded)."""
        return time.monotonic() - self._loaded_at >= self.refresh_s

    def choose(self, context: Any = None) -> Arm:
        """Decide from the stored state (reloaded if older than ``refresh_s``)."""
        if self.needs_refresh():
            self.load()
        return self.policy.choose(context)

    def choose_n(self, n: int = 1, exclude: Iterable[Arm] = (), context: Any = None) -> list[Arm]:
        """``n`` distinct arms not in ``exclude`` (see ``choose_n`` of the policies)."""
        if self.needs_refresh():
            self.load()
        return self.policy.choose_n(n, exclude, context)

    def _reward(self, arm: Arm, reward: float) -> tuple[int, float]:
        i = self.policy.arm_index(arm)
        reward = float(reward)
        if not math.isfinite(reward):
            raise ValueError(f"reward must be finite, got {reward}")
        return i, reward

    def _linucb_args(self, i: int, reward: float, context: Any) -> list[Any]:
        x = self.policy._vector(context)
        return [i, self.policy.n_features, struct.pack("<d", reward), x.astype("<f8").tobytes()]

    def queue_update(self, pipe: redis.client.Pipeline, arm: Arm, reward: float, context: Any = None) -> int:
        """Queue one reward's commands on ``pipe`` (no I/O); returns how many were queued.

        The reply of the last queued command is the new stored version. Everything is
        validated before anything is queued (``KeyError`` for an unknown arm, ``ValueError``
        for a bad reward or context), so a refused reward leaves ``pipe`` as it was. The
        local snapshot is not updated.
        """
        i, reward = self._reward(arm, reward)
        if isinstance(self.policy, LinUCB):
            self._linucb(keys=[self.key], args=self._linucb_args(i, reward, context), client=pipe)
            return 1
        policy: CounterPolicy = self.policy
        deltas = policy.deltas(reward)
        for name, delta in zip(policy.COUNTERS, deltas):
            pipe.hincrbyfloat(self.key, f"c:{name}:{i}", delta)
        pipe.hincrby(self.key, VERSION, 1)
        return len(deltas) + 1

    def update(self, arm: Arm, reward: float, context: Any = None) -> int:
        """Apply one reward atomically in Redis and locally; returns the new stored version."""
        if isinstance(self.policy, LinUCB):
            # A direct EVALSHA: through a pipeline, redis-py would first ask SCRIPT EXISTS
            # (a second round trip) on every call.
            i, reward = self._reward(arm, reward)
            version = self._linucb(keys=[self.key], args=self._linucb_args(i, reward, context))
        else:
            pipe = self.client.pipeline(transaction=True)
            self.queue_update(pipe, arm, reward)
            version = pipe.execute()[-1]
        self.policy.update(arm, float(reward), context)
        return int(version)

    def restore(self, state: Mapping[str, Any]) -> None:
        """Overwrite the stored statistics with a policy snapshot of the same bandit."""
        policy = policy_from_state({k: v for k, v in state.items() if k != "version"}, rng=self.rng)
        meta = {"kind": policy.kind, "arms": policy.arms, "params": policy.params()}
        if json.loads(json.dumps(meta)) != json.loads(json.dumps(self._meta)):
            raise ValueError(f"state is for a different bandit: {meta!r}")
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.key, mapping=self._fields(policy))
        pipe.hincrby(self.key, VERSION, 1)
        self.version = int(pipe.execute()[-1])
        self.policy = policy
        self._loaded_at = time.monotonic()

    def delete(self) -> None:
        """Remove the hash (other instances then fail until one is constructed again)."""
        self.client.delete(self.key)

    def __repr__(self) -> str:
        return f"RedisBandit({self.key!r}, {self.policy!r})"
