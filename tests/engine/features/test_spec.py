"""Feature spec parsing and validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.features.spec import Agg, FeatureView, load_views, parse_duration_ms

BASE = {"name": "u", "entity": "user_id", "windows": {"1h": {"size": "1h", "slide": "5m"}},
        "features": [{"name": "n", "agg": "count"}]}


def test_durations() -> None:
    assert parse_duration_ms("500ms") == 500 and parse_duration_ms("2d") == 172_800_000
    for bad in ("5 minutes", "0s", "", True, -1):
        with pytest.raises(ValueError):
            parse_duration_ms(bad)


def test_view_from_yaml_file_and_text(tmp_path: Path) -> None:
    text = ("views:\n  - name: u\n    entity: [user_id, item_id]\n    windows: {1h: 1h}\n"
            "    features: [{name: s, agg: sum, field: context.x, where: {event_type: [click, view]}}]\n")
    path = tmp_path / "specs.yml"
    path.write_text(text)
    for source in (text, path, str(path)):
        [view] = load_views(source)
        assert view.entity == ("user_id", "item_id")
        assert view.features[0].agg is Agg.SUM and view.features[0].where == (("event_type", ("click", "view")),)
    with pytest.raises(FileNotFoundError):
        load_views(str(tmp_path / "missing.yaml"))


@pytest.mark.parametrize("change, message", [
    ({"featurs": []}, "unknown key"),
    ({"features": [{"name": "n", "agg": "count", "windw": "1h"}]}, "unknown key"),
    ({"features": [{"name": "entity", "agg": "count"}]}, "feature name"),
    ({"features": [{"name": "m", "agg": "mean"}]}, "needs a field"),
    ({"features": [{"name": "r", "agg": "ratio", "numerator": "n"}]}, "numerator and denominator"),
    ({"features": [{"name": "n", "agg": "count"}, {"name": "r", "agg": "ratio", "numerator": "n",
                                                    "denominator": "x"}]}, "non-ratio feature"),
    ({"windows": {"1h": {"size": "1h", "slide": "7m"}}}, "not a multiple"),
    ({"windows": {}}, "at least one window"),
    ({"features": [{"name": "n", "agg": "count", "windows": ["2h"]}]}, "unknown window"),
    ({"windows": {"1h": "1h", "b_1h": "1h"}, "features": [{"name": "a_b", "agg": "count"},
                                                         {"name": "a", "agg": "count"}]}, "window name"),
])
def test_invalid_specs_are_refused_with_a_reason(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FeatureView.from_dict({**BASE, **change})
