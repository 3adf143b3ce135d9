"""Training arrays and the stable feature hashing shared with serving.

:class:`ClickData` holds one split of a click-prediction set as numpy arrays: ``dense``
float32 ``[n, n_dense]``, ``sparse`` int64 ``[n, n_fields]`` (bucket ids, already hashed),
``label`` float32 ``[n]`` in {0, 1} and, for synthetic data, the true click probability.

Hashing (:func:`hash_column`) must give the same bucket in every process and in serving,
so it never uses Python's ``hash()`` (salted per process). The definition::

    key    = blake2b(salt.encode(), digest_size=8).hexdigest()      # 16 ASCII characters
    h      = splitmix64_finalizer(siphash24(key, utf8(str(value))))  # pandas.util.hash_array
    bucket = 0                         if value is null (None / NaN)
             1 + h % (buckets - 1)     otherwise

``str(value)`` is the text of the value; floats that hold whole numbers are hashed as
integers (``3.0`` as ``"3"``) because Parquet turns an integer column with nulls into floats.

>>> hash_column(["a", "b", None, "a"], buckets=1000, salt="item_id").tolist()[2]
0
>>> h = hash_column(["a", "b", "a"], buckets=1000, salt="item_id")
>>> bool(h[0] == h[2]) and bool(h[0] != h[1])
True
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from pandas.util import hash_array

NULL_SUFFIX = ".is_null"  # name of the optional is-null indicator of a dense column


def _hash_key(salt: str) -> str:
    return hashlib.blake2b(salt.encode("utf-8"), digest_size=8).hexdigest()


def hash_column(values: Iterable[object] | np.ndarray | pd.Series, buckets: int, salt: str) -> np.ndarray:
    """Stable bucket ids in ``[0, buckets)``; bucket 0 is reserved for nulls (module docstring)."""
    if buckets < 2:
        raise ValueError("buckets must be >= 2 (bucket 0 is the null bucket)")
    s = pd.Series(values) if not isinstance(values, pd.Series) else values
    null = s.isna().to_numpy()
    if pd.api.types.is_float_dtype(s.dtype):
        whole = s.dropna()
        if bool((whole == np.floor(whole)).all()):
            s = s.astype("Int64")
    text = np.where(null, "", s.astype(str).to_numpy(dtype=object)).astype(object)
    h = hash_array(text, hash_key=_hash_key(salt), categorize=True)
    out = (1 + (h % np.uint64(buckets - 1))).astype(np.int64)
    out[null] = 0
    return out


@dataclass
class ClickData:
    """One split of a click-prediction set (see the module docstring for shapes).

    >>> d = ClickData(np.zeros((4, 2), np.float32), np.zeros((4, 1), np.int64), np.array([0, 1, 0, 1], np.float32))
    >>> len(d[1:3]), d.n_dense, d.n_fields, d.ctr
    (2, 2, 1, 0.5)
    """

    dense: np.ndarray
    sparse: np.ndarray
    label: np.ndarray
    true_p: np.ndarray | None = None
    dense_names: list[str] | None = None

    def __post_init__(self) -> None:
        self.dense = np.ascontiguousarray(self.dense, dtype=np.float32).reshape(len(self.label), -1)
        self.sparse = np.ascontiguousarray(self.sparse, dtype=np.int64).reshape(len(self.label), -1)
        self.label = np.ascontiguousarray(self.label, dtype=np.float32)
        if self.true_p is not None:
            self.true_p = np.asarray(self.true_p, dtype=np.float64)

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def __getitem__(self, idx: slice | np.ndarray) -> "ClickData":
        return ClickData(self.dense[idx], self.sparse[idx], self.label[idx],
                         None if self.true_p is None else self.true_p[idx], self.dense_names)

    @property
    def n_dense(self) -> int:
        return int(self.dense.shape[1])

    @property
    def n_fields(self) -> int:
        return int(self.sparse.shape[1])

    @property
    def ctr(self) -> float:
        return float(self.label.mean()) if len(self) else float("nan")

    @classmethod
    def from_frame(cls, df: pd.DataFrame, dense_columns: Sequence[str], sparse_columns: Sequence[str],
                   buckets: int | Mapping[str, int], label_column: str = "label",
                   null_indicators: bool = False) -> "ClickData":
        """Arrays from a frame such as a split written by ``rtml dataset build``.

        Dense nulls become 0; with ``null_indicators`` every dense column also gets a 0/1
        column ``<name>.is_null`` (for every column, so all splits have the same layout).
        Sparse columns are hashed with :func:`hash_column`, salted with the column name.

        >>> df = pd.DataFrame({"user.clicks_1h": [1.0, None], "item.category": ["a", None], "label": [1, 0]})
        >>> d = ClickData.from_frame(df, ["user.clicks_1h"], ["item.category"], 100, null_indicators=True)
        >>> d.dense.tolist(), d.dense_names, int(d.sparse[1, 0])
        ([[1.0, 0.0], [0.0, 1.0]], ['user.clicks_1h', 'user.clicks_1h.is_null'], 0)
        """
        dense_names, cols = [], []
        for c in dense_columns:
            v = pd.to_numeric(df[c], errors="coerce").astype(np.float64).to_numpy()
            null = np.isnan(v)
            cols.append(np.where(null, 0.0, v))
            dense_names.append(c)
            if null_indicators:
                cols.append(null.astype(np.float64))
                dense_names.append(c + NULL_SUFFIX)
        n = len(df)
        dense = np.stack(cols, axis=1) if cols else np.zeros((n, 0))
        sparse = (np.stack([hash_column(df[c], buckets_of(buckets, c), c) for c in sparse_columns], axis=1)
                  if sparse_columns else np.zeros((n, 0), np.int64))
        label = df[label_column].astype(np.float32).to_numpy() if label_column in df else np.zeros(n, np.float32)
        return cls(dense, sparse, label, None, dense_names)


def buckets_of(buckets: int | Mapping[str, int], column: str) -> int:
    """The bucket count of one column: one number for all, or a per-column mapping."""
    return int(buckets if isinstance(buckets, int) else buckets[column])


@dataclass
class PairData:
    """(user, item) interactions for retrieval: per-pair tower inputs plus identities.

    ``user_key`` / ``item_key`` identify the user and the item (any int64, e.g. a hashed id);
    they give the in-batch log-Q correction its item frequencies and evaluation its catalog
    and relevant sets. Tower inputs follow :class:`ClickData`'s dtypes.
    """

    user_dense: np.ndarray
    user_sparse: np.ndarray
    item_dense: np.ndarray
    item_sparse: np.ndarray
    user_key: np.ndarray
    item_key: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.user_key)
        self.user_dense = np.ascontiguousarray(self.user_dense, dtype=np.float32).reshape(n, -1)
        self.item_dense = np.ascontiguousarray(self.item_dense, dtype=np.float32).reshape(n, -1)
        self.user_sparse = np.ascontiguousarray(self.user_sparse, dtype=np.int64).reshape(n, -1)
        self.item_sparse = np.ascontiguousarray(self.item_sparse, dtype=np.int64).reshape(n, -1)
        self.user_key = np.asarray(self.user_key, dtype=np.int64)
        self.item_key = np.asarray(self.item_key, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.user_key.shape[0])

    def __getitem__(self, idx: slice | np.ndarray) -> "PairData":
        return PairData(self.user_dense[idx], self.user_sparse[idx], self.item_dense[idx], self.item_sparse[idx],
                        self.user_key[idx], self.item_key[idx])

    def catalog(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Distinct items (keys, dense, sparse), each with the inputs of its first pair."""
        keys, first = np.unique(self.item_key, return_index=True)
        return keys, self.item_dense[first], self.item_sparse[first]

    def queries(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
        """Distinct users (keys, dense, sparse from their first pair) and each one's item keys.

        >>> z = np.zeros((3, 0))
        >>> q = PairData(z, z, z, z, np.array([5, 2, 5]), np.array([7, 8, 9])).queries()
        >>> q[0].tolist(), [r.tolist() for r in q[3]]
        ([2, 5], [[8], [7, 9]])
        """
        keys, first, inverse = np.unique(self.user_key, return_index=True, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        bounds = np.cumsum(np.bincount(inverse, minlength=len(keys)))[:-1]
        relevant = [np.unique(r) for r in np.split(self.item_key[order], bounds)]
        return keys, self.user_dense[first], self.user_sparse[first], relevant
