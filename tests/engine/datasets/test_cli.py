"""``rtml dataset build`` end to end through argparse, over files written like the dataflow writes them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import orjson
import pandas as pd
import pytest

from engine.datasets.build import DatasetManifest
from engine.datasets.cli import register
from engine.events.schemas import Interaction
from engine.events.simulator import Simulator, SimulatorConfig
from engine.features.offline import OfflineLogWriter
from engine.features.spec import default_views_path, load_views

T0 = 1_767_225_600_000
MIN = 60_000


def _run(argv: list[str], config: Path | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args((["--config", str(config)] if config else []) + argv)
    return int(args.fn(args))


@pytest.fixture()
def offline(tmp_path: Path) -> Path:
    views = {v.name: v for v in load_views(default_views_path())}
    root = tmp_path / "offline"
    rows = [{"entity": f"u{i % 5}", "window": "5m", "window_start_ms": T0 + k * 5 * MIN,
             "window_end_ms": T0 + (k + 1) * 5 * MIN, "clicks": k, "impressions": 10 + k}
            for i in range(5) for k in range(12)]
    OfflineLogWriter(root, views["user"], "w").write(rows, created_ms=T0)
    item = [{"entity": f"i{k % 3}", "window": "1h", "window_start_ms": T0 - 60 * MIN, "window_end_ms": T0,
             "clicks": k} for k in range(3)]
    OfflineLogWriter(root, views["item"], "w").write(item, created_ms=T0)
    return root


def test_build_from_examples_file(tmp_path: Path, offline: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ex = pd.DataFrame({"user_id": [f"u{i % 6}" for i in range(60)], "item_id": [f"i{i % 4}" for i in range(60)],
                       "event_time_ms": [T0 + i * MIN for i in range(60)], "label": [i % 3 == 0 for i in range(60)]})
    ex_path = tmp_path / "ex.jsonl"
    ex.to_json(ex_path, orient="records", lines=True)
    config = tmp_path / "rtml.yaml"
    config.write_text(f"pipeline:\n  offline_dir: {offline}\n")
    out = tmp_path / "ds"
    rc = _run(["dataset", "build", "--examples", str(ex_path), "--out", str(out), "--features",
               "user.clicks_5m,item.clicks_1h", "--ttl", "user=10m", "--split-at", f"{T0 + 30 * MIN},{T0 + 45 * MIN}",
               "--json"], config)
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    manifest = DatasetManifest.load(out)
    assert printed == manifest.to_dict()
    assert [(f.name, f.ttl_ms) for f in manifest.features] == [("user.clicks_5m", 10 * MIN),
                                                               ("item.clicks_1h", 2 * 24 * 60 * MIN)]
    assert [s.rows for s in manifest.splits.values()] == [30, 15, 15]
    assert manifest.split == {"method": "cuts", "fractions": None, "cuts": [T0 + 30 * MIN, T0 + 45 * MIN]}
    train = pd.read_parquet(out / "train.parquet")
    # u0 at T0+7m: its newest closed 5m window ended at T0+5m with clicks 0 ... at T0+12m, clicks 1.
    by_time = train.set_index("event_time_ms")
    assert by_time.loc[T0 + 12 * MIN, "user.clicks_5m"] == 1
    assert pd.isna(by_time.loc[T0 + 5 * MIN, "user.clicks_5m"])  # u5 has no features
    assert train["item.clicks_1h"].notna().sum() == train["item_id"].isin(["i0", "i1", "i2"]).sum()
    # No window closed after T0+60m: beyond the 10m TTL the user features are null.
    test = pd.read_parquet(out / "test.parquet")
    assert test.loc[test["event_time_ms"] > T0 + 70 * MIN, "user.clicks_5m"].isna().all()


def test_build_from_events(tmp_path: Path, offline: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sim = Simulator(SimulatorConfig(n_users=5, n_items=3, rate=20.0, start_time_ms=T0, seed=2,
                                    new_item_every_s=None))
    events = [e for e in sim.events(duration_s=600) if isinstance(e, Interaction)]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(e.to_dict()) for e in events) + b"\n")
    out = tmp_path / "ds"
    rc = _run(["dataset", "build", "--examples", str(path), "--from-events", "--label-window", "5s",
               "--out", str(out), "--offline-dir", str(offline), "--features", "user.clicks_5m"])
    assert rc == 0
    assert "examples" in capsys.readouterr().out
    manifest = DatasetManifest.load(out)
    impressions = sum(e.event_type == "impression" for e in events)
    assert manifest.rows == impressions
    assert manifest.source["examples_from_events"] == {"label_window_ms": 5000, "positive_types": ["click"]}
    assert 0 < sum(s.positive_rate * s.rows for s in manifest.splits.values() if s.rows) < impressions
    assert manifest.features[0].null_rate is not None and manifest.features[0].null_rate < 1.0


def test_bad_input_exits_2(tmp_path: Path, offline: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ex_path = tmp_path / "ex.csv"
    ex_path.write_text("user_id,event_time_ms,label\nu1,5,1\n")
    rc = _run(["dataset", "build", "--examples", str(ex_path), "--out", str(tmp_path / "o"),
               "--offline-dir", str(offline), "--features", "user.nope_5m"])
    assert rc == 2 and "user.nope_5m" in capsys.readouterr().out
    rc = _run(["dataset", "build", "--examples", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "o"),
               "--offline-dir", str(offline)])
    assert rc == 2
    with pytest.raises(SystemExit):
        _run(["dataset", "build", "--examples", "x", "--out", "o", "--ttl", "user"])
