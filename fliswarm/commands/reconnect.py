"""``reconnect``: (re)create the volumes and flicamera containers, then connect the cameras."""

from __future__ import annotations

import asyncio
import socket
import sys
from typing import TYPE_CHECKING, Any

import click

from fliswarm.commands import parser
from fliswarm.commands._common import choose_nodes, container_spec
from fliswarm.containers import short_id
from fliswarm.exceptions import FliswarmError, NodeError


if TYPE_CHECKING:
    from fliswarm.commands._common import FLISwarmCommand, NodesType
    from fliswarm.device import FlicameraDevice
    from fliswarm.node import Node


__all__ = ["reconnect", "reconnect_node", "wait_device_ready", "NotReadyError"]

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
    connect = asyncio.get_running_loop().sock_connect(sock, sockaddr)
    try:
        if sys.version_info >= (3, 11):  # No task per attempt, unlike wait_for.
            async with asyncio.timeout(timeout):
                await connect
        else:
            await asyncio.wait_for(connect, timeout)
    except asyncio.TimeoutError:
        return "connecting timed out"
    except OSError as err:
        return str(err) or type(err).__name__
    finally:
        sock.close()
    return None


def _reason(err: BaseException) -> str:
    if isinstance(err, NodeError):
        return err.message
    return str(err) or type(err).__name__


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
            reason = device.last_error
            if refused and not reason:
                reason = f"cannot connect to {device.host}:{device.port}: {refused}"
            why = f" ({reason})" if reason else ""
            raise NotReadyError(f"flicamera did not accept connections within {timeout:g} s{why}.")
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
                raise NotReadyError(f"container {container} disappeared.")
            state = info.get("State") or {}
            if not state.get("Running"):
                raise NotReadyError(
                    f"container {container} is {state.get('Status', 'not running')} "
                    f"(exit code {state.get('ExitCode')}); see docker logs {container}."
                )
        await asyncio.sleep(max(0.0, min(RETRY_DELAY, deadline - loop.time())))


async def reconnect_node(command: FLISwarmCommand, node: Node, force: bool) -> str | None:
    """Volumes, container and device of one node. Returns why it failed, or `None`.

    Holds the node's lock (``actor.node_lock``), so the supervisor does not act meanwhile,
    and wakes the supervisor when done.
    """

    actor = command.actor
    name = node.name
    lock = actor.node_lock(name)
    if lock.locked():
        command.info(text=f"{name}: waiting for the supervisor to finish with the node.")
    timeouts = actor.timeouts
    lock_limit = float(timeouts.get("docker_pull", 600)) + float(
        timeouts.get("container_ready", 30)
    )
    try:
        await asyncio.wait_for(lock.acquire(), lock_limit)
    except asyncio.TimeoutError:
        return f"the node stayed busy (supervisor) for {lock_limit:g} s."
    try:
        return await _reconnect_locked(command, node, force)
    finally:
        lock.release()
        actor.supervisor.wake(name)


async def _reconnect_locked(command: FLISwarmCommand, node: Node, force: bool) -> str | None:
    actor = command.actor
    name = node.name
    device = actor.flicameras[name]
    spec = container_spec(actor, name, force=force)
    container = spec["name"]
    limit = 2 * node.connect_timeout + 1

    device.auto_connect = False  # talk must not connect while the container is replaced.
    try:
        try:
            await asyncio.wait_for(node.connect(), limit)
        except asyncio.TimeoutError:
            return f"Docker engine at {node.daemon_addr} did not answer within {limit:g} s."

        if force:
            await device.stop()  # Before the container goes, or the connection hangs.
            await node.stop_container(container, spec["image"], force=True, command=command)
        for vname, volume in (actor.config.get("volumes") or {}).items():
            await node.create_volume(
                vname, volume["driver"], volume.get("opts") or {}, force=force, command=command
            )
        command.info(text=f"{name}: volumes ready")

        was_running = not force and await node.is_container_running(container)
        info = await node.run_container(**spec, command=command)
        cid = short_id(info.get("Id", "")) if info.get("Id") else "?"
        if was_running:
            command.info(text=f"{name}: container already running ({cid})")
        else:
            command.info(text=f"{name}: container started ({cid})")

        await device.stop()
        ready = float(actor.timeouts.get("container_ready", 30.0))
        took = await wait_device_ready(
            device, node, container, ready, attempt_timeout=actor.device_connect_timeout
        )
        command.info(text=f"{name}: camera connected")
        command.debug(text=f"{name}: flicamera accepted the connection after {took:.2f} s.")
    except (FliswarmError, ConnectionError, asyncio.TimeoutError) as err:
        return _reason(err)
    finally:
        device.auto_connect = True
    return None


@parser.command()
@click.option("-n", "--names", type=str, help="Comma-separated nodes to reconnect.")
@click.option("-c", "--category", type=str, help="Category of nodes to reconnect (gfa, fvc).")
@click.option(
    "-f",
    "--force",
    is_flag=True,
    help="Recreate the volumes and the containers even if they exist and run.",
)
async def reconnect(
    command: FLISwarmCommand,
    nodes: NodesType,
    names: str | None,
    category: str | None,
    force: bool,
):
    """Creates the volumes, starts the flicamera containers and connects the cameras.

    Without --force, existing volumes and running containers are left alone and only the
    connection to flicamera is made again.
    """

    selected = choose_nodes(command, nodes, names, category)
    if not selected:
        return command.fail(error="No enabled node matches the selection.")

    results = await asyncio.gather(
        *[reconnect_node(command, nodes[name], force) for name in selected]
    )
    failed = {name: why for name, why in zip(selected, results, strict=True) if why}
    for name, why in failed.items():
        command.warning(text=f"{name}: {why}")
    if failed:
        command.warning(failedNodes=list(failed))
        details = "; ".join(f"{name}: {why}" for name, why in failed.items())
        return command.fail(error=f"Failed to reconnect {', '.join(failed)}. {details}")
    return command.finish(text=f"Reconnected {', '.join(selected)}.")
