"""Feature tables read from files written by the features dataflow's OfflineLogWriter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from engine.datasets.offline import offline_tables, select_features, source_files
from engine.datasets.pit import point_in_time_join
from engine.features.keys import composite_key
from engine.features.offline import OfflineLogWriter
from engine.features.spec import load_views

T0 = 1_767_225_600_000
MIN = 60_000

VIEWS = load_views("""
views:
  - name: user
    entity: [user_id]
    ttl: 10m
    windows: {5m: 5m, 1h: {size: 1h, slide: 5m}}
    features:
      - {name: clicks, agg: count, where: {event_type: click}}
      - {name: last_item, agg: last, field: item_id, dtype: str, windows: [5m]}
  - name: user_item
    entity: [user_id, item_id]
    ttl: 1h
    windows: {1h: 1h}
    features:
      - {name: clicks, agg: count, where: {event_type: click}}
""")
USER, USER_ITEM = VIEWS


def _row(entity: str, window: str, size_ms: int, end_ms: int, **values: Any) -> dict[str, Any]:
    return {"entity": entity, "window": window, "window_start_ms": end_ms - size_ms, "window_end_ms": end_ms, **values}


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    user = OfflineLogWriter(tmp_path, USER, "w0")
    user.write([_row("u1", "5m", 5 * MIN, T0 + 5 * MIN, clicks=2, last_item="i1"),
                _row("u1", "5m", 5 * MIN, T0 + 10 * MIN, clicks=3, last_item=None),
                _row("u1", "1h", 60 * MIN, T0 + 60 * MIN, clicks=7)], created_ms=100)
    # A replay after a crash writes the 10m window again (later created time, same value),
    # and a late correction is logged for the 5m window with a newer created time.
    user.write([_row("u1", "5m", 5 * MIN, T0 + 10 * MIN, clicks=3, last_item=None),
                _row("u1", "5m", 5 * MIN, T0 + 5 * MIN, clicks=4, last_item="i9")], created_ms=200)
    pair = OfflineLogWriter(tmp_path, USER_ITEM, "w1")
    pair.write([_row(composite_key(["u|1", "i%2"]), "1h", 60 * MIN, T0 + 60 * MIN, clicks=5)], created_ms=100)
    return tmp_path


def test_tables_per_view_and_window_named_like_serving(store: Path) -> None:
    tables = offline_tables(store, VIEWS)
    assert [(t.name, t.output_columns(), t.ttl_ms, t.entity_columns) for t in tables] == [
        ("user", ["user.clicks_5m", "user.last_item_5m"], 10 * MIN, ("user_id",)),
        ("user", ["user.clicks_1h"], 10 * MIN, ("user_id",)),
        ("user_item", ["user_item.clicks_1h"], 60 * MIN, ("user_id", "item_id")),
    ]


def test_join_over_the_offline_log(store: Path) -> None:
    ex = pd.DataFrame({
        "user_id": ["u1", "u1", "u1", "u1", "u|1", "u1"],
        "item_id": ["i1", "i1", "i1", "i1", "i%2", "i%2"],
        "event_time_ms": [T0 + 7 * MIN, T0 + 10 * MIN, T0 + 21 * MIN, T0 + 60 * MIN, T0 + 61 * MIN, T0 + 61 * MIN],
    })
    got = point_in_time_join(ex, offline_tables(store, VIEWS))
    na = None
    assert [None if pd.isna(v) else v for v in got["user.clicks_5m"]] == [4, 3, na, na, na, na]
    # At T0+10m the newest window's last_item is null: it stays null (no fallback to "i9").
    assert [None if pd.isna(v) else v for v in got["user.last_item_5m"]] == ["i9", na, na, na, na, na]
    assert [None if pd.isna(v) else v for v in got["user.clicks_1h"]] == [na, na, na, 7, na, 7]
    assert [None if pd.isna(v) else v for v in got["user_item.clicks_1h"]] == [na, na, na, na, 5, na]
    # A longer TTL for the user view reaches the T0+10m window from T0+21m.
    longer = point_in_time_join(ex, offline_tables(store, VIEWS, ["user.clicks_5m"], ttl_ms={"user": 11 * MIN}))
    assert list(longer.columns[-1:]) == ["user.clicks_5m"] and longer["user.clicks_5m"].iloc[2] == 3


def test_feature_selection_and_errors(store: Path) -> None:
    assert select_features(VIEWS, ["user_item.clicks_1h", "user.clicks_5m"]) == {
        ("user_item", "1h"): ["clicks_1h"], ("user", "5m"): ["clicks_5m"]}
    with pytest.raises(ValueError, match="user.clicks_2h"):
        offline_tables(store, VIEWS, ["user.clicks_2h"])
    with pytest.raises(ValueError, match="last_item_1h"):
        select_features(VIEWS, ["user.last_item_1h"])  # last_item is only computed over 5m
    with pytest.raises(ValueError, match="nope"):
        offline_tables(store, VIEWS, ttl_ms={"nope": 1})


def test_empty_store_gives_empty_tables(tmp_path: Path) -> None:
    tables = offline_tables(tmp_path, VIEWS, ["user.clicks_5m"])
    got = point_in_time_join(pd.DataFrame({"user_id": ["u1"], "event_time_ms": [T0]}), tables)
    assert got["user.clicks_5m"].isna().all()


def test_source_files_digest_changes_with_files(store: Path) -> None:
    before = source_files(store, "user")
    assert before.files == 3 and before.bytes > 0  # two writes, the first over two hours
    OfflineLogWriter(store, USER, "w9").write([_row("u2", "5m", 5 * MIN, T0 + 5 * MIN, clicks=1)], created_ms=1)
    after = source_files(store, "user")
    assert after.files == 4 and after.digest != before.digest
    assert source_files(store, "missing").files == 0
