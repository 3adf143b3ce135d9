"""River snapshots: publish/load round trip, version numbers, pruning, config.yaml, atomic
publish, and every refusal (tampered pickle, HMAC, River version, bad manifest)."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import yaml
from river import linear_model, preprocessing

import engine.learning.snapshots as snapshots
from engine.learning.snapshots import SNAPSHOT_FORMAT, load_snapshot, publish_snapshot, river_version
from serving.config import load_model_config
from serving.repository import scan_model, scan_repository

FEATURES = ["user.clicks_1h", "user.impressions_1h", "request.price"]


def trained(n: int = 200, seed: int = 0) -> Any:
    """A scaled logistic regression trained on a deterministic stream."""
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    for i in range(n):
        clicks = float((i * 7 + seed) % 11)
        x = {"user.clicks_1h": clicks, "user.impressions_1h": float(i % 13), "request.price": 9.5 + i % 3}
        model.learn_one(x, clicks > 5)
    return model


def rows() -> list[dict[str, float]]:
    return [
        {"user.clicks_1h": float(c), "user.impressions_1h": float(c * 2 % 13), "request.price": 10.0} for c in range(11)
    ]


def publish(root: Path, name: str = "ctr", model: Any = None, **kwargs: Any) -> str:
    return publish_snapshot(root, name, model if model is not None else trained(), features=FEATURES,
                            kind="logistic_regression", **kwargs)


def rewrite_manifest(version_dir: Path, **changes: Any) -> None:
    path = version_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def refusal(version_dir: Path, key: bytes | None = None) -> str:
    with pytest.raises(ValueError) as exc:
        load_snapshot(version_dir, key)
    message = str(exc.value)
    assert message.startswith(f"{version_dir}: refusing River snapshot: "), message
    return message


# -- publish and load --------------------------------------------------------------------------


def test_round_trip_manifest_files_and_predictions(tmp_path: Path) -> None:
    model = trained()
    version = publish(tmp_path, model=model, key=b"k", metadata={"examples": 200, "metrics": {"auc": 0.9}})
    assert version == "1"
    vdir = tmp_path / "ctr" / "1"
    assert sorted(p.name for p in vdir.iterdir()) == ["manifest.json", "model.pkl"]
    blob = (vdir / "model.pkl").read_bytes()
    manifest = json.loads((vdir / "manifest.json").read_text())
    assert manifest["format"] == SNAPSHOT_FORMAT
    assert manifest["sha256"] == hashlib.sha256(blob).hexdigest()
    assert manifest["hmac_sha256"] is not None
    assert manifest["river_version"] == river_version()
    assert (manifest["kind"], manifest["output"]) == ("logistic_regression", "probability")
    assert manifest["features"] == FEATURES
    assert manifest["examples"] == 200 and manifest["metrics"] == {"auc": 0.9}
    assert isinstance(manifest["created_ms"], int) and manifest["python_version"]

    for key in (b"k", None):  # with the key: HMAC checked; without: sha256 only
        snap = load_snapshot(vdir, key)
        assert snap.path == vdir and snap.features == tuple(FEATURES) and snap.manifest == manifest
        for x in rows():
            assert snap.model.predict_proba_one(x) == model.predict_proba_one(x)

    # The repository scanner serves it as a River version.
    source = scan_repository(tmp_path)["ctr"].versions["1"]
    assert (source.backend, source.model_path) == ("river", vdir / "model.pkl")


def test_versions_follow_existing_onnx_and_empty_version_dirs(tmp_path: Path) -> None:
    (tmp_path / "ctr" / "3").mkdir(parents=True)
    (tmp_path / "ctr" / "3" / "model.onnx").write_bytes(b"onnx")
    (tmp_path / "ctr" / "7").mkdir()  # being copied in by hand: its number is taken
    (tmp_path / "ctr" / "v9").mkdir()  # not a version
    assert publish(tmp_path) == "8"
    assert publish(tmp_path) == "9"
    assert sorted(scan_model(tmp_path / "ctr").versions, key=int) == ["3", "8", "9"]


def test_pruning_keeps_the_newest_snapshots_and_every_onnx_version(tmp_path: Path) -> None:
    (tmp_path / "ctr" / "1").mkdir(parents=True)
    (tmp_path / "ctr" / "1" / "model.onnx").write_bytes(b"onnx")
    published = [publish(tmp_path, keep=2) for _ in range(4)]
    assert published == ["2", "3", "4", "5"]
    versions = scan_model(tmp_path / "ctr").versions
    assert {v: s.backend for v, s in versions.items()} == {"1": "onnx", "4": "river", "5": "river"}
    # Nothing left behind: no staging or trash directories.
    assert sorted(p.name for p in (tmp_path / "ctr").iterdir()) == ["1", "4", "5"]


def test_config_yaml_binds_the_features_once_and_is_never_overwritten(tmp_path: Path) -> None:
    publish(tmp_path)
    config_path = tmp_path / "ctr" / "config.yaml"
    config = load_model_config(config_path)
    assert config.features is not None and config.features.inputs == {"features": tuple(FEATURES)}
    # An operator edits it (more batching, a default): later publishes leave it alone.
    edited = {"max_batch_size": 8, "features": {"inputs": {"features": FEATURES}, "defaults": {"request.price": 1.0}}}
    config_path.write_text(yaml.safe_dump(edited))
    publish(tmp_path)
    assert yaml.safe_load(config_path.read_text()) == edited
    assert not [p for p in (tmp_path / "ctr").iterdir() if p.name.startswith(".")]


def test_no_bindings_for_names_that_are_not_sources_or_next_to_onnx_versions(tmp_path: Path) -> None:
    model = trained()
    # "clicks" is not <view>.<column>: callers send the raw tensor, so no config is written.
    assert publish_snapshot(tmp_path, "raw", model, features=["clicks", "price"], kind="lr") == "1"
    assert not (tmp_path / "raw" / "config.yaml").exists()
    # A config applies to every version: bindings would break an ONNX version's inputs.
    (tmp_path / "mixed" / "1").mkdir(parents=True)
    (tmp_path / "mixed" / "1" / "model.onnx").write_bytes(b"onnx")
    assert publish(tmp_path, "mixed") == "2"
    assert not (tmp_path / "mixed" / "config.yaml").exists()


def test_publish_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[list[str], list[str]]] = []
    rename = os.rename

    def spy(src: Any, dst: Any) -> None:
        # Just before the version appears: the scanner sees nothing, the staging dir is complete.
        if Path(src).name.startswith(".tmp-"):
            seen.append((sorted(scan_model(tmp_path / "ctr").versions), sorted(p.name for p in Path(src).iterdir())))
        rename(src, dst)

    monkeypatch.setattr(os, "rename", spy)
    publish(tmp_path)
    assert seen == [([], ["manifest.json", "model.pkl"])]

    # A failure while writing leaves no version and no staging directory behind.
    def broken(path: Path, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(snapshots, "_write_synced", broken)
    with pytest.raises(OSError, match="No space left"):
        publish(tmp_path)
    assert sorted(p.name for p in (tmp_path / "ctr").iterdir()) == ["1", "config.yaml"]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"features": []}, "non-empty list"),
        ({"features": ["a.b", "a.b"]}, "twice"),
        ({"metadata": {"sha256": "x"}}, "may not set manifest field(s) sha256"),
        ({"keep": 0}, "keep must be at least 1"),
        ({"name": ".hidden"}, "invalid model name"),
        ({"name": "a/b"}, "invalid model name"),
        ({"model": {"not": "a classifier"}}, "dict has no predict_proba_one"),
    ],
)
def test_publish_refuses_bad_arguments(tmp_path: Path, kwargs: dict[str, Any], fragment: str) -> None:
    args: dict[str, Any] = {"features": FEATURES, "kind": "lr", "name": "ctr", "model": trained(5), **kwargs}
    name, model = args.pop("name"), args.pop("model")
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        publish_snapshot(tmp_path, name, model, **args)
    assert not list(tmp_path.iterdir())  # refused before touching the repository


# -- refusals ----------------------------------------------------------------------------------


def test_tampered_or_truncated_pickle_is_refused_before_unpickling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vdir = tmp_path / "ctr" / publish(tmp_path)
    original = (vdir / "model.pkl").read_bytes()
    unpickled: list[bytes] = []
    monkeypatch.setattr(pickle, "loads", lambda b: unpickled.append(b))
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0x01
    for damaged in (bytes(flipped), original[:-10]):
        (vdir / "model.pkl").write_bytes(damaged)
        assert "sha256 of model.pkl does not match the manifest" in refusal(vdir)
    assert unpickled == []


def test_hmac_required_with_a_key(tmp_path: Path) -> None:
    signed = tmp_path / "ctr" / publish(tmp_path, key=b"right")
    unsigned = tmp_path / "ctr" / publish(tmp_path)
    assert load_snapshot(signed, b"right").model is not None
    assert "hmac_sha256 does not match" in refusal(signed, b"wrong")
    assert "unsigned (no hmac_sha256) and a snapshot key is configured" in refusal(unsigned, b"right")
    assert load_snapshot(unsigned).model is not None  # no key configured: sha256 only
    # A replaced pickle with a recomputed sha256 still fails the HMAC.
    other = pickle.dumps(trained(50, seed=3))
    (signed / "model.pkl").write_bytes(other)
    rewrite_manifest(signed, sha256=hashlib.sha256(other).hexdigest())
    assert "hmac_sha256 does not match" in refusal(signed, b"right")


def test_other_river_minor_version_is_refused(tmp_path: Path) -> None:
    vdir = tmp_path / "ctr" / publish(tmp_path)
    major, minor, *_ = river_version().split(".")
    rewrite_manifest(vdir, river_version=f"{major}.{int(minor) + 1}.0")
    assert f"this process has river {river_version()} (major.minor must match)" in refusal(vdir)
    rewrite_manifest(vdir, river_version=f"{major}.{minor}.99")  # a patch release is fine
    assert load_snapshot(vdir).model is not None


def test_bad_manifests_and_unpicklable_or_non_river_pickles_are_refused(tmp_path: Path) -> None:
    vdir = tmp_path / "ctr" / publish(tmp_path)
    good = (vdir / "manifest.json").read_text()
    (vdir / "manifest.json").write_text("{not json")
    assert "cannot read manifest.json" in refusal(vdir)
    (vdir / "manifest.json").write_text(good)
    rewrite_manifest(vdir, format="rtml-river-snapshot/99")
    assert "manifest format is 'rtml-river-snapshot/99'" in refusal(vdir)
    rewrite_manifest(vdir, format=SNAPSHOT_FORMAT, features=[])
    assert "manifest features must be a non-empty list" in refusal(vdir)
    rewrite_manifest(vdir, features=FEATURES)
    not_river = pickle.dumps({"a": 1})
    for blob, fragment in ((b"not a pickle", "cannot unpickle model.pkl"), (not_river, "has no predict_proba_one")):
        (vdir / "model.pkl").write_bytes(blob)
        rewrite_manifest(vdir, sha256=hashlib.sha256(blob).hexdigest())
        assert fragment in refusal(vdir)
    (vdir / "model.pkl").unlink()
    assert "cannot read model.pkl" in refusal(vdir)


def test_odd_manifest_values_are_refusals_not_crashes(tmp_path: Path) -> None:
    vdir = tmp_path / "ctr" / publish(tmp_path, key=b"k")
    rewrite_manifest(vdir, hmac_sha256="é" * 64)
    assert "hmac_sha256 does not match" in refusal(vdir, b"k")
    rewrite_manifest(vdir, sha256=None)
    assert "sha256 of model.pkl does not match" in refusal(vdir)
    rewrite_manifest(vdir, features="user.clicks_1h")
    assert "manifest features must be a non-empty list" in refusal(vdir)
    (vdir / "manifest.json").write_text("[1, 2]")
    assert "manifest format is 'list'" in refusal(vdir)
