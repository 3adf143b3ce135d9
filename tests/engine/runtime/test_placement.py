"""State keys placed on chosen Bytewax workers, checked against Bytewax itself.

:func:`bytewax_owners` runs a tiny dataflow with that many worker threads and records where
each key's state lives. That threads route like processes is checked end to end by
tests/dataflows/test_learning_flow.py (its learner reports from process 1).
"""

from __future__ import annotations

import threading
from typing import Sequence

import pytest

from engine.runtime.placement import key_owners, keys_on


def bytewax_owners(keys: Sequence[str], workers: int) -> dict[str, int]:
    """Where Bytewax itself puts each key's state with ``workers`` worker threads (the oracle)."""
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
    return {k: owners[k] for k in keys}


@pytest.mark.parametrize("workers", [2, 3])
def test_keys_land_where_asked_and_are_stable(workers: int) -> None:
    wanted = {name: i % workers for i, name in enumerate(["learner", "0", "1", "2", "3", "ctr"])}
    keys = keys_on(wanted, workers)
    owners = bytewax_owners(list(keys.values()), workers)
    assert {name: owners[key] for name, key in keys.items()} == wanted
    assert all(key == name or key.startswith(f"{name}~") for name, key in keys.items())
    assert keys_on(wanted, workers) == keys  # a restart with as many workers finds the same keys


def test_owners_spread_over_the_workers() -> None:
    owners = key_owners([f"k{i}" for i in range(64)], 2)
    assert set(owners.values()) == {0, 1}


def test_one_worker_keeps_the_names() -> None:
    assert keys_on({"a": 0, "b": 0}, 1) == {"a": "a", "b": "b"}
    with pytest.raises(ValueError):
        keys_on({"a": 1}, 1)


@pytest.mark.parametrize("workers", [2, 3, 5])
def test_route_hash_is_how_bytewax_routes(workers: int) -> None:
    from engine.runtime._routing import route_hash

    keys = ["", "a", "user#0", "user#7~123", "é漢" * 40, "x" * 300] + [f"k{i}~{i * 7}" for i in range(60)]
    owners = bytewax_owners(keys, workers)
    assert all(owners[key] == route_hash(key) % workers for key in keys)
    assert key_owners(keys, workers) == owners


@pytest.mark.parametrize("workers", [1, 2, 3, 4, 8])
def test_spread_keys_split_evenly_for_any_worker_count(workers: int) -> None:
    from engine.runtime.placement import spread_keys, unsalted

    names = [f"user#{s}" for s in range(8)]
    keys = spread_keys(names)
    assert [unsalted(k) for k in keys] == names
    owners = bytewax_owners(keys, workers)
    assert [owners[k] for k in keys] == [i % workers for i in range(8)]
    assert spread_keys(names) == keys  # the same keys for any worker count, on every restart
