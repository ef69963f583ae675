"""``status``: the enabled nodes, their containers, volumes and flicamera connections."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from fliswarm.commands import parser
from fliswarm.commands._common import enabled_names, report_devices, report_engine_nodes
from fliswarm.commands.enable import report_runtime_nodes, runtime_overrides
from fliswarm.docker.report import by_engine


if TYPE_CHECKING:
    from fliswarm.commands import FLISwarmCommand, NodesType


__all__ = ["status"]


@parser.command()
async def status(command: FLISwarmCommand, nodes: NodesType):
    """Reports the enabled nodes, their flicamera containers and volumes.

    Outputs ``enabledNodes``, ``runtimeDisabled`` and ``runtimeEnabled`` (the nodes
    disabled or enabled at run time, by disable or enable, rather than by the
    configuration), and a ``nodeState`` per configured node, then for each enabled node
    ``node``, ``container``, ``volume`` and ``device``. The logical nodes of
    one Docker engine are reported together (one probe, one container list and one volume
    list), and all engines at once, so a dead node does not delay the others. A node the
    supervisor knows to be offline is reported at once, without probing it.
    """

    names = enabled_names(nodes)
    report_runtime_nodes(command, nodes)
    runtime = command.actor.runtime_state
    if runtime.problem:  # Read at start, not rewritten since.
        command.warning(text=runtime.problem)
    overrides = runtime_overrides(command, nodes)
    if overrides:
        command.info(
            text=f"Nodes {overrides.describe()} (not by the configuration; enable --reset "
            "goes back to it)."
        )
    supervisor = command.actor.supervisor
    for name, state in supervisor.states().items():
        command.info(nodeState=state.keyword(name))
    probed = []
    for name in names:
        node = nodes[name]
        if supervisor.is_offline(name):
            reason = supervisor.state(name).reason
            # 0.7's words (scripts match them), then the node's name, why and what to do.
            command.warning(text=f"Docker client on node {node.addr} is not connected.")
            command.warning(text=f"{name}: offline. {reason}")
            command.info(node=[name, node.addr, node.daemon_addr, False, False])
            report_devices(command, [node])
        else:
            probed.append(node)
    await asyncio.gather(*[report_engine_nodes(command, group) for group in by_engine(probed)])
    return command.finish()
