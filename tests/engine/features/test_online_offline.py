"""The Redis layout (write, read, TTL at read) and the Parquet log (partitions, dedupe)."""

from __future__ import annotations

from pathlib import Path

import redis

from engine.features.offline import OfflineLogWriter, read_offline
from engine.features.online import OnlineStore, decode_value, encode_value, entity_key
from engine.features.shard import RunningValues
from engine.features.spec import default_views_path, load_views

VIEWS = load_views(default_views_path())
USER = next(v for v in VIEWS if v.name == "user")


def test_value_encoding_round_trips() -> None:
    assert encode_value(None) == "" and decode_value(b"", "float") is None
    assert decode_value(encode_value(0.1 + 0.2), "float") == 0.1 + 0.2
    assert decode_value(encode_value(7), "int") == 7
    assert decode_value(encode_value("i9"), "str") == "i9"


def test_write_read_layout_and_ttl_at_read(redis_client: redis.Redis) -> None:
    store = OnlineStore(redis_client, VIEWS, prefix="p")
    t = 1_767_225_600_000
    values = {name: None for name in USER.feature_names()}
    values.update({"clicks_1h": 3, "ctr_1h": 0.25, "last_item_5m": "i4"})
    store.write_running("user", [RunningValues("u1", list(values), list(values.values()), t, t + 10)],
                        wall_ms=t + 50)

    raw = redis_client.hgetall(entity_key("p", "user", "u1"))
    assert raw[b"clicks_1h"] == b"3" and raw[b"ctr_1h"] == b"0.25" and raw[b"dwell_mean_1h"] == b""
    assert raw[b"_t"] == str(t).encode() and raw[b"_asof"] == str(t + 10).encode()
    assert 0 < redis_client.pttl(entity_key("p", "user", "u1")) <= USER.ttl_ms

    [row, missing] = store.get("user", ["u1", "nobody"], ["clicks_1h", "ctr_1h", "dwell_mean_1h", "last_item_5m"],
                               now_ms=t + 1000)
    assert row.found and row.age_ms == 1000
    assert row.values == {"clicks_1h": 3, "ctr_1h": 0.25, "dwell_mean_1h": None, "last_item_5m": "i4"}
    assert not missing.found and missing.values["clicks_1h"] is None

    expired = store.get("user", ["u1"], ["clicks_1h"], now_ms=t + USER.ttl_ms + 1)[0]
    assert not expired.found and expired.values == {"clicks_1h": None}


def test_unknown_feature_is_a_clear_error(redis_client: redis.Redis) -> None:
    store = OnlineStore(redis_client, VIEWS)
    try:
        store.get("user", ["u"], ["nope_1h"])
    except KeyError as exc:
        assert "nope_1h" in str(exc)
    else:
        raise AssertionError("expected KeyError")


def test_offline_log_is_hour_partitioned_and_deduplicated(tmp_path: Path) -> None:
    writer = OfflineLogWriter(tmp_path, USER, "w0")
    hour = 3_600_000
    base = 1_767_225_600_000
    rows = [
        {"entity": "u1", "window": "5m", "window_start_ms": base, "window_end_ms": base + 300_000, "clicks": 1},
        {"entity": "u1", "window": "5m", "window_start_ms": base + hour, "window_end_ms": base + hour + 300_000,
         "clicks": 2},
    ]
    writer.write(rows, created_ms=1)
    writer.write(rows[:1], created_ms=2)  # a replay after a crash writes the same window again
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.parquet"))
    assert [f.rsplit("/", 1)[0] for f in files] == [
        "user/date=2026-01-01/hour=00", "user/date=2026-01-01/hour=00", "user/date=2026-01-01/hour=01"]
    df = read_offline(tmp_path, USER)
    assert len(df) == 2
    assert df["created_ms"].tolist() == [2, 1] and df["clicks"].tolist() == [1, 2]
    assert len(read_offline(tmp_path, USER, dedupe=False)) == 3


def test_run_commands_reports_errors_and_keeps_the_connection_usable(redis_client: redis.Redis) -> None:
    import pytest

    from engine.features.online import run_commands

    redis_client.set("plain", "x")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        run_commands(redis_client, [("HSET", "h1", "a", "1"), ("HSET", "plain", "a", "1"), ("HSET", "h2", "b", "2")])
    # Every command ran; the replies after the error were read, so the connection is in sync.
    assert redis_client.hget("h1", "a") == b"1" and redis_client.hget("h2", "b") == b"2"
    run_commands(redis_client, [("SET", "k", "v")])
    assert redis_client.get("k") == b"v"
