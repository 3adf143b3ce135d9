"""Job process specs and recovery directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.config import load_config
from engine.runtime.jobs import LAYOUT_FILE, init_recovery, job_specs


def test_recovery_state_is_refused_under_another_layout(tmp_path: Path) -> None:
    directory = tmp_path / "recovery"
    init_recovery(directory, 1, {"processes": 1, "join_shards": 4})
    assert (directory / LAYOUT_FILE).exists() and any(directory.glob("part-*.sqlite3"))
    init_recovery(directory, 1, {"processes": 1, "join_shards": 4})  # the same settings resume
    with pytest.raises(RuntimeError, match="fresh recovery directory"):
        init_recovery(directory, 1, {"processes": 2, "join_shards": 4})


def test_the_learning_job_runs_as_many_processes_as_configured(tmp_path: Path) -> None:
    cfg = load_config(env={}, overrides={"data_dir": str(tmp_path), "kafka": {"bootstrap": "127.0.0.1:1"},
                                         "learning": {"processes": 3, "recovery_dir": str(tmp_path / "r")}})
    specs = job_specs(cfg, "learning")
    assert [s.env["RTML_PROCESS_INDEX"] for s in specs] == ["0", "1", "2"]  # type: ignore[index]
    assert all("-a" in s.argv for s in specs)


def test_features_recovery_records_its_layout_and_refuses_older_state(tmp_path: Path) -> None:
    from engine.runtime.jobs import features_layout

    cfg = load_config(env={}, overrides={"pipeline": {"recovery": True, "recovery_dir": str(tmp_path), "processes": 2}})
    job_specs(cfg, "features")
    assert json.loads((tmp_path / "features" / LAYOUT_FILE).read_text()) == features_layout(cfg)
    rescaled = cfg.model_copy(deep=True)
    rescaled.pipeline.processes = 3
    job_specs(rescaled, "features")  # shard keys do not depend on the process count: state carries over
    resharded = cfg.model_copy(deep=True)
    resharded.pipeline.shards_per_view = 16
    with pytest.raises(RuntimeError, match="shards_per_view"):
        job_specs(resharded, "features")
    (tmp_path / "features" / LAYOUT_FILE).unlink()  # state from before layouts were recorded
    with pytest.raises(RuntimeError, match="older rtml"):
        job_specs(cfg, "features")
