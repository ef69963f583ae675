"""``enable`` and ``disable``: choose which configured nodes fliswarm manages.

What they change is kept across restarts of fliswarm in the runtime-state file next to the
actor's log (`fliswarm.config.state`), against the configuration's ``enabled_nodes``;
``enable --reset`` goes back to the configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import click

from fliswarm.commands import parser
from fliswarm.commands._common import enabled_names
from fliswarm.config.state import NodeOverrides, StateFileError
from fliswarm.tools import split_names


if TYPE_CHECKING:
    from fliswarm.commands import FLISwarmCommand, NodesType


__all__ = ["enable", "disable", "report_runtime_nodes"]


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


def runtime_overrides(command: FLISwarmCommand, nodes: NodesType) -> NodeOverrides:
    """The nodes enabled or disabled at run time, against the configuration."""

    return NodeOverrides.of(command.actor.configured_enabled, enabled_names(nodes))


def report_runtime_nodes(command: FLISwarmCommand, nodes: NodesType) -> None:
    """``enabledNodes``, ``runtimeDisabled`` and ``runtimeEnabled``."""

    overrides = runtime_overrides(command, nodes)
    command.info(enabledNodes=enabled_names(nodes))
    command.info(runtimeDisabled=list(overrides.disabled), runtimeEnabled=list(overrides.enabled))


def _remember(command: FLISwarmCommand, nodes: NodesType) -> None:
    """Updates ``config["enabled_nodes"]`` and keeps the change in the runtime-state file."""

    actor = command.actor
    actor.config["enabled_nodes"] = enabled_names(nodes)
    state = actor.runtime_state
    if not state.kept:
        command.info(
            text="Not kept across restarts of fliswarm: actor.log_dir is not set (the "
            "runtime-state file is kept there)."
        )
        return
    try:
        state.set_node_overrides(runtime_overrides(command, nodes))
    except StateFileError as err:
        command.warning(text=f"{err} The change holds until fliswarm restarts.")


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


async def _enable(command: FLISwarmCommand, nodes: NodesType, requested: list[str]) -> None:
    """Enables nodes, connects them and supervises them."""

    to_connect = []
    for name in requested:
        node = nodes[name]
        device = command.actor.flicameras[name]
        if node.enabled and device.is_connected():
            command.debug(text=f"{name}: already enabled.")
            continue
        node.enabled = True
        to_connect.append(name)
    command.actor.config["enabled_nodes"] = enabled_names(nodes)

    await asyncio.gather(*[_connect(command, name) for name in to_connect])
    for name in requested:
        command.actor.supervisor.watch(name)  # No-op if already supervised.


async def _disable(command: FLISwarmCommand, nodes: NodesType, requested: list[str]) -> None:
    """Disables nodes: no supervision, no camera connection; containers are left alone."""

    async def one(name: str) -> None:
        nodes[name].enabled = False
        with contextlib.suppress(Exception):
            await asyncio.wait_for(command.actor.supervisor.unwatch(name), 10)
        device = command.actor.flicameras.get(name)
        if device is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(device.stop(), 5)

    await asyncio.gather(*[one(name) for name in requested])


@parser.command()
@click.argument("NAMES", nargs=-1, type=str)
@click.option("-a", "--all", "all_", is_flag=True, help="Enable every configured node.")
@click.option(
    "--reset",
    is_flag=True,
    help="Go back to the configuration: enable exactly its enabled_nodes, forgetting what "
    "enable and disable changed (also in the runtime-state file).",
)
async def enable(
    command: FLISwarmCommand,
    nodes: NodesType,
    names: tuple[str, ...],
    all_: bool,
    reset: bool,
):
    """Enables nodes (space- or comma-separated) and connects them.

    Kept across restarts of fliswarm (in the runtime-state file next to the actor's log)
    until enable --reset or a change of the configuration's enabled_nodes.
    """

    if reset:
        if names or all_:
            return command.fail(
                error="enable --reset takes no nodes: it enables exactly the "
                "configuration's enabled_nodes."
            )
        configured = command.actor.configured_enabled
        extra = [name for name in enabled_names(nodes) if name not in configured]
        await _disable(command, nodes, extra)
        await _enable(command, nodes, [name for name in configured if name in nodes])
    else:
        requested = _requested(command, nodes, names, all_)
        if requested is None:
            return command.fail(error="Give the nodes to enable, or --all, or --reset.")
        if not requested:
            return command.fail(error="None of the nodes is in the configuration.")
        await _enable(command, nodes, requested)
    _remember(command, nodes)
    report_runtime_nodes(command, nodes)
    return command.finish()


@parser.command()
@click.argument("NAMES", nargs=-1, type=str)
@click.option("-a", "--all", "all_", is_flag=True, help="Disable every node.")
async def disable(command: FLISwarmCommand, nodes: NodesType, names: tuple[str, ...], all_: bool):
    """Disables nodes: fliswarm stops talking to their cameras (containers keep running).

    Kept across restarts of fliswarm (in the runtime-state file next to the actor's log)
    until enable, enable --reset or a change of the configuration's enabled_nodes.
    """

    requested = _requested(command, nodes, names, all_)
    if requested is None:
        return command.fail(error="Give the nodes to disable, or --all.")
    if not requested:
        return command.fail(error="None of the nodes is in the configuration.")

    await _disable(command, nodes, requested)
    _remember(command, nodes)
    report_runtime_nodes(command, nodes)
    return command.finish()
