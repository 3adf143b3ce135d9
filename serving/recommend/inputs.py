"""Model inputs from a registered model's input layout: the one place training arrays are rebuilt.

``engine.registry.register_run`` stores the run's layout in ``metadata.json`` under
``features`` (see :mod:`engine.training.run`): a ranker's ``{"dense": [...], "sparse": [...],
"buckets": int, "null_indicators": bool}``; a two-tower run's ``{"user": {...}, "item": {...}}``
of the same shape (each tower's metadata says which side it is in ``tower``).
:class:`InputLayout` turns *columns* -- a source name to one value per row, ``None`` for a
null, exactly what a training frame's columns hold -- into the ``dense`` / ``sparse`` arrays
the model was trained on, by the rules of :meth:`engine.training.data.ClickData.from_frame`:

* dense: float64 values, null -> 0, then float32; with ``null_indicators`` every column is
  followed by its ``<name>.is_null`` 0/1 column;
* sparse: :func:`engine.training.data.hash_column` salted with the column name (null -> 0).

Serving (:mod:`serving.recommend.funnel`), the offline evaluation and the benchmark all build
inputs here; ``tests/serving/recommend/test_inputs.py`` checks the arrays equal
``ClickData.from_frame``'s for the same rows.

:class:`FeaturePlan` says where each source of a set of layouts comes from at serving time:
``user_id`` / ``item_id`` are entity ids; ``<view>.<column>`` is a column of an online feature
view, read for the user (views keyed by ``user_id``), for each candidate (``item_id``) or for
each pair (``user_id, item_id``).

>>> layout = InputLayout(dense=("user.clicks_1h",), sparse=("item_id",), buckets=1000, null_indicators=True)
>>> dense, sparse = layout.arrays({"user.clicks_1h": [2.0, None], "item_id": ["i1", None]})
>>> dense.tolist(), int(sparse[1, 0])
([[2.0, 0.0], [0.0, 1.0]], 0)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

import numpy as np

from engine.export.torch_export import feeds
from engine.features.spec import FeatureView
from engine.training.data import buckets_of, hash_column
from serving.config import parse_source
from serving.features import FeatureConfigError, ResolvedView

USER_ID, ITEM_ID = "user_id", "item_id"
Level = Literal["user", "item", "pair"]
_LEVELS: dict[tuple[str, ...], Level] = {(USER_ID,): "user", (ITEM_ID,): "item", (USER_ID, ITEM_ID): "pair"}
_HASH_CACHE_MAX = 1 << 20  # cached (column, value) buckets before the cache is cleared


@dataclass(frozen=True)
class InputLayout:
    """How one model's ``dense`` / ``sparse`` inputs are built from named columns."""

    dense: tuple[str, ...]
    sparse: tuple[str, ...]
    buckets: int | Mapping[str, int]
    null_indicators: bool = False
    # Entity ids repeat across requests (the same items are candidates again and again):
    # their buckets are cached instead of hashed per request.
    _cache: dict[tuple[str, str], int] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_features(cls, features: Mapping[str, Any]) -> "InputLayout":
        """From a layout dict (a ranker's ``features`` or one side of a two-tower run's)."""
        try:
            return cls(tuple(features["dense"]), tuple(features["sparse"]), features["buckets"],
                       bool(features.get("null_indicators", False)))
        except (KeyError, TypeError) as exc:
            raise FeatureConfigError(f"model metadata 'features' is not an input layout: {exc}") from None

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> "InputLayout":
        """From a registry ``metadata.json``: the tower's side for a two-tower model."""
        features = metadata.get("features")
        if not isinstance(features, Mapping):
            raise FeatureConfigError("the model's metadata.json records no input layout ('features')")
        side = metadata.get("tower")
        if side is not None:
            if side not in features:
                raise FeatureConfigError(f"two-tower metadata has no '{side}' layout")
            return cls.from_features(features[side])
        return cls.from_features(features)

    @property
    def sources(self) -> tuple[str, ...]:
        """Every column the layout reads, dense then sparse."""
        return self.dense + self.sparse

    def dense_array(self, columns: Mapping[str, Sequence[Any]], n: int) -> np.ndarray:
        """``[n, n_dense(*2)]`` float32 (null -> 0, optional is-null columns interleaved)."""
        width = len(self.dense) * (2 if self.null_indicators else 1)
        out = np.zeros((n, width), dtype=np.float64)
        step = 2 if self.null_indicators else 1
        for j, name in enumerate(self.dense):
            v = np.asarray(columns[name], dtype=np.float64)  # None -> nan
            null = np.isnan(v)
            out[:, j * step] = np.where(null, 0.0, v)
            if self.null_indicators:
                out[:, j * step + 1] = null
        return out.astype(np.float32)

    def sparse_array(self, columns: Mapping[str, Sequence[Any]], n: int) -> np.ndarray:
        """``[n, n_sparse]`` int64 buckets, hashed exactly as in training."""
        out = np.zeros((n, len(self.sparse)), dtype=np.int64)
        cache = self._cache
        if len(cache) > _HASH_CACHE_MAX:
            cache.clear()
        for j, name in enumerate(self.sparse):
            values = columns[name]
            misses = [v for v in dict.fromkeys(values) if v is not None and (name, v) not in cache]
            if misses:
                # Hashed as text, as hash_column hashes an object column: ids are strings.
                for v, b in zip(misses, hash_column(np.array([str(m) for m in misses], dtype=object),
                                                    buckets_of(self.buckets, name), name).tolist()):
                    cache[(name, v)] = b
            out[:, j] = [0 if v is None else cache[(name, v)] for v in values]
        return out

    def arrays(self, columns: Mapping[str, Sequence[Any]]) -> tuple[np.ndarray, np.ndarray]:
        """``(dense, sparse)`` for the rows of ``columns`` (every source present, equal lengths)."""
        n = len(columns[self.sources[0]]) if self.sources else 0
        return self.dense_array(columns, n), self.sparse_array(columns, n)

    def feeds(self, columns: Mapping[str, Sequence[Any]], input_names: Sequence[str]) -> dict[str, np.ndarray]:
        """ONNX Runtime feeds for a graph with ``input_names`` (``dense``/``sparse``, as exported)."""
        dense, sparse = self.arrays(columns)
        return feeds(dense, sparse, list(input_names))


@dataclass(frozen=True)
class Source:
    """Where one column comes from: an entity id, or ``view.column`` at a level."""

    name: str
    level: Level
    view: str | None = None  # None: the entity id itself
    column: str | None = None


@dataclass(frozen=True)
class FeaturePlan:
    """The online reads behind a set of sources (module docstring).

    ``views`` holds, per view read, the :class:`~serving.features.ResolvedView` (its bound
    columns; text columns allowed for sparse sources) and its level.
    """

    sources: dict[str, Source]
    views: dict[str, tuple[ResolvedView, Level]]

    @classmethod
    def compile(cls, names: Sequence[str], known_views: Mapping[str, FeatureView]) -> "FeaturePlan":
        """Resolve ``names`` (entity ids or ``view.column``) against the feature views.

        Raises :class:`~serving.features.FeatureConfigError` for an unknown view or column, or a
        view keyed by anything but the user and/or the item.
        """
        sources: dict[str, Source] = {}
        columns: dict[str, list[str]] = {}
        for name in dict.fromkeys(names):
            if name in (USER_ID, ITEM_ID):
                sources[name] = Source(name, "user" if name == USER_ID else "item")
                continue
            try:
                view, column = parse_source(name)
            except ValueError as exc:
                raise FeatureConfigError(str(exc)) from None
            spec = known_views.get(view)
            if spec is None:
                raise FeatureConfigError(
                    f"input {name!r}: feature view {view!r} is not in the server's feature specs "
                    f"(views: {', '.join(sorted(known_views)) or 'none'})"
                )
            level = _LEVELS.get(tuple(spec.entity))
            if level is None:
                raise FeatureConfigError(
                    f"input {name!r}: view {view!r} is keyed by {list(spec.entity)}; Recommend reads views "
                    "keyed by user_id, item_id or both"
                )
            if column not in spec.column_types():
                raise FeatureConfigError(
                    f"input {name!r}: view {view!r} has no column {column!r} "
                    f"(columns: {', '.join(spec.column_types())})"
                )
            sources[name] = Source(name, level, view, column)
            columns.setdefault(view, []).append(column)
        views: dict[str, tuple[ResolvedView, Level]] = {}
        for view, cols in columns.items():
            spec = known_views[view]
            types = spec.column_types()
            resolved = ResolvedView(view, tuple(spec.entity), tuple(cols), spec.ttl_ms,
                                    tuple(types[c] in ("int", "float") for c in cols))
            views[view] = (resolved, _LEVELS[tuple(spec.entity)])
        return cls(sources, views)

    def views_at(self, level: Level) -> list[ResolvedView]:
        """The views read at ``level``."""
        return [v for v, lv in self.views.values() if lv == level]


def decode_rows(replies: Sequence[Any], view: ResolvedView, now_ms: int) -> list[list[Any] | None]:
    """HMGET replies (columns then ``_t``) -> per reply its values (numbers, or text for text
    columns), or None when the hash is missing or expired (all nulls). Empty strings are nulls.

    One call per view and request (hundreds of replies): the loop keeps to local names.
    """
    ttl = view.ttl_ms
    numeric = view.numeric
    out: list[list[Any] | None] = []
    append = out.append
    for raw in replies:
        if raw.__class__ is not list or raw[-1] is None:  # an error reply, or no hash
            append(None)
            continue
        try:
            if ttl is not None and now_ms - int(raw[-1]) > ttl:
                append(None)
                continue
        except ValueError:
            append(None)
            continue
        row: list[Any] = []
        for value, is_number in zip(raw, numeric):  # zip stops before _t
            if not value:
                row.append(None)
            elif is_number:
                try:
                    row.append(float(value))
                except ValueError:
                    row.append(None)
            else:
                row.append(value.decode() if isinstance(value, bytes) else value)
        append(row)
    return out
