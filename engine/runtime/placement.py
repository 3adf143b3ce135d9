"""Which Bytewax worker owns a state key, and state keys that land on chosen workers.

A stateful step's items go to the worker that owns their key. Bytewax picks the owner from
a hash of the key and the job's worker count (the same for N threads in one process as for
N processes: tests/engine/runtime/test_placement.py checks this across real processes) and
has no API to ask which. :func:`key_owners` asks Bytewax itself: it runs a tiny dataflow in
this process with that many worker threads and records where each key's state lives.

:func:`spread_keys` needs no probe: Bytewax routes a key to worker ``route_hash(key) %
workers`` (:mod:`engine.runtime._routing` computes that hash, and the tests check it against
Bytewax), so it can pick keys that split evenly over any worker count. The features job
names its shards with it: by Bytewax's own hash, 8 shards fall 6 to 2 over 2 workers.

A job uses the probe to give roles to processes, e.g. the learning job keeps every join shard on
process 0 (with the input) and gives each learner a process of its own, so a learner's core
spends its time in the model: :func:`keys_on` salts a name (``name``, ``name~1``, ...) until
Bytewax routes it to the wanted worker. The keys depend only on the names and the worker
count, so a restart with the same count finds the same keys in its recovery state.
"""

from __future__ import annotations

import threading
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
    if workers == 1:
        return {key: 0 for key in keys}
    return dict(zip(keys, _probe(tuple(keys), workers)))


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


@lru_cache(maxsize=32)
def _probe(keys: tuple[str, ...], workers: int) -> tuple[int, ...]:
    # Imported here: Bytewax is heavy and only jobs of several processes ask.
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.inputs import DynamicSource, StatelessSourcePartition
    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from bytewax.testing import cluster_main

    worker_of_thread: dict[int, int] = {}
    owners: dict[str, int] = {}

    class _Keys(StatelessSourcePartition[str]):
        def __init__(self, index: int) -> None:
            worker_of_thread[threading.get_ident()] = index
            self.batches = [list(keys)] if index == 0 else []

        def next_batch(self) -> list[str]:
            if not self.batches:
                raise StopIteration
            return self.batches.pop()

    class _Source(DynamicSource[str]):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> _Keys:
            return _Keys(worker_index)

    class _Record(StatelessSinkPartition[tuple[str, int]]):
        def write_batch(self, items: list[tuple[str, int]]) -> None:
            owners.update(items)

    class _Sink(DynamicSink[tuple[str, int]]):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> _Record:
            return _Record()

    flow = Dataflow("rtml_key_owners")
    keyed = op.key_on("key", op.input("keys", flow, _Source()), lambda k: k)
    # The state step runs on the key's owner: it reports the worker of its own thread.
    owned = op.stateful_map("owner", keyed, lambda _state, _k: (None, worker_of_thread[threading.get_ident()]))
    op.output("owners", owned, _Sink())
    cluster_main(flow, [], 0, worker_count_per_proc=workers)
    missing = [k for k in keys if k not in owners]
    if missing:
        raise RuntimeError(f"placement probe lost keys {missing[:5]}")
    return tuple(owners[k] for k in keys)
