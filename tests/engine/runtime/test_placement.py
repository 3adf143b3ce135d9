"""State keys placed on chosen Bytewax workers.

That the owners found in one process hold for a job of several processes is checked end to
end by tests/dataflows/test_learning_flow.py (its learner reports from process 1).
"""

from __future__ import annotations

import pytest

from engine.runtime import placement
from engine.runtime.placement import key_owners, keys_on


@pytest.mark.parametrize("workers", [2, 3])
def test_keys_land_where_asked_and_are_stable(workers: int) -> None:
    wanted = {name: i % workers for i, name in enumerate(["learner", "0", "1", "2", "3", "ctr"])}
    keys = keys_on(wanted, workers)
    owners = key_owners(list(keys.values()), workers)
    assert {name: owners[key] for name, key in keys.items()} == wanted
    assert all(key == name or key.startswith(f"{name}~") for name, key in keys.items())
    placement._probe.cache_clear()
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
    owners = key_owners(keys, workers)
    assert all(owners[key] == route_hash(key) % workers for key in keys)


@pytest.mark.parametrize("workers", [1, 2, 3, 4, 8])
def test_spread_keys_split_evenly_for_any_worker_count(workers: int) -> None:
    from engine.runtime.placement import spread_keys, unsalted

    names = [f"user#{s}" for s in range(8)]
    keys = spread_keys(names)
    assert [unsalted(k) for k in keys] == names
    owners = key_owners(keys, workers)
    assert [owners[k] for k in keys] == [i % workers for i in range(8)]
    assert spread_keys(names) == keys  # the same keys for any worker count, on every restart
