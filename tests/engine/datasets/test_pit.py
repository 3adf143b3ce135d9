"""point_in_time_join against independent oracles: pandas.merge_asof and a per-row brute force."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd
import pytest

from engine.datasets.pit import FeatureTable, example_keys, point_in_time_join
from engine.features.keys import composite_key

T0 = 1_700_000_000_000
STEP = 60_000


def _null(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) or v is pd.NaT


def _norm(v: Any) -> Any:
    """One comparable Python value per cell: None for every kind of null, floats for numbers."""
    if _null(v):
        return None
    if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
        return float(v)
    return v


def _cells(frame: pd.DataFrame, columns: Sequence[str]) -> list[list[Any]]:
    return [[_norm(v) for v in frame[c].tolist()] for c in columns]


def _keys_per_row(examples: pd.DataFrame, entity_columns: Sequence[str]) -> list[str | None]:
    rows = examples[list(entity_columns)].itertuples(index=False, name=None)
    return [None if any(_null(v) for v in r) else composite_key([str(v) for v in r]) for r in rows]


def merge_asof_oracle(examples: pd.DataFrame, table: FeatureTable, time_column: str = "event_time_ms") -> pd.DataFrame:
    """Independent oracle: merge_asof by key over the table sorted by (time, created, input position).

    merge_asof takes the last right row among equal ``on`` values in sorted order, so sorting by
    created time then input position makes it pick the newest created, then the last input row.
    TTL is applied afterwards on the matched feature time.
    """
    f = table.frame
    left = examples.assign(__key=_keys_per_row(examples, table.entity_columns), __row=np.arange(len(examples)))
    left = left[left["__key"].notna()].sort_values(time_column, kind="stable")
    right = f.assign(__pos=np.arange(len(f)), __ft=f[table.time_column].astype("int64"))
    right = right[right[table.key_column].notna()]
    sort_by = ["__ft"] + ([table.created_column] if table.created_column else []) + ["__pos"]
    right = right.sort_values(sort_by, kind="stable")[[table.key_column, "__ft", *table.features]]
    right = right.rename(columns={table.key_column: "__rkey"})
    left[time_column] = left[time_column].astype("int64")
    merged = pd.merge_asof(left, right, left_on=time_column, right_on="__ft", left_by="__key", right_by="__rkey",
                           direction="backward", allow_exact_matches=True)
    if table.ttl_ms is not None:
        expired = merged["__ft"] < merged[time_column] - table.ttl_ms
        for feat in table.features:
            merged[feat] = merged[feat].astype(object).where(~expired, None)
    out = pd.DataFrame({"__row": np.arange(len(examples))})
    out = out.merge(merged[["__row", *table.features]], on="__row", how="left")
    return out.rename(columns={feat: f"{table.name}.{feat}" for feat in table.features})


def brute_force(examples: pd.DataFrame, table: FeatureTable, time_column: str = "event_time_ms") -> dict[str, list[Any]]:
    """Per-row oracle straight from the rules."""
    f = table.frame
    keys = _keys_per_row(examples, table.entity_columns)
    records = f.to_dict("records")
    out: dict[str, list[Any]] = {name: [] for name in table.output_columns()}
    for key, t in zip(keys, examples[time_column].tolist()):
        best: tuple[Any, ...] | None = None
        for pos, r in enumerate(records):
            ft = r[table.time_column]
            if key is None or _null(t) or _null(ft) or r[table.key_column] != key or int(ft) > int(t):
                continue
            if table.ttl_ms is not None and int(ft) < int(t) - table.ttl_ms:
                continue
            created = r[table.created_column] if table.created_column else 0
            created = -math.inf if _null(created) else int(created)
            rank = (int(ft), created, pos)
            if best is None or rank > best[0]:
                best = (rank, r)
        for feat, name in zip(table.features, table.output_columns()):
            out[name].append(None if best is None else _norm(best[1][feat]))
    return out


def trap_data(seed: int, n_entities: int = 40, rows_per_entity: int = 6, ttl_ms: int | None = 5 * STEP,
              composite: bool = False) -> tuple[pd.DataFrame, FeatureTable]:
    """Examples and one feature table, full of the cases that break naive joins."""
    rng = np.random.default_rng(seed)
    users = np.array([f"u{i}" for i in range(n_entities - 4)] + ["a|b", "x%7Cy", "%", "|"], dtype=object)
    items = np.array(["i|1", "i%2", "i3"], dtype=object)
    if composite:
        pairs = [(u, i) for u in users for i in items]
        ent_u = np.array([p[0] for p in pairs], dtype=object)
        ent_i = np.array([p[1] for p in pairs], dtype=object)
        keys = np.array([composite_key([u, i]) for u, i in pairs], dtype=object)
    else:
        ent_u, ent_i, keys = users, None, users
    # A fifth of the entities have no feature rows at all.
    featured = rng.random(len(keys)) < 0.8
    kidx = np.repeat(np.flatnonzero(featured), rows_per_entity)
    n = len(kidx)
    ft = T0 + rng.integers(0, 30, n) * STEP  # coarse grid: many equal feature times per key
    created = ft + rng.integers(0, 3, n) * 1000  # equal created times too: input order decides
    frame = pd.DataFrame({
        "entity": keys[kidx],
        "window_end_ms": ft,
        "created_ms": created,
        "count": rng.integers(0, 100, n),
        "score": np.where(rng.random(n) < 0.15, np.nan, rng.random(n)),  # null newest values
        "last": pd.array(np.where(rng.random(n) < 0.15, None, rng.choice(["x", "y", "z"], n)), dtype=object),
    })
    frame = frame.iloc[rng.permutation(n)].reset_index(drop=True)  # out-of-order arrival
    # Example times: random ones, plus each feature row's TTL boundary -1/0/+1 ms and its own time -1/0.
    times = list(T0 + rng.integers(-3, 40, 3 * len(keys)) * STEP + rng.integers(-1, 2, 3 * len(keys)))
    who = list(rng.integers(0, len(keys), len(times)))
    boundary = ttl_ms if ttl_ms is not None else 7 * STEP
    for r in range(n):
        k = int(kidx[np.flatnonzero(keys[kidx] == frame["entity"][r])[0]])
        for d in (boundary - 1, boundary, boundary + 1, 0, -1):
            times.append(int(frame["window_end_ms"][r]) + d)
            who.append(k)
    who_a = np.array(who)
    examples = pd.DataFrame({"user_id": ent_u[who_a], "event_time_ms": np.array(times, dtype=np.int64)})
    if composite:
        examples.insert(1, "item_id", ent_i[who_a])  # type: ignore[index]
    examples["label"] = rng.integers(0, 2, len(examples))
    dup = rng.integers(0, len(examples), len(examples) // 10)  # duplicate example rows
    examples = pd.concat([examples, examples.iloc[dup]])
    examples = examples.iloc[rng.permutation(len(examples))]
    entity_columns = ("user_id", "item_id") if composite else ("user_id",)
    table = FeatureTable("v", frame, entity_columns, ("count", "score", "last"), ttl_ms=ttl_ms)
    return examples, table


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("composite", [False, True])
@pytest.mark.parametrize("ttl_ms", [5 * STEP, None, 0])
def test_matches_merge_asof_oracle(seed: int, composite: bool, ttl_ms: int | None) -> None:
    examples, table = trap_data(seed, ttl_ms=ttl_ms, composite=composite)
    got = point_in_time_join(examples, [table])
    want = merge_asof_oracle(examples, table)
    assert len(got) == len(examples)
    assert got.index.equals(examples.index)  # input order and (duplicate) labels kept
    pd.testing.assert_frame_equal(got[list(examples.columns)], examples)
    cols = table.output_columns()
    assert _cells(got, cols) == _cells(want, cols)
    # The traps are really there: hits, misses, and nulls inside hits.
    hits = got["v.count"].notna()
    assert hits.any() and (~hits).any()
    assert (hits & got["v.score"].isna()).any()


@pytest.mark.parametrize("composite", [False, True])
def test_matches_brute_force(composite: bool) -> None:
    examples, table = trap_data(5, n_entities=8, rows_per_entity=4, composite=composite)
    got = point_in_time_join(examples, [table])
    want = brute_force(examples, table)
    assert {c: [_norm(v) for v in got[c].tolist()] for c in want} == want


def test_ttl_boundaries_are_inclusive_and_null_newest_stays_null() -> None:
    frame = pd.DataFrame({
        "entity": ["u", "u", "u", "u"],
        "window_end_ms": [100, 200, 200, 300],
        "created_ms": [1, 5, 9, 1],
        "x": [1.0, 2.0, np.nan, 4.0],
    })
    table = FeatureTable("t", frame, ("user_id",), ("x",), ttl_ms=50)
    ex = pd.DataFrame({"user_id": ["u"] * 7, "event_time_ms": [99, 100, 150, 151, 200, 250, 251]})
    got = point_in_time_join(ex, [table])["t.x"].tolist()
    # 200 has two rows: the newer created (9) wins and its null is kept, not the older 2.0.
    expected = [None, 1.0, 1.0, None, None, None, None]
    assert [_norm(v) for v in got] == expected


def test_equal_created_last_input_row_wins() -> None:
    frame = pd.DataFrame({"entity": ["u", "u", "u"], "window_end_ms": [10, 10, 10],
                          "created_ms": [5, 5, 4], "x": [1, 2, 3]})
    got = point_in_time_join(pd.DataFrame({"user_id": ["u"], "event_time_ms": [10]}),
                             [FeatureTable("t", frame, ("user_id",), ("x",))])
    assert got["t.x"].tolist() == [2]


def test_dtypes_and_empty_tables() -> None:
    ex = pd.DataFrame({"user_id": ["a", "b"], "event_time_ms": [10, 10]}, index=[7, 7])
    frame = pd.DataFrame({"entity": ["a"], "window_end_ms": [5], "created_ms": [5], "n": [3],
                          "f": [0.5], "s": ["q"], "o": pd.Series([("q",)], dtype=object), "flag": [True]})
    empty = frame.iloc[0:0]
    got = point_in_time_join(ex, [FeatureTable("t", frame, ("user_id",), ("n", "f", "s", "o", "flag")),
                                  FeatureTable("e", empty, ("user_id",), ("n", "f"))])
    assert str(got["t.n"].dtype) == "Int64" and got["t.n"].tolist()[0] == 3 and got["t.n"].isna().tolist() == [False, True]
    assert got["t.f"].dtype == np.float64
    assert got["t.s"].dtype == frame["s"].dtype and got["t.s"].isna().tolist() == [False, True]
    assert got["t.o"].dtype == object and got["t.o"].tolist() == [("q",), None]
    assert str(got["t.flag"].dtype) == "boolean"
    assert got["e.n"].isna().all() and got["e.f"].isna().all()
    assert list(got.index) == [7, 7]
    assert point_in_time_join(ex.iloc[0:0], [FeatureTable("t", frame, ("user_id",), ("n",))]).empty


def test_overflowing_time_span_falls_back_correctly() -> None:
    big = 2**62
    frame = pd.DataFrame({"entity": ["a", "b", "a", "c", "a"], "window_end_ms": [-big, 0, big, 5, 10],
                          "created_ms": [0, 0, 0, 0, 0], "x": [1, 2, 3, 4, 5]})
    ex = pd.DataFrame({"user_id": ["a", "a", "a", "b", "a", "c"],
                       "event_time_ms": [-big - 1, -big, big - 1, 2**63 - 1, big, -2**63]})
    for ttl in (None, 2**62):
        table = FeatureTable("t", frame, ("user_id",), ("x",), ttl_ms=ttl)
        got = [_norm(v) for v in point_in_time_join(ex, [table])["t.x"].tolist()]
        assert got == brute_force(ex, table)["t.x"]


def test_numeric_entity_values_and_null_keys() -> None:
    frame = pd.DataFrame({"entity": ["42|7", "42"], "window_end_ms": [1, 1], "created_ms": [1, 1], "x": [1, 2]})
    ex = pd.DataFrame({"user_id": pd.array([42, 42, None], dtype="Int64"), "item_id": [7, 8, 7],
                       "event_time_ms": [5, 5, 5]})
    got = point_in_time_join(ex, [FeatureTable("p", frame, ("user_id", "item_id"), ("x",)),
                                  FeatureTable("u", frame, ("user_id",), ("x",))])
    assert [_norm(v) for v in got["p.x"]] == [1.0, None, None]
    assert [_norm(v) for v in got["u.x"]] == [2.0, 2.0, None]


def test_example_keys_equal_composite_key() -> None:
    rng = np.random.default_rng(3)
    alphabet = np.array(list("ab|%7C"), dtype=object)
    u = ["".join(rng.choice(alphabet, 3)) for _ in range(200)]
    i = ["".join(rng.choice(alphabet, 2)) for _ in range(200)]
    codes, keys = example_keys(pd.DataFrame({"u": u, "i": i}), ["u", "i"])
    assert [keys[c] for c in codes] == [composite_key([a, b]) for a, b in zip(u, i)]
    assert len(set(keys)) == len(keys)


def test_errors_name_the_problem() -> None:
    frame = pd.DataFrame({"entity": ["a"], "window_end_ms": [5], "created_ms": [5], "x": [1]})
    with pytest.raises(ValueError, match="missing column"):
        FeatureTable("t", frame, ("user_id",), ("nope",))
    table = FeatureTable("t", frame, ("user_id",), ("x",))
    with pytest.raises(ValueError, match="duplicate output column"):
        point_in_time_join(pd.DataFrame({"user_id": ["a"], "event_time_ms": [1]}), [table, table])
    with pytest.raises(ValueError, match="entity column"):
        point_in_time_join(pd.DataFrame({"uid": ["a"], "event_time_ms": [1]}), [table])
    with pytest.raises(ValueError, match="event_time_ms"):
        point_in_time_join(pd.DataFrame({"user_id": ["a"]}), [table])


def test_benchmark_floor_agrees_on_multi_table_data() -> None:
    # The benchmark's merge_asof floor is a second, multi-table oracle; run_pit refuses to
    # time anything unless both joins agree.
    from benchmarks.offline import run_pit

    result = run_pit(rows=20_000, users=2_000, items=300, repeat=1)
    assert result["verified_equal"] and 0 < result["null_rate"] < 1


def test_worked_example_of_the_docs() -> None:
    # docs/datasets.md, "Worked example" (times in minutes, TTL 10).
    frame = pd.DataFrame({"entity": ["u1"] * 4, "window_end_ms": [5, 10, 10, 20], "created_ms": [6, 11, 12, 21],
                          "clicks_5m": [2.0, 3.0, np.nan, 8.0]})
    ex = pd.DataFrame({"user_id": ["u1"] * 6 + ["u2", "u1"], "event_time_ms": [4, 5, 12, 20, 30, 31, 12, 12]})
    got = point_in_time_join(ex, [FeatureTable("user", frame, ("user_id",), ("clicks_5m",), ttl_ms=10)])
    assert [_norm(v) for v in got["user.clicks_5m"]] == [None, 2.0, None, 8.0, 8.0, None, None, None]
