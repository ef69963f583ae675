"""Small network helpers shared by the tests (loopback only)."""

from __future__ import annotations

import socket


__all__ = ["free_port", "port_open"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now."""

    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""

    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
