"""`rtml up` end to end: supervised dataflow, restart after a crash, stall alert, clean Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import psutil
import pytest
import redis

from engine.runtime.ports import free_port
from engine.runtime.progress import scrape
from engine.runtime.topics import ensure_topics
from tests.dataflows.conftest import consume_all, wait_until

pytestmark = pytest.mark.slow


def _rtml(*args: str, env: dict[str, str], **kw) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "engine.cli", *args], env=env, **kw)


def _dataflow_pids(up: subprocess.Popen[bytes], flow: str = "dataflows.features") -> list[int]:
    pids = []
    for p in psutil.Process(up.pid).children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE and f"{flow}:" in " ".join(p.cmdline()):
                pids.append(p.pid)
        except psutil.Error:  # exited between listing and inspection
            continue
    return pids


def test_rtml_up_restarts_crashed_dataflow_alerts_on_stall_and_stops_cleanly(stack, tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    topic, alerts = f"events-up-{suffix}", f"alerts-up-{suffix}"
    port, supervisor_port = free_port(), free_port()
    env = {
        **os.environ,
        "RTML_KAFKA_BOOTSTRAP": stack.bootstrap, "RTML_REDIS_URL": stack.redis_url,
        "RTML_KAFKA_EVENTS_TOPIC": topic, "RTML_KAFKA_ALERTS_TOPIC": alerts,
        "RTML_REDIS_KEY_PREFIX": f"up{suffix}", "RTML_METRICS_PORT": str(port),
        "RTML_METRICS_SUPERVISOR_PORT": str(supervisor_port),
        "RTML_METRICS_LEARNING_PORT": str(free_port()), "RTML_METRICS_DRIFT_PORT": str(free_port()),
        "RTML_LEARNING_PREDICTIONS_TOPIC": f"predictions-up-{suffix}", "RTML_KAFKA_LABELS_TOPIC": f"labels-up-{suffix}",
        "RTML_DATA_DIR": str(tmp_path), "RTML_PIPELINE_RECOVERY_DIR": str(tmp_path / "recovery"),
        "RTML_SUPERVISOR_STALL_AFTER_S": "2", "RTML_SUPERVISOR_CHECK_INTERVAL_S": "0.5",
        "RTML_SUPERVISOR_BACKOFF_INITIAL_S": "0.2",
    }
    ensure_topics(stack.bootstrap, [topic, alerts], partitions=3)
    log_path = tmp_path / "up.log"
    log = open(log_path, "wb")
    up = _rtml("up", env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    client = redis.Redis.from_url(stack.redis_url)
    try:
        def ready() -> bool:
            try:
                scrape(port)
                return True
            except OSError:
                return False
        assert wait_until(ready, 60)
        produced = subprocess.run([sys.executable, "-m", "engine.cli", "produce", "--fast", "--max-events", "3000",
                                   "--users", "50", "--items", "20"], env=env, capture_output=True, timeout=60)
        assert produced.returncode == 0, produced.stderr.decode()[-2000:]
        assert wait_until(lambda: len(list(client.scan_iter(f"up{suffix}:user:*"))) >= 40, 60)
        # The learning and drift dataflows run beside the features dataflow.
        assert wait_until(lambda: _dataflow_pids(up, "dataflows.learning") and _dataflow_pids(up, "dataflows.drift"), 30)

        # A segfaulting dataflow process is restarted by the supervisor.
        [pid] = _dataflow_pids(up)
        os.kill(pid, signal.SIGSEGV)
        assert wait_until(lambda: (p := _dataflow_pids(up)) != [] and p != [pid], 30)
        assert scrape(supervisor_port)["rtml_supervisor_restarts_total"] >= 1

        # A frozen dataflow with events waiting raises the stall alert on the alerts topic.
        assert wait_until(ready, 30)
        [pid] = _dataflow_pids(up)
        os.kill(pid, signal.SIGSTOP)
        subprocess.run([sys.executable, "-m", "engine.cli", "produce", "--fast", "--max-events", "200", "--seed", "1"],
                       env=env, capture_output=True, timeout=60, check=True)
        [msg] = consume_all(stack.bootstrap, alerts, 1, timeout=30)[:1] or [None]
        assert msg is not None, "no stall alert:\n" + log_path.read_text()[-3000:]
        assert orjson.loads(msg.value())["kind"] == "input_stalled"
        os.kill(pid, signal.SIGCONT)

        # `rtml features` reads what the dataflow wrote.
        entity = next(client.scan_iter(f"up{suffix}:user:*")).decode().rsplit(":", 1)[1]
        out = subprocess.run([sys.executable, "-m", "engine.cli", "features", "user", entity], env=env,
                             capture_output=True, timeout=30, check=True)
        row = orjson.loads(out.stdout.splitlines()[0])
        assert row["entity"] == entity and row["found"] and "clicks_1h" in row
    finally:
        children = psutil.Process(up.pid).children(recursive=True) if up.poll() is None else []
        up.send_signal(signal.SIGINT)
        try:
            code = up.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            raise
    assert code == 0, log_path.read_text()[-3000:]
    time.sleep(0.5)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
