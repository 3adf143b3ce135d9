"""An independent pandas oracle for windowed features (tests only).

Lateness is replayed per shard in arrival order from the documented rule; all
aggregation math is plain pandas over the accepted events.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import pandas as pd

from engine.features.spec import Agg, FeatureView
from operators.route import shard_key


@dataclass
class OracleResult:
    late: set[int]  # indexes of late events
    running: dict[str, dict[str, Any]]  # entity -> {column: value, "_asof": ms, "_t": ms}
    closed: pd.DataFrame  # entity, window, window_start_ms, window_end_ms, <feature>...


def _entity(view: FeatureView, ev: dict[str, Any]) -> str | None:
    parts = []
    for f in view.entity:
        v = ev["context"].get(f[len("context."):]) if f.startswith("context.") else ev.get(f)
        if v is None or v == "":
            return None
        parts.append(str(v))
    if len(parts) == 1:
        return parts[0]
    return "|".join(p.replace("%", "%25").replace("|", "%7C") for p in parts)


def _field(df: pd.DataFrame, path: str) -> pd.Series:
    if path.startswith("context."):
        key = path[len("context."):]
        return df["context"].map(lambda c: c.get(key))
    return df[path]


def _aggregate(view: FeatureView, df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per-group feature values (without window suffix)."""
    groups = df[keys].drop_duplicates().set_index(keys)
    out = pd.DataFrame(index=groups.index)
    for feat in view.features:
        if feat.agg is Agg.RATIO:
            continue
        sub = df
        for name, values in feat.where:
            sub = sub[_field(sub, name).isin(list(values))]
        if feat.agg is Agg.COUNT:
            out[feat.name] = sub.groupby(keys).size().reindex(out.index).fillna(0).astype(int)
            continue
        vals = _field(sub, feat.field or "")
        if feat.agg is Agg.DISTINCT:
            series = sub.assign(_v=vals.map(lambda v: None if v is None else str(v))).dropna(subset=["_v"])
            out[feat.name] = series.groupby(keys)["_v"].nunique().reindex(out.index).fillna(0).astype(int)
            continue
        if feat.agg is Agg.LAST and feat.value_type == "str":
            series = sub.assign(_v=vals.map(lambda v: None if v is None else str(v)))
        else:
            numeric = vals.map(lambda v: v if isinstance(v, (int, float)) and not isinstance(v, bool)
                               and math.isfinite(v) else None)
            series = sub.assign(_v=numeric.astype("float64"))
        series = series.dropna(subset=["_v"])
        g = series.groupby(keys)["_v"]
        if feat.agg is Agg.SUM:
            out[feat.name] = g.sum().reindex(out.index).fillna(0.0)
        elif feat.agg is Agg.MEAN:
            out[feat.name] = g.mean().reindex(out.index)
        elif feat.agg is Agg.MIN:
            out[feat.name] = g.min().reindex(out.index)
        elif feat.agg is Agg.MAX:
            out[feat.name] = g.max().reindex(out.index)
        elif feat.agg is Agg.LAST:
            last = series.sort_values(["event_time", "_v"]).groupby(keys)["_v"].last()
            out[feat.name] = last.reindex(out.index)
    for feat in view.features:
        if feat.agg is Agg.RATIO:
            num, den = out[feat.numerator], out[feat.denominator]
            out[feat.name] = [n / d if d else None for n, d in zip(num, den)]
    return out.reset_index()


def _clean(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item"):
        return value.item()
    return value


def oracle(
    view: FeatureView,
    events: Sequence[dict[str, Any]],
    *,
    out_of_orderness_ms: int,
    allowed_lateness_ms: int,
    shards: int,
) -> OracleResult:
    """Features of ``view`` after ``events`` (in arrival order), idle advance off."""
    max_t: dict[str, int] = {}
    wm_high: dict[str, int] = {}
    source_max: dict[str, dict[Any, int]] = {}
    late: set[int] = set()
    rows = []
    shard_of: dict[str, str] = {}
    for i, ev in enumerate(events):
        if view.event_types is not None and ev["event_type"] not in view.event_types:
            continue
        entity = _entity(view, ev)
        if entity is None:
            continue
        key = shard_key(view.name, entity, shards)
        shard_of[entity] = key
        t = ev["event_time"]
        per_source = source_max.setdefault(key, {})
        # Watermark: slowest source's newest time - out_of_orderness, never moving back.
        wm = wm_high.get(key)
        if wm is not None and t < wm - allowed_lateness_ms:
            late.add(i)
            continue
        source = ev.get("_source", 0)
        per_source[source] = max(per_source.get(source, t), t)
        new_wm = min(per_source.values()) - out_of_orderness_ms
        wm_high[key] = new_wm if wm is None else max(wm, new_wm)
        max_t[key] = max(max_t.get(key, t), t)
        rows.append({**{k: v for k, v in ev.items() if k != "_source"}, "entity": entity, "_i": i})
    df = pd.DataFrame(rows)
    running: dict[str, dict[str, Any]] = {}
    closed_parts = []
    if df.empty:
        return OracleResult(late, running, pd.DataFrame())
    df["asof"] = df["entity"].map(lambda e: max_t[shard_of[e]])
    for w in view.windows:
        S, W = w.slide_ms, w.size_ms
        end = (df["asof"] // S + 1) * S
        inside = df[(df["event_time"] >= end - W) & (df["event_time"] < end)]
        agg = _aggregate(view, inside, ["entity"]) if not inside.empty else pd.DataFrame(columns=["entity"])
        by_entity = {r["entity"]: r for r in agg.to_dict("records")}
        for entity in df["entity"].unique():
            r = by_entity.get(entity)
            dest = running.setdefault(entity, {})
            for feat in view.features:
                if w.name not in view.windows_of(feat):
                    continue
                if r is None:
                    v = 0 if feat.value_type == "int" else None
                else:
                    v = _clean(r[feat.name])
                dest[f"{feat.name}_{w.name}"] = v
        # Closed windows: every end e with e - W <= t < e, once the shard's watermark passed e.
        exploded = []
        for j in range(w.tiles):
            part = df.copy()
            part["window_end_ms"] = (part["event_time"] // S + 1 + j) * S
            exploded.append(part)
        ex = pd.concat(exploded)
        limit = ex["entity"].map(lambda e: wm_high[shard_of[e]] - allowed_lateness_ms)
        ex = ex[ex["window_end_ms"] <= (limit // S) * S]
        if not ex.empty:
            agg = _aggregate(view, ex, ["entity", "window_end_ms"])
            agg["window"] = w.name
            agg["window_start_ms"] = agg["window_end_ms"] - W
            closed_parts.append(agg)
    last_t = df.groupby("entity")["event_time"].max().to_dict()
    for entity, dest in running.items():
        dest["_t"] = int(last_t[entity])
        dest["_asof"] = int(max_t[shard_of[entity]])
    closed = pd.concat(closed_parts, ignore_index=True) if closed_parts else pd.DataFrame()
    return OracleResult(late, running, closed)


def normalise_closed(df: pd.DataFrame, view: FeatureView) -> list[dict[str, Any]]:
    """Comparable, sorted records of a closed-window table."""
    cols = ["entity", "window", "window_start_ms", "window_end_ms"] + [f.name for f in view.features]
    if df.empty:
        return []
    recs = [{c: _clean(r.get(c)) for c in cols} for r in df[cols].to_dict("records")]
    return sorted(recs, key=lambda r: (r["entity"], r["window"], r["window_end_ms"]))


def make_events(
    seed: int,
    n: int,
    *,
    users: int = 40,
    items: int = 15,
    base_ms: int = 1_767_225_600_000,  # 2026-01-01T00:00:00Z
    span_ms: int = 3 * 3_600_000,
    jitter_ms: int = 4_000,
    late_every: int = 50,
    late_by_ms: int = 2 * 3_600_000,
) -> list[dict[str, Any]]:
    """Events in arrival order: mostly increasing time, jittered out of order, with late ones."""
    import random

    rng = random.Random(seed)
    types = ["impression"] * 5 + ["click", "view", "view", "conversion"]
    out = []
    for i in range(n):
        t = base_ms + int(span_ms * i / n) + rng.randint(-jitter_ms, jitter_ms)
        if late_every and i % late_every == late_every - 1:
            t -= late_by_ms
        event_type = rng.choice(types)
        context: dict[str, Any] = {"device": rng.choice(["ios", "web"])}
        if event_type == "view":
            context["dwell_ms"] = rng.randint(0, 30_000)
        out.append({
            "user_id": f"u{rng.randrange(users)}",
            "item_id": f"i{rng.randrange(items)}",
            "event_type": event_type,
            "event_time": t,
            "context": context,
        })
    return out
