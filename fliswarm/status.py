"""The status report of one node (`.Node.report_status`), with the original keywords."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from clu.command import BaseCommand
from clu.model import Model, Property

from .containers import LABEL_MANAGED, LABEL_NODE, short_id
from .exceptions import NodeError, NodeTimeoutError, NodeTLSError, NodeUnreachableError
from .reply import write_reply
from .tools import FakeCommand


if TYPE_CHECKING:
    from .node import Node


__all__ = [
    "report_status",
    "actor_config",
    "probe",
    "PING_GRACE",
    "EngineShare",
    "StatusWriter",
    "answered",
    "discard",
    "write_node_line",
    "write_lists",
    "new_result",
    "by_name",
]


def actor_config(command: Any) -> Mapping[str, Any]:
    """The actor configuration of a CLU command, or an empty mapping."""

    if isinstance(command, FakeCommand):
        return {}
    config = getattr(getattr(command, "actor", None), "config", None)
    return config if isinstance(config, Mapping) else {}


class StatusWriter:
    """Writes the status keywords of a CLU command through the fast reply path.

    The status keywords are built here from typed values (the schema is checked by the
    tests), so each line skips CLU's per-line JSON-schema validation: the bytes, the
    transports, ``command.replies`` and the actor log line are those of ``command.info``
    etc. (`fliswarm.reply.write_reply`), and the actor's keyword model is still updated.
    Anything that is not a CLU command (a test recorder, `.FakeCommand`) is written to as
    it is.
    """

    def __init__(self, command: Any) -> None:
        self.command = command
        model = getattr(getattr(command, "actor", None), "model", None)
        self._fast = isinstance(command, BaseCommand)
        self._model = model if self._fast and model is not None else None

    def _write(self, code: str, message: dict[str, Any]) -> None:
        if not self._fast:
            getattr(self.command, _METHODS[code])(**message)
            return
        write_reply(self.command, code, message)
        if self._model is not None:
            update_model(self._model, message)

    def info(self, **message: Any) -> None:
        self._write("i", message)

    def warning(self, **message: Any) -> None:
        self._write("w", message)

    def debug(self, **message: Any) -> None:
        self._write("d", message)


_METHODS = {"i": "info", "w": "warning", "d": "debug"}


def update_model(model: Any, message: dict[str, Any]) -> None:
    """``model.update_model(message)``, without its per-key notifications when nobody listens.

    CLU's `~clu.model.Model.update_model` copies the property and flattens the whole model
    for each key, only to pass them to the callbacks. When neither the model nor the
    property has a callback (and the value is not a dictionary, which CLU merges), the same
    value and ``last_seen`` times are set directly; anything else goes through CLU.
    """

    if model.__class__.update_model is not _UPDATE_MODEL or model._callbacks:
        model.update_model(message)
        return
    now = time.time()
    rest: dict[str, Any] = {}
    for key, value in message.items():
        prop = dict.get(model, key)  # The exact key; other cases go through CLU.
        if (
            prop is None
            or prop.__class__ is not Property
            or prop._callbacks
            or isinstance(value, dict)
            or isinstance(prop._value, dict)
        ):
            rest[key] = value
            continue
        prop._value = value
        prop.last_seen = now
    model.last_seen = now
    if rest:
        model.update_model(rest)


_UPDATE_MODEL = Model.update_model


async def _none() -> None:
    return None


#: Seconds the Docker engine gets to answer before the node is pinged as well.
PING_GRACE = 0.25


async def probe(node: Node, ping_timeout: float) -> tuple[bool, bool]:
    """Whether the node is alive and whether its Docker engine answers.

    An engine that answers proves the node alive: the ICMP ``ping`` (a process per call,
    most of the cost of a status) is only run when the engine has not answered within
    `PING_GRACE` seconds, concurrently with the rest of the engine's wait.
    """

    docker = asyncio.ensure_future(node.client_alive())
    try:
        done, _ = await asyncio.wait({docker}, timeout=PING_GRACE)
        if docker in done and docker.result():
            return True, True
        alive, docker_alive = await asyncio.gather(node.ping(ping_timeout), docker)
    except BaseException:
        docker.cancel()
        raise
    return alive, docker_alive


class EngineShare:
    """The engine calls of one status, shared by the logical nodes on each Docker engine.

    Several logical nodes may run on one engine (one container and port each). Within one
    status, each engine (keyed by ``daemon_addr``) is probed once, and its running fliswarm
    containers and its volumes are listed once, whatever the number of nodes on it. Make a
    new `EngineShare` for each status: nothing is kept between reports.
    """

    def __init__(self) -> None:
        self._tasks: dict[tuple[str, str], asyncio.Future[Any]] = {}

    def _once(self, key: tuple[str, str], factory: Callable[[], Awaitable[Any]]) -> Any:
        task = self._tasks.get(key)
        if task is None:
            task = self._tasks[key] = asyncio.ensure_future(factory())
        return asyncio.shield(task)

    async def probe(self, node: Node, ping_timeout: float) -> tuple[bool, bool, str | None]:
        """`probe` of the node's engine, and why the engine did not answer (or `None`)."""

        async def run() -> tuple[bool, bool, str | None]:
            node_alive, docker_alive = await probe(node, ping_timeout)
            error = None if docker_alive else getattr(node.engine, "last_error", None)
            return node_alive, docker_alive, error

        return await self._once(("probe", node.daemon_addr), run)

    async def running(self, node: Node) -> list[dict[str, Any]]:
        """The running fliswarm containers of the node (one engine list for all its nodes)."""

        filters = {"label": [f"{LABEL_MANAGED}=true"], "status": ["running"]}
        found = await self._once(
            ("containers", node.daemon_addr),
            lambda: node.engine.list_containers(filters, all=False),
        )
        return [c for c in found or [] if (c.get("Labels") or {}).get(LABEL_NODE) == node.name]

    async def volumes(self, node: Node) -> list[dict[str, Any]]:
        """The volumes of the node's engine."""

        return await self._once(("volumes", node.daemon_addr), node.engine.list_volumes)

    def close(self) -> None:
        """Cancels the calls nobody waits for any more."""

        for task in self._tasks.values():
            task.cancel()
        self._tasks.clear()


async def _probe(
    node: Node, ping_timeout: float, share: EngineShare | None
) -> tuple[bool, bool, str | None]:
    if share is not None:
        return await share.probe(node, ping_timeout)
    node_alive, docker_alive = await probe(node, ping_timeout)
    return node_alive, docker_alive, getattr(getattr(node, "engine", None), "last_error", None)


async def _running(node: Node, share: EngineShare | None) -> list[dict[str, Any]]:
    if share is not None:
        return await share.running(node)
    filters = {
        "label": [f"{LABEL_MANAGED}=true", f"{LABEL_NODE}={node.name}"],
        "status": ["running"],
    }
    return await node.engine.list_containers(filters, all=False)


async def _volumes(node: Node, share: EngineShare | None) -> list[dict[str, Any]]:
    return await (share.volumes(node) if share is not None else node.engine.list_volumes())


async def _lists(
    node: Node, share: EngineShare | None, containers: bool, volumes: bool
) -> tuple[list[dict[str, Any]] | None, list[dict[str, Any]] | None]:
    running, present = await asyncio.gather(
        _running(node, share) if containers else _none(),
        _volumes(node, share) if volumes else _none(),
    )
    return running, present


#: Errors of a list that say nothing about whether the engine is alive.
_NO_ANSWER = (NodeUnreachableError, NodeTimeoutError, NodeTLSError)


async def answered(
    node: Node,
    ping_timeout: float,
    share: EngineShare | None,
    lists: asyncio.Future[Any],
    listing: bool,
) -> tuple[bool, bool, str | None]:
    """Node alive, engine alive and why not: the lists answering at once prove both.

    The container and volume lists are sent first; an engine that answers them within
    `PING_GRACE` (even with an API error) is alive, and so is its node, without a
    ``/_ping``. Otherwise the node is probed as before (`probe`) while the lists go on.
    """

    if listing:
        done, _ = await asyncio.wait({lists}, timeout=PING_GRACE)
        if lists in done and not isinstance(lists.exception(), _NO_ANSWER):
            return True, True, None
    return await _probe(node, ping_timeout, share)


def discard(task: asyncio.Future[Any]) -> None:
    """Cancels a task whose result is not wanted (retrieving its exception, if any)."""

    if task.done():
        if not task.cancelled():
            task.exception()
    else:
        task.cancel()


def write_node_line(
    out: StatusWriter, node: Node, node_alive: bool, docker_alive: bool, error: str | None
) -> None:
    """The warnings of a node that is not pinging or whose engine does not answer, and its
    ``node`` keyword."""

    if not node_alive:
        out.warning(text=f"Node {node.addr} is not pinging back.")
    if not docker_alive:
        out.warning(text=f"Docker client on node {node.addr} is not connected.")
        if error:  # Why, in plain words (e.g. a TLS problem).
            out.warning(text=f"{node.name}: {error}")
    out.info(node=[node.name, node.addr, node.daemon_addr, node_alive, docker_alive])


def write_lists(
    out: StatusWriter,
    node: Node,
    result: dict[str, Any],
    running: list[dict[str, Any]] | None,
    present: Mapping[str, dict[str, Any]] | None,
    container_name: str | None,
    volume_names: Sequence[str],
) -> None:
    """The ``container`` keyword (if ``running`` is a list) and the ``volume`` keywords (if
    ``present``, volumes by name, is not `None`) of a node, recorded in ``result`` too."""

    if running is not None:
        found = [
            c
            for c in running
            if container_name is None or f"/{container_name}" in (c.get("Names") or [])
        ]
        if len(found) == 1:
            result["container"] = short_id(found[0]["Id"])
            out.debug(container=[node.name, result["container"]])
        else:
            if not found:
                out.warning(text=f"No containers running on {node.addr}.")
            else:
                what = container_name or "fliswarm containers"
                out.warning(text=f"Multiple {what} running on node {node.addr}.")
            out.debug(container=[node.name, "NA"])

    if present is not None:
        for vname in volume_names:
            volume = present.get(vname)
            if volume is None:
                out.warning(text=f"Volume {vname} not present in {node.name}.")
                out.debug(volume=[node.name, vname, False, "NA"])
                result["volumes"][vname] = None
                continue
            device = (volume.get("Options") or {}).get("device") or "NA"
            out.debug(volume=[node.name, vname, True, device])
            result["volumes"][vname] = device


def new_result(node_alive: bool, docker_alive: bool) -> dict[str, Any]:
    """The result of a node's status report, before its lists."""

    return {
        "node_alive": node_alive,
        "docker_alive": docker_alive,
        "container": None,
        "volumes": {},
    }


def by_name(volumes: list[dict[str, Any]] | None) -> dict[str, dict[str, Any]] | None:
    """Volumes by name (`None` stays `None`)."""

    return None if volumes is None else {v["Name"]: v for v in volumes}


async def report_status(
    node: Node,
    command: Any,
    volumes: bool = True,
    containers: bool = True,
    container_name: str | None = None,
    volume_names: Sequence[str] | None = None,
    share: EngineShare | None = None,
) -> dict[str, Any]:
    """Reports a node to a command (see `.Node.report_status`)."""

    config = actor_config(command)
    out = StatusWriter(command)
    if volume_names is None:
        volume_names = list(config.get("volumes") or [])
    ping_timeout = float(config.get("ping_timeout") or node.ping_timeout)

    lists = asyncio.ensure_future(_lists(node, share, containers, volumes))
    try:
        node_alive, docker_alive, error = await answered(
            node, ping_timeout, share, lists, containers or volumes
        )
    except BaseException:
        discard(lists)
        raise
    result = new_result(node_alive, docker_alive)
    write_node_line(out, node, node_alive, docker_alive, error)
    if not docker_alive:
        discard(lists)
        return result

    try:
        running, present = await lists
    except NodeError as err:
        out.warning(text=f"{node.name}: cannot get the status: {err.message}")
        return result

    write_lists(
        out,
        node,
        result,
        (running or []) if containers else None,
        (by_name(present) or {}) if volumes else None,
        container_name,
        volume_names,
    )
    return result
