"""Examples from files and from simulator events (against a per-impression brute force)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from engine.datasets.examples import events_frame, examples_from_events, load_examples, read_table
from engine.events.simulator import Simulator, SimulatorConfig

T0 = 1_700_000_000_000


def _brute_labels(events: pd.DataFrame, window_ms: int, positives: tuple[str, ...]) -> list[int]:
    imps = events[events["event_type"] == "impression"].to_dict("records")
    pos = events[events["event_type"].isin(positives)].to_dict("records")
    out = []
    for imp in imps:
        hit = False
        for p in pos:
            if (p["user_id"], p["item_id"]) != (imp["user_id"], imp["item_id"]):
                continue
            if not (imp["event_time"] < p["event_time"] <= imp["event_time"] + window_ms):
                continue
            a, b = imp.get("request_id"), p.get("request_id")
            if a is not None and b is not None and not pd.isna(a) and not pd.isna(b) and a != b:
                continue
            hit = True
            break
        out.append(int(hit))
    return out


def test_examples_from_simulator_events_match_brute_force() -> None:
    sim = Simulator(SimulatorConfig(n_users=30, n_items=10, rate=200.0, start_time_ms=T0, seed=3, click_delay_s=1.0))
    events = events_frame(sim.events(n=4000))
    assert {"impression", "click"} <= set(events["event_type"])
    for window in (500, 2_000):
        got = examples_from_events(events, window)
        imps = events[events["event_type"] == "impression"]
        assert got["event_time_ms"].tolist() == imps["event_time"].tolist()
        assert got["request_id"].tolist() == imps["request_id"].tolist()
        assert got["label"].tolist() == _brute_labels(events, window, ("click",))
    assert 0 < examples_from_events(events, 2_000)["label"].mean() < 1


def test_request_id_must_match_when_both_have_one() -> None:
    events = pd.DataFrame({
        "user_id": ["u"] * 6, "item_id": ["i"] * 6,
        "event_type": ["impression", "impression", "click", "impression", "click", "conversion"],
        "event_time": [0, 0, 10, 100, 100, 150],
        "request_id": ["r1", None, "r2", "r3", None, None],
    })
    got = examples_from_events(events, 60)
    # r1: the click at 10 is r2's and the request-less click at 100 is past the window -> 0;
    # the request-less impression takes r2's click -> 1; r3: the click at 100 is not strictly
    # after it and a conversion is not a positive by default -> 0.
    assert got["label"].tolist() == [0, 1, 0]
    assert examples_from_events(events, 60, positive_types=("click", "conversion"))["label"].tolist() == [0, 1, 1]
    assert _brute_labels(events, 60, ("click", "conversion")) == [0, 1, 1]
    # A request-less click inside r1's window labels it (either side lacking an id: the pair decides).
    assert examples_from_events(events, 1_000)["label"].tolist() == [1, 1, 0]
    with pytest.raises(ValueError, match="event_type"):
        examples_from_events(events.drop(columns="event_type"), 1_000)


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".csv"])
def test_load_examples_round_trip(tmp_path: Path, suffix: str) -> None:
    df = pd.DataFrame({"user_id": ["007", "u2"], "event_time_ms": [T0, T0 + 1], "label": [1, 0]})
    path = tmp_path / f"ex{suffix}"
    if suffix == ".parquet":
        df.to_parquet(path)
    elif suffix == ".jsonl":
        df.to_json(path, orient="records", lines=True)
    else:
        df.to_csv(path, index=False)
    got = load_examples(path, ["user_id"])
    assert got["user_id"].tolist() == ["007", "u2"]
    assert got["event_time_ms"].dtype == "int64" and got["event_time_ms"].tolist() == [T0, T0 + 1]
    assert got["label"].tolist() == [1, 0]


def test_load_examples_errors_name_the_column(tmp_path: Path) -> None:
    path = tmp_path / "ex.csv"
    path.write_text("user_id,event_time_ms,label\nu1,notatime,1\n")
    with pytest.raises(ValueError, match="'event_time_ms'"):
        load_examples(path, ["user_id"])
    path.write_text("user_id,event_time_ms,label\nu1,5,yes\n")
    with pytest.raises(ValueError, match="'label'"):
        load_examples(path, ["user_id"])
    with pytest.raises(ValueError, match="'item_id'"):
        load_examples(path, ["user_id", "item_id"])
    path.write_text("user_id,event_time_ms,label\n,5,1\n")
    with pytest.raises(ValueError, match="'user_id'.*null"):
        load_examples(path, ["user_id"])
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(ValueError, match="unknown file type"):
        read_table(tmp_path / "x.txt")
    with pytest.raises(FileNotFoundError):
        read_table(tmp_path / "missing.parquet")
