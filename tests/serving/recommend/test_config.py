"""The recommend config file and the server's --recommend flag."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.recommend.config import RecommendConfig, load_recommend_config
from serving.server import _parser, _with_config_defaults


def test_full_file_parses_with_durations(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("""
user_tower: u
ranker: r
item_cache: 2s
retrieval: {candidates: 50, index: {dim: 8, kind: flat}}
rerank: {mmr_lambda: 0.5, category_caps: {default: 2, shoes: 1}, freshness: {half_life: 2h, boost: 0.3},
         seen: null, blocked_key: null}
exploration: {slots: 3, max_age: 30m, max_impressions: null}
popular: {source: item.clicks_1h, refresh: 10s}
""")
    cfg = load_recommend_config(path)
    assert cfg.item_cache_ms == 2000 and cfg.retrieval.index == {"dim": 8, "kind": "flat"}
    assert cfg.rerank.freshness.half_life_ms == 7_200_000 and cfg.rerank.seen is None
    assert cfg.exploration.slot_positions() == [2, 7, 12] and cfg.exploration.max_age_ms == 1_800_000
    assert cfg.popular.refresh_ms == 10_000
    spec = cfg.exploration.bandit_spec()
    assert spec.dynamic_arms and spec.policy == "thompson" and spec.name == "rec-explore"


@pytest.mark.parametrize("body,fragment", [
    ("ranker: r", "user_tower: Field required"),
    ("{user_tower: u, ranker: r, exploration: {slots: 2, positions: [1]}}", "one distinct position per slot"),
    ("{user_tower: u, ranker: r, rerank: {category_caps: {a: 0}}}", "at least 1"),
    ("{user_tower: u, ranker: r, typo: 1}", "typo: Extra inputs are not permitted"),
])
def test_bad_files_say_what_is_wrong(tmp_path: Path, body: str, fragment: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(body)
    with pytest.raises(ValueError, match="invalid recommend config") as exc:
        load_recommend_config(path)
    assert fragment in str(exc.value)


def test_cli_flag_is_validated_before_serving(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RTML_CONFIG", raising=False)
    bad = tmp_path / "bad.yaml"
    bad.write_text("ranker: r")
    args = _parser().parse_args(["--models", str(tmp_path), "--recommend", str(bad)])
    with pytest.raises(ValueError, match="user_tower"):
        _with_config_defaults(args)
    good = tmp_path / "good.yaml"
    good.write_text("{user_tower: u, ranker: r}")
    args = _with_config_defaults(_parser().parse_args(["--models", str(tmp_path), "--recommend", str(good)]))
    assert args.recommend == str(good) and args.events_topic == "events" and args.items_topic == "items"
    assert RecommendConfig.model_validate({"user_tower": "u", "ranker": "r"}).exploration.slots == 0
