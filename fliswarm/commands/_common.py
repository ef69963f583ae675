"""Helpers shared by the actor commands: node selection, container spec, per-node status."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TypeAlias

from fliswarm.status import EngineShare, StatusWriter
from fliswarm.supervision.desired import container_spec, container_user
from fliswarm.tools import select_nodes, split_names


if TYPE_CHECKING:
    from clu.command import Command

    from fliswarm.actor import FLISwarmActor
    from fliswarm.node import Node

    # As in fliswarm.commands (spelt out here: mypy loses that alias in an import cycle).
    FLISwarmCommand: TypeAlias = "Command[FLISwarmActor]"
    NodesType: TypeAlias = "dict[str, Node]"


__all__ = [
    "choose_nodes",
    "container_user",
    "container_spec",
    "report_node",
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

    timeouts = actor.timeouts
    ping = float(actor.config.get("ping_timeout") or 1.0)
    connect = float(timeouts.get("docker_connect", 2.0))
    request = float(timeouts.get("docker_request", 10.0))
    return max(ping, connect) + request + 1.0


async def report_node(
    command: FLISwarmCommand, node: Node, share: EngineShare | None = None
) -> dict[str, Any] | None:
    """Reports one node (`.Node.report_status`) and its flicamera connection.

    Never raises and never takes longer than `status_limit`; returns the report, or `None`
    if the node could not be reported. ``share`` shares the engine calls with the other
    nodes of the same report (`fliswarm.status.EngineShare`).
    """

    actor = command.actor
    device = actor.flicameras.get(node.name)
    result: dict[str, Any] | None = None
    try:
        result = await asyncio.wait_for(
            node.report_status(
                command, container_name=actor.get_container_name(node), share=share
            ),
            status_limit(actor),
        )
    except asyncio.TimeoutError:
        command.warning(text=f"{node.name}: no status within {status_limit(actor):g} s.")
    except Exception as err:
        command.warning(text=f"{node.name}: cannot get the status: {err}")
    if device is not None:
        StatusWriter(command).info(
            device=[node.name, device.is_connected(), device.host, device.port]
        )
    return result


async def report_nodes(command: FLISwarmCommand, nodes: Iterable[Node]) -> list[Any]:
    """Reports several nodes concurrently (a dead node does not delay the others)."""

    share = EngineShare()
    try:
        return list(await asyncio.gather(*[report_node(command, node, share) for node in nodes]))
    finally:
        share.close()
