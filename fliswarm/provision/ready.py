"""Waiting until a flicamera actor accepts connections, then connecting to it."""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING, Any

from fliswarm.docker.engine import connection_problem
from fliswarm.exceptions import FliswarmError


if TYPE_CHECKING:
    from fliswarm.camera.device import FlicameraDevice
    from fliswarm.docker.node import Node


__all__ = ["NotReadyError", "wait_device_ready", "RETRY_DELAY"]

#: Pause between two connection attempts while flicamera starts (s). A refused attempt
#: costs ~0.1 ms of CPU: a short constant pause connects within a few tens of ms of
#: flicamera listening, where a growing one lagged up to its longest pause.
RETRY_DELAY = 0.04
#: How often the container is checked while waiting for flicamera (s).
CONTAINER_CHECK_INTERVAL = 1.0
#: Seconds to resolve flicamera's host name before waiting for its port.
RESOLVE_TIMEOUT = 2.0


class NotReadyError(FliswarmError):
    """flicamera did not accept connections in time, or its container stopped."""


async def _address(host: str, port: int) -> tuple[int, tuple[Any, ...]] | None:
    """The address family and socket address of ``host:port``, or `None` if unresolved."""

    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT
        )
    except (OSError, asyncio.TimeoutError):
        return None
    return (infos[0][0], infos[0][4]) if infos else None


async def _refused(address: tuple[int, tuple[Any, ...]], timeout: float) -> str | None:
    """Why a TCP connection to ``address`` is not accepted, or `None` if it is.

    A bare socket: a refused attempt costs a fraction of what a stream connection does.
    """

    family, sockaddr = address
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, sockaddr), timeout)
    except asyncio.TimeoutError:
        return "no answer in time"
    except OSError as err:
        return connection_problem(err)[1]
    finally:
        sock.close()
    return None


async def wait_device_ready(
    device: FlicameraDevice,
    node: Node,
    container: str,
    timeout: float,
    attempt_timeout: float = 2.0,
) -> float:
    """Connects ``device`` as soon as flicamera accepts connections.

    Probes flicamera's port every `RETRY_DELAY` seconds with a bare socket, connects
    ``device`` once the port accepts, and checks that the container still runs every
    `CONTAINER_CHECK_INTERVAL` seconds.

    Returns
    -------
    float
        How long it took, in seconds.

    Raises
    ------
    NotReadyError
        If flicamera does not accept a connection within ``timeout`` seconds, or the
        container is gone or stopped.
    """

    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + timeout
    last_check = start
    address = await _address(device.host, device.port)
    refused: str | None = None
    while True:
        left = deadline - loop.time()
        if left <= 0:
            reason = (device.last_error or "").rstrip(".")
            if refused and not reason:
                reason = f"{device.host}:{device.port}: {refused}"
            why = f" ({reason})" if reason else ""
            raise NotReadyError(
                f"flicamera did not accept connections within {timeout:g} s{why}: "
                f"fliswarm logs -n {node.name} shows the last lines of {container}."
            )
        if address is not None:
            refused = await _refused(address, min(attempt_timeout, left))
        if refused is None:
            try:
                await device.start(min(attempt_timeout, left))
                return loop.time() - start
            except ConnectionError:
                pass
        if loop.time() - last_check >= CONTAINER_CHECK_INTERVAL:
            last_check = loop.time()
            info = await node.engine.inspect_container(container)
            if info is None:
                raise NotReadyError(
                    f"container {container} disappeared while flicamera started (removed on "
                    "the node?)."
                )
            state = info.get("State") or {}
            # Restarting: it exited and the engine starts it again (restart policy).
            if not state.get("Running") or state.get("Restarting"):
                raise NotReadyError(
                    f"container {container} is {state.get('Status', 'not running')} "
                    f"(exit code {state.get('ExitCode')}): fliswarm logs -n {node.name} shows "
                    "its last lines."
                )
        await asyncio.sleep(max(0.0, min(RETRY_DELAY, deadline - loop.time())))
