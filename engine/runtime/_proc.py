"""Small helpers shared by the embedded services and the supervisor (internal)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
from pathlib import Path

# Tansu colours its tracing output; escape codes make error messages unreadable.
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def strip_ansi(text: str) -> str:
    """Remove terminal colour/escape sequences."""
    return _ANSI.sub("", text)


def log_tail(path: Path | None, max_bytes: int = 4000) -> str:
    """The last ``max_bytes`` of a log file as text ('' when it does not exist)."""
    if path is None:
        return ""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except OSError:
        return ""
    return strip_ansi(data.decode("utf-8", errors="replace"))


def read_from(path: Path, offset: int) -> str:
    """The text of ``path`` from byte ``offset`` on ('' when unreadable)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return strip_ansi(fh.read().decode("utf-8", errors="replace"))
    except OSError:
        return ""


def working_dir(given: Path | None, owned: Path | None, prefix: str) -> tuple[Path, Path | None]:
    """The directory a service works in: ``given`` (created if missing), else a temp dir.

    Returns ``(directory, owned temp dir or None)``; the caller removes what it owns.
    """
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        return given, owned
    if owned is None:
        owned = Path(tempfile.mkdtemp(prefix=prefix))
    return owned, owned


def signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Send ``sig`` to the process group led by ``proc`` (started with a new session).

    Falls back to the process itself if the group is gone; errors for processes that
    already exited are ignored because exiting is exactly what we want.
    """
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            proc.send_signal(sig)
        except (ProcessLookupError, OSError):
            pass


def terminate(proc: subprocess.Popen[bytes], grace_s: float) -> int | None:
    """SIGTERM the process group, wait up to ``grace_s``, then SIGKILL it.

    Returns the exit code (negative for a signal), or None if it could not be reaped.
    """
    if proc.poll() is None:
        signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    # Kill stragglers in the group too (a child may have forked helpers).
    signal_group(proc, signal.SIGKILL)
    try:
        return proc.wait(timeout=5.0)
    except subprocess.TimeoutExpired:
        return None


def describe_exit(code: int | None) -> str:
    """Human text for a Popen return code: 'exit 0', 'signal SIGSEGV (-11)', ..."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name} ({code})"
    if code > 128:
        # A shell wrapper reports a child's fatal signal as 128 + signum (139 = SIGSEGV).
        try:
            return f"exit {code} (likely {signal.Signals(code - 128).name})"
        except ValueError:
            pass
    return f"exit {code}"
