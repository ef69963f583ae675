"""Small network helpers shared by the tests (loopback only)."""

from __future__ import annotations

import socket
import time


__all__ = ["ask", "free_port", "port_open"]


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


def ask(port: int, command: str, timeout: float = 10) -> list[str]:
    """Sends one command (id 9) to a LegacyActor on loopback; its reply lines until it ends."""

    lines: list[str] = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(f"9 {command}\n".encode())
        buffer = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            for raw in complete:
                lines.append(raw.decode())
                parts = lines[-1].split(" ", 3)
                if len(parts) >= 3 and parts[1] == "9" and parts[2] in (":", "f"):
                    return lines
    raise AssertionError(f"no end of command in {lines}")
