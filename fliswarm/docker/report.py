"""The status report of the nodes, with the original keywords.

Several logical nodes may run on one Docker engine (one flicamera container and port each).
`report_engine` reports all the nodes of one engine with one probe, one container list and
one volume list: the work per node is writing its keywords. Per node, in this order:

- a warning if the node does not answer ``ping`` and one if its engine does not answer, then
  one that names the node, says why (e.g. a TLS problem) and what to do; then ``node={name,
  addr, daemon_addr, node_alive, docker_alive}`` (info). ``docker_alive`` is true only when
  the engine answered the lists of this very status (or an API error): a ``/_ping`` that
  answers while the lists fail does not make it alive;
- if the engine answers: ``container={name, short_id}`` (debug; ``NA`` with warnings when
  no or several fliswarm containers run for the node) and one ``volume={name, volume,
  present, device}`` per volume (debug; warnings for a missing one).

The warnings sdss-fliswarm 0.7 wrote (``Node <addr> is not pinging back.``, ``Docker client
on node <addr> is not connected.``, ``No containers running on <addr>.``, ``Volume <volume>
not present in <node>.``) are kept word for word, since operators' scripts may match them;
each is followed by a line that starts with the node's name and says what to do.

The keywords are fliswarm's own (``etc/keywords.json``, checked by the tests); they are
written without CLU's per-line schema validation.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fliswarm.docker.containers import LABEL_MANAGED, LABEL_NODE, short_id
from fliswarm.docker.ping import PING_GRACE
from fliswarm.docker.registry import repository_of
from fliswarm.exceptions import DockerAPIError, NodeError, NodeTLSError
from fliswarm.tools import Reporter


if TYPE_CHECKING:
    from fliswarm.docker.engine import Engine
    from fliswarm.docker.node import Node


__all__ = ["report_engine", "by_engine", "image_digest_of", "running_image"]

log = logging.getLogger("fliswarm.docker.report")


def image_digest_of(image: Mapping[str, Any] | None, reference: str) -> str | None:
    """The manifest digest of an inspected image for the repository of ``reference``
    (pinned references carry it), `None` if the engine knows none (an image never pulled)."""

    if "@" in reference:
        return reference.split("@", 1)[1]
    if image is None:
        return None
    repository = repository_of(reference)
    digests = [str(item) for item in image.get("RepoDigests") or [] if "@" in str(item)]
    for item in digests:
        name, _, digest = item.partition("@")
        if name == repository or name.endswith("/" + repository):
            return digest
    return None


async def running_image(engine: Engine, info: Mapping[str, Any]) -> tuple[str, str | None]:
    """The image reference an inspected container was made from and its manifest digest
    (`None` when the engine does not know it). One image inspect, bounded like every call."""

    reference = str((info.get("Config") or {}).get("Image") or "")
    if "@" in reference:
        return reference, image_digest_of(None, reference)
    image = await engine.inspect_image(str(info.get("Image") or reference))
    return reference, image_digest_of(image, reference)


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


def _engine_answered(lists: asyncio.Future[Any]) -> bool:
    """Whether the finished lists prove the engine reached: they succeeded, or the engine
    answered with an API error. Any other failure (no connection, a time-out, TLS, or an
    error of fliswarm's own, such as a client closed under the call) proves nothing."""

    return lists.exception() is None or isinstance(lists.exception(), DockerAPIError)


def _lists_failure(lists: asyncio.Future[Any], node: Node) -> tuple[str, bool]:
    """Why the finished lists did not reach the engine, and whether that is a TLS problem."""

    error = lists.exception()
    if isinstance(error, NodeError):
        return error.message, isinstance(error, NodeTLSError)
    log.error("%s: status: the engine's lists failed", node.name, exc_info=error)
    return (
        f"Docker engine at {node.daemon_addr}: fliswarm could not get its answer (an internal "
        "error; the details are in fliswarm's log).",
        False,
    )


async def _answered(
    node: Node, ping_timeout: float, lists: asyncio.Future[Any]
) -> tuple[bool, bool, str | None, bool]:
    """Node alive, engine alive, why not and whether that is a TLS problem: the lists
    answering at once prove both alive.

    An engine that answers the lists within `.ping.PING_GRACE` (even with an API error) is
    alive, and so is its node, without an ICMP echo. Otherwise the node is probed
    (`.Node.probe`) while the lists go on: a node that does not answer the echo is down,
    at once. A TLS failure of the lists is the reason given, whatever the probe's own
    failure says (the most specific of the engine's answers). The engine is alive only if
    what the status asked of it was answered: when the probe's ``/_ping`` answers, the lists
    are awaited, and their failure makes the engine not reached after all.
    """

    done, _ = await asyncio.wait({lists}, timeout=PING_GRACE)
    if lists in done and _engine_answered(lists):
        return True, True, None, False
    node_alive, docker_alive = await node.probe(ping_timeout, grace=0.0, wait=False)
    if docker_alive:
        await asyncio.wait({lists})  # Bounded by the engine calls' own time limits.
        if _engine_answered(lists):
            return node_alive, True, None, False
        return (node_alive, False, *_lists_failure(lists, node))
    if lists.done() and not lists.cancelled() and not isinstance(lists.exception(), NodeError):
        return (node_alive, False, *_lists_failure(lists, node))
    failure: BaseException | None = node.engine.last_failure
    if lists.done() and not lists.cancelled() and isinstance(lists.exception(), NodeTLSError):
        failure = lists.exception()
    if isinstance(failure, NodeError):
        return node_alive, False, failure.message, isinstance(failure, NodeTLSError)
    return node_alive, False, node.engine.last_error, False


def _discard(task: asyncio.Future[Any]) -> None:
    """Cancels a task whose result is not wanted (retrieving its exception, if any)."""

    task.add_done_callback(_retrieve)
    task.cancel()


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Retrieves a discarded task's exception: a task that turns its cancellation into an
    error (an engine call failing as it is cancelled) would otherwise log a traceback."""

    if not task.cancelled():
        task.exception()


def _down_text(node: Node, node_alive: bool, error: str | None, tls: bool) -> str:
    """The line that says why a node's engine does not answer, and what to do."""

    name = node.name
    if tls or (node_alive and error):
        return f"{name}: {error}"
    if not node_alive:
        return (
            f"{name} ({node.addr}) does not answer ping, nor does its Docker engine: check that "
            f"the node is powered on and on the network (fliswarm reboot --hard -n {name} "
            "power-cycles it)."
        )
    return (
        f"{name}: Docker engine at {node.daemon_addr} is not answering: check that dockerd "
        "runs on the node."
    )


def _write_node(
    report: Reporter,
    node: Node,
    node_alive: bool,
    docker_alive: bool,
    error: str | None,
    tls: bool = False,
) -> None:
    if not node_alive:  # 0.7's words (scripts match them); the node's name comes below.
        report.warning(text=f"Node {node.addr} is not pinging back.", validate=False)
    if not docker_alive:
        report.warning(text=f"Docker client on node {node.addr} is not connected.", validate=False)
        report.warning(text=_down_text(node, node_alive, error, tls), validate=False)
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
    found = _containers_of(running, container_name)
    if not containers:
        pass
    elif len(found) == 1:
        result["container"] = short_id(found[0]["Id"])
        report.debug(container=[node.name, result["container"]], validate=False)
    else:
        name = node.name
        if not found:  # 0.7's words, then the node's name and what to do.
            report.warning(text=f"No containers running on {node.addr}.", validate=False)
            if container_name:
                text = f"its flicamera container {container_name} is not running"
                todo = "starts it"
            else:
                text, todo = "no fliswarm container is running", "starts one"
            report.warning(
                text=f"{name}: {text}: fliswarm reconnect -n {name} {todo}.", validate=False
            )
        else:
            what = container_name or "fliswarm containers"
            report.warning(text=f"Multiple {what} running on node {node.addr}.", validate=False)
            report.warning(
                text=f"{name}: {len(found)} fliswarm containers run for the node: fliswarm "
                f"reconnect --force -n {name} replaces them with one.",
                validate=False,
            )
        report.debug(container=[node.name, "NA"], validate=False)

    for vname in volume_names:
        volume = present.get(vname)
        if volume is None:
            report.warning(text=f"Volume {vname} not present in {node.name}.", validate=False)
            report.warning(
                text=f"{node.name}: volume {vname} is missing on the node: fliswarm reconnect "
                f"-n {node.name} creates it.",
                validate=False,
            )
            report.debug(volume=[node.name, vname, False, "NA"], validate=False)
            result["volumes"][vname] = None
            continue
        device = (volume.get("Options") or {}).get("device") or "NA"
        report.debug(volume=[node.name, vname, True, device], validate=False)
        result["volumes"][vname] = device


def _containers_of(
    running: list[dict[str, Any]], container_name: str | None
) -> list[dict[str, Any]]:
    return [
        c
        for c in running
        if container_name is None or f"/{container_name}" in (c.get("Names") or [])
    ]


async def _write_images(
    report: Reporter,
    node: Node,
    found: list[dict[str, Any]],
    desired: str,
) -> None:
    """``image={node, reference, digest, desired_digest, desired_reference}`` of a node
    running one container, and a warning when it does not run its desired image."""

    if len(found) != 1:
        return
    reference = str(found[0].get("Image") or "")
    image_id = str(found[0].get("ImageID") or "")
    known = node.engine.image_digests  # Each image inspected once per engine.
    key = (image_id, repository_of(reference))
    digest = image_digest_of(None, reference) if "@" in reference else known.get(key)
    if digest is None and "@" not in reference:
        try:
            image = await node.engine.inspect_image(image_id or reference)
        except NodeError:
            image = None
        digest = image_digest_of(image, reference)
        if digest is not None and image_id:
            known[key] = digest
    wanted = image_digest_of(None, desired)
    value = [node.name, reference or "NA", digest or "NA", wanted or "NA", desired]
    report.info(image=value, validate=False)
    drift = (digest != wanted) if wanted else (reference != desired)
    if drift:
        report.warning(
            text=f"{node.name}: runs {reference} ({digest or 'digest unknown'}), not its desired "
            f"image {desired}: fliswarm reconnect --force -n {node.name} replaces the "
            "container.",
            validate=False,
        )


async def report_engine(
    report: Reporter,
    nodes: Sequence[Node],
    container_names: Sequence[str | None],
    volume_names: Sequence[str],
    ping_timeout: float,
    containers: bool = True,
    images: Sequence[str] | None = None,
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
    images
        Each node's desired image (a full reference): with the containers, ``image`` says
        what each runs and what it should run, and a warning says when they differ.

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
        node_alive, docker_alive, error, tls = await _answered(first, ping_timeout, lists)
    except BaseException:
        _discard(lists)
        raise
    results: list[dict[str, Any]] = [
        {"node_alive": node_alive, "docker_alive": docker_alive, "container": None, "volumes": {}}
        for _ in nodes
    ]
    for node in nodes:
        _write_node(report, node, node_alive, docker_alive, error, tls)
    if not docker_alive:
        _discard(lists)
        return results

    try:
        running, present = await lists
    except DockerAPIError as err:  # The engine answered, with an error.
        for node in nodes:
            report.warning(
                text=f"{node.name}: cannot list its containers and volumes: {err.message}"
            )
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
    if containers and images is not None:
        await asyncio.gather(
            *[
                _write_images(report, node, _containers_of(mine[node.name], name), desired)
                for node, name, desired in zip(nodes, container_names, images, strict=True)
            ]
        )
    return results
