"""Keep rtml's dataflow processes alive and notice when they stop making progress.

Two failure modes motivate this module (see FIELD-NOTES): a Bytewax process segfaults
(exit -11 / 139) when its topic disappears under it, and when the broker is down the
source stalls *silently*. So the supervisor

* restarts a child on **any** exit (a clean exit 0 of a streaming job is still a stop),
  with exponential backoff that resets once a child has run stably for a while, and
* optionally polls a ``progress()`` callable and raises a stall alert when events are
  waiting in the input topic but the consumed count has not moved for ``stall_after_s``.

Each child runs in its own process group so that stopping it also stops any helpers it
forked, and so that a terminal Ctrl-C reaches the supervisor first, which then shuts the
children down in order.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Callable, Literal, Sequence, TextIO

from prometheus_client import CollectorRegistry, Counter, Gauge

from engine.config import RtmlConfig, SupervisorConfig
from engine.runtime import _proc

log = logging.getLogger(__name__)

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

ProgressFn = Callable[[], tuple[int, int]]
AlertKind = Literal["input_stalled", "input_resumed"]


@dataclass
class ProcessSpec:
    """One supervised command.

    ``env`` entries are *added to* (and override) the supervisor's own environment, so
    children keep PATH, the virtualenv, etc.; ``None`` inherits it unchanged.
    ``name`` is used for the log file name and metrics labels.
    """

    name: str
    argv: list[str]
    env: dict[str, str] | None = None
    cwd: str | None = None


@dataclass(frozen=True)
class Alert:
    """A stall notification passed to ``on_alert``.

    ``kind`` is ``"input_stalled"`` when raised and ``"input_resumed"`` when it clears.
    """

    kind: AlertKind
    message: str
    consumed: int
    available: int
    stalled_for_s: float
    at: float = field(default_factory=time.time)  # wall-clock time, for humans and sinks


@dataclass(frozen=True)
class ChildStatus:
    """A snapshot of one supervised process."""

    name: str
    pid: int | None
    running: bool
    starts: int
    restarts: int
    last_exit: int | None
    delays: tuple[float, ...]  # every backoff delay used so far, in order
    log_path: Path


@dataclass
class _Child:
    """Mutable per-process state; only touched with ``Supervisor._lock`` held."""

    spec: ProcessSpec
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    pump: threading.Thread | None = None
    started_at: float = 0.0
    starts: int = 0
    restarts: int = 0
    last_exit: int | None = None
    next_delay_s: float = 0.0
    restart_at: float | None = None
    delays: list[float] = field(default_factory=list)


class Supervisor:
    """Run :class:`ProcessSpec` children, restart them on exit, and watch input progress.

    Use :meth:`run_forever` in a CLI (blocks; handles SIGINT/SIGTERM) or :meth:`start`
    plus :meth:`stop` from code and tests. One supervisor cannot be restarted after
    :meth:`stop`.

    Metrics go to ``registry`` (a private :class:`CollectorRegistry` by default, so
    several supervisors can live in one process); expose ``supervisor.registry`` to
    serve them. A shared registry must not hold another supervisor's metrics.
    """

    def __init__(
        self,
        specs: Sequence[ProcessSpec],
        config: SupervisorConfig | RtmlConfig | None = None,
        *,
        log_dir: str | os.PathLike[str] | None = None,
        echo: bool | TextIO = False,
        progress: ProgressFn | None = None,
        on_alert: Callable[[Alert], None] | None = None,
        registry: CollectorRegistry | None = None,
        stable_after_s: float = 10.0,
        stop_grace_s: float = 10.0,
        tick_s: float = 0.05,
    ) -> None:
        """Prepare the supervisor; no process starts until :meth:`start`.

        ``stable_after_s``: a child that ran at least this long before exiting is
        restarted after the initial backoff again (its crash is not part of a loop).
        ``echo``: also copy child output to ``sys.stdout`` (True) or the given stream,
        each line prefixed with ``[name]``; output always goes to ``<log_dir>/<name>.log``.
        """
        if isinstance(config, RtmlConfig):
            config = config.supervisor
        self._cfg = config if config is not None else SupervisorConfig()
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"process names must be unique: {names}")
        for spec in specs:
            if not _SAFE_NAME.match(spec.name):
                raise ValueError(f"process name {spec.name!r} must match {_SAFE_NAME.pattern}")
            if not spec.argv:
                raise ValueError(f"process {spec.name!r} has an empty argv")
        self.log_dir = Path(log_dir) if log_dir is not None else Path(
            tempfile.mkdtemp(prefix="rtml-supervisor-")
        )
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._children = {
            s.name: _Child(spec=s, log_path=self.log_dir / f"{s.name}.log") for s in specs
        }
        self._echo = echo
        self._echo_lock = threading.Lock()
        self._progress = progress
        self._on_alert = on_alert
        self._stable_after_s = stable_after_s
        self._stop_grace_s = stop_grace_s
        self._tick_s = tick_s

        self._lock = threading.RLock()
        self._stop_lock = threading.Lock()
        self._stopping = threading.Event()
        self._stopped = False
        self._threads: list[threading.Thread] = []

        # Stall state (only the progress thread writes it).
        self._last_consumed: int | None = None
        self._last_progress_at = 0.0
        self._stalled = False
        self._progress_error_logged = False

        self.registry = registry if registry is not None else CollectorRegistry()
        self._g_stalled = Gauge(
            "rtml_supervisor_input_stalled",
            "1 while events wait in the input topic and consumption has not advanced "
            "for stall_after_s seconds",
            registry=self.registry,
        )
        self._g_lag = Gauge(
            "rtml_supervisor_input_lag",
            "Events available in the input topic minus events consumed",
            registry=self.registry,
        )
        self._c_restarts = Counter(
            "rtml_supervisor_restarts",
            "Restarts of a supervised process after it exited",
            ["process"],
            registry=self.registry,
        )
        self._g_up = Gauge(
            "rtml_supervisor_process_up",
            "1 while the supervised process is running",
            ["process"],
            registry=self.registry,
        )
        for name in self._children:
            # Touch the labels so the series exist (at 0) before the first event.
            self._c_restarts.labels(process=name)
            self._g_up.labels(process=name).set(0)

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> "Supervisor":
        """Spawn every child and the background monitor threads; return at once."""
        with self._lock:
            if self._stopped or self._stopping.is_set():
                raise RuntimeError("a stopped Supervisor cannot be started again")
            if self._threads:
                return self
            now = time.monotonic()
            for child in self._children.values():
                child.next_delay_s = self._cfg.backoff_initial_s
                self._spawn(child, now)
            self._threads.append(
                threading.Thread(target=self._watch_children, name="rtml-supervisor", daemon=True)
            )
            if self._progress is not None:
                self._last_progress_at = now
                self._threads.append(
                    threading.Thread(
                        target=self._watch_progress, name="rtml-supervisor-progress", daemon=True
                    )
                )
            for thread in self._threads:
                thread.start()
        return self

    def run_forever(self) -> None:
        """Start (if needed) and block until :meth:`stop` is called or SIGINT/SIGTERM arrives.

        Signal handlers are installed only on the main thread (Python allows no other)
        and restored afterwards. Children are stopped before this returns.
        """
        previous: dict[int, object] = {}
        received: list[int] = []
        if threading.current_thread() is threading.main_thread():

            def _request_stop(signum: int, frame: FrameType | None) -> None:
                # Only record and flag here: the real shutdown joins threads and logs,
                # which does not belong in a signal handler.
                received.append(signum)
                self._stopping.set()

            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, _request_stop)
        try:
            self.start()
            # Wait with a timeout so the main thread wakes up to run signal handlers.
            while not self._stopping.wait(0.5):
                pass
            if received:
                log.info("supervisor received %s; stopping", signal.Signals(received[0]).name)
        finally:
            try:
                self.stop()
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)  # type: ignore[arg-type]

    def stop(self, grace_s: float | None = None) -> None:
        """Stop monitoring and terminate every child: SIGTERM to its group, then SIGKILL.

        All children get SIGTERM at once and share one grace period (``stop_grace_s``
        unless ``grace_s`` is given). Idempotent and safe from any thread.
        """
        grace = self._stop_grace_s if grace_s is None else grace_s
        with self._stop_lock:
            if self._stopped:
                return
            self._stopping.set()
            me = threading.current_thread()
            for thread in self._threads:
                if thread is not me:
                    thread.join(timeout=30)
            with self._lock:
                procs = [(c, c.proc) for c in self._children.values() if c.proc is not None]
                for _child, proc in procs:
                    if proc.poll() is None:
                        _proc.signal_group(proc, signal.SIGTERM)
                deadline = time.monotonic() + grace
                for child, proc in procs:
                    try:
                        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                    except subprocess.TimeoutExpired:
                        log.warning("%s ignored SIGTERM for %.1fs; killing it", child.spec.name, grace)
                    # SIGKILL the group even after a clean exit: forked helpers may remain.
                    _proc.signal_group(proc, signal.SIGKILL)
                    try:
                        proc.wait(timeout=5.0)
                    except subprocess.TimeoutExpired:
                        log.error("could not reap %s (pid %s)", child.spec.name, proc.pid)
                    child.last_exit = proc.returncode
                    self._g_up.labels(process=child.spec.name).set(0)
                    if child.pump is not None:
                        child.pump.join(timeout=5.0)
                        child.pump = None
                    log.info("stopped %s (%s)", child.spec.name, _proc.describe_exit(proc.returncode))
                for child in self._children.values():
                    child.proc = None
                    child.restart_at = None
            self._stopped = True

    def __enter__(self) -> "Supervisor":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- introspection ------------------------------------------------------------------

    def status(self) -> dict[str, ChildStatus]:
        """A snapshot of every child, keyed by name."""
        with self._lock:
            return {
                name: ChildStatus(
                    name=name,
                    pid=c.proc.pid if c.proc is not None and c.proc.poll() is None else None,
                    running=c.proc is not None and c.proc.poll() is None,
                    starts=c.starts,
                    restarts=c.restarts,
                    last_exit=c.last_exit,
                    delays=tuple(c.delays),
                    log_path=c.log_path,
                )
                for name, c in self._children.items()
            }

    def restarts(self) -> dict[str, int]:
        """How often each child was restarted."""
        with self._lock:
            return {name: c.restarts for name, c in self._children.items()}

    @property
    def stalled(self) -> bool:
        """True while a stall alert is active."""
        return self._stalled

    # -- child handling -----------------------------------------------------------------

    def _spawn(self, child: _Child, now: float) -> None:
        """Start ``child``'s process (lock held). A failed exec counts as an exit."""
        spec = child.spec
        env = None if spec.env is None else {**os.environ, **spec.env}
        child.starts += 1
        child.started_at = now
        child.restart_at = None
        log_fh = open(child.log_path, "ab")
        log_fh.write(
            f"--- rtml supervisor: start #{child.starts} of {spec.name}: {spec.argv!r}\n".encode()
        )
        log_fh.flush()
        echo = self._echo is not False
        try:
            child.proc = subprocess.Popen(
                spec.argv,
                cwd=spec.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                # Without echo, the child writes straight into its log file: no pipe that
                # could fill up and block it if we were slow to read.
                stdout=subprocess.PIPE if echo else log_fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            log_fh.write(f"--- rtml supervisor: cannot start: {exc}\n".encode())
            log_fh.close()
            child.proc = None
            log.error("cannot start %s: %s", spec.name, exc)
            self._schedule_restart(child, None, now)
            return
        if echo:
            assert child.proc.stdout is not None
            child.pump = threading.Thread(
                target=self._pump,
                args=(spec.name, child.proc.stdout, log_fh),
                name=f"rtml-supervisor-pump-{spec.name}",
                daemon=True,
            )
            child.pump.start()
        else:
            log_fh.close()  # the child holds its own descriptor
        self._g_up.labels(process=spec.name).set(1)
        log.info("started %s (pid %d)", spec.name, child.proc.pid)

    def _pump(self, name: str, stream: IO[bytes], log_fh: IO[bytes]) -> None:
        """Copy a child's output to its log file and, prefixed, to the echo stream."""
        prefix = f"[{name}] "
        try:
            for line in iter(stream.readline, b""):
                log_fh.write(line)
                log_fh.flush()
                out = sys.stdout if self._echo is True else self._echo
                if out is not False and out is not None:
                    text = line.decode("utf-8", errors="replace")
                    with self._echo_lock:
                        try:
                            out.write(prefix + text if text.endswith("\n") else prefix + text + "\n")
                            out.flush()
                        except (OSError, ValueError):
                            pass  # a closed echo stream must not kill the log copy
        finally:
            stream.close()
            log_fh.close()

    def _schedule_restart(self, child: _Child, code: int | None, now: float) -> None:
        """Record an exit and pick the backoff delay before the next start (lock held)."""
        child.last_exit = code
        ran_for = now - child.started_at
        if ran_for >= self._stable_after_s:
            # It was healthy for a while: this is a fresh failure, not a crash loop.
            child.next_delay_s = self._cfg.backoff_initial_s
        delay = child.next_delay_s
        child.next_delay_s = min(delay * 2, self._cfg.backoff_max_s)
        child.delays.append(delay)
        child.restart_at = now + delay
        self._g_up.labels(process=child.spec.name).set(0)
        log.warning(
            "%s %s after %.1fs; restarting in %.2fs",
            child.spec.name,
            _proc.describe_exit(code) if code is not None else "failed to start",
            ran_for,
            delay,
        )

    def _watch_children(self) -> None:
        """Monitor thread: reap exited children and start them again when due."""
        while not self._stopping.is_set():
            now = time.monotonic()
            with self._lock:
                for child in self._children.values():
                    if self._stopping.is_set():
                        break
                    proc = child.proc
                    if proc is not None and proc.poll() is not None:
                        # Clear helpers left in its group before the replacement starts.
                        _proc.signal_group(proc, signal.SIGKILL)
                        child.proc = None
                        if child.pump is not None:
                            child.pump.join(timeout=1.0)
                            child.pump = None
                        self._schedule_restart(child, proc.returncode, now)
                    elif child.proc is None and child.restart_at is not None and now >= child.restart_at:
                        child.restarts += 1
                        self._c_restarts.labels(process=child.spec.name).inc()
                        self._spawn(child, now)
            self._stopping.wait(self._tick_s)

    # -- stall detection ----------------------------------------------------------------

    def _watch_progress(self) -> None:
        """Progress thread: poll ``progress()`` every ``check_interval_s``."""
        while not self._stopping.wait(self._cfg.check_interval_s):
            self._check_progress(time.monotonic())

    def _check_progress(self, now: float) -> None:
        assert self._progress is not None
        try:
            consumed, available = self._progress()
        except Exception as exc:  # noqa: BLE001 - any failure here must not stop supervision
            # Typically the broker is unreachable; say so once, not every interval.
            if not self._progress_error_logged:
                log.warning("progress check failed: %s", exc)
                self._progress_error_logged = True
            return
        self._progress_error_logged = False
        self._g_lag.set(max(0, available - consumed))
        moved = self._last_consumed is None or consumed != self._last_consumed
        self._last_consumed = consumed
        if moved or available <= consumed:
            # Consuming, or caught up (an idle input is not a stall).
            self._last_progress_at = now
            if self._stalled:
                self._stalled = False
                self._g_stalled.set(0)
                log.info("input progress resumed: consumed %d of %d", consumed, available)
                self._emit(
                    Alert(
                        kind="input_resumed",
                        message=f"input consumption resumed ({consumed} of {available})",
                        consumed=consumed,
                        available=available,
                        stalled_for_s=0.0,
                    )
                )
            return
        stalled_for = now - self._last_progress_at
        if stalled_for >= self._cfg.stall_after_s and not self._stalled:
            self._stalled = True
            self._g_stalled.set(1)
            message = (
                f"input stalled: {available - consumed} events waiting, consumed count "
                f"stuck at {consumed} for {stalled_for:.1f}s"
            )
            log.warning("%s", message)
            self._emit(
                Alert(
                    kind="input_stalled",
                    message=message,
                    consumed=consumed,
                    available=available,
                    stalled_for_s=stalled_for,
                )
            )

    def _emit(self, alert: Alert) -> None:
        if self._on_alert is None:
            return
        try:
            self._on_alert(alert)
        except Exception:  # noqa: BLE001 - a broken callback must not stop supervision
            log.exception("on_alert callback failed")
