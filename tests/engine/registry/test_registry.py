"""ModelRegistry: versions, metadata, lineage, River snapshots, and what serving sees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from river import linear_model

from engine.learning.snapshots import publish_snapshot
from engine.registry.registry import METADATA_FILENAME, ModelRegistry, parse_ref
from serving.onnx_session import identity_model_bytes
from serving.repository import scan_repository


def test_register_writes_a_served_version_with_metadata(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    version = reg.register("ctr", identity_model_bytes(), {"kind": "deepfm", "metrics": {"auc": 0.7}},
                           extra_files={"variants/int8.onnx": b"int8"})
    info = reg.get("ctr", version)
    assert (info.name, info.version, info.backend) == ("ctr", "1", "onnx")
    assert info.files == ("metadata.json", "model.onnx", "variants/int8.onnx")
    meta = json.loads((tmp_path / "ctr" / "1" / METADATA_FILENAME).read_text())
    assert meta["format"] == "rtml-model/1" and meta["name"] == "ctr" and meta["version"] == "1"
    assert isinstance(meta["created_ms"], int) and meta["metrics"] == {"auc": 0.7}
    # Serving's scanner sees one ONNX version; metadata.json and variants/ do not confuse it.
    source = scan_repository(tmp_path)["ctr"].versions["1"]
    assert source.backend == "onnx" and source.model_path == tmp_path / "ctr" / "1" / "model.onnx"


def test_listing_latest_and_missing(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    assert reg.list_models() == [] and reg.latest("ctr") is None and reg.versions("ctr") == []
    for _ in range(3):
        reg.register("ctr", identity_model_bytes(), {})
    reg.register("cvr", identity_model_bytes(), {})
    (tmp_path / "ctr" / "10").mkdir()  # no model file (yet): not a version
    (tmp_path / "empty").mkdir()
    assert reg.list_models() == ["ctr", "cvr"]
    assert reg.versions("ctr") == ["1", "2", "3"] and reg.latest("ctr").version == "3"  # type: ignore[union-attr]
    with pytest.raises(KeyError, match="ctr/10"):
        reg.get("ctr", "10")
    with pytest.raises(KeyError):
        reg.get("ctr", "01")


def test_lineage_across_models_missing_parents_and_cycles(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    reg.register("base", identity_model_bytes(), {"parent": None})
    reg.register("ctr", identity_model_bytes(), {"parent": "base/1"})
    reg.register("ctr", identity_model_bytes(), {"parent": "ctr/1"})
    assert [v.ref for v in reg.lineage("ctr", "2")] == ["ctr/2", "ctr/1", "base/1"]
    # A parent that was removed ends the chain.
    reg.register("orphan", identity_model_bytes(), {"parent": "gone/4"})
    assert [v.ref for v in reg.lineage("orphan", "1")] == ["orphan/1"]
    # A cycle (parents are not checked to exist, so one can be written) ends too.
    reg.register("a", identity_model_bytes(), {"parent": "b/1"})
    reg.register("b", identity_model_bytes(), {"parent": "a/1"})
    assert [v.ref for v in reg.lineage("a", "1")] == ["a/1", "b/1"]
    with pytest.raises(KeyError):
        reg.lineage("ctr", "9")


def test_river_snapshots_are_listed_with_their_manifest(tmp_path: Path) -> None:
    model = linear_model.LogisticRegression()
    model.learn_one({"user.clicks_1h": 1.0}, True)
    publish_snapshot(tmp_path, "online", model, features=["user.clicks_1h"], kind="lr",
                     metadata={"parent": "ctr/1"})
    reg = ModelRegistry(tmp_path)
    reg.register("ctr", identity_model_bytes(), {})
    info = reg.get("online", "1")
    assert info.backend == "river" and info.metadata["kind"] == "lr" and info.parent == "ctr/1"
    assert reg.list_models() == ["ctr", "online"]
    # An ONNX version published after the snapshots takes the next number.
    assert reg.register("online", identity_model_bytes(), {}) == "2"
    assert [v.ref for v in reg.lineage("online", "1")] == ["online/1", "ctr/1"]


@pytest.mark.parametrize(("name", "metadata", "fragment"), [
    (".hidden", {}, "invalid model name"),
    ("a/b", {}, "invalid model name"),
    ("ctr", {"version": "3"}, "may not set version"),
    ("ctr", {"parent": "ctr"}, "reference is '<model>/<version>'"),
    ("ctr", {"parent": "ctr/0"}, "reference is"),
])
def test_bad_registrations_touch_nothing(tmp_path: Path, name: str, metadata: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        ModelRegistry(tmp_path).register(name, b"x", metadata)
    assert list(tmp_path.iterdir()) == []


def test_parse_ref() -> None:
    assert parse_ref("my.model/12") == ("my.model", "12")
    with pytest.raises(ValueError):
        parse_ref("ctr/latest")
