"""Declarative feature definitions: views, windows and aggregations.

A :class:`FeatureView` groups the features of one entity (a user, an item, a
user x item pair, any combination of event fields). Each :class:`Feature` is an
aggregation of events that pass its filter, computed over each of the view's
windows. Specs are plain data: they load from YAML or are built in Python.

>>> view = FeatureView.from_dict({
...     "name": "user",
...     "entity": ["user_id"],
...     "windows": {"5m": "5m", "1h": {"size": "1h", "slide": "5m"}},
...     "features": [
...         {"name": "clicks", "agg": "count", "where": {"event_type": "click"}},
...         {"name": "impressions", "agg": "count", "where": {"event_type": "impression"}},
...         {"name": "ctr", "agg": "ratio", "numerator": "clicks", "denominator": "impressions"},
...     ],
... })
>>> [w.slide_ms for w in view.windows]
[300000, 300000]
>>> view.feature_names()
['clicks_5m', 'impressions_5m', 'ctr_5m', 'clicks_1h', 'impressions_1h', 'ctr_1h']
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import yaml

if TYPE_CHECKING:
    from engine.config import RtmlConfig

_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d)\s*$")
_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration_ms(value: str | int) -> int:
    """Parse ``"500ms"``, ``"30s"``, ``"5m"``, ``"1h"``, ``"2d"`` (or an int of ms).

    >>> parse_duration_ms("5m")
    300000
    """
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"duration must be positive, got {value}")
        return value
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"not a duration: {value!r} (use e.g. 500ms, 30s, 5m, 1h, 2d)")
    ms = int(match.group(1)) * _UNIT_MS[match.group(2)]
    if ms <= 0:
        raise ValueError(f"duration must be positive, got {value!r}")
    return ms


_NAME = re.compile(r"[A-Za-z0-9_]+")
# Columns of the offline log that a feature may not shadow.
RESERVED_NAMES = frozenset({"entity", "window", "window_start_ms", "window_end_ms", "created_ms"})
_VIEW_KEYS = frozenset({"name", "entity", "windows", "features", "event_types", "ttl", "description"})
_FEATURE_KEYS = frozenset({"name", "agg", "field", "where", "numerator", "denominator", "windows", "dtype"})


def _check_keys(kind: str, data: Mapping[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(f"{kind} {data.get('name', '?')!r}: unknown key(s) {', '.join(unknown)}; "
                         f"allowed: {', '.join(sorted(allowed))}")


class Agg(str, Enum):
    """Aggregations a feature can use."""

    COUNT = "count"
    SUM = "sum"
    MEAN = "mean"
    MIN = "min"
    MAX = "max"
    LAST = "last"
    DISTINCT = "distinct"  # approximate, Apache DataSketches HLL
    RATIO = "ratio"  # numerator feature / denominator feature, same window


@dataclass(frozen=True, slots=True)
class Window:
    """A tumbling (``slide == size``) or hopping/sliding window over event time."""

    name: str
    size_ms: int
    slide_ms: int

    def __post_init__(self) -> None:
        if self.size_ms % self.slide_ms:
            raise ValueError(
                f"window {self.name}: size {self.size_ms} ms is not a multiple of slide {self.slide_ms} ms"
            )

    @property
    def tiles(self) -> int:
        """How many slide-sized tiles make one window."""
        return self.size_ms // self.slide_ms

    @classmethod
    def from_value(cls, name: str, value: str | int | Mapping[str, Any]) -> "Window":
        if isinstance(value, Mapping):
            size = parse_duration_ms(value["size"])
            slide = parse_duration_ms(value.get("slide", value["size"]))
        else:
            size = slide = parse_duration_ms(value)
        return cls(name=name, size_ms=size, slide_ms=slide)


@dataclass(frozen=True, slots=True)
class Feature:
    """One aggregation, computed once per window of its view.

    ``where`` keeps events whose field equals the value (or one of the values of a list).
    ``field`` is an event field; ``context.x`` reaches into the event's context.
    """

    name: str
    agg: Agg
    field: str | None = None
    where: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    numerator: str | None = None
    denominator: str | None = None
    windows: tuple[str, ...] | None = None  # None: every window of the view
    dtype: str | None = None  # only for ``last``: "float" (default) or "str"

    @property
    def value_type(self) -> str:
        """How values are typed online and offline: ``int``, ``float`` or ``str``."""
        if self.agg in (Agg.COUNT, Agg.DISTINCT):
            return "int"
        if self.agg is Agg.LAST and self.dtype == "str":
            return "str"
        return "float"

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name) or self.name in RESERVED_NAMES:
            raise ValueError(f"feature name {self.name!r}: use letters, digits and _, and none of "
                             f"{', '.join(sorted(RESERVED_NAMES))}")
        if self.dtype not in (None, "float", "str"):
            raise ValueError(f"feature {self.name}: dtype must be float or str")
        needs_field = self.agg not in (Agg.COUNT, Agg.RATIO)
        if needs_field and not self.field:
            raise ValueError(f"feature {self.name}: agg {self.agg.value} needs a field")
        if self.agg is Agg.RATIO and not (self.numerator and self.denominator):
            raise ValueError(f"feature {self.name}: ratio needs numerator and denominator")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Feature":
        _check_keys("feature", data, _FEATURE_KEYS)
        where_raw = data.get("where") or {}
        where = tuple(
            (key, tuple(value) if isinstance(value, (list, tuple)) else (value,))
            for key, value in sorted(where_raw.items())
        )
        windows = data.get("windows")
        return cls(
            name=str(data["name"]),
            agg=Agg(data["agg"]),
            field=data.get("field"),
            where=where,
            numerator=data.get("numerator"),
            denominator=data.get("denominator"),
            windows=tuple(windows) if windows is not None else None,
            dtype=data.get("dtype"),
        )


@dataclass(frozen=True, slots=True)
class FeatureView:
    """The features of one entity, maintained from one event source."""

    name: str
    entity: tuple[str, ...]
    windows: tuple[Window, ...]
    features: tuple[Feature, ...]
    event_types: tuple[str, ...] | None = None  # source filter; None keeps every type
    ttl_ms: int = 2 * 86_400_000
    description: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_]+", self.name):
            raise ValueError(f"view name {self.name!r}: use letters, digits and _")
        if not self.entity:
            raise ValueError(f"view {self.name}: entity needs at least one field")
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            raise ValueError(f"view {self.name}: duplicate feature names")
        window_names = {w.name for w in self.windows}
        if len(window_names) != len(self.windows):
            raise ValueError(f"view {self.name}: duplicate window names")
        if not self.windows:
            raise ValueError(f"view {self.name}: needs at least one window")
        for w in self.windows:
            if not re.fullmatch(r"[A-Za-z0-9]+", w.name):
                raise ValueError(f"view {self.name}: window name {w.name!r} must be letters and digits")
        by_name = {f.name: f for f in self.features}
        for feat in self.features:
            for w in feat.windows or ():
                if w not in window_names:
                    raise ValueError(f"feature {feat.name}: unknown window {w}")
            if feat.agg is Agg.RATIO:
                for ref in (feat.numerator, feat.denominator):
                    target = by_name.get(ref or "")
                    if target is None or target.agg is Agg.RATIO:
                        raise ValueError(f"feature {feat.name}: {ref} must be a non-ratio feature of the view")
                    if set(self.windows_of(feat)) - set(self.windows_of(target)):
                        raise ValueError(f"feature {feat.name}: {ref} is not computed over the same windows")
        columns = self.feature_names()
        if len(set(columns)) != len(columns):
            raise ValueError(f"view {self.name}: feature and window names give duplicate columns")

    def windows_of(self, feat: Feature) -> tuple[str, ...]:
        """Window names a feature is computed over."""
        return feat.windows if feat.windows is not None else tuple(w.name for w in self.windows)

    def column_types(self) -> dict[str, str]:
        """``{<feature>_<window>: value type}`` for every stored column."""
        return {
            f"{feat.name}_{w.name}": feat.value_type
            for w in self.windows
            for feat in self.features
            if w.name in self.windows_of(feat)
        }

    def feature_names(self) -> list[str]:
        """Column names as stored online: ``<feature>_<window>``, window by window."""
        return [
            f"{feat.name}_{w.name}"
            for w in self.windows
            for feat in self.features
            if w.name in self.windows_of(feat)
        ]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FeatureView":
        _check_keys("view", data, _VIEW_KEYS)
        entity = data["entity"]
        windows_raw = data.get("windows") or {}
        event_types = data.get("event_types")
        return cls(
            name=str(data["name"]),
            entity=(entity,) if isinstance(entity, str) else tuple(entity),
            windows=tuple(Window.from_value(name, value) for name, value in windows_raw.items()),
            features=tuple(Feature.from_dict(f) for f in data.get("features", [])),
            event_types=tuple(event_types) if event_types is not None else None,
            ttl_ms=parse_duration_ms(data.get("ttl", "2d")),
            description=str(data.get("description", "")),
        )


def load_views(source: str | Path | Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> list[FeatureView]:
    """Load feature views from a YAML file path, YAML text, or already-parsed data."""
    data: Any = source
    if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source):
        data = yaml.safe_load(Path(source).read_text())  # a path (YAML text spans lines)
    elif isinstance(source, str):
        data = yaml.safe_load(source)
    if isinstance(data, Mapping):
        data = data.get("views", [])
    views = [FeatureView.from_dict(v) for v in data]
    if len({v.name for v in views}) != len(views):
        raise ValueError("duplicate view names")
    return views


def default_views_path() -> Path:
    """The feature views shipped with rtml (used when no spec file is configured)."""
    return Path(__file__).resolve().parent.parent / "defaults" / "features.yaml"


def views_from_config(cfg: "RtmlConfig") -> list[FeatureView]:
    """The configured feature views (``pipeline.feature_specs``; the packaged defaults when unset)."""
    return load_views(cfg.pipeline.feature_specs or default_views_path())
