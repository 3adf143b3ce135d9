"""Feature tables from rtml's offline store (the Parquet log of closed windows).

One :class:`~engine.datasets.pit.FeatureTable` per (view, window): its feature time is
``window_end_ms``, ties are broken by ``created_ms``, its TTL is the view's ``ttl`` unless
overridden, and its output columns are named like serving's feature sources,
``<view>.<feature>_<window>`` (e.g. ``user.clicks_1h``).

>>> from engine.features.spec import load_views, default_views_path
>>> views = load_views(default_views_path())
>>> select_features(views, ["user.clicks_1h", "user_item.clicks_24h"])
{('user', '1h'): ['clicks_1h'], ('user_item', '24h'): ['clicks_24h']}
>>> len(select_features(views)[("item", "5m")])
4
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from engine.datasets.pit import FeatureTable
from engine.features.offline import offline_files, read_offline
from engine.features.spec import FeatureView

_SOURCE_COLUMNS = ["entity", "window_end_ms", "created_ms"]


def select_features(views: Sequence[FeatureView], names: Sequence[str] | None = None) -> dict[tuple[str, str], list[str]]:
    """``{(view, window): [<feature>_<window>, ...]}`` for the named sources (default: all).

    Names are ``<view>.<feature>_<window>``; unknown names raise ``ValueError`` listing them.
    """
    columns: dict[tuple[str, str], list[str]] = {}
    known: dict[str, tuple[str, str, str]] = {}
    for view in views:
        for window in view.windows:
            for feat in view.features:
                if window.name in view.windows_of(feat):
                    column = f"{feat.name}_{window.name}"
                    known[f"{view.name}.{column}"] = (view.name, window.name, column)
    wanted = list(known) if names is None else list(dict.fromkeys(names))
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise ValueError(f"unknown feature(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    for name in wanted:
        view_name, window_name, column = known[name]
        columns.setdefault((view_name, window_name), []).append(column)
    return columns


def offline_tables(
    offline_dir: str | os.PathLike[str],
    views: Sequence[FeatureView],
    features: Sequence[str] | None = None,
    ttl_ms: Mapping[str, int] | None = None,
) -> list[FeatureTable]:
    """Feature tables of the selected sources, read from ``offline_dir``.

    ``ttl_ms`` overrides a view's TTL by view name. Each view's log is read once
    (:func:`engine.features.offline.read_offline`, replay duplicates removed).
    """
    by_name = {v.name: v for v in views}
    unknown = sorted(set(ttl_ms or {}) - set(by_name))
    if unknown:
        raise ValueError(f"TTL given for unknown view(s) {', '.join(unknown)}")
    selected = select_features(views, features)
    tables: list[FeatureTable] = []
    logs = {name: read_offline(offline_dir, by_name[name]) for name in dict.fromkeys(v for v, _ in selected)}
    for (view_name, window_name), columns in selected.items():
        view, log = by_name[view_name], logs[view_name]
        rows = log[log["window"] == window_name]
        # Stored columns lack the window suffix; rename them to the source names.
        frame = rows[_SOURCE_COLUMNS + [c.removesuffix(f"_{window_name}") for c in columns]]
        frame = frame.rename(columns={c.removesuffix(f"_{window_name}"): c for c in columns}).reset_index(drop=True)
        ttl = (ttl_ms or {}).get(view_name, view.ttl_ms)
        tables.append(FeatureTable(view_name, frame, view.entity, tuple(columns), ttl_ms=ttl))
    return tables


@dataclass(frozen=True)
class SourceFiles:
    """What a training set was built from: a view's offline files, counted and digested."""

    view: str
    files: int
    bytes: int
    digest: str  # sha256 over (relative path, size) of every file, sorted by path


def source_files(offline_dir: str | os.PathLike[str], view: str) -> SourceFiles:
    """Count and digest a view's offline Parquet files (by path and size, not content: cheap
    at any size, and files are written once under unique names)."""
    folder = Path(offline_dir) / view
    files = offline_files(offline_dir, view)
    h = hashlib.sha256()
    total = 0
    for p in files:
        size = p.stat().st_size
        total += size
        h.update(f"{p.relative_to(folder).as_posix()}\0{size}\n".encode())
    return SourceFiles(view, len(files), total, h.hexdigest())
