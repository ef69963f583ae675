"""The logical nodes of one Docker engine, reported together (the ``status`` command).

Several logical nodes may run on one Docker engine (one flicamera container and port each).
`report_engine` reports all of them with one probe, one container list and one volume list,
in one task: the work per node is writing its keywords, nothing more. The keywords, their
formats and each node's order of lines are those of `fliswarm.status.report_status`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .containers import LABEL_MANAGED, LABEL_NODE
from .exceptions import NodeError
from .status import (
    StatusWriter,
    actor_config,
    answered,
    by_name,
    discard,
    new_result,
    write_lists,
    write_node_line,
)


if TYPE_CHECKING:
    from .node import Node


__all__ = ["report_engine", "by_engine"]


def by_engine(nodes: Sequence[Node]) -> list[list[Node]]:
    """The nodes grouped by Docker engine (``daemon_addr``), in order of first appearance."""

    groups: dict[str, list[Node]] = {}
    for node in nodes:
        groups.setdefault(node.daemon_addr, []).append(node)
    return list(groups.values())


async def _engine_lists(
    node: Node,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The running fliswarm containers and the volumes of the node's engine."""

    filters = {"label": [f"{LABEL_MANAGED}=true"], "status": ["running"]}
    running, present = await asyncio.gather(
        node.engine.list_containers(filters, all=False), node.engine.list_volumes()
    )
    return running, present


async def report_engine(
    command: Any,
    nodes: Sequence[Node],
    container_names: Sequence[str | None],
    volume_names: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Reports the logical nodes of one Docker engine to a command.

    Each node gets the lines of `.Node.report_status` (``node``, ``container``, ``volume``
    and the warnings), from one probe and one container and volume list of the engine of
    ``nodes[0]``. A node's container is the running fliswarm container labelled with its
    name (and named ``container_names[i]``, unless that is `None`).

    Returns
    -------
    list
        The result of `.Node.report_status` for each node.
    """

    if not nodes:
        return []
    first = nodes[0]
    config = actor_config(command)
    out = StatusWriter(command)
    if volume_names is None:
        volume_names = list(config.get("volumes") or [])
    ping_timeout = float(config.get("ping_timeout") or first.ping_timeout)

    lists = asyncio.ensure_future(_engine_lists(first))
    try:
        node_alive, docker_alive, error = await answered(first, ping_timeout, None, lists, True)
    except BaseException:
        discard(lists)
        raise
    results = [new_result(node_alive, docker_alive) for _ in nodes]
    for node in nodes:
        write_node_line(out, node, node_alive, docker_alive, error)
    if not docker_alive:
        discard(lists)
        return results

    try:
        running, present = await lists
    except NodeError as err:
        for node in nodes:
            out.warning(text=f"{node.name}: cannot get the status: {err.message}")
        return results

    mine: dict[str, list[dict[str, Any]]] = {node.name: [] for node in nodes}
    for container in running or []:
        owner = mine.get((container.get("Labels") or {}).get(LABEL_NODE))  # type: ignore[arg-type]
        if owner is not None:
            owner.append(container)
    volumes = by_name(present) or {}
    for node, result, name in zip(nodes, results, container_names, strict=True):
        write_lists(out, node, result, mine[node.name], volumes, name, volume_names)
    return results
