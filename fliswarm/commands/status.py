"""``status``: the enabled nodes, their containers, volumes and flicamera connections."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from fliswarm.commands import parser
from fliswarm.commands._common import enabled_names, status_limit
from fliswarm.status import StatusWriter
from fliswarm.status_engine import by_engine, report_engine


if TYPE_CHECKING:
    from fliswarm.commands import FLISwarmCommand, NodesType
    from fliswarm.node import Node


__all__ = ["status"]


def _devices(command: FLISwarmCommand, out: StatusWriter, nodes: list[Node]) -> None:
    """The ``device`` keyword (flicamera connection) of each node that has a device."""

    flicameras = command.actor.flicameras
    for node in nodes:
        device = flicameras.get(node.name)
        if device is not None:
            out.info(device=[node.name, device.is_connected(), device.host, device.port])


async def _report_engine(command: FLISwarmCommand, nodes: list[Node]) -> None:
    """The nodes of one Docker engine (`.report_engine`), never raising, within
    `status_limit`, then their flicamera connections."""

    actor = command.actor
    limit = status_limit(actor)
    names = [actor.get_container_name(node) for node in nodes]
    try:
        await asyncio.wait_for(report_engine(command, nodes, names), limit)
    except asyncio.TimeoutError:
        for node in nodes:
            command.warning(text=f"{node.name}: no status within {limit:g} s.")
    except Exception as err:
        for node in nodes:
            command.warning(text=f"{node.name}: cannot get the status: {err}")
    _devices(command, StatusWriter(command), nodes)


@parser.command()
async def status(command: FLISwarmCommand, nodes: NodesType):
    """Reports the enabled nodes, their flicamera containers and volumes.

    Outputs ``enabledNodes`` and a ``nodeState`` per configured node, then for each
    enabled node ``node``, ``container``, ``volume`` and ``device``. The logical nodes of
    one Docker engine are reported together (one probe, one container list and one volume
    list), and all engines at once, so a dead node does not delay the others. A node the
    supervisor knows to be offline is reported at once, without probing it.
    """

    names = enabled_names(nodes)
    out = StatusWriter(command)
    out.info(enabledNodes=names)
    supervisor = getattr(command.actor, "supervisor", None)
    if supervisor is not None:
        for name, state in supervisor.states().items():
            out.info(nodeState=state.keyword(name))
    probed = []
    for name in names:
        node = nodes[name]
        if supervisor is not None and supervisor.is_offline(name):
            reason = supervisor.state(name).reason
            out.warning(text=f"{name}: offline ({reason}).")
            out.info(node=[name, node.addr, node.daemon_addr, False, False])
            _devices(command, out, [node])
        else:
            probed.append(node)
    await asyncio.gather(*[_report_engine(command, group) for group in by_engine(probed)])
    return command.finish()
