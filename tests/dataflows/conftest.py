"""Fixtures that run the real features dataflow as ``python -m bytewax.run`` processes."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from engine.config import RtmlConfig, load_config
from engine.runtime.jobs import job_specs
from engine.runtime.ports import free_port_range
from engine.runtime.stack import LocalStack
from engine.runtime.topics import ensure_topics, topic_partitions


@dataclass
class FeaturesJob:
    """A running features dataflow (one or more processes) and its configuration."""

    cfg: RtmlConfig
    log_dir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self) -> "FeaturesJob":
        for spec in job_specs(self.cfg, "features"):
            log = open(self.log_dir / f"{spec.name}.log", "ab")
            self.procs.append(subprocess.Popen(
                spec.argv, env={**os.environ, **(spec.env or {})}, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            ))
        return self

    def kill9(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
        self.procs = []

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        self.procs = []

    def logs(self) -> str:
        return "\n".join(f.read_text(errors="replace")[-3000:] for f in sorted(self.log_dir.glob("*.log")))

    def assert_alive(self) -> None:
        dead = [p.returncode for p in self.procs if p.poll() is not None]
        assert not dead, f"dataflow exited {dead}:\n{self.logs()}"


@pytest.fixture()
def features_job(stack: LocalStack, tmp_path: Path) -> Iterator[Callable[..., FeaturesJob]]:
    """Factory: ``features_job(events_topic, consume_batch_size=..., **pipeline_overrides)`` -> a configured
    (unstarted) job."""
    jobs: list[FeaturesJob] = []

    def make(events_topic: str, *, processes: int = 1, recovery: bool = False, consume_batch_size: int = 5000,
             **pipeline: Any) -> FeaturesJob:
        prefix = f"t{uuid.uuid4().hex[:8]}"
        cfg = load_config(env={}, overrides={
            "kafka": {"bootstrap": stack.bootstrap, "events_topic": events_topic, "fetch_wait_max_ms": 50,
                      "consume_batch_size": consume_batch_size},
            "redis": {"url": stack.redis_url, "key_prefix": prefix},
            "metrics": {"port": free_port_range(processes)},
            "pipeline": {
                "offline_dir": str(tmp_path / "offline"),
                "recovery": recovery,
                "recovery_dir": str(tmp_path / "recovery"),
                "processes": processes,
                "idle_advance": False,
                "shards_per_view": 4,
                **pipeline,
            },
        })
        ensure_topics(stack.bootstrap, [events_topic + cfg.pipeline.dlq_suffix], partitions=1)
        (tmp_path / "logs").mkdir(exist_ok=True)
        job = FeaturesJob(cfg, tmp_path / "logs")
        jobs.append(job)
        return job

    yield make
    for job in jobs:
        job.stop()


def produce_events(bootstrap: str, topic: str, events: Sequence[dict[str, Any]]) -> list[bytes]:
    """Produce events as JSON keyed by user; returns the exact bytes sent."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    payloads = []
    for ev in events:
        raw = orjson.dumps(ev) if isinstance(ev, dict) else ev
        payloads.append(raw)
        key = ev.get("user_id", "").encode() if isinstance(ev, dict) else None
        producer.produce(topic, value=raw, key=key)
        producer.poll(0)
    assert producer.flush(30) == 0
    return payloads


def consume_all(bootstrap: str, topic: str, expected: int, timeout: float = 60.0) -> list[Any]:
    """Read every partition of a topic from the start until ``expected`` messages or timeout."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "tests", "enable.auto.commit": False})
    partitions = topic_partitions(bootstrap, topic)
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(out) < expected and time.monotonic() < deadline:
        for msg in consumer.consume(1000, 0.2):
            if msg.error() is None:
                out.append(msg)
    consumer.close()
    return out


def wait_until(predicate: Callable[[], bool], timeout: float, job: FeaturesJob | None = None) -> bool:
    """Poll ``predicate`` until true or timeout; fail fast if the job died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if job is not None:
            job.assert_alive()
        if predicate():
            return True
        time.sleep(0.25)
    return False
