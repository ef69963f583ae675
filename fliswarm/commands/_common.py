"""Helpers shared by the actor commands: node selection, container spec, per-node status."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, TypeAlias

from fliswarm.docker.containers import image_reference
from fliswarm.docker.report import by_engine, report_engine
from fliswarm.provision.desired import container_spec, container_user
from fliswarm.tools import select_nodes, split_names


if TYPE_CHECKING:
    from clu.command import Command

    from fliswarm.actor import FLISwarmActor
    from fliswarm.docker.node import Node

    # As in fliswarm.commands (spelt out here: mypy loses that alias in an import cycle).
    FLISwarmCommand: TypeAlias = "Command[FLISwarmActor]"
    NodesType: TypeAlias = "dict[str, Node]"


log = logging.getLogger("fliswarm.commands")

__all__ = [
    "choose_nodes",
    "container_user",
    "container_spec",
    "report_devices",
    "report_engine_nodes",
    "report_nodes",
    "enabled_names",
    "status_limit",
]


def enabled_names(nodes: NodesType) -> list[str]:
    """The names of the enabled nodes, in configuration order."""

    return [name for name, node in nodes.items() if node.enabled]


def choose_nodes(
    command: FLISwarmCommand,
    nodes: NodesType,
    names: str | Iterable[str] | None,
    category: str | None,
) -> list[str]:
    """The enabled nodes selected by names and/or category, sorted by name.

    Warns about each named node that does not exist or is disabled.
    """

    for name in split_names(names):
        if name not in nodes:
            command.warning(text=f"{name}: no such node.")
        elif not nodes[name].enabled:
            command.warning(text=f"{name}: node is disabled.")
    if names is not None and not split_names(names) and category is None:
        return []
    return sorted(node.name for node in select_nodes(nodes, category, names))


def status_limit(actor: FLISwarmActor) -> float:
    """The longest a node's status report may take before it is abandoned, in seconds."""

    settings = actor.settings
    timeouts = settings.timeouts
    return max(settings.ping_timeout, timeouts.docker_connect) + timeouts.docker_request + 1.0


def report_devices(command: FLISwarmCommand, nodes: list[Node]) -> None:
    """The ``device`` keyword (flicamera connection) of each node that has a device."""

    flicameras = command.actor.flicameras
    for node in nodes:
        device = flicameras.get(node.name)
        if device is not None:
            value = [node.name, device.is_connected(), device.host, device.port]
            command.info(device=value, validate=False)


async def report_engine_nodes(command: FLISwarmCommand, nodes: list[Node]) -> None:
    """Reports the nodes of one Docker engine (`.report_engine`), never raising, within
    `status_limit`, then their flicamera connections."""

    actor = command.actor
    limit = status_limit(actor)
    names = [actor.get_container_name(node) for node in nodes]
    settings = actor.settings
    images = [image_reference(settings.node_image(node.name), settings.registry) for node in nodes]
    volumes = list(settings.volumes)
    try:
        await asyncio.wait_for(
            report_engine(command, nodes, names, volumes, settings.ping_timeout, images=images),
            limit,
        )
    except asyncio.TimeoutError:
        for node in nodes:
            command.warning(
                text=f"{node.name}: no status within {limit:g} s: its Docker engine answers "
                "too slowly (check the node's load, or restart dockerd on it)."
            )
    except Exception:
        log.exception("status of %s failed", ", ".join(node.name for node in nodes))
        for node in nodes:
            command.warning(
                text=f"{node.name}: cannot get the status (internal error; the details are "
                "in fliswarm's log)."
            )
    report_devices(command, nodes)


async def report_nodes(command: FLISwarmCommand, nodes: Iterable[Node]) -> None:
    """Reports several nodes as ``status`` does: the nodes of one Docker engine together,
    all engines at once (a dead node does not delay the others)."""

    groups = by_engine(list(nodes))
    await asyncio.gather(*[report_engine_nodes(command, group) for group in groups])
