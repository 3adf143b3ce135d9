"""Build a training set: join, split by time, write Parquet files and a manifest.

``<out>/train.parquet``, ``<out>/validation.parquet`` and ``<out>/test.parquet`` hold the
example columns (entity keys, ``event_time_ms``, ``label``, anything else the examples
carried) plus one column per feature (``user.clicks_1h``), rows in example order.
``<out>/manifest.json`` (:class:`DatasetManifest`, fields in docs/datasets.md) is written
last: a directory with a manifest holds a complete data set. Every file is written to a
temporary name and renamed.

>>> import tempfile
>>> ex = pd.DataFrame({"user_id": ["a", "b", "a", "b"], "event_time_ms": [10, 20, 30, 40], "label": [0, 1, 1, 0]})
>>> feats = pd.DataFrame({"entity": ["a", "b"], "window_end_ms": [5, 25], "created_ms": [6, 26], "n": [1, 2]})
>>> with tempfile.TemporaryDirectory() as out:
...     m = build_dataset(ex, [FeatureTable("user", feats, ("user_id",), ("n",))], out, SplitSpec((0.5, 0.25, 0.25)))
...     back = DatasetManifest.load(out)
>>> [(s.name, s.rows) for s in back.splits.values()], back.features[0].name, back.features[0].null_rate
([('train', 2), ('validation', 1), ('test', 1)], 'user.n', 0.25)
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from engine.config import RtmlConfig
from engine.datasets.examples import LABEL_COLUMN, TIME_COLUMN, read_table, validate_examples
from engine.datasets.offline import offline_tables, source_files
from engine.datasets.pit import FeatureTable, point_in_time_join
from engine.datasets.splits import SPLIT_NAMES, SplitSpec, assign_splits
from engine.features.spec import FeatureView, views_from_config

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class FeatureInfo:
    """One feature column: ``name`` (``<table>.<feature>``), the table it came from, its logical
    ``dtype`` (``int``, ``float``, ``bool`` or ``str``), the TTL used and its share of nulls."""

    name: str
    table: str
    dtype: str
    ttl_ms: int | None
    null_rate: float | None  # None: no rows


@dataclass(frozen=True)
class SplitInfo:
    """One split file: its rows, time range, share of positive labels and content hash."""

    name: str
    file: str  # relative to the manifest's directory
    rows: int
    min_time_ms: int | None
    max_time_ms: int | None
    positive_rate: float | None  # share of labels > 0; None: no rows
    sha256: str


@dataclass
class DatasetManifest:
    """What a built data set holds; ``manifest.json`` is :meth:`to_dict` as JSON."""

    created_ms: int
    entity_columns: list[str]
    time_column: str
    label_column: str
    features: list[FeatureInfo]
    rows: int
    min_time_ms: int | None
    max_time_ms: int | None
    split: dict[str, Any]  # {"method": "fractions" | "cuts", "fractions": [...] | None, "cuts": [T1, T2]}
    splits: dict[str, SplitInfo]
    source: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the manifest file's content)."""
        return {
            "format_version": self.format_version,
            "created_ms": self.created_ms,
            "entity_columns": list(self.entity_columns),
            "time_column": self.time_column,
            "label_column": self.label_column,
            "features": [asdict(f) for f in self.features],
            "rows": self.rows,
            "time_range": {"min_ms": self.min_time_ms, "max_ms": self.max_time_ms},
            "split": dict(self.split),
            "splits": {
                name: {k: v for k, v in asdict(s).items() if k not in ("name", "min_time_ms", "max_time_ms")}
                | {"time_range": {"min_ms": s.min_time_ms, "max_ms": s.max_time_ms}}
                for name, s in self.splits.items()
            },
            "source": dict(self.source),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DatasetManifest":
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"dataset manifest format_version {version!r} is not supported (expected {FORMAT_VERSION})")
        return cls(
            created_ms=int(data["created_ms"]),
            entity_columns=list(data["entity_columns"]),
            time_column=data["time_column"],
            label_column=data["label_column"],
            features=[FeatureInfo(**f) for f in data["features"]],
            rows=int(data["rows"]),
            min_time_ms=data["time_range"]["min_ms"],
            max_time_ms=data["time_range"]["max_ms"],
            split=dict(data["split"]),
            splits={
                name: SplitInfo(name=name, file=s["file"], rows=s["rows"], min_time_ms=s["time_range"]["min_ms"],
                                max_time_ms=s["time_range"]["max_ms"], positive_rate=s["positive_rate"],
                                sha256=s["sha256"])
                for name, s in data["splits"].items()
            },
            source=dict(data.get("source", {})),
            format_version=version,
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "DatasetManifest":
        """Read ``manifest.json`` (``path`` is the file or the data set's directory)."""
        p = Path(path)
        return cls.from_dict(json.loads((p / MANIFEST if p.is_dir() else p).read_text()))

    @property
    def feature_names(self) -> list[str]:
        """Feature column names, in file order."""
        return [f.name for f in self.features]


def _logical_dtype(series: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(series.dtype):
        return "bool"
    if pd.api.types.is_integer_dtype(series.dtype):
        return "int"
    if pd.api.types.is_float_dtype(series.dtype):
        return "float"
    if pd.api.types.is_string_dtype(series.dtype) or series.dtype == object:
        return "str"
    return str(series.dtype)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_atomic(frame: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)  # readers never see half a file
    finally:
        tmp.unlink(missing_ok=True)


def _range(times: np.ndarray) -> tuple[int | None, int | None]:
    return (int(times.min()), int(times.max())) if len(times) else (None, None)


def entity_columns_of(tables: Sequence[FeatureTable]) -> list[str]:
    """The examples' entity columns the tables need, first use first."""
    return list(dict.fromkeys(c for t in tables for c in t.entity_columns))


def build_dataset(
    examples: pd.DataFrame,
    tables: Sequence[FeatureTable],
    out_dir: str | os.PathLike[str],
    split: SplitSpec = SplitSpec(),
    *,
    time_column: str = TIME_COLUMN,
    label_column: str = LABEL_COLUMN,
    source: Mapping[str, Any] | None = None,
) -> DatasetManifest:
    """Join ``examples`` with ``tables`` point in time, split by time, write files + manifest."""
    entities = entity_columns_of(tables)
    examples = validate_examples(examples, entities, time_column, label_column)
    joined = point_in_time_join(examples, tables, time_column).reset_index(drop=True)
    times = joined[time_column].to_numpy(dtype=np.int64)
    labels = joined[label_column].to_numpy(dtype=np.float64)
    c1, c2 = split.cut_times(times)
    part = assign_splits(times, c1, c2)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # no manifest until the new files are complete
    splits: dict[str, SplitInfo] = {}
    for index, name in enumerate(SPLIT_NAMES):
        rows = part == index
        path = out / f"{name}.parquet"
        _write_atomic(joined[rows], path)
        lo, hi = _range(times[rows])
        n = int(rows.sum())
        splits[name] = SplitInfo(name, path.name, n, lo, hi,
                                 float((labels[rows] > 0).mean()) if n else None, _sha256(path))
    features = [
        FeatureInfo(column, t.name, _logical_dtype(joined[column]), t.ttl_ms,
                    float(joined[column].isna().mean()) if len(joined) else None)
        for t in tables for column in t.output_columns()
    ]
    lo, hi = _range(times)
    manifest = DatasetManifest(
        created_ms=int(time.time() * 1000),
        entity_columns=entities,
        time_column=time_column,
        label_column=label_column,
        features=features,
        rows=len(joined),
        min_time_ms=lo,
        max_time_ms=hi,
        split={"method": split.method, "fractions": list(split.fractions) if split.fractions else None,
               "cuts": [c1, c2]},
        splits=splits,
        source=dict(source or {}),
    )
    tmp = out / f".{MANIFEST}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
    os.replace(tmp, out / MANIFEST)
    return manifest


def build_from_offline_store(
    cfg: RtmlConfig,
    examples: pd.DataFrame | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    features: Sequence[str] | None = None,
    split: SplitSpec = SplitSpec(),
    *,
    ttl_ms: Mapping[str, int] | None = None,
    views: Sequence[FeatureView] | None = None,
    offline_dir: str | os.PathLike[str] | None = None,
    source: Mapping[str, Any] | None = None,
) -> DatasetManifest:
    """A data set from examples (a frame or a file) and the configured offline store.

    ``features``: ``<view>.<feature>_<window>`` names (default: every feature of every view);
    ``ttl_ms``: per-view TTL overrides; ``views`` / ``offline_dir`` default to the config's;
    ``source``: extra entries for the manifest's ``source`` (e.g. where in-memory examples
    came from).
    """
    views = list(views) if views is not None else views_from_config(cfg)
    offline = str(offline_dir if offline_dir is not None else cfg.pipeline.offline_dir)
    tables = offline_tables(offline, views, features, ttl_ms)
    examples_path = None
    if not isinstance(examples, pd.DataFrame):
        examples_path = str(examples)
        examples = read_table(examples)  # build_dataset validates it
    recorded = {
        "examples": examples_path,
        "offline_dir": offline,
        "views": {name: {k: v for k, v in asdict(source_files(offline, name)).items() if k != "view"}
                  for name in dict.fromkeys(t.name for t in tables)},
    } | dict(source or {})
    return build_dataset(examples, tables, out_dir, split, source=recorded)
