"""``status``: the enabled nodes, their containers, volumes and flicamera connections."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fliswarm.commands import parser
from fliswarm.commands._common import enabled_names, report_nodes


if TYPE_CHECKING:
    from fliswarm.commands import FLISwarmCommand, NodesType


__all__ = ["status"]


@parser.command()
async def status(command: FLISwarmCommand, nodes: NodesType):
    """Reports the enabled nodes, their flicamera containers and volumes.

    Outputs ``enabledNodes``, then for each enabled node (all at once, so a dead node
    does not delay the others) ``node``, ``container``, ``volume`` and ``device``.
    """

    names = enabled_names(nodes)
    command.info(enabledNodes=names)
    await report_nodes(command, [nodes[name] for name in names])
    return command.finish()
