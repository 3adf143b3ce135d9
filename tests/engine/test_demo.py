"""`rtml demo` (what `make demo` runs), shortened: everything accounted for, a summary printed."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from engine.config import load_config
from engine.demo import run_demo
from engine.runtime.ports import free_port

pytestmark = pytest.mark.slow


def test_short_demo_accounts_for_every_event(stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suffix = uuid.uuid4().hex[:8]
    cfg = load_config(env={}, overrides={
        "kafka": {"bootstrap": stack.bootstrap, "events_topic": f"demo-events-{suffix}",
                  "labels_topic": f"demo-labels-{suffix}", "items_topic": f"demo-items-{suffix}",
                  "alerts_topic": f"demo-alerts-{suffix}"},
        "redis": {"url": stack.redis_url, "key_prefix": f"demo{suffix}"},
        "metrics": {"port": free_port()},
        "data_dir": str(tmp_path),
    })
    assert run_demo(cfg, duration_s=6, rate=200) == 0
    out = capsys.readouterr().out
    assert "== rtml demo summary ==" in out
    assert "invalid -> DLQ" in out and "freshness p50 / p99" in out and "sample: user" in out
