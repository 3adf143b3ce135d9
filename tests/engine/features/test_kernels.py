"""The router's compiled kernels against their one-line Python definitions."""

from __future__ import annotations

import random
import zlib

import numpy as np
import pytest

from engine.features._kernels import shard_groups, take


def test_shard_groups_is_a_stable_sort_by_zlib_crc32() -> None:
    rng = random.Random(3)
    alphabet = "abcXYZ019_|%é漢\U0001f600"
    for shards in (1, 2, 7, 8, 64):
        entities = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(rng.randint(0, 500))]
        order, groups = shard_groups(entities, shards)
        shard = [zlib.crc32(e.encode()) % shards for e in entities]
        expected = sorted(range(len(entities)), key=lambda i: shard[i])  # sorted() is stable
        assert np.frombuffer(order, np.int64).tolist() == expected
        counts = np.bincount(shard, minlength=shards) if entities else np.zeros(shards, int)
        starts = np.concatenate([[0], np.cumsum(counts)])
        assert groups == [(s, int(starts[s]), int(starts[s + 1])) for s in range(shards) if counts[s]]


def test_shard_groups_refuses_what_it_cannot_hash() -> None:
    with pytest.raises(TypeError):
        shard_groups(["a", 1], 4)  # type: ignore[list-item]
    with pytest.raises(ValueError):
        shard_groups(["a"], 0)
    with pytest.raises(ValueError):
        shard_groups(["a"], 2**32)
    with pytest.raises(UnicodeEncodeError):  # as str.encode() would
        shard_groups(["\ud800"], 4)


def test_take_reorders_any_sequence_by_int64_positions() -> None:
    values = ["a", None, 3, b"x"]
    assert take(values, np.array([3, 0, 0, 2], np.int64)) == [b"x", "a", "a", 3]
    assert take(tuple(values), np.array([], np.int64).tobytes()) == []
    with pytest.raises(IndexError):
        take(values, np.array([4], np.int64))
    with pytest.raises(ValueError):
        take(values, b"abc")
    with pytest.raises(ValueError):
        take(values, np.array([1], np.int32))  # not read as int64 by mistake


def test_pack_bytes_joins_and_marks_each_end() -> None:
    from engine.features._kernels import pack_bytes

    values = [b"ab", b"", b"\x00c", b"d" * 1000]
    blob, ends = pack_bytes(values)
    assert blob == b"".join(values) and np.frombuffer(ends, np.int64).tolist() == [2, 2, 4, 1004]
    assert pack_bytes([]) == (b"", b"")
    with pytest.raises(TypeError):
        pack_bytes([b"a", "b"])  # type: ignore[list-item]


def test_rows_of_numbers_new_entities_in_order_of_arrival() -> None:
    from engine.features._kernels import rows_of

    index: dict[str, int] = {"a": 0}
    names = ["a"]
    rows = rows_of(["b", "a", "c", "b"], index, names)
    assert np.frombuffer(rows, np.int64).tolist() == [1, 0, 2, 1]
    assert index == {"a": 0, "b": 1, "c": 2} and names == ["a", "b", "c"]
    assert rows_of([], index, names) == b""
    with pytest.raises(TypeError):
        rows_of(("a",), index, names)  # type: ignore[arg-type]


def test_numbers_are_finite_ints_and_floats_and_nan_for_anything_else() -> None:
    from engine.features._kernels import context_numbers, numbers_of

    values = [1, 2.5, None, True, "3", float("inf"), float("nan"), -0.0, 2**70, 10**400, [1]]
    expected = [1.0, 2.5, np.nan, np.nan, np.nan, np.nan, np.nan, -0.0, float(2**70), np.nan, np.nan]
    np.testing.assert_array_equal(np.frombuffer(numbers_of(values), np.float64), expected)
    contexts = [{"x": v} for v in values] + [{}, {"y": 1}]
    np.testing.assert_array_equal(np.frombuffer(context_numbers(contexts, "x"), np.float64),
                                  expected + [np.nan, np.nan])


def test_codes_of_reads_each_value_in_the_index() -> None:
    from engine.features._kernels import codes_of

    index = {"click": 0, "view": 1, None: 2}
    assert np.frombuffer(codes_of(["view", None, "click"], index), np.int64).tolist() == [1, 2, 0]
    with pytest.raises(KeyError):
        codes_of(["nope"], index)
