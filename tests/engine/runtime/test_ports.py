"""Port helpers: a range of consecutive free ports for per-process metrics."""

from __future__ import annotations

import socket

from engine.runtime.ports import free_port_range, port_is_open


def test_free_port_range_gives_consecutive_bindable_ports() -> None:
    base = free_port_range(3)
    socks = []
    try:
        for i in range(3):  # process i serves metrics on base + i: each port binds
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", base + i))
            sock.listen()
            socks.append(sock)
        assert all(port_is_open(base + i) for i in range(3))
    finally:
        for sock in socks:
            sock.close()
