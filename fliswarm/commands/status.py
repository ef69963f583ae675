"""``status``: the enabled nodes, their containers, volumes and flicamera connections."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from fliswarm.commands import parser
from fliswarm.commands._common import enabled_names, report_node
from fliswarm.status import EngineShare, StatusWriter


if TYPE_CHECKING:
    from fliswarm.commands import FLISwarmCommand, NodesType
    from fliswarm.node import Node


__all__ = ["status"]


async def _report(command: FLISwarmCommand, node: Node, share: EngineShare) -> None:
    """One node: known offline from the supervision state, or probed now."""

    actor = command.actor
    supervisor = getattr(actor, "supervisor", None)
    if supervisor is not None and supervisor.is_offline(node.name):
        status = supervisor.state(node.name)
        out = StatusWriter(command)
        out.warning(text=f"{node.name}: offline ({status.reason}).")
        out.info(node=[node.name, node.addr, node.daemon_addr, False, False])
        device = actor.flicameras.get(node.name)
        if device is not None:
            out.info(device=[node.name, device.is_connected(), device.host, device.port])
        return
    await report_node(command, node, share)


@parser.command()
async def status(command: FLISwarmCommand, nodes: NodesType):
    """Reports the enabled nodes, their flicamera containers and volumes.

    Outputs ``enabledNodes`` and a ``nodeState`` per configured node, then for each
    enabled node (all at once, so a dead node does not delay the others) ``node``,
    ``container``, ``volume`` and ``device``. A node the supervisor knows to be offline is
    reported at once, without probing it.
    """

    names = enabled_names(nodes)
    out = StatusWriter(command)
    out.info(enabledNodes=names)
    supervisor = getattr(command.actor, "supervisor", None)
    if supervisor is not None:
        for name, state in supervisor.states().items():
            out.info(nodeState=state.keyword(name))
    share = EngineShare()  # One probe and one list per Docker engine, for all its nodes.
    try:
        await asyncio.gather(*[_report(command, nodes[name], share) for name in names])
    finally:
        share.close()
    return command.finish()
