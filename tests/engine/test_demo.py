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


def test_main_demo_runs_end_to_end_and_writes_its_report(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from engine.demo.main import DemoPlan, run_main_demo

    # Its own embedded stack (no bootstrap / Redis configured), so no other test's topics mix in.
    cfg = load_config(env={}, overrides={"data_dir": str(tmp_path)})
    plan = DemoPlan(history_s=300, live_s=20, drift_at_s=10, load_s=2, app_rps=6, new_item_every_s=5)
    assert run_main_demo(cfg, plan, out_dir=tmp_path / "run") == 0
    report = (tmp_path / "run" / "report" / "report.md").read_text()
    for section in ("## Ingest and features", "## Serving", "## Online learning and drift", "## A/B test"):
        assert section in report
    assert "| Recommend |" in report and "| Predict |" in report
    assert (tmp_path / "run" / "report" / "latency.png").stat().st_size > 1000
    # Every starting model was registered and served: the repository holds them all.
    models = tmp_path / "run" / "models"
    assert {p.name for p in models.iterdir() if p.is_dir()} >= {"ranker", "ctr", "recs_user", "recs_item"}
    assert "errors: none" in report
