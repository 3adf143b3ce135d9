"""build_dataset: files, manifest, atomic rebuilds; build_from_offline_store over a real log."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.config import load_config
from engine.datasets.build import DatasetManifest, build_dataset, build_from_offline_store
from engine.datasets.pit import FeatureTable, point_in_time_join
from engine.datasets.splits import SplitSpec
from engine.features.offline import OfflineLogWriter
from engine.features.spec import default_views_path, load_views

T0 = 1_767_225_600_000


def _data(n: int = 500, seed: int = 0) -> tuple[pd.DataFrame, list[FeatureTable]]:
    rng = np.random.default_rng(seed)
    users = np.array([f"u{i}" for i in range(20)], dtype=object)
    ex = pd.DataFrame({"user_id": users[rng.integers(0, 20, n)], "event_time_ms": T0 + rng.integers(0, 100, n) * 1000,
                       "label": rng.integers(0, 2, n), "request_id": [f"r{i}" for i in range(n)]})
    m = 200
    feats = pd.DataFrame({"entity": users[rng.integers(0, 15, m)], "window_end_ms": T0 + rng.integers(0, 100, m) * 1000,
                          "created_ms": T0, "clicks": rng.integers(0, 9, m), "ctr": rng.random(m)})
    return ex, [FeatureTable("user", feats, ("user_id",), ("clicks", "ctr"), ttl_ms=20_000)]


def test_files_and_manifest(tmp_path: Path) -> None:
    ex, tables = _data()
    m = build_dataset(ex, tables, tmp_path, SplitSpec((0.6, 0.2, 0.2)), source={"examples": "mem"})
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk == m.to_dict()
    assert DatasetManifest.load(tmp_path / "manifest.json").to_dict() == on_disk
    assert on_disk["format_version"] == 1 and on_disk["source"] == {"examples": "mem"}
    assert [f["name"] for f in on_disk["features"]] == ["user.clicks", "user.ctr"]
    assert [f["dtype"] for f in on_disk["features"]] == ["int", "float"]
    assert on_disk["entity_columns"] == ["user_id"] and on_disk["label_column"] == "label"
    expected = point_in_time_join(ex, tables)
    parts = [pd.read_parquet(tmp_path / f"{name}.parquet") for name in ("train", "validation", "test")]
    both = pd.concat(parts)
    assert len(both) == len(ex) == on_disk["rows"]
    # Every example once, with the joined values.
    merged = both.set_index("request_id").loc[expected["request_id"]]
    assert np.array_equal(merged["user.clicks"].to_numpy(dtype=float, na_value=np.nan),
                          expected["user.clicks"].to_numpy(dtype=float, na_value=np.nan), equal_nan=True)
    assert list(parts[0].columns) == ["user_id", "event_time_ms", "label", "request_id", "user.clicks", "user.ctr"]
    for f in on_disk["features"]:
        assert f["null_rate"] == pytest.approx(expected[f["name"]].isna().mean())
        assert f["ttl_ms"] == 20_000 and f["table"] == "user"
    prev_max = None
    for name, part in zip(("train", "validation", "test"), parts):
        info = on_disk["splits"][name]
        assert info["rows"] == len(part)
        assert info["sha256"] == hashlib.sha256((tmp_path / info["file"]).read_bytes()).hexdigest()
        assert info["time_range"] == {"min_ms": int(part["event_time_ms"].min()), "max_ms": int(part["event_time_ms"].max())}
        assert info["positive_rate"] == pytest.approx(part["label"].mean())
        if prev_max is not None:
            assert prev_max < info["time_range"]["min_ms"]
        prev_max = info["time_range"]["max_ms"]
    assert on_disk["time_range"] == {"min_ms": int(ex["event_time_ms"].min()), "max_ms": int(ex["event_time_ms"].max())}
    c1, c2 = on_disk["split"]["cuts"]
    assert on_disk["splits"]["validation"]["time_range"]["min_ms"] >= c1 > on_disk["splits"]["train"]["time_range"]["max_ms"]
    assert c2 <= on_disk["splits"]["test"]["time_range"]["min_ms"]


def test_rebuild_replaces_files_and_leaves_no_temporaries(tmp_path: Path) -> None:
    ex, tables = _data()
    first = build_dataset(ex, tables, tmp_path)
    second = build_dataset(ex.iloc[:100], tables, tmp_path, SplitSpec(cuts=(T0, T0 + 50_000)))
    assert second.rows == 100 and sum(s.rows for s in second.splits.values()) == 100
    assert second.splits["train"].rows == 0 and second.splits["train"].positive_rate is None
    assert second.splits["test"].sha256 != first.splits["test"].sha256
    assert pd.read_parquet(tmp_path / "train.parquet").empty
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "test.parquet", "train.parquet",
                                                          "validation.parquet"]


def test_manifest_version_is_checked(tmp_path: Path) -> None:
    ex, tables = _data(50)
    build_dataset(ex, tables, tmp_path)
    data = json.loads((tmp_path / "manifest.json").read_text())
    data["format_version"] = 99
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="format_version"):
        DatasetManifest.load(tmp_path)


def test_build_from_offline_store(tmp_path: Path) -> None:
    views = load_views(default_views_path())
    user = next(v for v in views if v.name == "user")
    OfflineLogWriter(tmp_path / "off", user, "w").write(
        [{"entity": "u1", "window": "1h", "window_start_ms": T0 - 3_600_000, "window_end_ms": T0, "clicks": 4,
          "ctr": 0.5}], created_ms=T0)
    ex_path = tmp_path / "ex.parquet"
    pd.DataFrame({"user_id": ["u1", "u1", "u2"], "event_time_ms": [T0 - 1, T0 + 5, T0 + 5],
                  "label": [1, 0, 1]}).to_parquet(ex_path)
    cfg = load_config(env={}, overrides={"data_dir": str(tmp_path)})
    m = build_from_offline_store(cfg, ex_path, tmp_path / "ds", ["user.clicks_1h", "user.ctr_1h"],
                                 SplitSpec((1.0, 0.0, 0.0)), offline_dir=tmp_path / "off")
    assert m.feature_names == ["user.clicks_1h", "user.ctr_1h"]
    assert m.source["examples"] == str(ex_path) and m.source["views"]["user"]["files"] == 1
    train = pd.read_parquet(tmp_path / "ds" / "train.parquet")
    assert [None if pd.isna(v) else v for v in train["user.clicks_1h"]] == [None, 4, None]
    # Default offline_dir comes from the config (data_dir/offline): empty there, so all null.
    m2 = build_from_offline_store(cfg, ex_path, tmp_path / "ds2", ["user.clicks_1h"])
    assert m2.features[0].null_rate == 1.0 and m2.source["offline_dir"] == str(tmp_path / "offline")
