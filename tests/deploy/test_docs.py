"""The reference docs name every config field, metric, reason code and DLQ header the code has."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from engine.config import RtmlConfig
from engine.events import dlq
from engine.events.validation import REASONS
from engine.features.aggregates import HLL_LG_K
from engine.metrics import PipelineMetrics
from engine.runtime.supervisor import ProcessSpec, Supervisor

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _read(name: str) -> str:
    path = DOCS / name
    if not path.exists():
        pytest.skip(f"docs/{name} not written")
    return path.read_text()


def _exposed_names(registry: CollectorRegistry) -> set[str]:
    return {f"{m.name}_total" if m.type == "counter" else m.name for m in registry.collect()}


def test_configuration_lists_every_field_with_its_env_var_and_default() -> None:
    text = _read("configuration.md")
    rows = {line for line in text.splitlines() if line.startswith("|")}
    for section, field in RtmlConfig.model_fields.items():
        model = field.annotation
        if not (isinstance(model, type) and hasattr(model, "model_fields")):
            var = f"RTML_{section}".upper()  # top-level field
            assert any(f"`{section}`" in r and f"`{var}`" in r for r in rows), var
            continue
        for name, f in model.model_fields.items():
            var = f"RTML_{section}_{name}".upper()
            value = f.get_default(call_default_factory=True)
            # Lists are written as they are set from the environment: comma-separated.
            default = "null" if value is None else (",".join(value) if isinstance(value, list) else str(value)).lower()
            row = next((r for r in rows if f"`{var}`" in r), None)
            assert row is not None, f"{var} missing from docs/configuration.md"
            assert f"`{default}`" in row.lower(), f"{var}: default {default} not in {row}"


def test_operations_lists_every_metric(tmp_path: Path) -> None:
    text = _read("operations.md")
    sup = Supervisor([ProcessSpec("x", ["true"])], log_dir=tmp_path)  # never started
    names = _exposed_names(PipelineMetrics().registry) | _exposed_names(sup.registry)
    missing = sorted(n for n in names if not re.search(rf"`{re.escape(n)}`", text))
    assert not missing, f"metrics missing from docs/operations.md: {missing}"


def test_learning_lists_every_metric() -> None:
    from engine.metrics import LearningMetrics

    text = _read("learning.md")
    missing = sorted(n for n in _exposed_names(LearningMetrics().registry) if f"`{n}`" not in text)
    assert not missing, f"metrics missing from docs/learning.md: {missing}"


def test_events_lists_every_reason_and_dlq_header() -> None:
    text = _read("events.md")
    for reason in (*REASONS, dlq.LATE):
        assert f"`{reason}`" in text, reason
    headers = [v for k, v in vars(dlq).items() if k.endswith("_HEADER")]
    assert len(headers) == 6
    for header in headers:
        assert f"`{header}`" in text, header


def test_features_states_the_hll_precision() -> None:
    assert f"lg_k = {HLL_LG_K}" in _read("features.md")


# -- serving (docs/serving.md) -----------------------------------------------------------------


def _serving_registry() -> CollectorRegistry:
    from serving.metrics import ServingMetrics
    from serving.predict import PredictMetrics
    from serving.predictions_log import PredictionLogMetrics
    from serving.server import GrpcMetrics

    registry = CollectorRegistry()
    ServingMetrics(registry)
    GrpcMetrics(registry)
    PredictMetrics(registry)
    PredictionLogMetrics(registry)
    return registry


def test_serving_lists_every_metric() -> None:
    text = _read("serving.md")
    names = _exposed_names(_serving_registry())
    assert len(names) >= 20  # the four families above are all registered
    missing = sorted(n for n in names if not re.search(rf"`{re.escape(n)}`", text))
    assert not missing, f"metrics missing from docs/serving.md: {missing}"


def test_serving_lists_every_flag_and_config_field() -> None:
    from serving.config import (
        AbRoute,
        AbVariant,
        CanaryRoute,
        FeatureBindings,
        ModelConfig,
        Routing,
        ShadowRoute,
        ViewBinding,
    )
    from serving.server import _parser

    text = _read("serving.md")
    flags = [
        s
        for a in _parser()._actions
        if a.help != argparse.SUPPRESS  # internal flags (e.g. --reuse-port, set for workers)
        for s in a.option_strings
        if s.startswith("--") and s != "--help"
    ]
    assert "--models" in flags
    missing = [f for f in flags if f"`{f}`" not in text]
    assert not missing, f"rtml serve flags missing from docs/serving.md: {missing}"
    models = (ModelConfig, FeatureBindings, ViewBinding, Routing, ShadowRoute, CanaryRoute, AbRoute, AbVariant)
    fields = {name for model in models for name in model.model_fields}
    # A field may be written bare (`ttl`) or with its path (`routing.canary.percent`).
    missing = sorted(f for f in fields if not re.search(rf"`(?:[\w.]+\.)?{re.escape(f)}`", text))
    assert not missing, f"config.yaml fields missing from docs/serving.md: {missing}"


def test_serving_config_examples_are_valid() -> None:
    import yaml

    from serving.config import ModelConfig

    text = _read("serving.md")
    examples = [b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "max_batch_size:" in b]
    assert examples, "docs/serving.md has no config.yaml example"
    for block in examples:
        config = ModelConfig.model_validate(yaml.safe_load(block))
        assert config.features is not None and config.routing is not None


def test_serving_lists_every_status_code_and_drop_reason() -> None:
    import serving.features  # noqa: F401  (defines ServingError subclasses of its own)
    import serving.predictions_log
    from serving.errors import ServingError

    text = _read("serving.md")
    rows = [line for line in text.splitlines() if line.startswith("|")]
    classes, todo = set(), [ServingError]
    while todo:
        cls = todo.pop()
        classes.add(cls)
        todo.extend(cls.__subclasses__())
    codes = {cls.code.name for cls in classes} | {"UNIMPLEMENTED", "INTERNAL"}
    missing = sorted(c for c in codes if not any(r.startswith(f"| `{c}`") for r in rows))
    assert not missing, f"status codes missing from the error table of docs/serving.md: {missing}"
    source = Path(serving.predictions_log.__file__).read_text()
    reasons = set(re.findall(r'dropped\.labels\("(\w+)"\)', source))
    assert reasons >= {"queue_full", "delivery_failed", "error", "shutdown"}
    missing = sorted(r for r in reasons if not any(row.startswith(f"| `{r}`") for row in rows))
    assert not missing, f"predictions log drop reasons missing from docs/serving.md: {missing}"
