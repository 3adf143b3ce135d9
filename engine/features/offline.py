"""The offline store: a Parquet log of closed windows, partitioned by hour.

Layout: ``<root>/<view>/date=YYYY-MM-DD/hour=HH/part-<writer>-<random>.parquet`` where
the hour is that of ``window_end_ms`` (the feature time). Columns: ``entity``,
``window``, ``window_start_ms``, ``window_end_ms``, ``created_ms`` and one column per
feature (without the window suffix). Output is at-least-once: after a crash a
window may be logged twice with identical values; :func:`read_offline` keeps the
newest ``created_ms`` per (entity, window, window_end_ms).
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from engine.features.spec import FeatureView

_ARROW = {"int": pa.int64(), "float": pa.float64(), "str": pa.string()}
KEY_COLUMNS = ["entity", "window", "window_end_ms"]


def offline_schema(view: FeatureView) -> pa.Schema:
    """Arrow schema of a view's offline log."""
    fields = [
        pa.field("entity", pa.string()),
        pa.field("window", pa.string()),
        pa.field("window_start_ms", pa.int64()),
        pa.field("window_end_ms", pa.int64()),
        pa.field("created_ms", pa.int64()),
    ]
    fields += [pa.field(f.name, _ARROW[f.value_type]) for f in view.features]
    return pa.schema(fields)


class OfflineLogWriter:
    """Writes closed-window rows of one view as hourly-partitioned Parquet files.

    Rows are written before :meth:`write` returns: the dataflow snapshots its state
    after a batch is output, so anything buffered across batches could be lost in a
    crash. One file per call and hour partition; compaction is a separate concern.
    """

    def __init__(self, root: str | os.PathLike[str], view: FeatureView, writer_id: str) -> None:
        self.root = Path(root)
        self.view = view
        self.writer_id = writer_id
        self.schema = offline_schema(view)
        self.files_written = 0

    def write(self, rows: Iterable[dict[str, Any]], created_ms: int | None = None) -> None:
        """Write rows, one file per hour partition (atomic rename)."""
        created_ms = int(time.time() * 1000) if created_ms is None else created_ms
        by_hour: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for row in rows:
            dt = datetime.fromtimestamp(row["window_end_ms"] / 1000, tz=timezone.utc)
            by_hour.setdefault((dt.strftime("%Y-%m-%d"), dt.strftime("%H")), []).append(
                {**row, "created_ms": created_ms}
            )
        for (date, hour), hour_rows in by_hour.items():
            folder = self.root / self.view.name / f"date={date}" / f"hour={hour}"
            folder.mkdir(parents=True, exist_ok=True)
            columns = {f.name: [r.get(f.name) for r in hour_rows] for f in self.schema}
            table = pa.table(columns, schema=self.schema)
            name = f"part-{self.writer_id}-{uuid.uuid4().hex[:12]}.parquet"
            tmp = folder / f".{name}.tmp"
            pq.write_table(table, tmp)
            tmp.rename(folder / name)  # readers never see half a file
            self.files_written += 1


def offline_files(root: str | os.PathLike[str], view_name: str) -> list[Path]:
    """A view's finished offline Parquet files, by path (hidden ones are still being written)."""
    folder = Path(root) / view_name
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*.parquet") if not p.name.startswith("."))


def read_offline(root: str | os.PathLike[str], view: FeatureView, dedupe: bool = True) -> pd.DataFrame:
    """The view's offline log as a DataFrame, duplicates from replays removed."""
    files = offline_files(root, view.name)
    schema = offline_schema(view)
    if not files:
        return schema.empty_table().to_pandas()
    df = pa.concat_tables([pq.read_table(f, schema=schema) for f in files]).to_pandas()
    if dedupe:
        df = df.sort_values("created_ms").drop_duplicates(KEY_COLUMNS, keep="last")
    return df.sort_values(KEY_COLUMNS).reset_index(drop=True)
