"""``rtml demo``'s tour: start everything, stream simulated traffic, and report what happened.

It starts the embedded stack (or uses RTML_KAFKA_BOOTSTRAP / RTML_REDIS_URL), runs
the features dataflow under the supervisor, produces simulated traffic in real
time (with a taste drift half way and a trickle of malformed events), prints
progress, then a summary: events in / invalid / late, features written, windows
closed, freshness, and a sample of what a user's features look like in Redis.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import redis

from engine.config import RtmlConfig
from engine.events.producer import ProduceStats, Topics, produce
from engine.events.simulator import Simulator, SimulatorConfig
from engine.features.online import OnlineStore
from engine.runtime.jobs import job_specs
from engine.runtime.ports import free_port_range
from engine.runtime.progress import histogram_quantile, pipeline_progress, scrape_job
from engine.runtime.stack import LocalStack
from engine.runtime.supervisor import Supervisor

_FRESHNESS = "rtml_feature_freshness_seconds"


def _fmt_ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"<= {seconds * 1000:.0f} ms"


def _progress_line(cfg: RtmlConfig, elapsed: float) -> str:
    m = scrape_job(cfg)
    return (
        f"[{elapsed:5.1f}s] in {m.get('rtml_events_in_total', 0):>8.0f}  "
        f"invalid {m.get('rtml_events_invalid_total', 0):>5.0f}  late {m.get('rtml_events_late_total', 0):>4.0f}  "
        f"features written {m.get('rtml_features_written_total', 0):>8.0f}  "
        f"windows closed {m.get('rtml_windows_emitted_total', 0):>6.0f}"
    )


def run_demo(cfg: RtmlConfig, duration_s: float = 60.0, rate: float = 1000.0) -> int:
    """Run the tour; returns a process exit code (0 when every event was accounted for)."""
    cfg = cfg.model_copy(deep=True)
    run_dir = Path(cfg.data_dir) / f"demo-{int(time.time())}"
    cfg.data_dir = str(run_dir)
    cfg.pipeline.offline_dir = str(run_dir / "offline")
    cfg.pipeline.recovery_dir = str(run_dir / "recovery")
    # A short lateness lets the 1-minute windows close within the tour.
    cfg.pipeline.allowed_lateness_ms = min(cfg.pipeline.allowed_lateness_ms, 5_000)
    if cfg.metrics.port:
        cfg.metrics.port = free_port_range(max(1, cfg.pipeline.processes))
    with LocalStack(cfg) as stack:
        stack.ensure_topics()
        cfg = stack.config
        print(f"stack: kafka {cfg.kafka.bootstrap}, redis {cfg.redis.url}; data in {run_dir}", flush=True)
        supervisor = Supervisor(job_specs(cfg, "features"), cfg, log_dir=run_dir / "logs",
                                progress=pipeline_progress(cfg))
        supervisor.start()
        try:
            return _drive(cfg, supervisor, duration_s, rate)
        finally:
            supervisor.stop()


def _drive(cfg: RtmlConfig, supervisor: Supervisor, duration_s: float, rate: float) -> int:
    sim = Simulator(SimulatorConfig(n_users=2000, n_items=500, rate=rate, drift_at_s=duration_s / 2,
                                    invalid_fraction=0.002, seed=7))
    stats: dict[str, ProduceStats] = {}

    def producer() -> None:
        stats["run"] = produce(cfg.kafka.bootstrap or "", sim, Topics.from_config(cfg.kafka),
                               duration_s=duration_s, realtime=True)

    thread = threading.Thread(target=producer, name="demo-producer", daemon=True)
    started = time.monotonic()
    print(f"producing ~{rate:.0f} impressions/s (+ clicks, views, conversions, labels) for {duration_s:.0f} s; "
          f"drift at {duration_s / 2:.0f} s", flush=True)
    thread.start()
    while thread.is_alive():
        thread.join(5.0)
        print(_progress_line(cfg, time.monotonic() - started), flush=True)
    progress = pipeline_progress(cfg)
    deadline = time.monotonic() + 60
    consumed, available = progress()
    while consumed < available and time.monotonic() < deadline:  # let the dataflow catch up
        time.sleep(0.5)
        consumed, available = progress()
    time.sleep(1.0)  # one more flush interval for running values
    return _report(cfg, supervisor, stats.get("run"), consumed, available)


def _report(cfg: RtmlConfig, supervisor: Supervisor, produced: ProduceStats | None,
            consumed: int, available: int) -> int:
    m = scrape_job(cfg)
    ports = [cfg.metrics.port + i for i in range(cfg.pipeline.processes)]
    events_in = m.get("rtml_events_in_total", 0)
    valid = m.get("rtml_events_valid_total", 0)
    invalid = m.get("rtml_events_invalid_total", 0)
    store = OnlineStore(redis.Redis.from_url(cfg.redis.url or ""), [], cfg.redis.key_prefix)
    keys = {view: sum(1 for _ in store.client.scan_iter(match=f"{cfg.redis.key_prefix}:{view}:*", count=1000))
            for view in ("user", "item", "user_item")}
    lines = [
        "",
        "== rtml demo summary ==",
        f"events produced        {produced.by_topic.get(cfg.kafka.events_topic, 0) if produced else 0:>10}"
        f"   (labels {produced.by_topic.get(cfg.kafka.labels_topic, 0) if produced else 0},"
        f" items {produced.by_topic.get(cfg.kafka.items_topic, 0) if produced else 0})",
        f"events in              {events_in:>10.0f}   (consumed {consumed} of {available} offsets)",
        f"  valid                {valid:>10.0f}",
        f"  invalid -> DLQ       {invalid:>10.0f}",
        f"  late -> DLQ          {m.get('rtml_events_late_total', 0):>10.0f}   (per view)",
        f"features written       {m.get('rtml_features_written_total', 0):>10.0f}   hashes "
        f"(user {keys['user']}, item {keys['item']}, user x item {keys['user_item']} entities in Redis)",
        f"windows closed         {m.get('rtml_windows_emitted_total', 0):>10.0f}   rows in the Parquet log",
        f"freshness p50 / p99    {_fmt_ms(histogram_quantile(ports, _FRESHNESS, 0.5))} / "
        f"{_fmt_ms(histogram_quantile(ports, _FRESHNESS, 0.99))}   (wall clock - event time at write)",
        f"dataflow restarts      {sum(supervisor.restarts().values()):>10}",
    ]
    sample = _sample_user(cfg)
    if sample:
        lines.append(f"sample: user {sample[0]} -> {sample[1]}")
    print("\n".join(lines), flush=True)
    accounted = events_in == valid + invalid and consumed >= available
    if not accounted:
        print("WARNING: not every event was accounted for", flush=True)
    return 0 if accounted else 1


def _sample_user(cfg: RtmlConfig) -> tuple[str, dict[str, Any]] | None:
    from engine.features.spec import views_from_config

    client = redis.Redis.from_url(cfg.redis.url or "")
    store = OnlineStore(client, views_from_config(cfg), cfg.redis.key_prefix)
    key = next(iter(client.scan_iter(match=f"{cfg.redis.key_prefix}:user:*", count=100)), None)
    if key is None:
        return None
    entity = key.decode().rsplit(":", 1)[1]
    row = store.get("user", [entity], features=["impressions_1h", "clicks_1h", "ctr_1h", "distinct_items_24h",
                                                 "last_item_5m"])[0]
    return entity, {**row.values, "age_ms": row.age_ms}
