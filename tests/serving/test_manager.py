"""ModelManager and ServedModel: repository loading, validation, hot reload, failures, metrics."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from pathlib import Path
from typing import Awaitable, Callable

import numpy as np
import onnxruntime as ort
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from serving.config import ModelConfig
from serving.errors import InvalidInput, ModelNotFound, ModelUnavailable
from serving.manager import ModelManager, ModelState, ServedModel
from serving.tensors import TensorSpec
from tests.serving.models import (
    failing_model,
    fixed_shape_model,
    mlp_model,
    two_input_model,
    write_broken_model,
    write_model,
)


def reference(seed: int) -> Callable[[np.ndarray], np.ndarray]:
    """Unbatched reference outputs of mlp_model(seed), one row at a time."""
    session = ort.InferenceSession(mlp_model(seed=seed).SerializeToString(), providers=["CPUExecutionProvider"])

    def run(x: np.ndarray) -> np.ndarray:
        return np.concatenate([session.run(None, {"input": x[i : i + 1]})[0] for i in range(len(x))])

    return run


async def eventually(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def with_manager(root: Path, body: Callable[[ModelManager], Awaitable[None]], **kwargs: object) -> None:
    async def main() -> None:
        manager = ModelManager(root, **{"poll_interval_s": 0, **kwargs})  # type: ignore[arg-type]
        await manager.start()
        try:
            await body(manager)
        finally:
            await manager.stop()

    asyncio.run(main())


def test_loads_repository_and_describes_models(repo: Path) -> None:
    write_model(repo, "mlp", 1, mlp_model(seed=1))
    write_model(repo, "mlp", 2, mlp_model(seed=2), config={"max_batch_size": 16, "max_queue_delay_us": 100})
    write_model(repo, "two", 1, two_input_model())
    write_model(repo, "fixed", 7, fixed_shape_model())
    (repo / "mlp" / "01").mkdir()  # not a canonical version: ignored
    (repo / "empty").mkdir()  # a model without versions: not a model yet

    async def body(manager: ModelManager) -> None:
        assert [(s.name, s.version, s.state) for s in manager.models()] == [
            ("fixed", "7", ModelState.READY),
            ("mlp", "1", ModelState.READY),
            ("mlp", "2", ModelState.READY),
            ("two", "1", ModelState.READY),
        ]
        latest = manager.get("mlp")
        assert isinstance(latest, ServedModel)
        assert (latest.name, latest.version, latest.platform) == ("mlp", "2", "onnxruntime_onnx")
        assert latest.max_batch_size == 16 and latest.config.max_queue_delay_us == 100
        assert latest.inputs == [TensorSpec("input", "FP32", (-1, 64))]
        assert latest.outputs == [TensorSpec("output", "FP32", (-1, 1))]
        assert latest.providers[-1] == "CPUExecutionProvider"
        assert manager.get("mlp", "1").version == "1" and manager.get("mlp", "").version == "2"
        assert manager.get("mlp", "1").config == latest.config  # config.yaml is per model
        assert manager.get("two").config == ModelConfig()
        fixed = manager.get("fixed")
        assert fixed.max_batch_size == 0 and fixed.inputs == [TensorSpec("x", "FP32", (3, 4))]
        out = await fixed.infer({"x": np.ones((3, 4), np.float32)})
        assert np.array_equal(out["y"], np.full((3, 4), 2, np.float32))
        two = manager.get("two")
        out = await two.infer({"dense": np.zeros((2, 8), np.float32), "ids": np.array([[0, 1], [2, 3]])})
        assert out["score"].shape == (2, 1) and out["embedding"].shape == (2, 8)
        assert manager.is_ready("mlp") and manager.is_ready("mlp", "1") and not manager.is_ready("mlp", "3")

    with_manager(repo, body)


def test_unknown_models_and_versions(repo: Path) -> None:
    write_model(repo, "mlp", 1, mlp_model())
    write_model(repo, "mlp", 3, mlp_model())

    async def body(manager: ModelManager) -> None:
        with pytest.raises(ModelNotFound, match=r"model 'nope' not found; available models: 'mlp'"):
            manager.get("nope")
        with pytest.raises(ModelNotFound, match=r"no version '2'; available versions: 1 READY, 3 READY"):
            manager.get("mlp", "2")
        assert not manager.is_ready("nope")

    with_manager(repo, body)


def test_every_bad_input_fails_alone_naming_the_input(repo: Path) -> None:
    write_model(repo, "mlp", 1, mlp_model(), config={"max_batch_size": 8})
    write_model(repo, "two", 1, two_input_model())
    good = np.zeros((1, 64), np.float32)

    async def body(manager: ModelManager) -> None:
        mlp, two = manager.get("mlp"), manager.get("two")
        cases: list[tuple[ServedModel, object, str]] = [
            (mlp, {}, r"missing input 'input'"),
            (mlp, {"input": good, "extra": good}, r"unexpected input 'extra'"),
            (mlp, {"inp": good}, r"missing input 'input'; unexpected input 'inp'"),
            (mlp, {"input": good.astype(np.float64)}, r"input 'input' has datatype FP64, expected FP32"),
            (mlp, {"input": good.astype(np.float16)}, r"input 'input' has datatype FP16, expected FP32"),
            (
                mlp,
                {"input": np.zeros(64, np.float32)},
                r"input 'input' has shape \[64\] \(rank 1\), expected \[-1, 64\]",
            ),
            (
                mlp,
                {"input": np.zeros((1, 32), np.float32)},
                r"input 'input' .*expected \[-1, 64\] \(dim 1 must be 64\)",
            ),
            (mlp, {"input": np.zeros((9, 64), np.float32)}, r"batch size 9 \(input 'input'\) exceeds max_batch_size 8"),
            (mlp, {"input": np.zeros((0, 64), np.float32)}, r"input 'input' has batch size 0"),
            (mlp, {"input": [[0.0] * 64]}, r"input 'input' must be a numpy array"),
            (mlp, [good], r"inputs must be a mapping"),
            (
                two,
                {"dense": np.zeros((2, 8), np.float32), "ids": np.zeros((3, 2), np.int64)},
                r"input 'ids' has 3 rows but input 'dense' has 2",
            ),
            (
                two,
                {"dense": np.zeros((1, 8), np.float32), "ids": np.zeros((1, 2), np.int32)},
                r"'ids' has datatype INT32, expected INT64",
            ),
            (two, {"dense": np.zeros((1, 8), np.float32)}, r"missing input 'ids'"),
        ]
        for model, inputs, message in cases:
            with pytest.raises(InvalidInput, match=message):
                await model.infer(inputs)  # type: ignore[arg-type]
        # Bad requests mixed into concurrent good ones fail alone.
        results = await asyncio.gather(
            *(mlp.infer({"input": good}) for _ in range(10)),
            mlp.infer({"input": good.astype(np.float64)}),
            return_exceptions=True,
        )
        assert all(isinstance(r, dict) for r in results[:10]) and isinstance(results[10], InvalidInput)
        assert mlp.validate({"input": np.zeros((8, 64), np.float32)}) == 8

    with_manager(repo, body)


def test_bad_configs_and_batch_axis_rules(repo: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_model(repo, "typo", 1, mlp_model(), config={"max_batchsize": 8})
    write_model(repo, "fixed", 1, fixed_shape_model(), config={"max_batch_size": 8})
    write_model(repo, "nobatch", 1, mlp_model(), config={"max_batch_size": 0})

    async def body(manager: ModelManager) -> None:
        states = {s.name: s for s in manager.models()}
        assert states["typo"].state is ModelState.FAILED and "max_batchsize" in states["typo"].reason
        assert states["fixed"].state is ModelState.FAILED and "no batch axis" in states["fixed"].reason
        with pytest.raises(ModelUnavailable, match="no READY version"):
            manager.get("typo")
        with pytest.raises(ModelUnavailable, match="version 1 is FAILED: config sets max_batch_size 8"):
            manager.get("fixed", "1")
        nobatch = manager.get("nobatch")
        assert nobatch.max_batch_size == 0
        out = await nobatch.infer({"input": np.zeros((100, 64), np.float32)})  # any dim 0, runs alone
        assert out["output"].shape == (100, 1)

    with caplog.at_level(logging.WARNING, logger="serving.manager"):
        with_manager(repo, body)
    assert any("typo" in r.getMessage() and "config.yaml" in r.getMessage() for r in caplog.records)


def test_hot_reload_under_load_broken_versions_and_removal(repo: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_model(repo, "mlp", 1, mlp_model(seed=1))
    refs = {"1": reference(1), "2": reference(2), "5": reference(5)}
    rng = np.random.default_rng(0)
    pool = rng.standard_normal((64, 64)).astype(np.float32)

    async def body(manager: ModelManager) -> None:
        stop = asyncio.Event()
        served: list[tuple[str, int, np.ndarray]] = []
        failures: list[BaseException] = []

        async def hammer(worker: int) -> None:
            i = worker
            while not stop.is_set():
                i = (i + 4) % len(pool)
                try:
                    model = manager.get("mlp")
                    out = await model.infer({"input": pool[i : i + 1]})
                    served.append((model.version, i, out["output"]))
                except Exception as exc:  # any failure fails the test
                    failures.append(exc)
                await asyncio.sleep(0)

        workers = [asyncio.ensure_future(hammer(w)) for w in range(4)]
        await eventually(lambda: len(served) > 50)
        write_model(repo, "mlp", 2, mlp_model(seed=2))
        await eventually(lambda: manager.get("mlp").version == "2")
        count = len(served)
        await eventually(lambda: len(served) > count + 50)

        # A broken file as version 3: refused, version 2 keeps serving.
        write_broken_model(repo, "mlp", 3, "garbage")
        write_broken_model(repo, "mlp", 4, "truncated")
        write_model(repo, "mlp", 5, failing_model())  # loads, fails warm-up
        await eventually(lambda: {s.version for s in manager.models()} >= {"3", "4", "5"}
                         and all(s.state is not ModelState.LOADING for s in manager.models()))
        count = len(served)
        await eventually(lambda: len(served) > count + 50)

        states = {s.version: s for s in manager.models()}
        assert states["1"].state is ModelState.READY and states["2"].state is ModelState.READY
        for v in ("3", "4", "5"):
            assert states[v].state is ModelState.FAILED, states[v]
        assert "protobuf" in states["3"].reason.lower()
        assert "warm-up failed" in states["5"].reason
        assert manager.get("mlp").version == "2"
        with pytest.raises(ModelUnavailable, match="version 3 is FAILED"):
            manager.get("mlp", "3")

        # Fixing version 5 on disk retries it (a FAILED version reloads when its files change).
        write_model(repo, "mlp", 5, mlp_model(seed=5))
        await eventually(lambda: manager.is_ready("mlp", "5"))
        count = len(served)
        await eventually(lambda: len(served) > count + 50)

        # Removing versions while the hammers use the latest: unpublished at once, traffic
        # goes back to 2, version 5 drains (no request lost) and is unloaded.
        v5 = manager.get("mlp", "5")
        for v in ("3", "4", "5"):
            shutil.rmtree(repo / "mlp" / v)
        await eventually(lambda: [s.version for s in manager.models()] == ["1", "2"])
        assert manager.get("mlp").version == "2"
        with pytest.raises(ModelNotFound):
            manager.get("mlp", "5")
        count = len(served)
        await eventually(lambda: len(served) > count + 50)
        await eventually(lambda: v5.batcher._closing and v5.batcher.idle)
        stop.set()
        await asyncio.gather(*workers)
        with pytest.raises(ModelUnavailable, match="unloading"):
            await v5.infer({"input": pool[:1]})

        assert failures == []
        versions = [v for v, _, _ in served]
        assert versions[0] == "1" and versions[-1] == "2" and "5" in versions
        switch = versions.index("2")
        assert set(versions[switch + 4 : versions.index("5")]) == {"2"}  # only in-flight requests finish on 1
        for version, i, out in served:
            assert np.array_equal(out, refs[version](pool[i : i + 1]))

        # Removing the whole model.
        shutil.rmtree(repo / "mlp")
        await eventually(lambda: manager.models() == [])
        with pytest.raises(ModelNotFound, match="available models: none"):
            manager.get("mlp")

    with caplog.at_level(logging.WARNING, logger="serving.manager"):
        with_manager(repo, body, poll_interval_s=0.05, drain_grace_s=0.05)
    refused = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(repo / "mlp" / "3" / "model.onnx") in m and "FAILED" in m for m in refused), refused
    assert any(str(repo / "mlp" / "5" / "model.onnx") in m and "warm-up" in m for m in refused), refused


def test_rewritten_version_is_swapped_and_a_bad_rewrite_keeps_the_old(repo: Path) -> None:
    write_model(repo, "mlp", 1, mlp_model(seed=1))
    x = np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32)

    async def body(manager: ModelManager) -> None:
        old = manager.get("mlp", "1")
        (repo / "mlp" / "1" / "model.onnx").write_bytes(mlp_model(seed=2).SerializeToString())
        await manager.refresh()
        new = manager.get("mlp", "1")
        assert new is not old
        assert np.array_equal((await new.infer({"input": x}))["output"], reference(2)(x))
        (repo / "mlp" / "1" / "model.onnx").write_bytes(b"garbage")
        await manager.refresh()
        (status,) = manager.models()
        assert status.state is ModelState.READY and status.reason.startswith("reload failed")
        assert manager.get("mlp", "1") is new

    with_manager(repo, body)


def test_start_requires_a_repository(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        asyncio.run(ModelManager(tmp_path / "missing").start())


def test_metrics_are_exported_and_parse(repo: Path) -> None:
    write_model(repo, "mlp", 1, mlp_model())
    write_broken_model(repo, "mlp", 2)
    registry_text: list[str] = []

    async def body(manager: ModelManager) -> None:
        model = manager.get("mlp")
        x = np.zeros((1, 64), np.float32)
        await asyncio.gather(*(model.infer({"input": x}) for _ in range(100)))
        await model.infer({"input": np.zeros((3, 64), np.float32)})
        with pytest.raises(InvalidInput):
            await model.infer({"input": x.astype(np.float64)})
        registry_text.append(generate_latest(manager.registry).decode())

    with_manager(repo, body)
    families = {f.name: f for f in text_string_to_metric_families(registry_text[0])}

    def value(sample: str, **labels: str) -> float:
        for family in families.values():
            for s in family.samples:
                if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                    return s.value
        raise KeyError((sample, labels))

    v1 = {"model": "mlp", "version": "1"}
    prefix = "rtml_inference_"
    assert value(prefix + "request_success_total", **v1) == 101
    assert value(prefix + "request_failure_total", reason="invalid_input", **v1) == 1
    assert value(prefix + "count_total", **v1) == 103
    execs = value(prefix + "exec_count_total", **v1)
    assert 2 <= execs < 101  # the 100 concurrent requests were batched
    assert value(prefix + "batch_size_count", **v1) == execs
    assert value(prefix + "batch_size_sum", **v1) == 103
    assert value(prefix + "request_duration_seconds_count", **v1) == 101
    assert value(prefix + "queue_duration_seconds_count", **v1) == 101
    assert value(prefix + "compute_duration_seconds_count", **v1) == execs
    assert value(prefix + "pending_request_count", **v1) == 0
    assert value(prefix + "model_versions", state="READY", **v1) == 1
    assert value(prefix + "model_versions", model="mlp", version="2", state="FAILED") == 1
    assert {"model": "mlp", "version": "2", "state": "READY"} not in [
        s.labels for s in families[prefix + "model_versions"].samples
    ]


def test_inline_compute_is_opt_in_per_model_config(repo: Path) -> None:
    write_model(repo, "mlp", 1, mlp_model(seed=1))
    write_model(repo, "fast", 1, mlp_model(seed=1), config={"inline_compute_us": 1_000_000})
    expected = reference(1)
    x = np.random.default_rng(0).standard_normal((24, 64)).astype(np.float32)

    async def body(manager: ModelManager) -> None:
        for name in ("mlp", "fast"):
            served = manager.get(name)
            outs = [await served.infer({"input": x[i : i + 1]}) for i in range(len(x))]
            assert np.array_equal(np.concatenate([o["output"] for o in outs]), expected(x))
        assert manager.get("mlp").config.inline_compute_us == 0
        assert not manager.get("mlp")._batcher.inline  # the default keeps inference off the loop
        assert manager.get("fast")._batcher.inline  # a model faster than its threshold moved onto it

    with_manager(repo, body)
