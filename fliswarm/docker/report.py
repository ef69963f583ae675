"""The status report of the nodes, with the original keywords.

Several logical nodes may run on one Docker engine (one flicamera container and port each).
`report_engine` reports all the nodes of one engine with one probe, one container list and
one volume list: the work per node is writing its keywords. Per node, in this order:

- a warning if the node does not answer ``ping`` and one if its engine does not answer (with
  the reason, e.g. a TLS problem), then ``node={name, addr, daemon_addr, node_alive,
  docker_alive}`` (info);
- if the engine answers: ``container={name, short_id}`` (debug; ``NA`` with a warning when
  no or several fliswarm containers run for the node) and one ``volume={name, volume,
  present, device}`` per volume (debug; a warning for a missing one).

The keywords are fliswarm's own (``etc/keywords.json``, checked by the tests); they are
written without CLU's per-line schema validation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fliswarm.docker.containers import LABEL_MANAGED, LABEL_NODE, short_id
from fliswarm.docker.ping import PING_GRACE
from fliswarm.exceptions import NodeError, NodeTimeoutError, NodeTLSError, NodeUnreachableError
from fliswarm.tools import Reporter


if TYPE_CHECKING:
    from fliswarm.docker.node import Node


__all__ = ["report_engine", "by_engine"]

#: Errors of a list that say nothing about whether the engine is alive.
_NO_ANSWER = (NodeUnreachableError, NodeTimeoutError, NodeTLSError)


def by_engine(nodes: Sequence[Node]) -> list[list[Node]]:
    """The nodes grouped by Docker engine (``daemon_addr``), in order of first appearance."""

    groups: dict[str, list[Node]] = {}
    for node in nodes:
        groups.setdefault(node.daemon_addr, []).append(node)
    return list(groups.values())


async def _lists(node: Node) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The running fliswarm containers and the volumes of the node's engine."""

    filters = {"label": [f"{LABEL_MANAGED}=true"], "status": ["running"]}
    running, present = await asyncio.gather(
        node.engine.list_containers(filters, all=False), node.engine.list_volumes()
    )
    return running, present


async def _answered(
    node: Node, ping_timeout: float, lists: asyncio.Future[Any]
) -> tuple[bool, bool, str | None]:
    """Node alive, engine alive and why not: the lists answering at once prove both.

    An engine that answers the lists within `.ping.PING_GRACE` (even with an API error) is
    alive, and so is its node, without an ICMP echo. Otherwise the node is probed
    (`.Node.probe`) while the lists go on: a node that does not answer the echo is down,
    at once.
    """

    done, _ = await asyncio.wait({lists}, timeout=PING_GRACE)
    if lists in done and not isinstance(lists.exception(), _NO_ANSWER):
        return True, True, None
    node_alive, docker_alive = await node.probe(ping_timeout, grace=0.0, wait=False)
    return node_alive, docker_alive, None if docker_alive else node.engine.last_error


def _discard(task: asyncio.Future[Any]) -> None:
    """Cancels a task whose result is not wanted (retrieving its exception, if any)."""

    if task.done():
        if not task.cancelled():
            task.exception()
    else:
        task.cancel()


def _write_node(
    report: Reporter, node: Node, node_alive: bool, docker_alive: bool, error: str | None
) -> None:
    if not node_alive:
        report.warning(text=f"Node {node.addr} is not pinging back.", validate=False)
    if not docker_alive:
        report.warning(text=f"Docker client on node {node.addr} is not connected.", validate=False)
        if error:  # Why, in plain words (e.g. a TLS problem).
            report.warning(text=f"{node.name}: {error}", validate=False)
    node_value = [node.name, node.addr, node.daemon_addr, node_alive, docker_alive]
    report.info(node=node_value, validate=False)


def _write_lists(
    report: Reporter,
    node: Node,
    result: dict[str, Any],
    running: list[dict[str, Any]],
    present: Mapping[str, dict[str, Any]],
    container_name: str | None,
    volume_names: Sequence[str],
    containers: bool,
) -> None:
    found = [
        c
        for c in running
        if container_name is None or f"/{container_name}" in (c.get("Names") or [])
    ]
    if not containers:
        pass
    elif len(found) == 1:
        result["container"] = short_id(found[0]["Id"])
        report.debug(container=[node.name, result["container"]], validate=False)
    else:
        if not found:
            report.warning(text=f"No containers running on {node.addr}.", validate=False)
        else:
            what = container_name or "fliswarm containers"
            report.warning(text=f"Multiple {what} running on node {node.addr}.", validate=False)
        report.debug(container=[node.name, "NA"], validate=False)

    for vname in volume_names:
        volume = present.get(vname)
        if volume is None:
            report.warning(text=f"Volume {vname} not present in {node.name}.", validate=False)
            report.debug(volume=[node.name, vname, False, "NA"], validate=False)
            result["volumes"][vname] = None
            continue
        device = (volume.get("Options") or {}).get("device") or "NA"
        report.debug(volume=[node.name, vname, True, device], validate=False)
        result["volumes"][vname] = device


async def report_engine(
    report: Reporter,
    nodes: Sequence[Node],
    container_names: Sequence[str | None],
    volume_names: Sequence[str],
    ping_timeout: float,
    containers: bool = True,
) -> list[dict[str, Any]]:
    """Reports the logical nodes of one Docker engine (see the module).

    Parameters
    ----------
    report
        Where to write the keywords (a CLU command).
    nodes
        Nodes of one engine (``nodes[0]``'s is the one asked).
    container_names
        Each node's container (the running fliswarm container labelled with the node name
        and, unless `None`, with this name).
    volume_names
        The volumes every node should have.
    ping_timeout
        Seconds to wait for an ICMP echo when the engine does not answer at once.
    containers
        Whether to report the containers.

    Returns
    -------
    list
        Per node: ``node_alive``, ``docker_alive``, ``container`` (short id or `None`) and
        ``volumes`` (name to device, `None` if missing).
    """

    if not nodes:
        return []
    first = nodes[0]
    lists = asyncio.ensure_future(_lists(first))
    try:
        node_alive, docker_alive, error = await _answered(first, ping_timeout, lists)
    except BaseException:
        _discard(lists)
        raise
    results: list[dict[str, Any]] = [
        {"node_alive": node_alive, "docker_alive": docker_alive, "container": None, "volumes": {}}
        for _ in nodes
    ]
    for node in nodes:
        _write_node(report, node, node_alive, docker_alive, error)
    if not docker_alive:
        _discard(lists)
        return results

    try:
        running, present = await lists
    except NodeError as err:
        for node in nodes:
            report.warning(text=f"{node.name}: cannot get the status: {err.message}")
        return results

    mine: dict[str, list[dict[str, Any]]] = {node.name: [] for node in nodes}
    for container in running:
        owner = mine.get((container.get("Labels") or {}).get(LABEL_NODE, ""))
        if owner is not None:
            owner.append(container)
    volumes = {volume["Name"]: volume for volume in present}
    for node, result, name in zip(nodes, results, container_names, strict=True):
        _write_lists(
            report, node, result, mine[node.name], volumes, name, volume_names, containers
        )
    return results
