"""A/B verdicts from logged predictions joined with outcomes: the join's rules, the verdict in
words, and `rtml rollout verdict` reading files and real Kafka topics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import orjson
import pytest
import yaml
from confluent_kafka import Producer

from engine.learning.join import LabelIn
from engine.learning.records import PredictionRecord
from engine.rollouts.outcomes import ArmCounts, count_variants, parse_outcomes
from engine.rollouts.verdict import ab_verdict, compare
from tests.engine.rollouts.helpers import run_cli

T0 = 1_767_225_600_000  # 2026-01-01
WINDOW = 30_000


def experiment(seed: int, arms: dict[str, tuple[str, float]], per_arm: int, *, model: str = "ranker",
               items: int = 2) -> tuple[list[dict], list[dict]]:
    """Logged predictions (``items`` per request, one per item) and the clicks on them.

    ``arms``: variant -> (version, CTR). Every request also gets a shadow scoring (never shown)
    and an impression event (not an outcome), and the other model's predictions are mixed in.
    """
    rng = np.random.default_rng(seed)
    predictions: list[dict] = []
    events: list[dict] = []
    t = T0
    for variant, (version, ctr) in arms.items():
        for i in range(per_arm // items):
            rid = f"{variant}-{i}"
            t += 7
            user = f"u{rng.integers(1_000_000)}"
            for k in range(items):
                item = f"i{k}"
                ids = {"user_id": user, "item_id": item}
                predictions.append({"request_id": rid, "model": model, "version": version, "variant": variant,
                                    "event_time_ms": t, "score": 0.5, "features": {}, "entity_ids": ids})
                predictions.append({"request_id": rid, "model": model, "version": "9", "variant": "shadow",
                                    "event_time_ms": t, "score": 0.4, "features": {}, "entity_ids": ids})
                events.append({"user_id": user, "item_id": item, "event_type": "impression", "event_time": t,
                               "request_id": rid})
                if rng.random() < ctr:
                    events.append({"user_id": user, "item_id": item, "event_type": "click",
                                   "event_time": t + int(rng.integers(100, 20_000)), "request_id": rid})
    predictions.append({"request_id": "other", "model": "other", "version": "1", "variant": "primary",
                        "event_time_ms": T0, "score": 0.1})
    # Data keeps flowing after the experiment: the last predictions' windows can close.
    events.append({"user_id": "u", "item_id": "i", "event_type": "view", "event_time": t + 2 * WINDOW})
    return predictions, events


def _jsonl(path: Path, records: list[dict]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


def test_the_join_counts_mature_impressions_and_matching_clicks() -> None:
    p = lambda rid, variant, t, item=None, model="ranker": PredictionRecord(  # noqa: E731
        rid, model, "2" if variant == "treatment" else "1", variant, t, 0.5, {}, {"item_id": item} if item else {})
    predictions = [
        p("a", "control", 1_000, "i1"), p("a", "control", 1_000, "i2"),  # a ranking request: two impressions
        p("b", "treatment", 2_000), p("b", "shadow", 2_000),  # the shadow scoring is never shown
        p("c", "treatment", 3_000), p("d", "control", 500), p("e", "control", 90_000),  # e: window still open
        p("f", "control", 4_000, model="other"),
    ]
    outcomes = [
        LabelIn("a", 1.0, 1_500, "i2", True),  # a click on item i2 joins i2's impression only
        LabelIn("b", 1.0, 2_500, None, True),
        LabelIn("c", 1.0, 3_000 + WINDOW + 1, None, True),  # after the label window: not counted
        LabelIn("d", 0.0, 900),  # an explicit negative label is no click
        LabelIn("zzz", 1.0, 95_000, None, True),  # no prediction: moves time forward only
    ]
    tally = count_variants(predictions, outcomes, model="ranker", label_window_ms=WINDOW, since_ms=600)
    assert {v: (a.impressions, a.clicks, a.versions) for v, a in tally.arms.items()} == {
        "control": (2, 1, ["1"]), "treatment": (2, 1, ["2"])}
    assert tally.pending == 1 and tally.end_ms == 95_000
    assert dict(tally.skipped) == {"shadow": 1, "other_model": 1, "before_since": 1}


def test_outcomes_parse_labels_and_clicks_only() -> None:
    raws = [
        b'{"request_id": "r1", "label": 1, "event_time": 1767225600000, "item_id": "i1"}',
        b'{"user_id": "u", "item_id": "i", "event_type": "click", "event_time": 1767225600000, "request_id": "r2"}',
        b'{"user_id": "u", "item_id": "i", "event_type": "click", "event_time": 1767225600000}',  # no request id
        b'{"user_id": "u", "item_id": "i", "event_type": "view", "event_time": 1767225600000, "request_id": "r3"}',
        b'not json',
    ]
    from collections import Counter
    skipped: Counter[str] = Counter()
    out, newest = parse_outcomes(raws, now_ms=T0 + 1000, max_future_ms=0, skipped=skipped)
    assert newest == 1767225600000
    assert [(o.request_id, o.value, o.item_id, o.implicit) for o in out] == [("r1", 1.0, "i1", False),
                                                                             ("r2", 1.0, "i", True)]
    assert skipped == {"not_an_outcome": 2, "bad_outcome": 1}


def test_verdict_words() -> None:
    control = ArmCounts("control", 50_000, 5_000, ["1"])
    up = compare(control, ArmCounts("treatment", 50_000, 5_400, ["2"]))
    assert up.decision == "ship" and up.text.startswith("treatment (v2) raises CTR by 8.0% (95% CI ")
    assert up.text.endswith("against control (v1): ship it")
    down = compare(control, ArmCounts("treatment", 50_000, 4_600, ["2"]))
    assert down.decision == "reject" and "lowers CTR by 8.0%" in down.text and "roll it back" in down.text
    lo, hi = (float(x.rstrip("%")) for x in down.text.split("95% CI ")[1].split(",")[0].split(" – "))
    assert 0 < lo < 8.0 < hi  # the size of a drop, with its interval, reads as positive numbers
    same = compare(control, ArmCounts("treatment", 50_000, 5_020, ["2"]))
    assert same.decision == "no_difference" and "after 50,000 impressions per arm" in same.text
    assert same.needed_per_arm is not None and same.needed_per_arm > 50_000 and "more per arm" in same.text
    few = compare(control, ArmCounts("treatment", 500, 90, ["2"]))
    assert few.decision == "not_enough_data" and few.text.startswith("not enough data yet")
    running = compare(control, ArmCounts("treatment", 50_000, 5_020, ["2"]), sequential=True)
    assert running.decision == "keep_running" and "always-valid p" in running.text
    three = ab_verdict("m", {"control": control, "b": ArmCounts("b", 50_000, 5_400, ["2"]),
                             "c": ArmCounts("c", 50_000, 5_000, ["3"])})
    assert [c.treatment for c in three.comparisons] == ["b", "c"] and "Bonferroni" in three.notes[0]
    alone = ab_verdict("m", {"a": control})
    assert alone.comparisons == [] and alone.notes[0].startswith("no arm named 'control' or 'primary'")
    canary = ab_verdict("m", {"primary": ArmCounts("primary", 50_000, 5_000, ["1"]), "canary": ArmCounts("canary", 50_000, 5_400, ["2"])})
    assert canary.comparisons[0].control == "primary" and canary.comparisons[0].decision == "ship"


@pytest.mark.slow
def test_cli_verdict_from_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    predictions, events = experiment(1, {"control": ("1", 0.10), "treatment": ("2", 0.13)}, per_arm=6_000)
    pred_file = _jsonl(tmp_path / "predictions.jsonl", predictions)
    ev_file = _jsonl(tmp_path / "events.jsonl", events)
    argv = ["rollout", "verdict", "ranker", "--predictions", str(pred_file), "--outcomes", str(ev_file),
            "--label-window-ms", str(WINDOW)]
    assert run_cli(argv) == 0
    out = capsys.readouterr().out
    assert "verdict: treatment (v2) raises CTR by" in out and out.rstrip().splitlines()[-1].startswith("note: left out")
    assert run_cli(argv + ["--json", "--sequential"]) == 0
    report = json.loads(capsys.readouterr().out)
    arms = {a["variant"]: a for a in report["arms"]}
    assert arms["control"]["impressions"] == arms["treatment"]["impressions"] == 6_000
    assert 0.08 < arms["control"]["ctr"] < 0.12 < arms["treatment"]["ctr"] < 0.15
    assert report["comparisons"][0]["decision"] == "ship" and report["sequential"] is True

    aa_pred, aa_events = experiment(2, {"control": ("1", 0.10), "treatment": ("2", 0.10)}, per_arm=6_000)
    _jsonl(pred_file, aa_pred)
    _jsonl(ev_file, aa_events)
    assert run_cli(argv) == 0
    assert "verdict: no detectable difference between treatment (v2) and control (v1) after 6,000" in \
        capsys.readouterr().out
    assert run_cli(argv + ["--min-samples", "10000"]) == 0
    assert "verdict: not enough data yet" in capsys.readouterr().out


def test_cli_verdict_reads_real_kafka_topics(kafka_bootstrap: str, unique_topic, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    topics = {"predictions": unique_topic("predictions", partitions=2), "events": unique_topic("events", partitions=2),
              "labels": unique_topic("labels")}
    predictions, events = experiment(4, {"control": ("1", 0.10), "treatment": ("2", 0.16)}, per_arm=2_000)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 5})
    for topic, records in ((topics["predictions"], predictions), (topics["events"], events)):
        for r in records:
            producer.produce(topic, orjson.dumps(r), key=r.get("request_id", "").encode())
    producer.produce(topics["labels"], orjson.dumps({"request_id": "control-3", "label": 1, "event_time": T0 + 100,
                                                     "item_id": "i0"}))
    assert producer.flush(30) == 0
    config = tmp_path / "rtml.yaml"
    config.write_text(yaml.safe_dump({
        "kafka": {"bootstrap": kafka_bootstrap, "events_topic": topics["events"], "labels_topic": topics["labels"]},
        "learning": {"predictions_topic": topics["predictions"], "label_window_ms": WINDOW},
    }))
    assert run_cli(["--config", str(config), "rollout", "verdict", "ranker", "--from-kafka", "--json",
                    "--min-samples", "500"]) == 0
    report = json.loads(capsys.readouterr().out)
    outcomes, newest = parse_outcomes(
        [orjson.dumps(e) for e in events]
        + [b'{"request_id": "control-3", "label": 1, "event_time": %d, "item_id": "i0"}' % (T0 + 100)],
        now_ms=T0 + 10 ** 9, max_future_ms=0)
    file_tally = count_variants(
        [PredictionRecord(**{k: r[k] for k in ("request_id", "model", "version", "variant", "event_time_ms", "score",
                                                "features", "entity_ids") if k in r}) for r in predictions],
        outcomes,
        model="ranker", label_window_ms=WINDOW, out_of_orderness_ms=2_000, newest_ms=newest)
    assert {a["variant"]: (a["impressions"], a["clicks"]) for a in report["arms"]} == {
        v: (a.impressions, a.clicks) for v, a in file_tally.arms.items()}
    assert report["comparisons"][0]["decision"] == "ship"
