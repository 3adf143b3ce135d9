"""The point-in-time join: each example gets each feature's value as it was known at its time.

For an example with entity key ``k`` at time ``t`` and a :class:`FeatureTable` with TTL
``ttl``, the eligible feature rows are those of ``k`` with
``t - ttl <= feature time <= t`` (both inclusive; no lower bound without a TTL). Among them
the newest feature time wins; equal feature times are broken by the newest created time,
then by the last row in the table's input order. The winner's values are taken as they are:
a null there stays null (no fallback to an older row). Examples without an eligible row get
nulls. Every example row is kept, in its input order, duplicates included.

Null values by dtype: float columns give ``NaN``; numpy integer and bool columns become
pandas' nullable ``Int64`` / ``boolean`` (so a count stays an integer); other numpy columns
become ``object`` with ``None``; pandas extension columns (``str``, ``Int64``, ...) keep their
dtype with its own missing value.

The join is vectorised: entity keys are factorised, ``(key code, feature time)`` is folded
into one int64 sort key, and every example finds its row with one ``np.searchsorted``.

>>> examples = pd.DataFrame({"user_id": ["u1", "u1", "u2", "u3"], "event_time_ms": [100, 250, 100, 100]})
>>> feats = pd.DataFrame({"entity": ["u1", "u1", "u1", "u2"], "window_end_ms": [90, 200, 200, 10],
...                       "created_ms": [95, 210, 205, 20], "clicks": [1, 2, 3, 7]})
>>> table = FeatureTable("user", feats, ("user_id",), ("clicks",), ttl_ms=60)
>>> point_in_time_join(examples, [table])
  user_id  event_time_ms  user.clicks
0      u1            100            1
1      u1            250            2
2      u2            100         <NA>
3      u3            100         <NA>
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from pandas.api.extensions import ExtensionArray

_INT64_MIN = int(np.iinfo(np.int64).min)
_INT64_MAX = int(np.iinfo(np.int64).max)


@dataclass(frozen=True, eq=False)
class FeatureTable:
    """Feature rows of one entity kind, keyed by a composed entity key.

    ``key_column`` holds :func:`engine.features.keys.composite_key` of the example's
    ``entity_columns`` values; ``time_column`` is the feature time and ``created_column``
    the time the row was written (ms, int64; a null created time counts as the oldest;
    ``None``: input order alone breaks ties). Rows with a null key or feature time are ignored.
    Output columns are ``<name>.<feature>``. ``ttl_ms=None`` means values never expire.
    """

    name: str
    frame: pd.DataFrame
    entity_columns: tuple[str, ...]
    features: tuple[str, ...]
    key_column: str = "entity"
    time_column: str = "window_end_ms"
    created_column: str | None = "created_ms"
    ttl_ms: int | None = None

    def __post_init__(self) -> None:
        # Accept lists from callers, store tuples (the dataclass is frozen).
        object.__setattr__(self, "entity_columns", tuple(self.entity_columns))
        object.__setattr__(self, "features", tuple(self.features))
        if not self.entity_columns:
            raise ValueError(f"feature table {self.name}: entity_columns is empty")
        if self.ttl_ms is not None and self.ttl_ms < 0:
            raise ValueError(f"feature table {self.name}: ttl_ms must be >= 0, got {self.ttl_ms}")
        needed = [self.key_column, self.time_column, *self.features]
        if self.created_column is not None:
            needed.append(self.created_column)
        missing = [c for c in needed if c not in self.frame.columns]
        if missing:
            raise ValueError(f"feature table {self.name}: missing column(s) {', '.join(missing)}")

    def output_columns(self) -> list[str]:
        """The columns this table adds to the examples: ``<name>.<feature>``."""
        return [f"{self.name}.{f}" for f in self.features]


def _as_text(uniques: pd.Index | np.ndarray | ExtensionArray) -> pd.Series:
    """Entity values as the strings the features dataflow keys by (numbers via ``str``)."""
    s = pd.Series(uniques)
    return s if pd.api.types.is_string_dtype(s.dtype) else s.map(str)


def _escape(values: pd.Series) -> pd.Series:
    # Same escaping as composite_key, vectorised over one column's distinct values.
    return values.str.replace("%", "%25", regex=False).str.replace("|", "%7C", regex=False)


def example_keys(examples: pd.DataFrame, entity_columns: Sequence[str]) -> tuple[np.ndarray, pd.Series]:
    """Factorised entity keys of the examples: (code per row, -1 for a null; key per code).

    The keys equal :func:`~engine.features.keys.composite_key` of the row's values; they are
    composed once per distinct combination, not per row.

    >>> codes, keys = example_keys(pd.DataFrame({"u": ["a|1", "b", "a|1"], "i": ["x", "%", "x"]}), ["u", "i"])
    >>> codes.tolist(), keys.tolist()
    ([0, 1, 0], ['a%7C1|x', 'b|%25'])
    >>> from engine.features.keys import composite_key
    >>> keys[0] == composite_key(["a|1", "x"])
    True
    """
    missing = [c for c in entity_columns if c not in examples.columns]
    if missing:
        raise ValueError(f"examples: missing entity column(s) {', '.join(missing)}")
    combined: np.ndarray | None = None
    parts: list[tuple[np.ndarray, pd.Series]] = []
    for column in entity_columns:
        codes, uniques = pd.factorize(examples[column], use_na_sentinel=True)
        codes = codes.astype(np.int64, copy=False)
        text = _as_text(uniques)
        parts.append((codes, text if len(entity_columns) == 1 else _escape(text)))
        if combined is None:
            combined = codes
        else:
            # Re-factorising after each column keeps the folded code below rows * uniques.
            ok = (combined >= 0) & (codes >= 0)
            folded = np.full(len(codes), -1, dtype=np.int64)
            folded[ok] = pd.factorize(combined[ok] * max(len(uniques), 1) + codes[ok])[0]
            combined = folded
    assert combined is not None
    present = combined >= 0
    n_keys = int(combined.max()) + 1 if present.any() else 0
    first = np.empty(n_keys, dtype=np.int64)
    rows = np.flatnonzero(present)
    # Any row of a code will do: all of them hold the same values.
    first[combined[rows]] = rows
    keys: pd.Series | None = None
    for codes, text in parts:
        piece = text.iloc[codes[first]].reset_index(drop=True) if n_keys else pd.Series([], dtype=object)
        keys = piece if keys is None else keys + "|" + piece
    assert keys is not None
    return combined, keys


def _lookup(table_keys: pd.Index | ExtensionArray | np.ndarray, keys: pd.Series) -> np.ndarray:
    """Code of each key in the table's distinct keys (-1: the table never saw it)."""
    n = len(table_keys)
    # One factorisation of both sides: distinct table keys come first, so they keep codes
    # 0..n-1 (cheaper than Index.get_indexer, which re-checks uniqueness).
    both = pd.concat([_as_text(table_keys), keys], ignore_index=True)
    codes = pd.factorize(both, use_na_sentinel=True)[0][n:].astype(np.int64)
    codes[codes >= n] = -1
    return codes


def _time_array(series: pd.Series, what: str) -> tuple[np.ndarray, np.ndarray]:
    """int64 values and a not-null mask of a ms time column."""
    present = series.notna().to_numpy()
    if not (pd.api.types.is_integer_dtype(series.dtype) or (pd.api.types.is_float_dtype(series.dtype))):
        raise TypeError(f"{what}: expected integer epoch milliseconds, got dtype {series.dtype}")
    values = series.to_numpy(dtype=np.float64 if pd.api.types.is_float_dtype(series.dtype) else np.int64,
                             na_value=0)
    return values.astype(np.int64, copy=False), present


def _take(column: pd.Series, index: np.ndarray, hit: np.ndarray) -> np.ndarray | ExtensionArray:
    """``column``'s values at ``index`` where ``hit``, the dtype's null elsewhere."""
    values = column.array
    if not isinstance(column.dtype, np.dtype):
        return values.take(np.where(hit, index, -1), allow_fill=True)
    raw = column.to_numpy()
    taken = raw[np.where(hit, index, 0)] if len(raw) else np.zeros(len(index), dtype=raw.dtype)
    kind = column.dtype.kind
    if kind in "iu":
        return pd.arrays.IntegerArray(taken.astype(np.int64, copy=False), ~hit)
    if kind == "b":
        return pd.arrays.BooleanArray(taken, ~hit)
    if kind in "fc":
        taken[~hit] = np.nan
        return taken
    if kind in "mM":
        taken[~hit] = np.datetime64("NaT") if kind == "M" else np.timedelta64("NaT")
        return taken
    taken = taken.astype(object)
    taken[~hit] = None
    return taken


def _newest_per_group(order: np.ndarray, starts: np.ndarray, created: np.ndarray | None) -> np.ndarray:
    """Per group of equal sort keys (rows ``order[starts[g]:starts[g+1]]``): the row with the
    newest created time, the last in input order among equal ones."""
    sizes = np.diff(np.append(starts, len(order)))
    candidates = order
    if created is not None:
        created_sorted = created[order]
        newest = np.repeat(np.maximum.reduceat(created_sorted, starts), sizes)
        candidates = np.where(created_sorted == newest, order, -1)
    return np.maximum.reduceat(candidates, starts)


def _positions(
    table_codes: np.ndarray, table_time: np.ndarray, table_created: np.ndarray | None,
    example_codes: np.ndarray, example_time: np.ndarray, ttl_ms: int | None,
) -> np.ndarray:
    """For each example, the table row (index into the table arrays) it gets, or -1."""
    n_codes = int(table_codes.max()) + 1 if len(table_codes) else 0
    result = np.full(len(example_codes), -1, dtype=np.int64)
    if n_codes == 0 or len(example_codes) == 0:
        return result
    t_min, t_max = int(table_time.min()), int(table_time.max())
    span = t_max - t_min + 1
    if t_min > _INT64_MIN and n_codes * span + span < _INT64_MAX:
        # Examples before every feature time map to -1 (lands in the previous key's block,
        # rejected by the code check below); after every feature time, to the last slot.
        rel_table = table_time - t_min
        rel_examples = np.clip(example_time, t_min - 1, t_max) - t_min
    else:
        # code * time span would overflow int64: rank times instead (same order, small range).
        times = np.unique(np.concatenate([table_time, example_time]))
        span = len(times)
        rel_table = np.searchsorted(times, table_time)
        rel_examples = np.searchsorted(times, example_time)
    sort_key = table_codes * span + rel_table
    # Unstable sorts are several times faster than stable or lexsort ones; ties between
    # equal (key, feature time) are settled explicitly below.
    order = np.argsort(sort_key)
    sorted_key = sort_key[order]
    starts = np.flatnonzero(np.concatenate(([True], sorted_key[1:] != sorted_key[:-1])))
    if len(starts) == len(order):
        winners = order
    else:
        winners = _newest_per_group(order, starts, table_created)
    keys = sorted_key[starts]
    # Searching sorted needles walks the table once instead of jumping around it (~5x faster).
    needles = example_codes * span + rel_examples
    needle_order = np.argsort(needles)
    found = np.empty(len(needles), dtype=np.int64)
    found[needle_order] = np.searchsorted(keys, needles[needle_order], side="right") - 1
    hit = found >= 0
    row = winners[np.where(hit, found, 0)]
    hit &= table_codes[row] == example_codes
    if ttl_ms is not None:
        # t - ttl without wrapping below int64's minimum.
        lower = np.where(example_time < _INT64_MIN + ttl_ms, _INT64_MIN, example_time - ttl_ms)
        hit &= table_time[row] >= lower
    return np.where(hit, row, -1)


def point_in_time_join(
    examples: pd.DataFrame, tables: Sequence[FeatureTable], time_column: str = "event_time_ms",
) -> pd.DataFrame:
    """The examples (all rows, input order and index) with one column per table feature.

    See the module docstring for the rules. Raises ``ValueError`` when an output column
    would collide with an example column or another table's column.
    """
    if time_column not in examples.columns:
        raise ValueError(f"examples: missing time column {time_column!r}")
    out_names = [name for table in tables for name in table.output_columns()]
    clash = sorted({n for n in out_names if n in examples.columns or out_names.count(n) > 1})
    if clash:
        raise ValueError(f"point_in_time_join: duplicate output column(s) {', '.join(clash)}")
    ex_time, ex_present = _time_array(examples[time_column], f"examples.{time_column}")
    keys_by_entity: dict[tuple[str, ...], tuple[np.ndarray, pd.Series]] = {}
    added: dict[str, np.ndarray | ExtensionArray] = {}
    for table in tables:
        if table.entity_columns not in keys_by_entity:
            keys_by_entity[table.entity_columns] = example_keys(examples, table.entity_columns)
        combo_codes, combo_keys = keys_by_entity[table.entity_columns]
        frame = table.frame
        t_codes, t_uniques = pd.factorize(frame[table.key_column], use_na_sentinel=True)
        f_time, f_present = _time_array(frame[table.time_column], f"{table.name}.{table.time_column}")
        keep = np.flatnonzero((t_codes >= 0) & f_present)
        created = None
        if table.created_column is not None:
            c_values, c_present = _time_array(frame[table.created_column], f"{table.name}.{table.created_column}")
            created = np.where(c_present, c_values, _INT64_MIN)[keep]  # unknown creation: oldest
        to_table = _lookup(t_uniques, combo_keys)
        ex_codes = np.where(combo_codes >= 0, to_table[np.maximum(combo_codes, 0)] if len(to_table) else -1, -1)
        usable = np.flatnonzero((ex_codes >= 0) & ex_present)
        rows = np.full(len(examples), -1, dtype=np.int64)
        found = _positions(t_codes[keep].astype(np.int64), f_time[keep], created,
                           ex_codes[usable], ex_time[usable], table.ttl_ms)
        rows[usable] = np.where(found >= 0, keep[np.maximum(found, 0)] if len(keep) else -1, -1)
        hit = rows >= 0
        for feature, name in zip(table.features, table.output_columns()):
            added[name] = _take(frame[feature], rows, hit)
    if not added:
        return examples.copy()
    # Positional concat (no index alignment: duplicate index labels are allowed), then the
    # examples' own index back.
    joined = pd.concat([examples.reset_index(drop=True), pd.DataFrame(added)], axis=1)
    joined.index = examples.index
    return joined


__all__ = ["FeatureTable", "example_keys", "point_in_time_join"]
