"""Stable hashing and the training arrays built from frames."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd

from engine.training.data import ClickData, PairData, hash_column

_VALUES = ["u1", "u2", "item-9", "é", "12345"]


def test_hash_is_identical_in_another_process_with_another_hash_seed() -> None:
    code = ("from engine.training.data import hash_column;"
            f"print(hash_column({_VALUES!r}, 1 << 20, 'user_id').tolist())")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True,
                         cwd=os.getcwd())
    assert out.stdout.strip() == str(hash_column(_VALUES, 1 << 20, "user_id").tolist())


def test_hash_range_nulls_salt_and_integral_floats() -> None:
    h = hash_column(pd.Series(["a", None, "b", np.nan]), 50, "f")
    assert h[1] == 0 and h[3] == 0
    assert ((h[[0, 2]] >= 1) & (h[[0, 2]] < 50)).all()
    many = hash_column([f"v{i}" for i in range(20_000)], 1 << 30, "f")
    assert len(np.unique(many)) > 19_990  # essentially collision free in a wide space
    assert not np.array_equal(many, hash_column([f"v{i}" for i in range(20_000)], 1 << 30, "g"))
    # An int column that Parquet turned into floats because of a null hashes like the ints.
    assert hash_column(pd.Series([3.0, None]), 100, "f")[0] == hash_column(pd.Series([3]), 100, "f")[0]
    # Spread: 100k values over 10 buckets are close to uniform.
    counts = np.bincount(hash_column(np.arange(100_000), 11, "f"), minlength=11)[1:]
    assert counts.min() > 9_000


def test_from_frame_dense_nulls_indicators_and_sparse_hashing() -> None:
    df = pd.DataFrame({"user.clicks_1h": [1.0, None, 3.0], "user.ctr": [None, 0.5, 0.25],
                       "item.category": ["x", "y", "x"], "item_id": ["i1", "i2", None], "label": [0, 1, 1],
                       "event_time_ms": [1, 2, 3]})
    d = ClickData.from_frame(df, ["user.clicks_1h", "user.ctr"], ["item.category", "item_id"], {"item.category": 97,
                             "item_id": 1000}, null_indicators=True)
    assert d.dense_names == ["user.clicks_1h", "user.clicks_1h.is_null", "user.ctr", "user.ctr.is_null"]
    np.testing.assert_array_equal(d.dense, [[1, 0, 0, 1], [0, 1, 0.5, 0], [3, 0, 0.25, 0]])
    assert d.sparse[0, 0] == d.sparse[2, 0] != d.sparse[1, 0]
    assert d.sparse[2, 1] == 0 and d.sparse[:, 0].max() < 97
    assert d.label.dtype == np.float32 and d.label.tolist() == [0, 1, 1]
    plain = ClickData.from_frame(df, ["user.clicks_1h"], [], 10)
    assert plain.dense.shape == (3, 1) and plain.sparse.shape == (3, 0)


def test_slicing_keeps_rows_together() -> None:
    rng = np.random.default_rng(0)
    d = ClickData(rng.random((10, 2)), rng.integers(0, 5, (10, 3)), rng.random(10) < 0.5, rng.random(10))
    mask = d.label > 0
    s = d[mask]
    assert len(s) == int(mask.sum())
    np.testing.assert_array_equal(s.sparse, d.sparse[mask])
    np.testing.assert_array_equal(s.true_p, d.true_p[mask])


def test_pair_data_catalog_and_queries() -> None:
    users = np.array([3, 1, 3, 3, 1])
    items = np.array([10, 11, 12, 10, 10])
    d = PairData(users[:, None] * 1.0, users[:, None], items[:, None] * 1.0, items[:, None], users, items)
    keys, dense, sparse = d.catalog()
    assert keys.tolist() == [10, 11, 12] and sparse[:, 0].tolist() == [10, 11, 12]
    ukeys, _, usparse, relevant = d.queries()
    assert ukeys.tolist() == [1, 3] and usparse[:, 0].tolist() == [1, 3]
    assert [r.tolist() for r in relevant] == [[10, 11], [10, 12]]
