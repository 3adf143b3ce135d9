"""config.yaml parsing and repository scanning."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from serving.config import ModelConfig, load_model_config
from serving.repository import scan_repository
from tests.serving.models import mlp_model, write_model


def test_config_defaults_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("", encoding="utf-8")
    assert load_model_config(path) == ModelConfig()
    path.write_text("max_batch_size: 8\nmax_queue_delay_us: 500\nwarmup: false\n", encoding="utf-8")
    config = load_model_config(path)
    assert (config.max_batch_size, config.max_queue_delay_us, config.warmup) == (8, 500, False)
    assert config.model_fields_set == {"max_batch_size", "max_queue_delay_us", "warmup"}
    for text, message in [
        ("max_batch_size: lots", "max_batch_size: Input should be a valid integer"),
        ("max_batchsize: 8", "max_batchsize: Extra inputs are not permitted"),
        ("max_queue_delay_us: -1", "max_queue_delay_us: Input should be greater than or equal to 0"),
        ("max_batch_size: 128\nqueue_capacity: 64", "queue_capacity (64) must be at least max_batch_size (128)"),
        ("- 1\n- 2", "must be a mapping"),
        ("a: [", "cannot read model config"),
    ]:
        path.write_text(text, encoding="utf-8")
        with pytest.raises(ValueError) as info:
            load_model_config(path)
        assert message in str(info.value) and str(path) in str(info.value)
        assert "\n" not in str(info.value)


def test_scan_layout_and_fingerprints(tmp_path: Path) -> None:
    write_model(tmp_path, "mlp", 1, mlp_model(), config={"max_batch_size": 8})
    write_model(tmp_path, "mlp", 10, mlp_model())
    (tmp_path / "mlp" / "2").mkdir()  # no model.onnx yet: not a version
    (tmp_path / "mlp" / "0").mkdir()
    (tmp_path / "mlp" / "v3").mkdir()
    (tmp_path / ".hidden" / "1").mkdir(parents=True)
    (tmp_path / "README.md").write_text("not a model", encoding="utf-8")
    scan = scan_repository(tmp_path)
    assert list(scan) == ["mlp"]
    model = scan["mlp"]
    assert model.config_path == tmp_path / "mlp" / "config.yaml" and model.config_fingerprint
    assert sorted(model.versions) == ["1", "10"]
    version = model.versions["1"]
    assert version.model_path == tmp_path / "mlp" / "1" / "model.onnx"
    before = version.fingerprint
    assert scan_repository(tmp_path)["mlp"].versions["1"].fingerprint == before
    stat = version.model_path.stat()
    os.utime(version.model_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert scan_repository(tmp_path)["mlp"].versions["1"].fingerprint != before
