"""Ingest benchmark: Kafka -> features dataflow -> Redis, against a raw-consume floor.

Run from the repository root::

    python -m benchmarks.ingest                 # 1M events, ~3 minutes on 2 cores
    python -m benchmarks.ingest --events 200000 --freshness-seconds 10 --no-recovery

One run on the embedded stack (Tansu + redis-server, started here):

1. *setup* (not measured): generate N interaction events (10k users, ~2k items, mixed
   event types, event time advancing at a simulated 10k events/s with jitter) as orjson
   bytes keyed by ``user_id`` and produce them to a fresh 3-partition topic;
2. *floor*: one confluent-kafka consumer ``assign()``-ing every partition from the start,
   ``consume(batch)`` + ``orjson.loads`` of every value;
3. *framework ceiling*: :mod:`benchmarks.passthrough_flow` -- Bytewax with the features
   dataflow's own source and processes, ``orjson.loads`` of every value and nothing else
   (no validation, aggregation or Redis), 1 and 2 processes: what the framework costs on
   its own, so the pipeline's gap to the floor splits into framework and rtml's own work;
4. *pipeline*: the real features dataflow (``python -m bytewax.run`` processes from
   :func:`engine.runtime.jobs.job_specs`) with a one-view spec written here, for
   1 and 2 processes, recovery off and on; each run uses a fresh Redis key prefix on the
   same topic. The clock starts when the processes are spawned; the *processing* time
   starts at the first scrape with ``rtml_events_in_total > 0`` and ends when every event
   is folded (``aggregated + late + invalid == N``) *and* the newest features of the
   users of the last produced events are visible in Redis;
5. *freshness*: 1 process, events produced live at 10k/s with ``event_time`` = wall
   clock; (a) the ``rtml_feature_freshness_seconds`` histogram (quantiles from buckets)
   and (b) a direct probe: marker events for a few probe users every ~50 ms and a thread
   that polls ``HGET <key> _t`` until the marker is visible.

The floor (2) and every pipeline configuration (4) run ``--repeats`` times (3), interleaved
(a floor run, then each configuration, per repetition) so that a slow spell of the machine
hits them alike; the run
with the median events/s is reported, and every run's rate is kept (``runs_events_per_s``)
with its ratio to the floor (``ratio_to_floor_runs``).

Results go to ``benchmarks/results/ingest.json`` and the README table between
``<!-- bench:ingest:start -->`` / ``<!-- bench:ingest:end -->``.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import orjson
import redis
from confluent_kafka import Consumer, Producer, TopicPartition

from benchmarks.report import fmt_rate, machine_description, machine_line, update_readme_table, write_result
from engine.config import KafkaConfig, PipelineConfig, RtmlConfig, load_config
from engine.runtime.jobs import job_specs
from engine.runtime.ports import free_port, free_port_range, port_is_open
from engine.runtime.stack import LocalStack
from engine.runtime.topics import ensure_topics, topic_end_offsets

NAME = "ingest"
VIEW = "user"
EVENT_TYPES = ("impression", "click", "view", "conversion")
EVENT_TYPE_P = (0.62, 0.15, 0.20, 0.03)
TARGETS = {"ratio_2_processes": 0.5, "freshness_p99_ms": 100}
# The freshness run repeated with the earlier, slower defaults, for comparison.
TUNED = {"fetch_wait_max_ms": 100, "flush_interval_ms": 50}

FEATURE_SPEC = """\
# Written by benchmarks/ingest.py: one view, 3 windows x 5 features.
views:
  - name: user
    entity: [user_id]
    ttl: 2d
    windows:
      5m: 5m                          # tumbling
      1h: {size: 1h, slide: 5m}       # sliding
      24h: {size: 24h, slide: 1h}     # sliding
    features:
      - {name: impressions, agg: count, where: {event_type: impression}}
      - {name: clicks, agg: count, where: {event_type: click}}
      - {name: ctr, agg: ratio, numerator: clicks, denominator: impressions}
      - {name: dwell_mean, agg: mean, field: context.dwell_ms, where: {event_type: view}}
      - {name: dwell_max, agg: max, field: context.dwell_ms, where: {event_type: view}}
"""


def log(msg: str) -> None:
    print(f"[ingest {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- events


@dataclass
class EventSet:
    """Generated events: ``(key, value)`` pairs plus what completion checks need."""

    messages: list[tuple[bytes, bytes]]
    first_ms: int
    last_ms: int
    # user -> newest event time, for the users of the last produced events (Redis probe).
    final_times: dict[str, int]
    type_counts: dict[str, int]
    count: int = 0  # how many were generated (messages may be dropped after producing)

    def __len__(self) -> int:
        return self.count


def generate_events(
    n: int,
    *,
    users: int = 10_000,
    items: int = 2_000,
    rate: float = 10_000.0,
    jitter_ms: int = 25,
    seed: int = 0,
    base_ms: int | None = None,
    probe_last: int = 30,
) -> EventSet:
    """``n`` interaction events as orjson bytes keyed by ``user_id``.

    Event time advances at ``rate`` events/s of simulated time with +-``jitter_ms``.
    ``base_ms`` defaults to 30 s after a 5-minute boundary at least 10 minutes ago, so
    the event-time range of up to ~270 s crosses no 5-minute tile boundary: no window
    closes and no tile expires, whatever the run's wall-clock time (repeatable work).
    """
    if base_ms is None:
        past = int(time.time() * 1000) - 10 * 60_000
        base_ms = past - past % 300_000 + 30_000
    rng = np.random.default_rng(seed)
    u = rng.integers(0, users, n)
    it = rng.integers(0, items, n).tolist()
    kinds = rng.choice(len(EVENT_TYPES), n, p=EVENT_TYPE_P)
    times = base_ms + (np.arange(n, dtype=np.int64) * 1000 // int(rate)) + rng.integers(-jitter_ms, jitter_ms + 1, n)
    dwell = np.minimum(rng.lognormal(8.0, 1.0, n), 600_000).astype(np.int64).tolist()
    pos = rng.integers(0, 20, n).tolist()
    user_ids = [f"u{i}" for i in range(users)]
    user_keys = [s.encode() for s in user_ids]
    item_ids = [f"i{i}" for i in range(items)]
    kind_list = kinds.tolist()
    time_list = times.tolist()
    u_list = u.tolist()
    dumps = orjson.dumps
    messages: list[tuple[bytes, bytes]] = []
    append = messages.append
    for i in range(n):
        k = kind_list[i]
        ctx = {"dwell_ms": dwell[i]} if k == 2 else {"pos": pos[i]}
        ui = u_list[i]
        append((user_keys[ui], dumps({
            "user_id": user_ids[ui], "item_id": item_ids[it[i]], "event_type": EVENT_TYPES[k],
            "event_time": time_list[i], "context": ctx,
        })))
    max_t = np.full(users, -1, dtype=np.int64)
    np.maximum.at(max_t, u, times)
    final = {user_ids[ui]: int(max_t[ui]) for ui in u_list[-probe_last:]}
    counts = np.bincount(kinds, minlength=len(EVENT_TYPES))
    return EventSet(
        messages, int(times.min()), int(times.max()), final,
        {EVENT_TYPES[i]: int(c) for i, c in enumerate(counts)}, n,
    )


def produce_all(bootstrap: str, topic: str, messages: Sequence[tuple[bytes, bytes]], timeout: float = 120) -> float:
    """Produce every message (keyed) and wait for delivery; returns seconds taken."""
    errors: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None and len(errors) < 5:
            errors.append(str(err))

    producer = Producer({
        "bootstrap.servers": bootstrap,
        "linger.ms": 20,
        "batch.num.messages": 10_000,
        "queue.buffering.max.messages": 500_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "enable.idempotence": False,
    })
    started = time.perf_counter()
    produce = producer.produce
    for key, value in messages:
        while True:
            try:
                produce(topic, value=value, key=key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
    remaining = producer.flush(timeout)
    if remaining or errors:
        raise RuntimeError(f"produce to {topic}: {remaining} undelivered, errors {errors}")
    return time.perf_counter() - started


# --------------------------------------------------------------------------- floor


# librdkafka postpones the next fetch of a partition by fetch.queue.backoff.ms (default 1000 ms)
# whenever its local queue holds more than queued.min.messages (100k): a consumer that drains
# its queue faster than that then waits. On this box it caps a catch-up read near 170k msgs/s;
# 10 ms gives ~850k/s. The floor is the best a raw consumer does, so it uses the tuned value.
FLOOR_TUNING = {"fetch.queue.backoff.ms": 10}


def measure_floor(bootstrap: str, topic: str, n: int, partitions: int, *, batch: int = 5000,
                  timeout: float = 120, extra_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Raw consume of all partitions (assign from offset 0) + orjson.loads of every value."""
    config = {
        "bootstrap.servers": bootstrap,
        "group.id": f"bench-floor-{uuid.uuid4().hex[:8]}",  # required; never joined
        "enable.auto.commit": False,
        "enable.partition.eof": False,
        "fetch.wait.max.ms": 100,
        "queued.max.messages.kbytes": 65536,
        **(extra_config or {}),
    }
    consumer = Consumer(config)
    loads = orjson.loads
    count = 0
    parsed_bytes = 0
    try:
        started = time.perf_counter()
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        deadline = started + timeout
        while count < n:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"floor consumer read {count} of {n} in {timeout}s")
            for msg in consumer.consume(batch, 0.1):
                if msg.error() is not None:
                    continue
                value = msg.value()
                loads(value)
                parsed_bytes += len(value)
                count += 1
        seconds = time.perf_counter() - started
    finally:
        consumer.close()
    return {
        "events_per_s": round(count / seconds, 1),
        "seconds": round(seconds, 3),
        "events": count,
        "mb_per_s": round(parsed_bytes / seconds / 1e6, 2),
        "method": f"1 process, confluent-kafka assign() of {partitions} partitions from offset 0, "
                  f"consume({batch}) + orjson.loads per value",
        "client_config": {k: v for k, v in config.items() if k not in ("bootstrap.servers", "group.id")},
    }


# --------------------------------------------------------------------------- metrics


_LE = re.compile(r'le="([^"]+)"')


@dataclass
class Scrape:
    """Sample totals by name (labels summed) and freshness histogram buckets (by ``le``)."""

    totals: dict[str, float] = field(default_factory=lambda: collections.defaultdict(float))
    freshness_buckets: dict[float, float] = field(default_factory=lambda: collections.defaultdict(float))
    up: int = 0
    events_in_by_process: list[int] = field(default_factory=list)  # rtml_events_in_total per port (-1: down)

    def get(self, name: str) -> float:
        return self.totals.get(name, 0.0)


def scrape(ports: Iterable[int], timeout: float = 2.0) -> Scrape:
    """Sum the Prometheus samples of every process (a cheap line parser, not the full one)."""
    out = Scrape()
    for port in ports:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout).read().decode()
        except OSError:
            out.events_in_by_process.append(-1)
            continue
        out.up += 1
        before = out.totals.get("rtml_events_in_total", 0.0)
        for line in text.splitlines():
            if not line or line[0] == "#":
                continue
            head, _, value = line.rpartition(" ")
            brace = head.find("{")
            name = head if brace < 0 else head[:brace]
            v = float(value)
            out.totals[name] += v
            if name == "rtml_feature_freshness_seconds_bucket":
                m = _LE.search(head)
                if m:
                    out.freshness_buckets[float(m.group(1))] += v
        out.events_in_by_process.append(int(out.totals.get("rtml_events_in_total", 0.0) - before))
    return out


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus-style quantile from cumulative buckets (linear within a bucket)."""
    if not buckets:
        return None
    items = sorted(buckets.items())
    total = items[-1][1]
    if total <= 0:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in items:
        if count >= rank:
            if bound == float("inf"):
                return prev_bound  # as Prometheus: the highest finite bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound


def _bucket_delta(after: dict[float, float], before: dict[float, float]) -> dict[float, float]:
    return {le: after.get(le, 0.0) - before.get(le, 0.0) for le in after}


# --------------------------------------------------------------------------- jobs


class Job:
    """The features dataflow as ``python -m bytewax.run`` processes (own process groups)."""

    def __init__(self, cfg: RtmlConfig, log_dir: Path, name: str,
                 wrap_argv: Callable[[list[str]], list[str]] | None = None) -> None:
        self.cfg = cfg
        self.wrap_argv = wrap_argv  # e.g. run under benchmarks._gcwrap
        self.log_dir = log_dir
        self.name = name
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ports = [cfg.metrics.port + i for i in range(cfg.pipeline.processes)]
        self.cpu_at_first_event: float | None = None  # set by wait_until_done

    def start(self) -> "Job":
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for spec in job_specs(self.cfg, "features"):
            fh = open(self.log_dir / f"{self.name}-{spec.name}.log", "ab")
            argv = self.wrap_argv(list(spec.argv)) if self.wrap_argv else spec.argv
            try:
                self.procs.append(subprocess.Popen(
                    argv, env={**os.environ, **(spec.env or {})}, stdout=fh, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, start_new_session=True, cwd=str(Path(__file__).resolve().parent.parent),
                ))
            finally:
                fh.close()
        return self

    def scrape(self) -> Scrape:
        return scrape(self.ports)

    def check_alive(self) -> None:
        dead = [(i, p.returncode) for i, p in enumerate(self.procs) if p.poll() is not None]
        if dead:
            raise RuntimeError(f"{self.name}: dataflow process(es) exited {dead}:\n{self.logs()}")

    def cpu_seconds(self) -> float | None:
        try:
            import psutil
        except ImportError:
            return None
        total = 0.0
        for p in self.procs:
            try:
                proc = psutil.Process(p.pid)
                for pr in [proc, *proc.children(recursive=True)]:
                    t = pr.cpu_times()
                    total += t.user + t.system
            except psutil.Error:
                continue
        return round(total, 2)

    def logs(self, max_chars: int = 3000) -> str:
        return "\n".join(
            f"--- {f.name}\n{f.read_text(errors='replace')[-max_chars:]}" for f in sorted(self.log_dir.glob(f"{self.name}-*.log"))
        )

    def stop(self, grace_s: float = 10.0) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except (ProcessLookupError, PermissionError):
                    pass
        deadline = time.monotonic() + grace_s
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(p.pid, signal.SIGKILL)  # stragglers in the group too
            except (ProcessLookupError, PermissionError):
                pass
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self.procs = []
        for port in self.ports:  # metrics ports free again before the next run picks ports
            t_end = time.monotonic() + 5
            while port_is_open(port) and time.monotonic() < t_end:
                time.sleep(0.05)


def job_config(stack_cfg: RtmlConfig, *, topic: str, spec_path: Path, workdir: Path, processes: int,
               recovery: bool, prefix: str, idle_advance: bool = False, fetch_wait_max_ms: int | None = None,
               **pipeline: Any) -> RtmlConfig:
    """The job's configuration on the started stack; every path lives under ``workdir/prefix``.

    Recovery is set explicitly both ways (``pipeline.recovery`` where the config has it, and
    ``recovery_dir``), so nothing falls back to a default directory shared with other runs.
    """
    run_dir = workdir / prefix
    pipe: dict[str, Any] = {
        "feature_specs": str(spec_path),
        "offline_dir": str(run_dir / "offline"),
        "recovery_dir": str(run_dir / "recovery") if recovery else None,
        "processes": processes,
        "idle_advance": idle_advance,
    }
    if "recovery" in PipelineConfig.model_fields:
        pipe["recovery"] = recovery
    elif not recovery:
        pipe["recovery_dir"] = None
    pipe.update(pipeline)
    overrides: dict[str, Any] = {
        "kafka": {"bootstrap": stack_cfg.kafka.bootstrap, "events_topic": topic,
                  **({} if fetch_wait_max_ms is None else {"fetch_wait_max_ms": fetch_wait_max_ms})},
        "redis": {"url": stack_cfg.redis.url, "key_prefix": prefix},
        "metrics": {"enabled": True, "port": free_port_range(processes)},
        "pipeline": pipe,
    }
    if "data_dir" in RtmlConfig.model_fields:
        overrides["data_dir"] = str(run_dir)
    cfg = load_config(env={}, overrides=overrides)
    wants = bool(getattr(cfg.pipeline, "recovery", True) and cfg.pipeline.recovery_dir)
    if wants != recovery:
        raise RuntimeError(f"could not set recovery={recovery} in the config: {cfg.pipeline}")
    return cfg


def _visible(client: redis.Redis, prefix: str, want: dict[str, int]) -> bool:
    pipe = client.pipeline(transaction=False)
    users = list(want)
    for user in users:
        pipe.hget(f"{prefix}:{VIEW}:{user}", "_t")
    for user, raw in zip(users, pipe.execute()):
        if raw is None or int(raw) < want[user]:
            return False
    return True


def _folded(m: Scrape) -> float:
    return m.get("rtml_events_aggregated_total") + m.get("rtml_events_late_total") + m.get("rtml_events_invalid_total")


def wait_until_done(job: Job, client: redis.Redis, prefix: str, final_times: dict[str, int], n: int,
                    deadline: float) -> tuple[float, float, float, Scrape]:
    """Wait for a catch-up run to finish: ``(t_first_event, t_all_folded, t_done, last scrape, timeline)``.

    ``timeline`` holds ``[seconds since first event, events in per process]`` about once a second.

    A scrape costs the dataflow process ~5 ms of CPU (prometheus_client renders every
    series in Python, holding the GIL), so metrics are polled every 0.1 s only until the
    first event is counted, then once a second, and fast again only once the newest
    features are visible in Redis (a cheap check on the Redis server, every 20 ms).
    """
    def check(now: float, last: Scrape | None) -> None:
        if now > deadline:
            got = int(last.get("rtml_events_in_total")) if last else 0
            raise TimeoutError(f"{job.name}: not done before the deadline ({got} of {n} events in):\n{job.logs()}")
        job.check_alive()

    last: Scrape | None = None
    while True:  # startup: until the first event is counted
        now = time.perf_counter()
        check(now, last)
        m = job.scrape()
        if m.up:
            last = m
            if m.get("rtml_events_in_total") > 0:
                t_first = now
                job.cpu_at_first_event = job.cpu_seconds()
                break
        time.sleep(0.1)
    t_folded: float | None = None
    t_visible: float | None = None
    assert last is not None
    timeline: list[list[Any]] = [[0.0, last.events_in_by_process]]
    next_scrape = time.perf_counter() + 1.0
    while True:
        now = time.perf_counter()
        check(now, last)
        if t_visible is None and _visible(client, prefix, final_times):
            t_visible = now
        if t_folded is None and (now >= next_scrape or t_visible is not None):
            m = job.scrape()
            if m.up:
                last = m
                timeline.append([round(now - t_first, 2), m.events_in_by_process])
                if _folded(m) >= n:
                    t_folded = now
            next_scrape = now + 1.0
        if t_folded is not None and t_visible is not None:
            assert last is not None
            return t_first, t_folded, max(t_folded, t_visible), last, timeline
        time.sleep(0.02 if t_visible is None else 0.05)


def run_pipeline(stack_cfg: RtmlConfig, topic: str, events: EventSet, *, processes: int, recovery: bool,
                 spec_path: Path, workdir: Path, timeout: float) -> dict[str, Any]:
    """One catch-up run of the features dataflow over the whole topic; timings and counters."""
    n = len(events)
    prefix = f"b{uuid.uuid4().hex[:8]}"
    cfg = job_config(stack_cfg, topic=topic, spec_path=spec_path, workdir=workdir, processes=processes,
                     recovery=recovery, prefix=prefix)
    name = f"p{processes}{'r' if recovery else ''}"
    job = Job(cfg, workdir / "logs", name)
    client = redis.Redis.from_url(stack_cfg.redis.url or "")
    try:
        t0 = time.perf_counter()
        job.start()
        t_first, t_folded, t_done, last, timeline = wait_until_done(job, client, prefix, events.final_times, n, t0 + timeout)
        cpu = job.cpu_seconds()
        final = job.scrape()
        if final.up:
            last = final
    finally:
        job.stop()
        client.close()
    processing = t_done - t_first
    total = t_done - t0
    redis_count = last.get("rtml_redis_write_seconds_count")
    return {
        "processes": processes,
        "recovery": recovery,
        "events_per_s": round(n / processing, 1),
        "events_per_s_incl_startup": round(n / total, 1),
        "seconds": round(processing, 3),
        "seconds_incl_startup": round(total, 3),
        "startup_seconds": round(t_first - t0, 3),
        "seconds_to_all_folded": round(t_folded - t_first, 3),
        "events_in": int(last.get("rtml_events_in_total")),
        "events_aggregated": int(last.get("rtml_events_aggregated_total")),
        "events_late": int(last.get("rtml_events_late_total")),
        "events_invalid": int(last.get("rtml_events_invalid_total")),
        "entity_writes": int(last.get("rtml_features_written_total")),
        "redis_write_batches": int(redis_count),
        "redis_write_ms_mean": round(1000 * last.get("rtml_redis_write_seconds_sum") / redis_count, 3)
        if redis_count else None,
        "windows_emitted": int(last.get("rtml_windows_emitted_total")),
        "pipeline_cpu_seconds": cpu,
        # CPU of all processes from the first event to the end, per event: less noisy than
        # events/s on a shared machine (start-up imports excluded).
        "cpu_us_per_event": round((cpu - job.cpu_at_first_event) / n * 1e6, 2)
        if cpu is not None and job.cpu_at_first_event is not None else None,
        "events_in_timeline": timeline,
    }


def measure_passthrough(bootstrap: str, topic: str, n: int, *, processes: int, workdir: Path,
                        timeout: float) -> dict[str, Any]:
    """The framework ceiling: :mod:`benchmarks.passthrough_flow` over the whole topic.

    The features dataflow's source and processes, parsing every value like the floor, and
    nothing else. events/s runs from the first counted batch to the last process's end.
    """
    out = workdir / f"passthrough-{processes}-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "RTML_PT_BOOTSTRAP": bootstrap, "RTML_PT_TOPIC": topic, "RTML_PT_OUT": str(out)}
    ports = [free_port() for _ in range(processes)]
    addresses = ";".join(f"127.0.0.1:{p}" for p in ports)
    argv = [sys.executable, "-m", "bytewax.run", "benchmarks.passthrough_flow:flow_from_env()"]
    t0 = time.time()
    procs = [
        subprocess.Popen(argv + (["-i", str(i), "-a", addresses] if processes > 1 else []), env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=str(Path(__file__).resolve().parent.parent))
        for i in range(processes)
    ]
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=timeout)
            if proc.returncode != 0:
                raise RuntimeError(f"passthrough flow exited {proc.returncode}: {err.decode(errors='replace')[-2000:]}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    rows = [path.read_text().split() for path in workdir.glob(out.name + ".*")]
    events = sum(int(r[0]) for r in rows)
    if events != n:
        raise RuntimeError(f"passthrough flow counted {events} of {n} events")
    first = min(float(r[1]) for r in rows if float(r[1]) > 0)
    end = max(float(r[2]) for r in rows)
    return {
        "processes": processes,
        "events_per_s": round(n / (end - first), 1),
        "events_per_s_incl_startup": round(n / (end - t0), 1),
        "seconds": round(end - first, 3),
        "startup_seconds": round(first - t0, 3),
    }


# --------------------------------------------------------------------------- freshness


class _LiveLoad(threading.Thread):
    """Produce background events at ``rate``/s (event_time = wall clock) plus probe markers."""

    def __init__(self, bootstrap: str, topic: str, rate: float, probes: Sequence[str], marker_every_s: float,
                 users: int = 10_000, items: int = 2_000, seed: int = 1) -> None:
        super().__init__(name="bench-live-load", daemon=True)
        self.topic = topic
        self.rate = rate
        self.probes = list(probes)
        self.marker_every_s = marker_every_s
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": False})
        # Markers do not wait in the client's linger: their clock starts at produce().
        self.marker_producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "enable.idempotence": False})
        rng = np.random.default_rng(seed)
        self._u = rng.integers(0, users, 200_000).tolist()
        self._i = rng.integers(0, items, 200_000).tolist()
        self._k = rng.choice(len(EVENT_TYPES), 200_000, p=EVENT_TYPE_P).tolist()
        self._d = np.minimum(rng.lognormal(8.0, 1.0, 200_000), 600_000).astype(np.int64).tolist()
        self.stop_event = threading.Event()
        self.markers_on = threading.Event()
        self.lock = threading.Lock()
        self.pending: dict[str, collections.deque[tuple[int, float]]] = {p: collections.deque() for p in self.probes}
        self.markers_sent = 0
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            self.error = exc

    def _run(self) -> None:
        dumps = orjson.dumps
        start = time.perf_counter()
        next_marker = start
        probe_i = 0
        j = 0
        n_pool = len(self._u)
        while not self.stop_event.is_set():
            now = time.perf_counter()
            due = int((now - start) * self.rate) - self.sent
            if due > 0:
                t_ms = int(time.time() * 1000)
                for _ in range(due):
                    x = j % n_pool
                    k = self._k[x]
                    uid = f"u{self._u[x]}"
                    ctx = {"dwell_ms": self._d[x]} if k == 2 else {"pos": x % 20}
                    value = dumps({"user_id": uid, "item_id": f"i{self._i[x]}", "event_type": EVENT_TYPES[k],
                                   "event_time": t_ms, "context": ctx})
                    try:
                        self.producer.produce(self.topic, value=value, key=uid.encode())
                    except BufferError:
                        self.producer.poll(0.01)
                        break
                    j += 1
                    self.sent += 1
                self.producer.poll(0)
            if self.markers_on.is_set() and now >= next_marker:
                user = self.probes[probe_i % len(self.probes)]
                probe_i += 1
                t_prod = time.time()
                t_ms = int(t_prod * 1000)
                value = dumps({"user_id": user, "item_id": "i0", "event_type": "click", "event_time": t_ms,
                               "context": {}})
                with self.lock:
                    self.pending[user].append((t_ms, t_prod))
                self.marker_producer.produce(self.topic, value=value, key=user.encode())
                self.marker_producer.poll(0)
                self.markers_sent += 1
                next_marker = max(next_marker + self.marker_every_s, now)
            time.sleep(0.002)
        self.producer.flush(10)
        self.marker_producer.flush(10)


class _Prober(threading.Thread):
    """Poll ``HGET <probe key> _t`` and record when each pending marker became visible."""

    def __init__(self, url: str, prefix: str, load: _LiveLoad, interval_s: float = 0.002) -> None:
        super().__init__(name="bench-probe", daemon=True)
        self.client = redis.Redis.from_url(url)
        self.keys = {p: f"{prefix}:{VIEW}:{p}" for p in load.probes}
        self.load = load
        self.interval_s = interval_s
        self.latencies_ms: list[float] = []
        self.stop_event = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            users = list(self.keys)
            while not self.stop_event.is_set():
                pipe = self.client.pipeline(transaction=False)
                for user in users:
                    pipe.hget(self.keys[user], "_t")
                values = pipe.execute()
                seen = time.time()
                with self.load.lock:
                    for user, raw in zip(users, values):
                        if raw is None:
                            continue
                        t = int(raw)
                        q = self.load.pending[user]
                        while q and q[0][0] <= t:
                            _t_ms, t_prod = q.popleft()
                            self.latencies_ms.append((seen - t_prod) * 1000)
                time.sleep(self.interval_s)
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            self.error = exc
        finally:
            self.client.close()


def measure_consume_latency(bootstrap: str, *, partitions: int, fetch_wait_max_ms: int, duration_s: float = 6.0,
                            rate: float = 10_000.0) -> dict[str, Any]:
    """Freshness floor: produce live at ``rate`` and consume it raw (one consumer per partition, the source's
    settings); latency = receive wall time - event_time (ms) of every message after a 1 s warm-up."""
    topic = f"bench-lat-{uuid.uuid4().hex[:8]}"
    ensure_topics(bootstrap, [topic], partitions=partitions)
    conf = {
        "bootstrap.servers": bootstrap,
        "group.id": f"bench-lat-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "enable.partition.eof": False,
        "fetch.wait.max.ms": fetch_wait_max_ms,
        "queued.max.messages.kbytes": 65536,
    }
    consumers = [Consumer(conf) for _ in range(partitions)]
    for p, c in enumerate(consumers):
        c.assign([TopicPartition(topic, p, 0)])
    load = _LiveLoad(bootstrap, topic, rate, ["probe-0"], 1.0)
    lat: list[int] = []
    loads = orjson.loads
    try:
        load.start()
        t_measure = time.time() + 1.0
        t_end = t_measure + duration_s
        while True:
            now = time.time()
            if now > t_end:
                break
            for c in consumers:
                msgs = c.consume(5000, 0.001)
                now_ms = int(time.time() * 1000)
                if now >= t_measure:
                    for m in msgs:
                        if m.error() is None:
                            lat.append(now_ms - loads(m.value())["event_time"])
            time.sleep(0.001)
    finally:
        load.stop_event.set()
        load.join(15)
        for c in consumers:
            c.close()
    if load.error is not None:
        raise load.error
    arr = np.array(lat, dtype=np.float64)
    return {
        "p50_ms": round(float(np.percentile(arr, 50)), 1) if arr.size else None,
        "p99_ms": round(float(np.percentile(arr, 99)), 1) if arr.size else None,
        "samples": int(arr.size),
        "fetch_wait_max_ms": fetch_wait_max_ms,
        "method": f"raw confluent-kafka, one assign()ed consumer per partition polled round robin, "
                  f"{rate:.0f} events/s live for {duration_s:.0f} s; receive time - event_time (ms resolution)",
    }


def measure_freshness(stack_cfg: RtmlConfig, *, spec_path: Path, workdir: Path, partitions: int,
                      duration_s: float = 20.0, rate: float = 10_000.0, probes: int = 5,
                      marker_every_s: float = 0.05, warmup_s: float = 2.0,
                      broker_floor_s: float = 6.0, fetch_wait_max_ms: int | None = None,
                      flush_interval_ms: int | None = None) -> dict[str, Any]:
    """Live production at ``rate`` for ``duration_s``; freshness by histogram and by probe.

    ``fetch_wait_max_ms`` / ``flush_interval_ms`` (None: the config default) tune the job.
    """
    fetch_wait_max_ms = fetch_wait_max_ms or KafkaConfig().fetch_wait_max_ms
    extra: dict[str, Any] = {} if flush_interval_ms is None else {"flush_interval_ms": flush_interval_ms}
    bootstrap = stack_cfg.kafka.bootstrap or ""
    topic = f"bench-live-{uuid.uuid4().hex[:8]}"
    ensure_topics(bootstrap, [topic], partitions=partitions)
    ensure_topics(bootstrap, [topic + stack_cfg.pipeline.dlq_suffix], partitions=1)
    prefix = f"f{uuid.uuid4().hex[:8]}"
    # Live mode: idle_advance on (the default for a live job), recovery off.
    cfg = job_config(stack_cfg, topic=topic, spec_path=spec_path, workdir=workdir, processes=1, recovery=False,
                     prefix=prefix, idle_advance=True, fetch_wait_max_ms=fetch_wait_max_ms, **extra)
    job = Job(cfg, workdir / "logs", "fresh")
    load = _LiveLoad(bootstrap, topic, rate, [f"probe-{i}" for i in range(probes)], marker_every_s)
    prober = _Prober(stack_cfg.redis.url or "", prefix, load)
    try:
        job.start()
        load.start()
        deadline = time.perf_counter() + 60
        # Wait until the job is up and has caught up with what was produced meanwhile.
        while True:
            job.check_alive()
            if load.error:
                raise load.error
            m = job.scrape()
            if m.get("rtml_events_in_total") > 0 and load.sent - m.get("rtml_events_in_total") < rate * 0.5:
                break
            if time.perf_counter() > deadline:
                raise TimeoutError(f"freshness job did not catch up:\n{job.logs()}")
            time.sleep(0.1)
        time.sleep(warmup_s)
        prober.start()
        before = job.scrape()
        sent_before = load.sent
        cpu_before = job.cpu_seconds()
        t_start = time.time()
        load.markers_on.set()
        time.sleep(duration_s)
        load.markers_on.clear()
        t_end = time.time()
        cpu_window = job.cpu_seconds()
        time.sleep(1.0)  # let the last markers arrive (background load keeps flowing)
        after = job.scrape()
        sent_during = load.sent - sent_before
        load.stop_event.set()
        load.join(15)
        prober.stop_event.set()
        prober.join(5)
        for err in (load.error, prober.error):
            if err is not None:
                raise err
        cpu = job.cpu_seconds()
    finally:
        load.stop_event.set()
        prober.stop_event.set()
        job.stop()
    # What the broker and client alone add (no dataflow running: measured after it stopped).
    broker_floor = measure_consume_latency(bootstrap, partitions=partitions,
                                           fetch_wait_max_ms=cfg.kafka.fetch_wait_max_ms, rate=rate,
                                           duration_s=broker_floor_s) if broker_floor_s > 0 else None
    lat = np.array(prober.latencies_ms)
    with load.lock:
        unseen = sum(len(q) for q in load.pending.values())
    buckets = _bucket_delta(after.freshness_buckets, before.freshness_buckets)
    p50_h, p99_h = histogram_quantile(0.5, buckets), histogram_quantile(0.99, buckets)
    boundary = int(t_start * 1000) // 300_000 != int(t_end * 1000) // 300_000
    probe = {
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if lat.size else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if lat.size else None,
        "max_ms": round(float(lat.max()), 1) if lat.size else None,
        "mean_ms": round(float(lat.mean()), 1) if lat.size else None,
        "samples": int(lat.size),
        "markers_sent": load.markers_sent,
        "markers_not_seen": unseen,
    }
    histogram = {
        "p50_ms": round(p50_h * 1000, 1) if p50_h is not None else None,
        "p99_ms": round(p99_h * 1000, 1) if p99_h is not None else None,
        "observations": int(after.get("rtml_feature_freshness_seconds_count")
                             - before.get("rtml_feature_freshness_seconds_count")),
        "bucket_bounds_s": sorted(b for b in buckets if b != float("inf")),
    }
    return {
        "p50_ms": probe["p50_ms"],
        "p99_ms": probe["p99_ms"],
        "method": (
            f"direct probe: {probes} probe users get a marker event every {marker_every_s * 1000:.0f} ms "
            f"(round robin) on top of {rate:.0f} events/s live load for {duration_s:.0f} s; a thread polls "
            "HGET <prefix>:user:<probe> _t every ~2 ms; freshness = first poll that sees the marker's "
            "event time - wall time at produce() (marker producer linger.ms=0, load producer linger.ms=5)"
        ),
        "probe": probe,
        "histogram": histogram,
        "histogram_method": "rtml_feature_freshness_seconds delta over the measurement window; quantiles "
                            "interpolated linearly inside buckets (Prometheus histogram_quantile); it observes "
                            "wall clock - entity's newest event time just before the Redis write",
        "rate_events_per_s": round(sent_during / (t_end - t_start + 1.0), 1),
        "duration_s": duration_s,
        "processes": 1,
        "config": {"fetch_wait_max_ms": cfg.kafka.fetch_wait_max_ms, "flush_interval_ms": cfg.pipeline.flush_interval_ms,
                   "idle_advance": cfg.pipeline.idle_advance, "consume_batch_size": cfg.kafka.consume_batch_size},
        "crossed_5m_tile_boundary": boundary,
        "broker_floor": broker_floor,
        "pipeline_cpu_seconds": cpu,
        "pipeline_cpu_utilization": round((cpu_window - cpu_before) / (t_end - t_start), 3)
        if cpu_window is not None and cpu_before is not None else None,
    }


# --------------------------------------------------------------------------- driver


def _proc_cpu(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        import psutil

        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    except Exception:  # noqa: BLE001 - best effort
        return None


def run_benchmark(
    events: int = 1_000_000,
    *,
    partitions: int = 3,
    processes: Sequence[int] = (1, 2),
    recovery: bool = True,
    freshness_s: float = 20.0,
    freshness_rate: float = 10_000.0,
    freshness_tuned: bool = True,
    stack: LocalStack | None = None,
    workdir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    repeats: int = 3,
) -> dict[str, Any]:
    """Run every phase once and return the result document (see the module docs)."""
    own_stack = stack is None
    tmp = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="rtml-bench-ingest-"))
    tmp.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if own_stack:
        stack = LocalStack(load_config(env={}, overrides={"kafka": {"bootstrap": None}, "redis": {"url": None}}))
    assert stack is not None
    try:
        stack.start()
        scfg = stack.config
        bootstrap = stack.bootstrap
        spec_path = tmp / "features.yaml"
        spec_path.write_text(FEATURE_SPEC)

        log(f"generating {events} events")
        t = time.perf_counter()
        ev = generate_events(events, seed=seed)
        gen_s = time.perf_counter() - t
        topic = f"bench-ingest-{uuid.uuid4().hex[:8]}"
        ensure_topics(bootstrap, [topic], partitions=partitions)
        ensure_topics(bootstrap, [topic + scfg.pipeline.dlq_suffix], partitions=1)
        log(f"producing to {topic}")
        produce_s = produce_all(bootstrap, topic, ev.messages)
        ends = topic_end_offsets(bootstrap, topic)
        if sum(ends.values()) != events:
            raise RuntimeError(f"topic {topic} holds {sum(ends.values())} records, expected {events}")
        raw_bytes = sum(len(v) for _, v in ev.messages)
        ev.messages = []  # free memory before the measured phases

        kafka_cpu0 = _proc_cpu(stack.kafka.pid if stack.kafka else None)
        log("floor")
        # The floor and each pipeline run are repeated, interleaved (a floor run, then every
        # configuration, per repetition), so that a slow spell of the machine hits all of them
        # alike; the median run is reported, every run listed.
        floor_runs = [measure_floor(bootstrap, topic, events, partitions, extra_config=FLOOR_TUNING)]
        floor = floor_runs[0]
        floor_default = measure_floor(bootstrap, topic, events, partitions)
        log(f"floor {floor['events_per_s']:.0f} events/s (librdkafka defaults: {floor_default['events_per_s']:.0f})")

        timeout = 90 + events / 4000
        passthrough: dict[str, Any] = {}
        for procs in processes:
            key = f"{procs}_process{'es' if procs > 1 else ''}"
            log(f"framework ceiling (source + parse in Bytewax) {key}")
            res = measure_passthrough(bootstrap, topic, events, processes=procs, workdir=tmp, timeout=timeout)
            res["ratio_to_floor"] = round(res["events_per_s"] / floor["events_per_s"], 3)
            passthrough[key] = res
            log(f"framework ceiling {key}: {res['events_per_s']:.0f} events/s, ratio {res['ratio_to_floor']}")

        configs = [(p, False) for p in processes] + ([(p, True) for p in processes] if recovery else [])
        measured: dict[str, list[dict[str, Any]]] = {}
        for rep in range(repeats):
            if rep:
                floor_runs.append(measure_floor(bootstrap, topic, events, partitions, extra_config=FLOOR_TUNING))
            for procs, rec in configs:
                key = f"{procs}_process{'es' if procs > 1 else ''}{'_recovery' if rec else ''}"
                log(f"pipeline {key} (run {rep + 1} of {repeats})")
                res = run_pipeline(scfg, topic, ev, processes=procs, recovery=rec, spec_path=spec_path,
                                   workdir=tmp, timeout=timeout)
                measured.setdefault(key, []).append(res)
                log(f"pipeline {key}: {res['events_per_s']:.0f} events/s ({res['seconds']:.1f}s + startup "
                    f"{res['startup_seconds']:.1f}s), ratio {res['events_per_s'] / floor['events_per_s']:.3f}")
        floor = median_run(floor_runs)
        for res in passthrough.values():
            res["ratio_to_floor"] = round(res["events_per_s"] / floor["events_per_s"], 3)
        pipeline: dict[str, Any] = {}
        for key, results in measured.items():
            res = median_run(results)
            res["ratio_to_floor"] = round(res["events_per_s"] / floor["events_per_s"], 3)
            res["ratio_to_floor_runs"] = [round(r / floor["events_per_s"], 3) for r in res["runs_events_per_s"]]
            res["ratio_to_floor_incl_startup"] = round(res["events_per_s_incl_startup"] / floor["events_per_s"], 3)
            # FIELD-NOTES' reference ratios (Bytewax windows 0.15x) were taken against a raw
            # consumer with librdkafka's defaults: report that ratio too, clearly labelled.
            res["ratio_to_default_config_floor"] = round(res["events_per_s"] / floor_default["events_per_s"], 3)
            pipeline[key] = res
        freshness: dict[str, Any] | None = None
        fresh_tuned: dict[str, Any] | None = None
        if freshness_s > 0:
            log(f"freshness ({freshness_s:.0f}s live at {freshness_rate:.0f}/s)")
            freshness = measure_freshness(scfg, spec_path=spec_path, workdir=tmp, partitions=partitions,
                                          duration_s=freshness_s, rate=freshness_rate,
                                          warmup_s=min(2.0, freshness_s), broker_floor_s=min(6.0, freshness_s))
            log(f"freshness probe p50 {freshness['p50_ms']} ms p99 {freshness['p99_ms']} ms; histogram "
                f"p50 {freshness['histogram']['p50_ms']} p99 {freshness['histogram']['p99_ms']}")
            if freshness_tuned:
                log(f"freshness, tuned: fetch_wait_max_ms {TUNED['fetch_wait_max_ms']}, flush_interval_ms "
                    f"{TUNED['flush_interval_ms']}")
                fresh_tuned = measure_freshness(
                    scfg, spec_path=spec_path, workdir=tmp, partitions=partitions, duration_s=freshness_s,
                    rate=freshness_rate, warmup_s=min(2.0, freshness_s), broker_floor_s=min(6.0, freshness_s),
                    **TUNED)
                log(f"freshness, tuned: probe p50 {fresh_tuned['p50_ms']} ms p99 {fresh_tuned['p99_ms']} ms")
        kafka_cpu1 = _proc_cpu(stack.kafka.pid if stack.kafka else None)
    finally:
        if own_stack:
            stack.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    total_s = time.perf_counter() - started
    notes = build_notes(events, pipeline, freshness, fresh_tuned)
    machine = machine_description()
    result: dict[str, Any] = {
        "benchmark": NAME,
        "machine": machine,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "events": events,
        "partitions": partitions,
        "event_bytes_mean": round(raw_bytes / events, 1),
        "event_types": ev.type_counts,
        "setup": {"generate_seconds": round(gen_s, 2), "produce_seconds": round(produce_s, 2),
                  "produce_events_per_s": round(events / produce_s, 1)},
        "floor": floor,
        "floor_default_client_config": floor_default,
        "passthrough": passthrough,
        "pipeline": pipeline,
        "freshness": freshness,
        "freshness_tuned": fresh_tuned,
        "targets": dict(TARGETS),
        "target_results": _target_results(pipeline, freshness),
        "broker_cpu_seconds": round(kafka_cpu1 - kafka_cpu0, 2) if kafka_cpu0 is not None and kafka_cpu1 is not None
        else None,
        "benchmark_seconds": round(total_s, 1),
        "notes": notes,
    }
    return result


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median events/s (the lower middle one of an even count), with every
    run's events/s in ``runs_events_per_s`` (in the order they ran)."""
    middle = sorted(runs, key=lambda r: r["events_per_s"])[(len(runs) - 1) // 2]
    return {**middle, "runs_events_per_s": [round(r["events_per_s"], 1) for r in runs]}


def input_finished_s(timeline: list[list[Any]]) -> list[float | None]:
    """Per process: seconds after the first event when its input count stopped growing (from the timeline)."""
    if not timeline:
        return []
    final = timeline[-1][1]
    out: list[float | None] = []
    for i, last in enumerate(final):
        out.append(next((t for t, counts in timeline if i < len(counts) and counts[i] == last), None))
    return out


def build_notes(events: int, pipeline: dict[str, Any], freshness: dict[str, Any] | None,
                fresh_tuned: dict[str, Any] | None) -> list[str]:
    """The human notes of a result document (derived from the measurements only)."""
    notes: list[str] = []
    if events != 1_000_000:
        notes.append(f"run with {events} events instead of the default 1,000,000 (--events)")
    notes += [
        "Pipeline seconds start at the first metrics scrape (every 100 ms during startup) showing "
        "rtml_events_in_total > 0 and end when aggregated+late+invalid == events and the newest _t of the users of "
        "the last 30 produced events is visible in Redis (polled every 20 ms; metrics once a second meanwhile, "
        "because one scrape costs the dataflow ~5 ms of GIL-held CPU); *_incl_startup counts from spawning the "
        "processes.",
        "Each pipeline run reads the same topic from offset 0 with a fresh Redis key prefix, idle_advance off, "
        "default flush_interval_ms/out_of_orderness/allowed_lateness, shards_per_view 8; recovery runs snapshot "
        "every snapshot_interval_s (default 5 s) to SQLite.",
        "Event times span ~N/10k s starting 30 s after a 5-minute boundary, so no window closes and no tile "
        "expires during catch-up runs: the offline Parquet sink is idle; Redis writes of running values are the "
        "output cost.",
        "Everything (Tansu broker, redis-server, Bytewax processes, this driver) shares the machine's cores; with "
        "2 cores, 2 processes also compete with the broker and Redis.",
        "floor uses fetch.queue.backoff.ms=10; with librdkafka's default (1000 ms) the same raw read is "
        "floor_default_client_config (the consumer idles whenever its prefetch queue passed queued.min.messages). "
        "The dataflow's KafkaBatchSource keeps the default; at its current speed it is not what limits it.",
    ]
    for key, run in pipeline.items():
        done = input_finished_s(run.get("events_in_timeline") or [])
        if run["processes"] > 1 and len(done) > 1 and all(d is not None for d in done):
            first, last = min(done), max(done)  # type: ignore[type-var]
            if last > 0 and first < 0.8 * last:
                notes.append(
                    f"{key}: the partitions split unevenly over the processes; one process had read all of its "
                    f"input after {first:.1f} s, the other after {last:.1f} s (events_in_timeline). Reading stays "
                    "where the partitions are; the busier reader hands part of its checking to the other "
                    "(operators/balance.py), so the processes' work stays balanced.")
    late_runs = {k: v["events_late"] for k, v in pipeline.items() if v["events_late"]}
    if late_runs:
        notes.append(
            f"Events dead-lettered as late during catch-up: {late_runs}: those runs did less aggregation work and "
            "their Redis features are incomplete (a watermark running ahead of a slower partition).")
    if freshness is not None and freshness.get("pipeline_cpu_utilization") is not None:
        util = freshness["pipeline_cpu_utilization"]
        text = (f"Freshness: during the live run the single dataflow process was {util:.0%} busy "
                "(CPU seconds / wall seconds)")
        text += ("; near saturation, queueing dominates freshness." if util >= 0.8 else
                 "; broker_floor is what the broker + client alone add (Tansu answers fetches on the "
                 "fetch.wait.max.ms schedule), and the flush interval adds up to its length.")
        notes.append(text)
    if fresh_tuned is not None:
        c = fresh_tuned["config"]
        notes.append(
            f"freshness_tuned repeats the live run with fetch_wait_max_ms={c['fetch_wait_max_ms']} and "
            f"flush_interval_ms={c['flush_interval_ms']}: p50 {fresh_tuned['p50_ms']} ms, p99 "
            f"{fresh_tuned['p99_ms']} ms at {fresh_tuned['pipeline_cpu_utilization']:.0%} CPU.")
    for name, fr in (("freshness", freshness), ("freshness_tuned", fresh_tuned)):
        if fr is not None and fr.get("crossed_5m_tile_boundary"):
            notes.append(f"The {name} window crossed a 5-minute tile boundary: users with events in the previous "
                         "tile were rewritten at once, which may inflate the probe's tail.")
    return notes


def _target_results(pipeline: dict[str, Any], freshness: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    two = pipeline.get("2_processes")
    if two is not None:
        out["ratio_2_processes"] = {"value": two["ratio_to_floor"], "met": two["ratio_to_floor"] >= TARGETS["ratio_2_processes"]}
    if freshness is not None and freshness.get("p99_ms") is not None:
        out["freshness_p99_ms"] = {"value": freshness["p99_ms"],
                                   "met": freshness["p99_ms"] <= TARGETS["freshness_p99_ms"]}
    return out


def _range(runs: list[float] | None, floor: float) -> str:
    """`` (lo–hi)``: the runs' ratios to the floor, when there were several runs."""
    if not runs or len(runs) < 2:
        return ""
    return f" ({min(runs) / floor:.2f}–{max(runs) / floor:.2f})"


def markdown_table(result: dict[str, Any]) -> str:
    """The README table of one result document."""
    floor = result["floor"]["events_per_s"]
    lines = [
        f"Ingest, {result['events']:,} events, {result['partitions']} partitions, embedded Tansu + Redis "
        f"({machine_line(result['machine'])}; {result['date_utc']}).",
        "",
    ]
    runs = len(result["floor"].get("runs_events_per_s") or [1])
    if runs > 1:
        lines += [f"The floor and each dataflow configuration ran {runs} times, interleaved: the median run is "
                  "shown, with the range of the runs' ratios in parentheses.", ""]
    lines += [
        "| measure | events/s | ratio to floor | ratio to default-config floor | seconds (+ startup) | CPU µs / event | target |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
        f"| floor: raw consume + orjson.loads, 1 process, fetch.queue.backoff.ms 10 | {fmt_rate(floor)} | "
        f"1.00{_range(result['floor'].get('runs_events_per_s'), floor)} | | {result['floor']['seconds']:.1f} | | |",
    ]
    fd = result.get("floor_default_client_config")
    if fd:
        lines.append(f"| default-config floor: the same with librdkafka's defaults | {fmt_rate(fd['events_per_s'])} | "
                     f"{fd['events_per_s'] / floor:.2f} | 1.00 | {fd['seconds']:.1f} | | |")
    for key, res in (result.get("passthrough") or {}).items():
        procs = res["processes"]
        lines.append(
            f"| framework ceiling: Bytewax, the dataflow's source + orjson.loads, nothing else, {procs} "
            f"process{'es' if procs > 1 else ''} | {fmt_rate(res['events_per_s'])} | {res['ratio_to_floor']:.2f} | | "
            f"{res['seconds']:.1f} (+{res['startup_seconds']:.1f}) | | |"
        )
    labels = {
        "1_process": "features dataflow, 1 process",
        "2_processes": "features dataflow, 2 processes",
        "1_process_recovery": "features dataflow, 1 process, recovery on",
        "2_processes_recovery": "features dataflow, 2 processes, recovery on",
    }
    for key, res in result["pipeline"].items():
        late = f" ({res['events_late']:,} late)" if res.get("events_late") else ""
        target = ""
        if key == "2_processes":
            met = res["ratio_to_floor"] >= TARGETS["ratio_2_processes"]
            target = f"ratio ≥ {TARGETS['ratio_2_processes']}: {'met' if met else 'not met'}"
        default_ratio = res.get("ratio_to_default_config_floor")
        lines.append(
            f"| {labels.get(key, key)}{late} | {fmt_rate(res['events_per_s'])} | {res['ratio_to_floor']:.2f}"
            f"{_range(res.get('runs_events_per_s'), floor)} | "
            f"{'' if default_ratio is None else f'{default_ratio:.2f}'} | "
            f"{res['seconds']:.1f} (+{res['startup_seconds']:.1f}) | "
            f"{'' if res.get('cpu_us_per_event') is None else res['cpu_us_per_event']} | {target} |"
        )
    fr = result.get("freshness")
    if fr:
        lines += [
            "",
            "| freshness, 1 process, live 10k events/s | p50 ms | p99 ms | target |",
            "| --- | ---: | ---: | --- |",
        ]
        met = fr["p99_ms"] is not None and fr["p99_ms"] <= TARGETS["freshness_p99_ms"]
        lines.append(f"| probe: produce() → HGET sees it | {fr['probe']['p50_ms']} | {fr['probe']['p99_ms']} | "
                     f"p99 ≤ {TARGETS['freshness_p99_ms']} ms: {'met' if met else 'not met'} |")
        lines.append(f"| rtml_feature_freshness_seconds histogram | {fr['histogram']['p50_ms']} | "
                     f"{fr['histogram']['p99_ms']} | |")
        ft = result.get("freshness_tuned")
        if ft:
            c = ft["config"]
            lines.append(f"| probe, fetch_wait_max_ms {c['fetch_wait_max_ms']} + flush_interval_ms "
                         f"{c['flush_interval_ms']} | {ft['p50_ms']} | {ft['p99_ms']} | |")
        bf = fr.get("broker_floor")
        if bf:
            lines.append(f"| floor: raw consumer, produce() → consume() (fetch.wait.max.ms "
                         f"{bf['fetch_wait_max_ms']}) | {bf['p50_ms']} | {bf['p99_ms']} | |")
        if fr.get("pipeline_cpu_utilization") is not None:
            lines.append("")
            lines.append(f"During the live run the dataflow process used {fr['pipeline_cpu_utilization']:.0%} of a core.")
    lines += ["", "Reproduce: `python -m benchmarks.ingest` (results in `benchmarks/results/ingest.json`)."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ingest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts (default 1,2)")
    parser.add_argument("--no-recovery", action="store_true", help="skip the runs with recovery on")
    parser.add_argument("--freshness-seconds", type=float, default=20.0, help="0 skips the freshness phase")
    parser.add_argument("--no-tuned-freshness", action="store_true",
                        help=f"skip the second freshness run with {TUNED}")
    parser.add_argument("--out", default=None, help="results directory (default benchmarks/results)")
    parser.add_argument("--no-readme", action="store_true", help="do not touch README.md")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of the floor and of each pipeline configuration; the median is reported")
    args = parser.parse_args(argv)
    result = run_benchmark(
        args.events,
        repeats=args.repeats,
        partitions=args.partitions,
        processes=[int(x) for x in args.processes.split(",") if x.strip()],
        recovery=not args.no_recovery,
        freshness_s=args.freshness_seconds,
        freshness_tuned=not args.no_tuned_freshness,
    )
    path = write_result(NAME, result, args.out)
    log(f"wrote {path} (benchmark took {result['benchmark_seconds']:.0f}s)")
    table = markdown_table(result)
    if args.no_readme:
        print(table)
    elif update_readme_table(NAME, table):
        log("updated README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
