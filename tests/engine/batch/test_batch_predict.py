"""Batch prediction on real Redis and ONNX Runtime: scores equal online Predict's, the run is
published atomically, bad configs are refused, and the ``batch-predict`` subcommand."""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import yaml

from engine.batch.cli import register
from engine.batch.predict import BatchPredictError, batch_predict
from engine.batch.store import RunMeta, ScoreWriter, pack_rows, read_scores, scores_key
from engine.config import RtmlConfig, load_config
from engine.runtime.ports import free_port
from tests.serving.models import write_model
from tests.serving.test_predict import echo_model, expected_score, pipeline_for, request, write_features

SOURCES = ["user.clicks_1h", "user.impressions_1h", "user.ctr_1h", "request.price"]
CONFIG: dict[str, Any] = {
    "features": {"inputs": {"features": SOURCES}, "defaults": {"request.price": 2.0, "user.ctr_1h": 0.5}},
    "precomputed": {"key": "user_id", "max_age": "1h"},
    "max_batch_size": 256,  # online Predict scores all test users in one request
}


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    root.mkdir()
    return root


def _cfg(redis_url: str, repo: Path) -> RtmlConfig:
    return load_config(env={}, overrides={"redis": {"url": redis_url}, "learning": {"model_repository": str(repo)}})


def _users(client: redis.Redis, n: int) -> dict[str, list[float]]:
    """``n`` users with distinct features; returns the row online Predict should build for each."""
    now = int(time.time() * 1000)
    rows = {}
    for i in range(n):
        values = {"clicks_1h": i % 7, "impressions_1h": 10 + i, "ctr_1h": (i % 7) / (10 + i)}
        if i % 5 == 4:
            del values["ctr_1h"]  # a null column: the default fills it, online and offline alike
        write_features(client, "user", f"u{i}", values, now - 1000 * i)
        rows[f"u{i}"] = [values["clicks_1h"], values["impressions_1h"], values.get("ctr_1h", 0.5), 2.0]
    return rows


def test_batch_scores_equal_online_predict(repo: Path, redis_url: str, redis_client: redis.Redis) -> None:
    write_model(repo, "ranker", 1, echo_model(4), CONFIG)
    write_model(repo, "ranker", 2, echo_model(4, offset=100.0), CONFIG)
    rows = _users(redis_client, 150)
    ids = sorted(rows)
    cfg = _cfg(redis_url, repo)

    async def online() -> tuple[list[list[float]], list[float]]:
        async with pipeline_for(repo, redis_url=redis_url) as p:
            response = await p.predict(request("ranker", [{"entity_ids": {"user_id": u}} for u in ids]))
        assert response.model_version == "2"
        return [list(r.scores) for r in response.results], list(response.feature_age_ms)

    computed, _ = asyncio.run(online())  # no run yet: every user computed online
    result = batch_predict(cfg, "ranker", batch_size=64)  # 3 chunks, the last one partial
    assert (result.model, result.version, result.entities) == ("ranker", "2", 150)
    assert result.key == "rtml:batch:ranker:2" and result.rows_per_s > 0

    meta, stored = read_scores(redis_client, "rtml", "ranker", "2", ids)
    assert meta is not None and meta.run_id == result.run_id and meta.entities == 150
    assert meta.sources == tuple(SOURCES) and meta.key == "user_id" and meta.output == "score"
    answered, ages = asyncio.run(online())  # now every user is a hit
    for u, score, before, after, age in zip(ids, stored, computed, answered, ages):
        assert score is not None
        assert score.scores == before == after  # offline = online, exactly
        assert score.scores == [pytest.approx(expected_score(rows[u], 100.0))]
        assert score.features == pytest.approx(rows[u])
        assert meta.started_ms <= score.computed_ms <= meta.finished_ms
        assert 0 <= age <= time.time() * 1000 - score.computed_ms + 1


def test_rerun_replaces_the_whole_run_atomically(repo: Path, redis_url: str, redis_client: redis.Redis) -> None:
    write_model(repo, "ranker", 1, echo_model(4), CONFIG)
    _users(redis_client, 3)
    cfg = _cfg(redis_url, repo)
    first = batch_predict(cfg, "ranker", users=["u0", "u1"])
    _, before = read_scores(redis_client, "rtml", "ranker", "1", ["u0", "u1", "u2"])
    assert [s is not None for s in before] == [True, True, False]

    # A run in progress is invisible to readers until published, then replaces everything.
    writer = ScoreWriter(redis_client, "rtml", "ranker", "1", ttl_ms=60_000)
    writer.write(zip(["u2"], pack_rows(1, np.array([[7.0]], np.float32), np.zeros((1, 4)))))
    meta, during = read_scores(redis_client, "rtml", "ranker", "1", ["u0", "u1", "u2"])
    assert meta is not None and meta.run_id == first.run_id and during == before
    writer.abort()
    assert not redis_client.exists(writer.key)

    second = batch_predict(cfg, "ranker", users=["u1", "u2"])
    meta, after = read_scores(redis_client, "rtml", "ranker", "1", ["u0", "u1", "u2"])
    assert meta is not None and meta.run_id == second.run_id != first.run_id
    assert after[0] is None  # not in the new run: gone, not left over from the old one
    assert after[1] is not None and before[1] is not None and after[1].scores == before[1].scores
    assert after[2] is not None
    keys = {k.decode() for k in redis_client.scan_iter(match="rtml:batch:*")}
    assert keys == {scores_key("rtml", "ranker", "1")}  # no run or retired hash left behind
    assert 0 < redis_client.pttl(scores_key("rtml", "ranker", "1")) <= 7 * 24 * 3600 * 1000


def test_a_redis_failure_publishes_nothing(repo: Path, redis_url: str, redis_client: redis.Redis) -> None:
    write_model(repo, "ranker", 1, echo_model(4), CONFIG)
    _users(redis_client, 2)
    batch_predict(_cfg(redis_url, repo), "ranker")
    from serving.features import FeatureStoreUnavailable

    with pytest.raises(FeatureStoreUnavailable):
        batch_predict(_cfg(f"redis://127.0.0.1:{free_port()}/0", repo), "ranker", users=["u0"])
    meta, stored = read_scores(redis_client, "rtml", "ranker", "1", ["u0", "u1"])
    assert meta is not None and meta.entities == 2 and all(s is not None for s in stored)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"features": CONFIG["features"]}, "no 'precomputed' section"),
        ({**CONFIG, "features": {"inputs": {"features": ["user.clicks_1h", "user_item.clicks_1h", "item.ctr_1h",
                                                         "request.price"]}, "defaults": {"request.price": 1.0}}},
         "keyed by user_id, item_id"),
        ({**CONFIG, "features": {"inputs": {"features": SOURCES}}}, "request.price is a request value without a default"),
        ({**CONFIG, "features": {"inputs": {"features": ["user.nope", *SOURCES[1:]]},
                                 "defaults": {"request.price": 1.0}}}, "has no column 'nope'"),
        ({**CONFIG, "max_batch": 3}, "invalid model config"),
    ],
)
def test_bad_configs_are_refused(repo: Path, redis_url: str, config: dict[str, Any], message: str) -> None:
    write_model(repo, "ranker", 1, echo_model(4), config)
    with pytest.raises(BatchPredictError, match=message):
        batch_predict(_cfg(redis_url, repo), "ranker", users=["u0"])


def test_unknown_model_version_and_missing_redis_are_refused(repo: Path, redis_url: str) -> None:
    write_model(repo, "ranker", 1, echo_model(4), CONFIG)
    with pytest.raises(BatchPredictError, match="no model 'nope'"):
        batch_predict(_cfg(redis_url, repo), "nope")
    with pytest.raises(BatchPredictError, match=r"no version '3' \(versions: 1\)"):
        batch_predict(_cfg(redis_url, repo), "ranker", version="3")
    with pytest.raises(BatchPredictError, match="set redis.url"):
        batch_predict(load_config(env={}, overrides={"learning": {"model_repository": str(repo)}}), "ranker")


def _run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.fn(args)


def test_cli(repo: Path, redis_url: str, redis_client: redis.Redis, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_model(repo, "ranker", 1, echo_model(4), CONFIG)
    _users(redis_client, 5)
    config = tmp_path / "rtml.yaml"
    config.write_text(yaml.safe_dump({"redis": {"url": redis_url}, "learning": {"model_repository": str(repo)}}))
    ids = tmp_path / "ids.txt"
    ids.write_text("u1\n\nu3\n")

    assert _run_cli(["--config", str(config), "batch-predict", "ranker", "--users", str(ids), "--json"]) == 0
    summary = yaml.safe_load(capsys.readouterr().out)
    assert summary["entities"] == 2 and summary["version"] == "1" and summary["providers"]
    _, stored = read_scores(redis_client, "rtml", "ranker", "1", ["u0", "u1", "u3"])
    assert [s is not None for s in stored] == [False, True, True]

    assert _run_cli(["--config", str(config), "batch-predict", "ranker", "--all-users", "--ttl", "1h"]) == 0
    assert "5 scores in" in capsys.readouterr().out
    assert 0 < redis_client.pttl("rtml:batch:ranker:1") <= 3600 * 1000

    assert _run_cli(["--config", str(config), "batch-predict", "ranker", "--version", "9"]) == 2
    assert "no version '9'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --users and --all-users exclude each other
        _run_cli(["batch-predict", "ranker", "--users", str(ids), "--all-users"])


def test_an_incomplete_run_is_refused_at_publication(redis_client: redis.Redis) -> None:
    writer = ScoreWriter(redis_client, "rtml", "ranker", "1", ttl_ms=60_000)
    blobs = pack_rows(1, np.array([[1.0], [2.0]], np.float32), np.zeros((2, 0)))
    writer.write(zip(["u1", "u1"], blobs))  # the same id twice: the hash holds one score, not two
    meta = RunMeta(writer.run_id, "ranker", "1", "user_id", 1, 2, 2, (), "score")
    with pytest.raises(redis.ResponseError, match="run incomplete: 1 of 2 scores"):
        writer.publish(meta)
    assert not redis_client.exists(writer.key, scores_key("rtml", "ranker", "1"))  # nothing published
