"""The compiled HSET encoder writes exactly what encode_value() and hiredis would."""

from __future__ import annotations

import random
import struct

import hiredis
import orjson
import pytest

from engine.features._resp import hset_running
from engine.features.online import encode_value
from engine.features.shard import RunningValues


def _reference(prefix: str, rows: list[RunningValues], wall_ms: int) -> bytes:
    return b"".join(
        hiredis.pack_command((
            "HSET", prefix + row.entity,
            *[part for column, value in zip(row.columns, row.values) for part in (column, encode_value(value))],
            "_t", str(row.last_event_ms), "_asof", str(row.asof_ms), "_w", str(wall_ms),
        ))
        for row in rows
    )


def _random_value(rng: random.Random) -> object:
    return rng.choice([
        rng.random() * 10 ** rng.randint(-30, 30),  # every exponent, both float formats
        struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0],  # any bit pattern: nan, inf, subnormals
        rng.uniform(0.9e-4, 1.1e-4),  # where repr() switches to an exponent
        rng.uniform(0.9e16, 1.1e16),
        float(rng.randint(-10**6, 10**6)), -0.0, 1 / 3,
        rng.randint(-2**63, 2**63 - 1), 2**70, None, "text, with ] and ü",
    ])


def test_rows_encode_exactly_as_encode_value_writes() -> None:
    rng = random.Random(7)
    rows = [RunningValues("ü", (), [], 1, 2)]
    for i in range(5_000):
        values = [_random_value(rng) for _ in range(rng.randint(0, 8))]
        rows.append(RunningValues(f"e{i}", tuple(f"c{j}" for j in range(len(values))), values,
                                  rng.randint(0, 2**62), rng.randint(-5, 5)))
    assert hset_running(b"rtml:user:", rows, 1_700_000_000_000, orjson.dumps) == \
        _reference("rtml:user:", rows, 1_700_000_000_000)
    assert hset_running(b"p:", [], 0, orjson.dumps) == b""


def test_malformed_rows_raise_instead_of_writing_garbage() -> None:
    with pytest.raises(ValueError):
        hset_running(b"p:", [RunningValues("e", ("a", "b"), [1], 0, 0)], 0, orjson.dumps)
    with pytest.raises(TypeError):
        hset_running(b"p:", [RunningValues("e", (1,), [1], 0, 0)], 0, orjson.dumps)  # type: ignore[arg-type]
    with pytest.raises(AttributeError):
        hset_running(b"p:", [object()], 0, orjson.dumps)
