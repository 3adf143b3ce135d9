"""Which Bytewax worker owns a state key, and state keys that land on chosen workers.

A stateful step's items go to the worker that owns their key. Bytewax picks the owner as
``route_hash(key) % workers`` (:mod:`engine.runtime._routing` reproduces that hash; the same
for N threads in one process as for N processes) and has no API to ask which.
tests/engine/runtime/test_placement.py checks the hash against Bytewax itself, by running a
tiny dataflow with that many worker threads and recording where each key's state lives.

A job uses this to give roles to processes, e.g. the learning job keeps every join shard on
process 0 (with the input) and gives each learner a process of its own, so a learner's core
spends its time in the model: :func:`keys_on` salts a name (``name``, ``name~1``, ...) until
Bytewax routes it to the wanted worker. The keys depend only on the names and the worker
count, so a restart with the same count finds the same keys in its recovery state.

:func:`spread_keys` picks keys that split evenly over any worker count up to 8. The features
job names its shards with it: by Bytewax's own hash, 8 shards fall 6 to 2 over 2 workers.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Mapping, Sequence

from engine.runtime._routing import route_hash

__all__ = ["key_owners", "keys_on", "spread_keys", "unsalted"]

_SALTS = 64  # candidates per name: (1 - 1/workers) ** 64 is the chance that none lands
_SALT_MARK = "~"
# lcm(1..8): spread keys split evenly over 1 to 8 workers (and 10, 12, 14, 15, 20, 21, ...).
SPREAD_MODULUS = 840


def unsalted(key: str) -> str:
    """The name a key from :func:`keys_on` was made for.

    >>> unsalted("ctr_online~3"), unsalted("0")
    ('ctr_online', '0')
    """
    return key.split(_SALT_MARK, 1)[0]


def key_owners(keys: Sequence[str], workers: int) -> dict[str, int]:
    """The worker index that owns each key's state in a job of ``workers`` workers.

    >>> key_owners(["a", "b"], 1)
    {'a': 0, 'b': 0}
    """
    if workers < 1:
        raise ValueError("workers must be >= 1")
    return {key: route_hash(key) % workers for key in keys}


def keys_on(wanted: Mapping[str, int], workers: int) -> dict[str, str]:
    """For each name, a state key owned by the worker it is mapped to.

    The name itself when it already lands there (always, with one worker).

    >>> keys_on({"learner": 0}, 1)
    {'learner': 'learner'}
    """
    if any(not 0 <= t < workers for t in wanted.values()):
        raise ValueError(f"workers are numbered 0 to {workers - 1}")
    if any(_SALT_MARK in name for name in wanted):
        raise ValueError(f"names must not contain {_SALT_MARK!r}")
    candidates = {name: [name] + [f"{name}{_SALT_MARK}{k}" for k in range(1, _SALTS)] for name in wanted}
    owners = key_owners([c for cs in candidates.values() for c in cs], workers)
    chosen: dict[str, str] = {}
    for name, target in wanted.items():
        key = next((c for c in candidates[name] if owners[c] == target), None)
        if key is None:
            raise RuntimeError(f"no key for {name!r} lands on worker {target} of {workers}")
        chosen[name] = key
    return chosen


def spread_keys(names: Sequence[str]) -> list[str]:
    """A state key for each name, the ``i``-th owned by worker ``i % workers`` for any
    number of workers that divides :data:`SPREAD_MODULUS`.

    The keys depend only on the names and their order, never on the worker count, so state
    keyed by them survives rescaling a job.

    >>> keys = spread_keys(["s0", "s1", "s2", "s3"])
    >>> [key_owners(keys, 2)[k] for k in keys], [unsalted(k) for k in keys]
    ([0, 1, 0, 1], ['s0', 's1', 's2', 's3'])
    """
    if any(_SALT_MARK in name for name in names):
        raise ValueError(f"names must not contain {_SALT_MARK!r}")
    return [_spread_key(name, i % SPREAD_MODULUS) for i, name in enumerate(names)]


@lru_cache(maxsize=4096)
def _spread_key(name: str, residue: int) -> str:
    for k in range(SPREAD_MODULUS * 300):  # a miss is (1 - 1/840) ** 252000: never
        key = f"{name}{_SALT_MARK}{k}" if k else name
        if route_hash(key) % SPREAD_MODULUS == residue:
            return key
    raise RuntimeError(f"no key for {name!r} has residue {residue}")
