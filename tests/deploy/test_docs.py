"""The reference docs name every config field, metric, reason code and DLQ header the code has."""

from __future__ import annotations

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
            default = "null" if f.default is None else str(f.default).lower()
            row = next((r for r in rows if f"`{var}`" in r), None)
            assert row is not None, f"{var} missing from docs/configuration.md"
            assert f"`{default}`" in row.lower(), f"{var}: default {default} not in {row}"


def test_operations_lists_every_metric(tmp_path: Path) -> None:
    text = _read("operations.md")
    sup = Supervisor([ProcessSpec("x", ["true"])], log_dir=tmp_path)  # never started
    names = _exposed_names(PipelineMetrics().registry) | _exposed_names(sup.registry)
    missing = sorted(n for n in names if not re.search(rf"`{re.escape(n)}`", text))
    assert not missing, f"metrics missing from docs/operations.md: {missing}"


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
