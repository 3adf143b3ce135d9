"""Supervisor: restarts on any exit, backoff, shutdown, stall alerts, metrics."""

from __future__ import annotations

import io
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import psutil
import pytest
from prometheus_client import CollectorRegistry

from engine.config import SupervisorConfig
from engine.runtime.supervisor import Alert, ProcessSpec, Supervisor

PY = sys.executable
FAST = SupervisorConfig(backoff_initial_s=0.05, backoff_max_s=0.4, stall_after_s=0.3, check_interval_s=0.05)


def _wait(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def _gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie awaiting its reaper counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _py(code: str) -> list[str]:
    return [PY, "-c", code]


def test_restarts_on_clean_exit_and_segfault(tmp_path: Path) -> None:
    specs = [
        ProcessSpec("clean", _py("print('hello', flush=True)")),
        ProcessSpec("segv", _py("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")),
    ]
    sup = Supervisor(specs, FAST, log_dir=tmp_path, stable_after_s=60)
    with sup:
        _wait(lambda: all(n >= 3 for n in sup.restarts().values()))
        status = sup.status()
    assert status["clean"].last_exit == 0
    assert status["segv"].last_exit == -signal.SIGSEGV
    assert "hello" in (tmp_path / "clean.log").read_text()
    value = sup.registry.get_sample_value("rtml_supervisor_restarts_total", {"process": "segv"})
    assert value is not None and value >= 3


def test_backoff_doubles_up_to_max(tmp_path: Path) -> None:
    sup = Supervisor([ProcessSpec("crash", _py("raise SystemExit(3)"))], FAST, log_dir=tmp_path,
                     stable_after_s=60)
    with sup:
        _wait(lambda: len(sup.status()["crash"].delays) >= 6)
        delays = sup.status()["crash"].delays
    assert delays[:6] == (0.05, 0.1, 0.2, 0.4, 0.4, 0.4)
    assert sup.status()["crash"].last_exit == 3


def test_backoff_resets_after_stable_run(tmp_path: Path) -> None:
    # Runs 0.3 s each time, longer than stable_after_s: every restart uses the initial delay.
    sup = Supervisor([ProcessSpec("steady", _py("import time; time.sleep(0.3)"))], FAST,
                     log_dir=tmp_path, stable_after_s=0.2)
    with sup:
        _wait(lambda: len(sup.status()["steady"].delays) >= 3)
        delays = sup.status()["steady"].delays
    assert set(delays[:3]) == {0.05}


def test_stop_kills_children_and_their_groups(tmp_path: Path) -> None:
    # The child ignores SIGTERM and forks a grandchild: both must be gone after stop().
    code = (
        "import signal, subprocess, sys, time;"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        f"p = subprocess.Popen([{PY!r}, '-c', 'import time; time.sleep(60)']);"
        "print(p.pid, flush=True); time.sleep(60)"
    )
    sup = Supervisor([ProcessSpec("stubborn", _py(code)), ProcessSpec("sleepy", _py("import time; time.sleep(60)"))],
                     FAST, log_dir=tmp_path, stop_grace_s=0.3)
    sup.start()
    log_path = tmp_path / "stubborn.log"
    _wait(lambda: log_path.exists() and log_path.read_text().strip().splitlines()[-1].isdigit())
    grandchild = int(log_path.read_text().strip().splitlines()[-1])
    pids = [s.pid for s in sup.status().values()]
    assert all(pids)
    t0 = time.monotonic()
    sup.stop()
    assert time.monotonic() - t0 < 5
    for pid in pids:
        assert _gone(pid)  # reaped by stop()
    # The grandchild was killed via the group; the kernel may need a moment to finish it.
    _wait(lambda: _gone(grandchild), timeout=3)
    assert all(not s.running for s in sup.status().values())
    assert sup.restarts() == {"stubborn": 0, "sleepy": 0}
    sup.stop()  # idempotent
    with pytest.raises(RuntimeError):
        sup.start()


def test_stall_alert_fires_once_and_clears(caplog: pytest.LogCaptureFixture) -> None:
    state = {"consumed": 0, "available": 100}
    alerts: list[Alert] = []
    sup = Supervisor([], FAST, progress=lambda: (state["consumed"], state["available"]),
                     on_alert=alerts.append)
    gauge = lambda: sup.registry.get_sample_value("rtml_supervisor_input_stalled")  # noqa: E731
    with caplog.at_level(logging.WARNING, logger="engine.runtime.supervisor"), sup:
        _wait(lambda: sup.stalled)
        assert gauge() == 1
        time.sleep(0.3)  # still stalled: no second alert
        assert [a.kind for a in alerts] == ["input_stalled"]
        assert alerts[0].consumed == 0 and alerts[0].available == 100
        assert alerts[0].stalled_for_s >= FAST.stall_after_s
        assert sup.registry.get_sample_value("rtml_supervisor_input_lag") == 100
        state["consumed"] = 10  # progress resumes
        _wait(lambda: not sup.stalled)
        assert gauge() == 0
        assert [a.kind for a in alerts] == ["input_stalled", "input_resumed"]
    assert any("input stalled" in r.getMessage() for r in caplog.records)


def test_no_stall_when_caught_up_or_progressing() -> None:
    state = {"consumed": 50, "available": 50}
    alerts: list[Alert] = []

    def progress() -> tuple[int, int]:
        return state["consumed"], state["available"]

    with Supervisor([], FAST, progress=progress, on_alert=alerts.append) as sup:
        time.sleep(0.6)  # idle input, nothing waiting: not a stall
        for _ in range(12):  # events waiting but consumption advancing: not a stall
            state["available"] += 10
            state["consumed"] += 5
            time.sleep(0.05)
        assert not sup.stalled
    assert alerts == []


def test_failing_progress_does_not_break_supervision(tmp_path: Path) -> None:
    def broken() -> tuple[int, int]:
        raise ConnectionError("broker down")

    sup = Supervisor([ProcessSpec("c", _py("pass"))], FAST, log_dir=tmp_path, progress=broken)
    with sup:
        _wait(lambda: sup.restarts()["c"] >= 2)
        assert not sup.stalled


def test_two_supervisors_have_separate_metrics() -> None:
    a = Supervisor([], FAST)
    b = Supervisor([], FAST)
    assert a.registry is not b.registry
    shared = CollectorRegistry()
    Supervisor([], FAST, registry=shared)
    assert shared.get_sample_value("rtml_supervisor_input_stalled") == 0


def test_echo_prefixes_output(tmp_path: Path) -> None:
    out = io.StringIO()
    sup = Supervisor([ProcessSpec("talker", _py("print('line one'); print('line two')"))], FAST,
                     log_dir=tmp_path, echo=out)
    with sup:
        _wait(lambda: "[talker] line two" in out.getvalue())
    assert "[talker] line one\n" in out.getvalue()
    assert "line two" in (tmp_path / "talker.log").read_text()


def test_env_and_cwd_are_applied(tmp_path: Path) -> None:
    code = "import os; open('out.txt', 'w').write(os.environ['RTML_X'] + ':' + str('PATH' in os.environ))"
    sup = Supervisor([ProcessSpec("env", _py(code), env={"RTML_X": "42"}, cwd=str(tmp_path))],
                     FAST, log_dir=tmp_path / "logs")
    with sup:
        _wait(lambda: (tmp_path / "out.txt").exists() and (tmp_path / "out.txt").read_text() != "")
    assert (tmp_path / "out.txt").read_text() == "42:True"


def test_missing_executable_is_retried(tmp_path: Path) -> None:
    sup = Supervisor([ProcessSpec("ghost", [str(tmp_path / "nope")])], FAST, log_dir=tmp_path)
    with sup:
        _wait(lambda: sup.restarts()["ghost"] >= 2)
        assert sup.status()["ghost"].last_exit is None


def test_invalid_specs_rejected() -> None:
    with pytest.raises(ValueError):
        Supervisor([ProcessSpec("a", ["x"]), ProcessSpec("a", ["y"])])
    with pytest.raises(ValueError):
        Supervisor([ProcessSpec("../evil", ["x"])])
    with pytest.raises(ValueError):
        Supervisor([ProcessSpec("empty", [])])


def test_run_forever_returns_on_stop_from_another_thread(tmp_path: Path) -> None:
    sup = Supervisor([ProcessSpec("s", _py("import time; time.sleep(60)"))], FAST, log_dir=tmp_path,
                     stop_grace_s=1)
    runner = threading.Thread(target=sup.run_forever)
    runner.start()
    _wait(lambda: sup.status()["s"].running)
    pid = sup.status()["s"].pid
    sup.stop()
    runner.join(timeout=10)
    assert not runner.is_alive()
    assert pid is not None and _gone(pid)


def test_run_forever_handles_sigterm_on_main_thread(tmp_path: Path) -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers need the main thread")
    before = signal.getsignal(signal.SIGTERM)
    sup = Supervisor([ProcessSpec("s", _py("import time; time.sleep(60)"))], FAST, log_dir=tmp_path,
                     stop_grace_s=1)

    def send() -> None:
        _wait(lambda: sup.status()["s"].running)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=send, daemon=True).start()
    t0 = time.monotonic()
    sup.run_forever()
    assert time.monotonic() - t0 < 10
    assert not sup.status()["s"].running
    assert signal.getsignal(signal.SIGTERM) is before  # handler restored
