"""``enable`` and ``disable``: choose which configured nodes fliswarm manages."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import click

from fliswarm.commands import parser
from fliswarm.commands._common import enabled_names
from fliswarm.tools import split_names


if TYPE_CHECKING:
    from fliswarm.commands import FLISwarmCommand, NodesType


__all__ = ["enable", "disable"]


def _requested(
    command: FLISwarmCommand, nodes: NodesType, names: tuple[str, ...], all_: bool
) -> list[str] | None:
    """The known nodes asked for (warning about unknown ones); `None` if none was asked."""

    actor = command.actor
    configured = actor.config.get("nodes") or {}
    if all_:
        return list(configured)
    wanted = split_names(",".join(names))
    if not wanted:
        return None
    known: list[str] = []
    for name in wanted:
        if name not in configured:
            command.warning(text=f"{name}: no such node in the configuration.")
        else:
            if name not in nodes:
                actor.add_node(name)
            known.append(name)
    return known


def _set_config_enabled(command: FLISwarmCommand, nodes: NodesType) -> None:
    command.actor.config["enabled_nodes"] = enabled_names(nodes)


async def _connect(command: FLISwarmCommand, name: str) -> None:
    """Connects the Docker engine and, if its container runs, the camera of a node."""

    actor = command.actor
    connected = await actor.connect_nodes([name])
    if not connected.get(name):
        command.warning(text=f"{name}: enabled, but its Docker engine is not answering.")
        return
    devices = await actor.connect_devices([name], check_container=True)
    if devices.get(name):
        command.info(text=f"{name}: enabled; camera connected.")
    else:
        command.warning(
            text=f"{name}: enabled, but its camera is not connected (container not running?)."
        )


@parser.command()
@click.argument("NAMES", nargs=-1, type=str)
@click.option("-a", "--all", "all_", is_flag=True, help="Enable every configured node.")
async def enable(command: FLISwarmCommand, nodes: NodesType, names: tuple[str, ...], all_: bool):
    """Enables nodes (space- or comma-separated) and connects them."""

    requested = _requested(command, nodes, names, all_)
    if requested is None:
        return command.fail(error="Give the nodes to enable, or --all.")
    if not requested:
        return command.fail(error="None of the nodes is in the configuration.")

    to_connect = []
    for name in requested:
        node = nodes[name]
        device = command.actor.flicameras[name]
        if node.enabled and device.is_connected():
            command.debug(text=f"{name}: already enabled.")
            continue
        node.enabled = True
        to_connect.append(name)
    _set_config_enabled(command, nodes)

    await asyncio.gather(*[_connect(command, name) for name in to_connect])
    for name in requested:
        command.actor.supervisor.watch(name)  # No-op if already supervised.
    command.info(enabledNodes=enabled_names(nodes))
    return command.finish()


@parser.command()
@click.argument("NAMES", nargs=-1, type=str)
@click.option("-a", "--all", "all_", is_flag=True, help="Disable every node.")
async def disable(command: FLISwarmCommand, nodes: NodesType, names: tuple[str, ...], all_: bool):
    """Disables nodes: fliswarm stops talking to their cameras (containers keep running)."""

    requested = _requested(command, nodes, names, all_)
    if requested is None:
        return command.fail(error="Give the nodes to disable, or --all.")
    if not requested:
        return command.fail(error="None of the nodes is in the configuration.")

    async def one(name: str) -> None:
        nodes[name].enabled = False
        with contextlib.suppress(Exception):
            await asyncio.wait_for(command.actor.supervisor.unwatch(name), 10)
        device = command.actor.flicameras.get(name)
        if device is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(device.stop(), 5)

    await asyncio.gather(*[one(name) for name in requested])
    _set_config_enabled(command, nodes)
    command.info(enabledNodes=enabled_names(nodes))
    return command.finish()
