"""Loopback port helpers for the embedded services and tests."""

from __future__ import annotations

import socket
import time

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port on ``host`` that was free a moment ago.

    The kernel picks an unused ephemeral port for a bind to port 0; we close the socket
    at once, so another process could in theory take it before the caller binds. The
    embedded services therefore retry with a fresh port when their bind fails.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_port_range(count: int, host: str = LOOPBACK, attempts: int = 50) -> int:
    """A base port with ``count`` consecutive ports free a moment ago (process i: base + i).

    Dataflow processes serve metrics on ``metrics.port + process index``: a base from
    :func:`free_port` alone leaves base + 1 to chance (an outgoing connection's ephemeral
    port, say).
    """
    for _ in range(attempts):
        base = free_port(host)
        if base + count > 65535:
            continue
        socks: list[socket.socket] = []
        try:
            for i in range(count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(sock)
                sock.bind((host, base + i))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free ports on {host}")


def port_is_open(port: int, host: str = LOOPBACK, timeout: float = 0.2) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port_closed(port: int, host: str = LOOPBACK, timeout: float = 5.0) -> bool:
    """Wait until nothing accepts connections on ``host:port``; False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not port_is_open(port, host):
            return True
        time.sleep(0.05)
    return not port_is_open(port, host)
