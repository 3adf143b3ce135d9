"""The offline loop's speed: point-in-time joins (and, later, model training).

``python -m benchmarks.offline`` runs each section and writes
``benchmarks/results/offline.json`` as ``{"machine": ..., "<section>": {...}}``.

PIT section (:func:`run_pit`): one generated data set -- labelled examples over 100k users
and 10k items, and three feature tables (``user`` 1h and 24h, ``item`` 1h), several rows per
entity, with equal feature times, out-of-order rows and a TTL -- joined two ways:

* **floor** -- pandas ``merge_asof`` doing the same job: examples sorted by time, each table
  pre-sorted by (feature time, created time) so that the last of equal feature times is the
  newest created, ``by`` the entity key, ``tolerance`` = TTL, then the examples' order restored;
* **ours** -- :func:`engine.datasets.pit.point_in_time_join`.

Both results are checked equal before anything is timed. ``ratio_to_floor`` = our rows/s /
floor rows/s (target >= 1.0). Times are the best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable

import numpy as np
import pandas as pd

from benchmarks.offline_models import run_models
from benchmarks.report import fmt_rate, machine_description, machine_line, publish, reprint_from_json
from engine.datasets.pit import FeatureTable, point_in_time_join

NAME = "offline"
T0 = 1_767_225_600_000
HOUR = 3_600_000


def log(msg: str) -> None:
    print(f"[offline] {msg}", flush=True)


def _table(rng: np.random.Generator, name: str, entity_column: str, entity_ids: np.ndarray, rows_per_entity: int,
           span_ms: int, step_ms: int, ttl_ms: int) -> FeatureTable:
    n = len(entity_ids) * rows_per_entity
    ent = np.repeat(entity_ids, rows_per_entity)
    # Feature times on a grid (windows close on boundaries), so equal times are common.
    ft = T0 + rng.integers(0, span_ms // step_ms + 1, n) * step_ms
    created = ft + rng.integers(0, 3, n) * 1000  # equal feature times, different created times
    order = rng.permutation(n)  # arrival order is not time order
    frame = pd.DataFrame({
        "entity": ent[order],
        "window_end_ms": ft[order],
        "created_ms": created[order],
        "impressions": rng.integers(0, 50, n)[order],
        "clicks": rng.integers(0, 5, n)[order],
        "ctr": rng.random(n)[order],
    })
    frame.loc[frame.index[rng.random(n) < 0.01], "ctr"] = np.nan  # some null newest values
    return FeatureTable(name, frame, (entity_column,), ("impressions", "clicks", "ctr"), ttl_ms=ttl_ms)


def generate(rows: int, users: int = 100_000, items: int = 10_000, seed: int = 11) -> tuple[pd.DataFrame, list[FeatureTable]]:
    """Examples (``user_id``, ``item_id``, ``event_time_ms``, ``label``) and three feature tables."""
    rng = np.random.default_rng(seed)
    span = 48 * HOUR
    user_ids = np.array([f"u{i}" for i in range(users)], dtype=object)
    item_ids = np.array([f"i{i}" for i in range(items)], dtype=object)
    # 5% of example users never appear in the feature tables.
    examples = pd.DataFrame({
        "user_id": user_ids[rng.integers(0, users, rows)] if rows else np.array([], dtype=object),
        "item_id": item_ids[rng.integers(0, items, rows)] if rows else np.array([], dtype=object),
        "event_time_ms": T0 + rng.integers(0, span, rows),
        "label": (rng.random(rows) < 0.05).astype(np.int64),
    })
    known_users = user_ids[: int(users * 0.95)]
    tables = [
        _table(rng, "user_1h", "user_id", known_users, 5, span, 5 * 60_000, 6 * HOUR),
        _table(rng, "user_24h", "user_id", known_users, 3, span, HOUR, 2 * 24 * HOUR),
        _table(rng, "item_1h", "item_id", item_ids, 40, span, 5 * 60_000, 3 * HOUR),
    ]
    return examples, tables


def merge_asof_join(examples: pd.DataFrame, tables: list[FeatureTable], time_column: str = "event_time_ms") -> pd.DataFrame:
    """The floor: the same join with ``pandas.merge_asof`` (single-column entity keys)."""
    left = examples.assign(__row=np.arange(len(examples))).sort_values(time_column, kind="stable")
    for t in tables:
        (entity,) = t.entity_columns
        sort_by = [t.time_column] + ([t.created_column] if t.created_column else [])
        right = t.frame[[t.key_column, *sort_by, *t.features]].sort_values(sort_by, kind="stable")
        right = right.rename(columns={f: f"{t.name}.{f}" for f in t.features} | {t.key_column: "__key",
                                                                                  t.time_column: "__ft"})
        left = pd.merge_asof(left, right.drop(columns=[t.created_column] if t.created_column else []),
                             left_on=time_column, right_on="__ft", left_by=entity, right_by="__key",
                             direction="backward", allow_exact_matches=True, tolerance=t.ttl_ms)
        left = left.drop(columns=["__ft", "__key"])
    out = left.sort_values("__row").drop(columns="__row")
    out.index = examples.index
    return out


def _same(ours: pd.DataFrame, floor: pd.DataFrame) -> bool:
    if list(ours.columns) != list(floor.columns) or len(ours) != len(floor):
        return False
    for c in ours.columns:
        a, b = ours[c], floor[c]
        if pd.api.types.is_numeric_dtype(a.dtype) and pd.api.types.is_numeric_dtype(b.dtype):
            # merge_asof turns missing ints into float NaN; ours keeps Int64 with <NA>.
            x = a.to_numpy(dtype=np.float64, na_value=np.nan)
            y = b.to_numpy(dtype=np.float64, na_value=np.nan)
            if not np.array_equal(x, y, equal_nan=True):
                return False
        elif not a.equals(b):
            return False
    return True


def _best_time(fn: Callable[[], Any], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def run_pit(rows: int = 1_000_000, users: int = 100_000, items: int = 10_000, repeat: int = 3) -> dict[str, Any]:
    """Time our point-in-time join against the merge_asof floor on the same data."""
    examples, tables = generate(rows, users, items)
    ours = point_in_time_join(examples, tables)
    floor = merge_asof_join(examples, tables)
    if not _same(ours, floor):
        raise AssertionError("point_in_time_join and the merge_asof floor disagree")
    feature_columns = [c for t in tables for c in t.output_columns()]
    t_floor = _best_time(lambda: merge_asof_join(examples, tables), repeat)
    t_ours = _best_time(lambda: point_in_time_join(examples, tables), repeat)
    return {
        "rows": rows,
        "users": users,
        "items": items,
        "tables": [{"name": t.name, "rows": len(t.frame), "features": list(t.features), "ttl_ms": t.ttl_ms}
                   for t in tables],
        "null_rate": float(ours[feature_columns].isna().to_numpy().mean()),
        "repeat": repeat,
        "floor_seconds": t_floor,
        "ours_seconds": t_ours,
        "floor_rows_per_s": rows / t_floor,
        "ours_rows_per_s": rows / t_ours,
        "ratio_to_floor": t_floor / t_ours,
        "verified_equal": True,
    }


def table(result: dict[str, Any]) -> str:
    """Markdown table of a result file."""
    lines = [f"{machine_line(result.get('machine'))}. Target: the PIT join at least as fast as merge_asof on the same "
             "data (ratio ≥ 1.0).", "",
             "| section | rows | ours rows/s | floor rows/s | ratio_to_floor |", "|---|---|---|---|---|"]
    pit = result.get("pit")
    if pit:
        lines.append(f"| PIT join vs merge_asof | {pit['rows']:,} | {fmt_rate(pit['ours_rows_per_s'])} | "
                     f"{fmt_rate(pit['floor_rows_per_s'])} | {pit['ratio_to_floor']:.2f} |")
    models = result.get("models")
    if models:
        m = models["model"]
        lines += ["", f"DeepFM ({m['fields']} fields × {m['buckets']} buckets, {m['n_dense']} dense, embed "
                      f"{m['embed_dim']}, MLP {'-'.join(map(str, m['hidden']))}; trained on {m['train_rows']:,} "
                      f"synthetic Criteo-like rows, measured on {m['valid_rows']:,}; {models['threads']} thread, "
                      f"export {models['export']['exporter']} opset {models['export']['opset']}, parity "
                      f"{models['export']['parity_max_abs_diff']:.1e}).", "",
                  "| inference | torch rows/s (floor) | ONNX Runtime rows/s | ratio_to_floor |", "|---|---:|---:|---:|"]
        for batch, row in models["inference"].items():
            lines.append(f"| {batch.replace('_', ' ')} | {fmt_rate(row['torch_rows_per_s'])} | "
                         f"{fmt_rate(row['ort_rows_per_s'])} | {row['ort_over_torch']:.2f} |")
        lines += ["", "| precision | speed-up batch 1 | speed-up batch 64 | AUC | AUC change | mean shift vs fp32 "
                      "| calibration ratio |", "|---|---:|---:|---:|---:|---:|---:|"]
        for precision, v in models["variants"].items():
            shift = f"{v['mean_shift_vs_fp32']:+.2%}"
            if "mean_shift_vs_fp32_before_recalibration" in v:
                shift = f"{v['mean_shift_vs_fp32_before_recalibration']:+.2%} → {shift} (recalibrated)"
            change = "—" if v["auc_change"] is None else f"{v['auc_change']:+.5f}"
            lines.append(f"| {precision} | {v['speedup_batch_1']:.2f}× | {v['speedup_batch_64']:.2f}× | {v['auc']:.4f} "
                         f"| {change} | {shift} | {v['calibration_ratio']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.offline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="example rows of the PIT join")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default=None, help="results directory (default benchmarks/results)")
    parser.add_argument("--no-readme", action="store_true", help="do not touch README.md")
    parser.add_argument("--from-json", default=None, metavar="PATH",
                        help="only print the table of an earlier result file (and update the README)")
    args = parser.parse_args(argv)
    if args.from_json:
        return reprint_from_json(args.from_json, NAME, table, not args.no_readme)
    # One entry per section: adding a section is one line.
    sections: dict[str, Callable[[], dict[str, Any]]] = {
        "pit": lambda: run_pit(args.rows, repeat=args.repeat),
        "models": run_models,
    }
    result: dict[str, Any] = {"name": NAME, "machine": machine_description()}
    for name, run in sections.items():
        log(f"{name} ...")
        result[name] = run()
        log(f"{name}: ratio_to_floor {result[name].get('ratio_to_floor', float('nan')):.2f}")
    path = publish(NAME, result, table, args.out, readme=not args.no_readme)
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
