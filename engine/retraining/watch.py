"""The retraining watcher: reads the alerts topic, keeps the schedule, starts retraining runs.

``rtml retrain watch`` runs one :class:`RetrainWatcher`. It reads every partition of
``kafka.alerts_topic`` with ``assign()`` (no consumer group: FIELD-NOTES, groups take ~20 s to
assign on Tansu) from the offsets saved in ``<retraining.work_dir>/watch-state.json``, or from
the end of the topic on a first start (old alerts were about old models). Each alert goes to
the :class:`~engine.retraining.trigger.RetrainTrigger`; a run starts as a child process
(``rtml retrain run``), so a crash or an out-of-memory kill in training never takes the watcher
down, and alerts keep being read while it trains. The saved state (offsets, when the last run
finished) is written after every change, so a restarted watcher neither re-reads alerts it has
handled nor forgets the cooldown.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import orjson

from engine.config import RtmlConfig
from engine.retraining.trigger import RetrainPolicy, RetrainTrigger

log = logging.getLogger(__name__)

STATE_FILE = "watch-state.json"


@dataclass
class WatchState:
    """What survives a restart: next offset per alerts partition, and the last run's end."""

    offsets: dict[int, int] = field(default_factory=dict)
    last_finished: float | None = None

    @classmethod
    def load(cls, path: Path) -> "WatchState":
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return cls()
        return cls({int(p): int(o) for p, o in raw.get("offsets", {}).items()}, raw.get("last_finished"))

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"offsets": {str(p): o for p, o in self.offsets.items()},
                                   "last_finished": self.last_finished}))
        os.replace(tmp, path)


def run_command(config_path: str | None, reasons: Sequence[str]) -> list[str]:
    """The child process that performs one run: ``rtml retrain run --reason ...``."""
    argv = [sys.executable, "-m", "engine.cli"]
    if config_path:
        argv += ["--config", config_path]
    argv += ["retrain", "run"]
    for reason in reasons:
        argv += ["--reason", reason]
    return argv


class RetrainWatcher:
    """Alerts + schedule → retraining runs, one at a time (see the module docstring).

    ``launch`` starts a run and returns a ``subprocess.Popen``-like object (``poll()`` gives
    None while running); the default runs ``rtml retrain run`` with the same configuration.
    """

    def __init__(
        self,
        cfg: RtmlConfig,
        config_path: str | None = None,
        launch: Callable[[list[str]], Any] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.clock = clock
        self.launch = launch or (lambda reasons: subprocess.Popen(run_command(config_path, reasons)))
        self.state_path = Path(cfg.retraining.work_dir or ".") / STATE_FILE
        self.state = WatchState.load(self.state_path)
        self.trigger = RetrainTrigger(RetrainPolicy.from_config(cfg.retraining), self.state.last_finished)
        self.started_at = clock()
        self.runs_started = 0
        self._child: Any = None
        self._consumer: Any = None

    # -- the alerts topic ------------------------------------------------------------------------

    def _open(self) -> None:
        from confluent_kafka import Consumer, TopicPartition

        from engine.runtime.topics import topic_end_offsets

        bootstrap = self.cfg.kafka.bootstrap
        if not bootstrap:
            raise ValueError("rtml retrain watch needs a broker: set RTML_KAFKA_BOOTSTRAP")
        topic = self.cfg.kafka.alerts_topic
        ends = topic_end_offsets(bootstrap, topic)
        for partition, end in ends.items():
            self.state.offsets.setdefault(partition, end)  # first start: only new alerts
        self._consumer = Consumer({
            "bootstrap.servers": bootstrap,
            "group.id": "rtml-retrainer",  # required by librdkafka; no group is joined (assign)
            "enable.auto.commit": False,
            "allow.auto.create.topics": False,
        })
        self._consumer.assign([TopicPartition(topic, p, o) for p, o in sorted(self.state.offsets.items())])

    def poll_alerts(self, timeout_s: float) -> int:
        """Read available alerts into the trigger; returns how many asked for a run."""
        # The state file changes when the first open sets the offsets or a message moves them.
        moved = self._consumer is None
        if self._consumer is None:
            self._open()
        wanted = 0
        for msg in self._consumer.consume(500, timeout_s):
            if msg.error() is not None:
                log.warning("alerts topic: %s", msg.error())
                continue
            self.state.offsets[msg.partition()] = msg.offset() + 1
            moved = True
            try:
                alert = orjson.loads(msg.value() or b"")
            except orjson.JSONDecodeError:
                log.warning("alerts topic: skipping an undecodable message at offset %d", msg.offset())
                continue
            if isinstance(alert, dict) and self.trigger.offer(alert, self.clock()):
                wanted += 1
        if moved:
            self.state.save(self.state_path)
        return wanted

    # -- runs ------------------------------------------------------------------------------------

    def step(self, poll_timeout_s: float = 1.0) -> None:
        """One iteration: read alerts, reap a finished run, start a due one."""
        self.poll_alerts(poll_timeout_s)
        now = self.clock()
        if self._child is not None:
            code = self._child.poll()
            if code is None:
                return
            log.info("retraining run finished with exit code %s", code)
            self._child = None
            self.trigger.finished(now)
            self.state.last_finished = now
            self.state.save(self.state_path)
        reasons = self.trigger.take(now, started_at=self.started_at)
        if reasons:
            log.info("starting a retraining run of %s: %s", self.cfg.retraining.model, "; ".join(reasons))
            self._child = self.launch(reasons)
            self.runs_started += 1

    def run_forever(self, stop: threading.Event) -> None:
        """Step until ``stop`` is set; waits for a run in progress to end before returning."""
        try:
            while not stop.is_set():
                self.step()
        finally:
            if self._child is not None:
                self._child.wait()
            if self._consumer is not None:
                self._consumer.close()
