"""Register a training run: export → parity gate → precision variants → a registry version.

:func:`register_run` is what ``rtml export`` and the retraining job call. For a ranker it

1. exports the run (:func:`engine.export.ranker.export_ranker`); a parity failure raises
   :class:`~engine.export.parity.ParityError` and nothing is written;
2. builds the requested precision variants from the same export and, with validation data,
   measures each against fp32 and recalibrates INT8 (:mod:`engine.export.variants`);
3. publishes one version: the chosen precision as ``model.onnx`` (what serving loads), the
   other precisions as ``variants/<precision>.onnx``, and ``metadata.json`` with the run's
   training-set manifest, metrics, parent, export and variant measurements.

Two-tower runs register two models, ``<name>_item`` then ``<name>_user``, each an fp32
graph with output ``embedding``. The user tower's metadata names its item tower in ``pair``;
the returned :class:`RegisteredModel` is the user tower, with both in ``towers``. A
``parent`` given for a two-tower run is the previous *user* tower version; the item tower's
parent is that version's ``pair``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from engine.export.parity import DEFAULT_TOLERANCE
from engine.export.ranker import ExportedModel, export_ranker, export_towers
from engine.export.torch_export import Exporter
from engine.export.variants import PRECISIONS, build_variants
from engine.registry.registry import ModelRegistry, parse_ref
from engine.training.run import TrainingRun

VARIANTS_DIR = "variants"


@dataclass
class RegisteredModel:
    """A registered version: ``name``/``version`` and the metadata written with it."""

    name: str
    version: str
    path: Path
    metadata: dict[str, Any]
    towers: dict[str, "RegisteredModel"] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"


def _base_metadata(run: TrainingRun, parent: str | None, source_run: str | Path | None) -> dict[str, Any]:
    return {
        "kind": run.kind,
        "parent": parent,
        "dataset_manifest": run.dataset_manifest,
        "metrics": run.metrics or {},
        "params": run.params or {},
        "features": run.features,
        "trained_ms": run.created_ms,
        "downsample_rate": run.downsample_rate,
        "source_run": str(source_run) if source_run is not None else None,
    }


def register_run(
    registry: ModelRegistry,
    run: TrainingRun,
    name: str,
    validation: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    *,
    precision: str = "fp32",
    variants: Sequence[str] = ("int8", "fp16"),
    parent: str | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    source_run: str | Path | None = None,
    exporter: Exporter = "auto",
    repeats: int = 50,
    extra_metadata: Mapping[str, Any] | None = None,
) -> RegisteredModel:
    """Export, check and publish ``run`` as the next version of ``name`` (module docstring).

    ``validation`` is ``(dense, sparse, label)`` (e.g. :class:`engine.training.data.ClickData`
    of the validation split): its rows join the parity sample and every variant is measured
    on it. ``precision`` picks what ``model.onnx`` holds; ``variants`` the other precisions
    kept beside it. ``extra_metadata`` adds keys to ``metadata.json``. Raises
    :class:`~engine.export.parity.ParityError` (nothing registered) and ``ValueError`` for
    bad arguments.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} (expected one of {', '.join(PRECISIONS)})")
    if parent is not None:
        parse_ref(parent)
    if run.kind == "two_tower":
        if precision != "fp32":
            raise ValueError("two-tower runs are registered in fp32 only")
        return _register_towers(registry, run, name, parent=parent, tolerance=tolerance, source_run=source_run,
                                exporter=exporter, extra_metadata=extra_metadata)
    exported = export_ranker(run, validation=None if validation is None else (validation[0], validation[1]),
                             tolerance=tolerance, exporter=exporter)
    wanted = list(dict.fromkeys([precision, *variants]))
    built = build_variants(exported.core, downsample_rate=run.downsample_rate, calibrator=run.calibrator,
                           validation=validation, precisions=wanted, repeats=repeats)
    chosen = built[precision]
    extra_files: dict[str, bytes] = {}
    variant_meta: dict[str, Any] = {}
    for p, variant in built.items():
        if p not in wanted:
            continue  # fp32 is always built as the baseline; kept only when asked for
        file = "model.onnx" if p == precision else f"{VARIANTS_DIR}/{p}.onnx"
        if p != precision:
            extra_files[file] = variant.model.SerializeToString()
        variant_meta[p] = {
            "file": file,
            "calibrator": variant.calibrator,
            "measurements": variant.report.to_dict() if variant.report is not None else None,
        }
    if "fp32" not in wanted and built["fp32"].report is not None:
        variant_meta["fp32"] = {"file": None, "calibrator": built["fp32"].calibrator,
                                "measurements": built["fp32"].report.to_dict()}
    meta = {
        **_base_metadata(run, parent, source_run),
        "precision": precision,
        "calibrator": chosen.calibrator,
        "export": exported.info(),
        "variants": variant_meta,
        "validation_rows": None if validation is None else int(len(validation[2])),
        **dict(extra_metadata or {}),
    }
    version = registry.register(name, chosen.model.SerializeToString(), meta, extra_files=extra_files)
    info = registry.get(name, version)
    return RegisteredModel(name, version, info.path, info.metadata)


def _register_towers(
    registry: ModelRegistry,
    run: TrainingRun,
    name: str,
    *,
    parent: str | None,
    tolerance: float,
    source_run: str | Path | None,
    exporter: Exporter,
    extra_metadata: Mapping[str, Any] | None,
) -> RegisteredModel:
    towers = export_towers(run, tolerance=tolerance, exporter=exporter)
    item_parent = None
    if parent is not None:
        try:
            item_parent = registry.get(*parse_ref(parent)).metadata.get("pair")
        except KeyError:
            item_parent = None

    def publish(side: str, exported: ExportedModel, parent_ref: str | None, extra: dict[str, Any]) -> RegisteredModel:
        tower_name = f"{name}_{side}"
        meta = {
            **_base_metadata(run, parent_ref, source_run),
            "tower": side,
            "precision": "fp32",
            "calibrator": None,
            "export": exported.info(),
            "variants": {},
            **extra,
            **dict(extra_metadata or {}),
        }
        version = registry.register(tower_name, exported.model.SerializeToString(), meta)
        info = registry.get(tower_name, version)
        return RegisteredModel(tower_name, version, info.path, info.metadata)

    item = publish("item", towers["item"], item_parent, {})
    user = publish("user", towers["user"], parent, {"pair": item.ref})
    user.towers = {"user": user, "item": item}
    return user
