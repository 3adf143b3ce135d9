"""The shared input builder gives exactly the arrays training used (ClickData.from_frame)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pandas as pd
import pytest

from engine.recommend.synthetic import ITEM_COLUMNS, USER_COLUMNS, build_world, layouts
from engine.training.data import ClickData
from serving.features import FeatureConfigError, default_feature_views
from serving.recommend.inputs import FeaturePlan, InputLayout
from serving.recommend.store import FunnelStore, MemoryHashes


@pytest.mark.parametrize("null_indicators", [False, True])
def test_columns_give_the_training_arrays(null_indicators: bool) -> None:
    frame = pd.DataFrame({
        "user.clicks_1h": [1.0, None, 3.5, 0.0],
        "item.ctr_1h": [0.1, 0.2, np.nan, 0.4],
        "user_id": ["u1", "u2", None, "u1"],
        "item_id": ["i1", "i9", "i1", None],
        "label": [1, 0, 0, 1],
    })
    layout = InputLayout(("user.clicks_1h", "item.ctr_1h"), ("user_id", "item_id"), 1000, null_indicators)
    want = ClickData.from_frame(frame, list(layout.dense), list(layout.sparse), 1000, null_indicators=null_indicators)
    columns = {c: [None if pd.isna(v) else v for v in frame[c]] for c in layout.sources}  # as serving reads them
    dense, sparse = layout.arrays(columns)
    np.testing.assert_array_equal(dense, want.dense)
    np.testing.assert_array_equal(sparse, want.sparse)
    again = layout.arrays(columns)[1]  # the second time from the bucket cache
    np.testing.assert_array_equal(again, want.sparse)


def test_layouts_from_registry_metadata() -> None:
    tower, ranker = layouts()
    user = InputLayout.from_metadata({"tower": "user", "features": tower})
    assert user.dense == USER_COLUMNS and user.sparse == ("user_id",)
    assert InputLayout.from_metadata({"features": ranker}).sparse == ("user_id", "item_id")
    with pytest.raises(FeatureConfigError, match="no input layout"):
        InputLayout.from_metadata({"features": None})


def test_funnel_reads_build_the_rows_training_saw() -> None:
    """Online hashes (Redis layout) -> FunnelStore -> arrays == ClickData.from_frame of the same rows."""
    rw = build_world(n_users=20, n_items=30, n_train=200, n_test=10)
    _, ranker = layouts()
    layout = InputLayout.from_features(ranker)
    now = int(time.time() * 1000)  # fresh hashes: within every view's TTL
    hashes = MemoryHashes(rw.hashes("rtml", now))
    plan = FeaturePlan.compile(layout.sources, default_feature_views())
    store = FunnelStore(hashes, plan, prefix="rtml")
    user, items = 3, [5, 0, 17, 29]
    frame = rw.frame(np.full(len(items), user), np.array(items), np.zeros(len(items)))
    want = ClickData.from_frame(frame, ranker["dense"], ranker["sparse"], ranker["buckets"])

    async def read() -> dict:
        u = await store.read_user(rw.users[user])
        c = await store.read_candidates(rw.users[user], [rw.items[i] for i in items])
        assert u.known
        cols = {s: [u.values[s]] * len(items) for s in USER_COLUMNS}
        cols.update({s: c.values[s] for s in ITEM_COLUMNS})
        cols["user_id"] = [rw.users[user]] * len(items)
        cols["item_id"] = [rw.items[i] for i in items]
        return cols

    dense, sparse = layout.arrays(asyncio.run(read()))
    np.testing.assert_allclose(dense, want.dense, rtol=0, atol=0)
    np.testing.assert_array_equal(sparse, want.sparse)


def test_plan_refuses_what_it_cannot_read() -> None:
    views = default_feature_views()
    with pytest.raises(FeatureConfigError, match="not in the server's feature specs"):
        FeaturePlan.compile(["nope.x"], views)
    with pytest.raises(FeatureConfigError, match="has no column"):
        FeaturePlan.compile(["user.nope_1h"], views)
    plan = FeaturePlan.compile(["user.clicks_1h", "item.ctr_1h", "user_item.clicks_1h", "user_id"], views)
    assert {s: p.level for s, p in plan.sources.items()} == {
        "user.clicks_1h": "user", "item.ctr_1h": "item", "user_item.clicks_1h": "pair", "user_id": "user"}
