"""The features dataflow end to end: real broker, real Redis, Bytewax processes."""

from __future__ import annotations

import urllib.request
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from dataflows.backfill import run_backfill
from engine.events.dlq import DeadLetter
from engine.events.simulator import malformed_examples
from engine.features.offline import read_offline
from engine.features.online import OnlineStore
from engine.features.spec import default_views_path, load_views
from tests.dataflows.conftest import consume_all, produce_events, wait_until
from tests.oracle import OracleResult, make_events, normalise_closed, oracle

pytestmark = pytest.mark.slow

VIEWS = load_views(default_views_path())


def _strip(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e: {k: v for k, v in r.items() if k not in ("_asof", "_w")} for e, r in rows.items()}


def _oracles(events, cfg) -> dict[str, OracleResult]:
    p = cfg.pipeline
    return {
        v.name: oracle(v, events, out_of_orderness_ms=p.out_of_orderness_ms,
                       allowed_lateness_ms=p.allowed_lateness_ms, shards=p.shards_per_view)
        for v in VIEWS
    }


def _online_matches(store: OnlineStore, want: dict[str, OracleResult]) -> bool:
    return all(_strip(store.read_all(v.name)) == _strip(want[v.name].running) for v in VIEWS)


def _metrics(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


def test_window_math_late_events_offline_log_and_backfill_match_oracle(
    stack, unique_topic, features_job, redis_url, tmp_path
) -> None:
    topic = unique_topic("events", partitions=1)
    job = features_job(topic).start()
    events = make_events(11, 4000, users=60, items=20)
    payloads = produce_events(stack.bootstrap, topic, events)
    want = _oracles(events, job.cfg)
    store = OnlineStore(redis.Redis.from_url(redis_url), VIEWS, job.cfg.redis.key_prefix)

    assert wait_until(lambda: _online_matches(store, want), 90, job), job.logs()
    for v in VIEWS:  # the assertion that shows a diff if anything is off
        assert _strip(store.read_all(v.name)) == _strip(want[v.name].running)

    # Late events: dead-lettered once per view they were late for, with their original bytes.
    late_expected = sorted((i, v) for v, res in want.items() for i in res.late)
    assert len(late_expected) > 50
    msgs = consume_all(stack.bootstrap, topic + ".dlq", len(late_expected))
    letters = [DeadLetter.from_kafka(m.value(), m.headers()) for m in msgs]
    assert all(dl.reason == "late" for dl in letters)
    got = sorted((dl.offset, dl.detail.split()[2].rstrip(":")) for dl in letters)
    assert got == late_expected
    assert all(dl.original == payloads[dl.offset] for dl in letters)

    # Closed windows in the offline Parquet log.
    def offline_ok() -> bool:
        return all(
            normalise_closed(read_offline(job.cfg.pipeline.offline_dir, v), v) == normalise_closed(want[v.name].closed, v)
            for v in VIEWS
        )
    assert wait_until(offline_ok, 30, job)
    assert sum(len(want[v.name].closed) for v in VIEWS) > 500
    assert any(p.match("user/date=*/hour=*/*.parquet") for p in (tmp_path / "offline").rglob("*.parquet"))

    # Metrics: every event counted in, late ones counted per view.
    m = _metrics(job.cfg.metrics.port)
    assert m["rtml_events_in_total"] == len(events)
    assert m["rtml_events_late_total"] == len(late_expected)
    assert m["rtml_windows_emitted_total"] >= sum(len(want[v.name].closed) for v in VIEWS)
    assert m["rtml_feature_freshness_seconds_count"] > 0

    # Backfill of the same events from a file gives the same online and offline features.
    job.stop()
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_bytes(b"\n".join(payloads) + b"\n")
    cfg = job.cfg.model_copy(deep=True)
    cfg.redis.key_prefix = job.cfg.redis.key_prefix + "bf"
    cfg.pipeline.offline_dir = str(tmp_path / "offline_backfill")
    run_backfill(cfg, VIEWS, [jsonl])
    backfilled = OnlineStore(redis.Redis.from_url(redis_url), VIEWS, cfg.redis.key_prefix)
    for v in VIEWS:
        assert _strip(backfilled.read_all(v.name)) == _strip(store.read_all(v.name))
        assert normalise_closed(read_offline(cfg.pipeline.offline_dir, v), v) == normalise_closed(
            read_offline(job.cfg.pipeline.offline_dir, v), v)


def test_malformed_events_go_to_dlq_with_reason_and_flow_continues(stack, unique_topic, features_job, redis_url):
    topic = unique_topic("events", partitions=1)
    job = features_job(topic).start()
    bad = malformed_examples()
    good = make_events(3, 200, late_every=0)
    mixed: list[Any] = []
    for i, ev in enumerate(good):
        mixed.append(ev)
        if i < len(bad):
            mixed.append(bad[i][0])
    payloads = produce_events(stack.bootstrap, topic, mixed)
    msgs = consume_all(stack.bootstrap, topic + ".dlq", len(bad))
    letters = {dl.offset: dl for dl in (DeadLetter.from_kafka(m.value(), m.headers()) for m in msgs)}
    assert len(letters) == len(bad)
    for raw, reason in bad:
        offset = payloads.index(raw)
        assert letters[offset].reason == reason, (raw, letters[offset])
        assert letters[offset].original == raw
        assert letters[offset].source_topic == topic and letters[offset].partition == 0
    want = _oracles(good, job.cfg)
    store = OnlineStore(redis.Redis.from_url(redis_url), VIEWS, job.cfg.redis.key_prefix)
    assert wait_until(lambda: _online_matches(store, want), 60, job), job.logs()
    m = _metrics(job.cfg.metrics.port)
    assert m["rtml_events_in_total"] == len(mixed)
    assert m["rtml_events_invalid_total"] == len(bad)
    assert m["rtml_events_valid_total"] == len(good)


def test_kill_9_and_restart_leaves_redis_exactly_right(stack, unique_topic, features_job, redis_url):
    import time

    topic = unique_topic("events", partitions=3)
    # Lateness wide enough that any interleaving of the 3 partitions is on time.
    job = features_job(topic, recovery=True, snapshot_interval_s=1, allowed_lateness_ms=86_400_000)
    events = make_events(5, 6000, users=80, late_every=0)
    want = _oracles(events, job.cfg)
    store = OnlineStore(redis.Redis.from_url(redis_url), VIEWS, job.cfg.redis.key_prefix)

    def newest_event() -> int:
        return max((r.get("_t", 0) for r in store.read_all("user").values()), default=0)

    job.start()
    produce_events(stack.bootstrap, topic, events[:2000])
    chunk1_end = max(e["event_time"] for e in events[:2000])
    assert wait_until(lambda: newest_event() >= chunk1_end, 60, job), job.logs()
    time.sleep(2.5)  # let a snapshot cover the first chunk: the restart restores state
    produce_events(stack.bootstrap, topic, events[2000:4000])
    assert wait_until(lambda: newest_event() > chunk1_end, 60, job), job.logs()
    job.kill9()  # most likely before the next snapshot: chunk 2 is replayed over its own output
    produce_events(stack.bootstrap, topic, events[4000:])
    job.start()
    assert wait_until(lambda: _online_matches(store, want), 90, job), job.logs()
    for v in VIEWS:
        assert _strip(store.read_all(v.name)) == _strip(want[v.name].running)


def test_two_processes_with_json_and_protobuf_events_match_oracle(stack, unique_topic, features_job, redis_url):
    from confluent_kafka import Producer

    from engine.events.codec import encode
    from engine.events.schemas import Interaction

    topic = unique_topic("events", partitions=3)
    job = features_job(topic, processes=2, allowed_lateness_ms=86_400_000).start()
    events = make_events(9, 5000, users=70, late_every=0)
    producer = Producer({"bootstrap.servers": stack.bootstrap, "linger.ms": 5})
    for i, ev in enumerate(events):
        value, headers = encode(Interaction(**ev), "proto" if i % 2 else "json")
        producer.produce(topic, value=value, key=ev["user_id"].encode(), headers=headers)
        producer.poll(0)
    assert producer.flush(30) == 0
    want = _oracles(events, job.cfg)
    store = OnlineStore(redis.Redis.from_url(redis_url), VIEWS, job.cfg.redis.key_prefix)
    assert wait_until(lambda: _online_matches(store, want), 90, job), job.logs()
    for v in VIEWS:
        assert _strip(store.read_all(v.name)) == _strip(want[v.name].running)
    per_process = [_metrics(job.cfg.metrics.port + i) for i in range(2)]
    assert all(m["rtml_events_in_total"] > 0 for m in per_process)  # both processes did work
    assert sum(m["rtml_events_in_total"] for m in per_process) == len(events)


def test_two_processes_without_spreading_keep_exact_lateness(stack, unique_topic, features_job, redis_url):
    # One partition read by one process, folded on both: without spreading, its batches reach
    # every shard in order, so late events are exactly the oracle's even with 2 processes.
    topic = unique_topic("events", partitions=1)
    job = features_job(topic, processes=2, spread_checks=False, consume_batch_size=200).start()  # many batches
    events = make_events(13, 4000, users=60, items=20)
    produce_events(stack.bootstrap, topic, events)
    want = _oracles(events, job.cfg)
    store = OnlineStore(redis.Redis.from_url(redis_url), VIEWS, job.cfg.redis.key_prefix)
    assert wait_until(lambda: _online_matches(store, want), 90, job), job.logs()
    late_expected = sorted((i, v) for v, res in want.items() for i in res.late)
    assert len(late_expected) > 50
    letters = [DeadLetter.from_kafka(m.value(), m.headers())
               for m in consume_all(stack.bootstrap, topic + ".dlq", len(late_expected))]
    assert sorted((dl.offset, dl.detail.split()[2].rstrip(":")) for dl in letters) == late_expected
    # Only the reading process checked events; the other one only folded its shards.
    per_process = [_metrics(job.cfg.metrics.port + i) for i in range(2)]
    assert sorted(m.get("rtml_events_valid_total", 0.0) for m in per_process) == [0.0, len(events)]


def test_backfill_from_parquet_equals_backfill_from_jsonl(stack, tmp_path, redis_url) -> None:
    import orjson
    import pyarrow as pa
    import pyarrow.parquet as pq

    from engine.config import load_config

    events = make_events(21, 1500, users=30)
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_bytes(b"\n".join(orjson.dumps(e) for e in events) + b"\n")
    parquet = tmp_path / "events.parquet"
    pq.write_table(pa.Table.from_pylist(events), parquet)
    stores = {}
    for name, path in (("j", jsonl), ("p", parquet)):
        cfg = load_config(env={}, overrides={
            "kafka": {"bootstrap": stack.bootstrap}, "redis": {"url": redis_url, "key_prefix": f"bf{name}{tmp_path.name}"},
            "pipeline": {"offline_dir": str(tmp_path / f"off_{name}"), "shards_per_view": 4}})
        metrics = run_backfill(cfg, VIEWS, [path])
        stores[name] = (OnlineStore(redis.Redis.from_url(redis_url), VIEWS, cfg.redis.key_prefix), cfg)
        assert metrics.events_invalid.labels(str(path), "out_of_range")._value.get() == 0
    want = _oracles(events, stores["j"][1])
    for v in VIEWS:
        assert _strip(stores["p"][0].read_all(v.name)) == _strip(stores["j"][0].read_all(v.name))
        assert _strip(stores["j"][0].read_all(v.name)) == _strip(want[v.name].running)
        assert normalise_closed(read_offline(stores["p"][1].pipeline.offline_dir, v), v) == normalise_closed(
            want[v.name].closed, v)
