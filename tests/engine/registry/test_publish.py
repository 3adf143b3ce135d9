"""The one atomic version publisher (shared by River snapshots and the ONNX registry)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from engine.registry.publish import publish_version
from serving.repository import scan_model


def test_versions_follow_the_highest_directory(tmp_path: Path) -> None:
    model = tmp_path / "m"
    (model / "7").mkdir(parents=True)  # being copied in by hand: counts, is not overwritten
    (model / "07").mkdir()  # not a version name
    assert publish_version(model, {"model.onnx": b"a"}) == "8"
    assert not list((model / "7").iterdir())


def test_a_taken_number_moves_to_the_next_and_renders_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "m"
    rename = os.rename
    raced: list[str] = []

    def racing_rename(src: Any, dst: Any) -> None:
        # Another writer publishes version 1 between our staging and our rename.
        if not raced:
            raced.append(str(dst))
            (model / "1").mkdir()
            (model / "1" / "model.onnx").write_bytes(b"theirs")
        rename(src, dst)

    monkeypatch.setattr(os, "rename", racing_rename)
    version = publish_version(model, lambda v: {"model.onnx": b"ours", "version.txt": v.encode()})
    assert version == "2" and (model / "2" / "version.txt").read_text() == "2"
    assert (model / "1" / "model.onnx").read_bytes() == b"theirs"
    assert sorted(p.name for p in model.iterdir()) == ["1", "2"]


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    def full_disk(path: Path, data: Any) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        publish_version(tmp_path / "m", {"model.onnx": b"a"}, write=full_disk)
    assert list((tmp_path / "m").iterdir()) == []
    with pytest.raises(ValueError, match="inside the version directory"):
        publish_version(tmp_path / "m", {"../escape": b"a"})
    assert list((tmp_path / "m").iterdir()) == []


def test_subdirectories_and_copied_files(tmp_path: Path) -> None:
    source = tmp_path / "big.onnx"
    source.write_bytes(b"x" * 3_000_000)
    version = publish_version(tmp_path / "m", {"model.onnx": source, "variants/int8.onnx": b"q"})
    assert (tmp_path / "m" / version / "model.onnx").read_bytes() == source.read_bytes()
    assert scan_model(tmp_path / "m").versions[version].backend == "onnx"
