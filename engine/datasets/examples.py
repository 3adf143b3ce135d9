"""Labelled examples: what a training set is built around.

An example is a row with entity keys (e.g. ``user_id``, ``item_id``), the time it happened
(``event_time_ms``, epoch ms) and a ``label``. They come from a file
(:func:`load_examples`: Parquet, JSONL or CSV) or from raw interaction events
(:func:`examples_from_events`: impressions labelled by later clicks).

>>> events = pd.DataFrame({
...     "user_id": ["u1", "u1", "u2", "u1"],
...     "item_id": ["i1", "i1", "i1", "i2"],
...     "event_type": ["impression", "click", "impression", "impression"],
...     "event_time": [1000, 1500, 1000, 1200],
... })
>>> examples_from_events(events, label_window_ms=1000)
  user_id item_id  event_time_ms  label
0      u1      i1           1000      1
1      u2      i1           1000      0
2      u1      i2           1200      0
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from engine.events.schemas import Interaction

TIME_COLUMN = "event_time_ms"
LABEL_COLUMN = "label"


def read_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A Parquet, JSONL (``.jsonl``/``.ndjson``/``.json``) or CSV file as a DataFrame."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"examples file not found: {p}")
    suffix = p.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(p)
    if suffix in (".jsonl", ".ndjson", ".json"):
        return pd.read_json(p, lines=suffix != ".json", dtype=False)
    if suffix == ".csv":
        # Keep ids as text ("007" must not become 7); times and labels are cast when validated.
        return pd.read_csv(p, dtype=str, keep_default_na=False, na_values=[""])
    raise ValueError(f"{p}: unknown file type {suffix!r} (use .parquet, .jsonl or .csv)")


def validate_examples(
    examples: pd.DataFrame,
    entity_columns: Sequence[str] = (),
    time_column: str = TIME_COLUMN,
    label_column: str = LABEL_COLUMN,
) -> pd.DataFrame:
    """Check the columns and normalise types: times to int64 ms, labels to numbers.

    Raises ``ValueError`` naming the column at fault.

    >>> validate_examples(pd.DataFrame({"user_id": ["u"], "event_time_ms": ["5"], "label": ["1"]}),
    ...                   ["user_id"]).dtypes.tolist()
    [<StringDtype(na_value=nan)>, dtype('int64'), dtype('int64')]
    >>> validate_examples(pd.DataFrame({"event_time_ms": [1]}))
    Traceback (most recent call last):
    ...
    ValueError: examples: missing column 'label'
    """
    for column in (*entity_columns, time_column, label_column):
        if column not in examples.columns:
            raise ValueError(f"examples: missing column {column!r}")
    out = examples.copy()
    for column in entity_columns:
        if out[column].isna().any():
            raise ValueError(f"examples: column {column!r} has {int(out[column].isna().sum())} null value(s)")
    out[time_column] = _integers(out[time_column], time_column)
    label = pd.to_numeric(out[label_column], errors="coerce")
    if label.isna().any():
        first = out[label_column][label.isna()].iloc[0]
        raise ValueError(f"examples: column {label_column!r} must be numeric and not null (got {first!r})")
    out[label_column] = label
    return out


def _integers(values: pd.Series, column: str) -> pd.Series:
    numbers = pd.to_numeric(values, errors="coerce")
    if numbers.isna().any():
        first = values[numbers.isna()].iloc[0]
        raise ValueError(f"examples: column {column!r} must hold integer epoch milliseconds (got {first!r})")
    as_int = numbers.astype(np.int64)
    if not (as_int == numbers).all():
        raise ValueError(f"examples: column {column!r} must hold whole milliseconds")
    return as_int


def load_examples(
    path: str | os.PathLike[str],
    entity_columns: Sequence[str] = (),
    time_column: str = TIME_COLUMN,
    label_column: str = LABEL_COLUMN,
) -> pd.DataFrame:
    """Read and validate an examples file (see :func:`validate_examples`)."""
    return validate_examples(read_table(path), entity_columns, time_column, label_column)


def events_frame(events: Iterable[object]) -> pd.DataFrame:
    """The :class:`~engine.events.schemas.Interaction` items of ``events`` as a DataFrame
    (other items, such as labels or item updates, are skipped)."""
    rows = [e.to_dict() for e in events if isinstance(e, Interaction)]
    columns = ["user_id", "item_id", "event_type", "event_time", "context", "request_id"]
    return pd.DataFrame(rows, columns=columns)


def _first_positive_within(
    impressions: pd.DataFrame, positives: pd.DataFrame, by: list[str], window_ms: int, n: int
) -> np.ndarray:
    """Per impression row ``__row`` (of ``n``): a positive with equal ``by`` in (t, t + window]?"""
    hit = np.zeros(n, dtype=bool)
    if impressions.empty or positives.empty:
        return hit
    left = impressions[by + ["__t", "__row"]].sort_values("__t", kind="stable")
    right = positives[by + ["__t"]].rename(columns={"__t": "__pt"}).sort_values("__pt", kind="stable")
    # Forward, not exact: the first positive strictly after the impression.
    merged = pd.merge_asof(left, right, left_on="__t", right_on="__pt", by=by, direction="forward",
                           allow_exact_matches=False)
    ok = (merged["__pt"] - merged["__t"] <= window_ms).fillna(False).to_numpy(dtype=bool)
    hit[merged["__row"].to_numpy()] = ok
    return hit


def examples_from_events(
    events: pd.DataFrame,
    label_window_ms: int,
    positive_types: Sequence[str] = ("click",),
    impression_type: str = "impression",
) -> pd.DataFrame:
    """Impressions as examples, labelled 1 when a positive event follows within the window.

    An impression of ``(user_id, item_id)`` at ``t`` gets label 1 when the same pair has an
    event of a ``positive_types`` type at a time in ``(t, t + label_window_ms]``; when the
    events carry a ``request_id`` and both the impression and the positive have one, they
    must also match. Otherwise 0. Times come from ``event_time`` (or ``event_time_ms``).
    Output columns: ``user_id``, ``item_id``, ``event_time_ms``, ``label`` (and
    ``request_id`` when the events have it), impressions in input order.
    """
    if label_window_ms <= 0:
        raise ValueError(f"label_window_ms must be positive, got {label_window_ms}")
    time_col = "event_time" if "event_time" in events.columns else TIME_COLUMN
    for column in ("user_id", "item_id", "event_type", time_col):
        if column not in events.columns:
            raise ValueError(f"events: missing column {column!r}")
    has_rid = "request_id" in events.columns
    frame = events.assign(__t=_integers(events[time_col], time_col)).reset_index(drop=True)
    impressions = frame[frame["event_type"] == impression_type].reset_index(drop=True)
    impressions["__row"] = np.arange(len(impressions))
    positives = frame[frame["event_type"].isin(list(positive_types))]
    pair = ["user_id", "item_id"]
    n = len(impressions)
    if has_rid:
        with_rid = impressions["request_id"].notna()
        pos_rid = positives["request_id"].notna()
        # Both carry a request id: it must match. Either side lacks one: the pair decides.
        label = (_first_positive_within(impressions[with_rid], positives[pos_rid], pair + ["request_id"],
                                        label_window_ms, n)
                 | _first_positive_within(impressions, positives[~pos_rid], pair, label_window_ms, n)
                 | _first_positive_within(impressions[~with_rid], positives, pair, label_window_ms, n))
    else:
        label = _first_positive_within(impressions, positives, pair, label_window_ms, n)
    out = pd.DataFrame({
        "user_id": impressions["user_id"],
        "item_id": impressions["item_id"],
        TIME_COLUMN: impressions["__t"].to_numpy(dtype=np.int64),
        LABEL_COLUMN: label.astype(np.int64),
    })
    if has_rid:
        out["request_id"] = impressions["request_id"]
    return out
