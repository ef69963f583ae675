"""`Provisioner`: the one way a node is brought to its desired state.

``ensure volumes -> ensure the container -> wait until flicamera accepts -> connect``

`Provisioner.provision` serves the operator's ``reconnect``, the supervisor's repairs and
anything that changes a node's container. It is idempotent: a second pass right after a
first one keeps everything (and only reconnects the camera when asked to).

One provisioning runs at a time on a node. A request that comes while another runs on the
same node joins it: it waits for that work, then makes its own pass, which keeps what the
joined work made when that matches the desired state, even with ``force`` (``force``
replaces what predates the request or differs from the desired state). The supervisor does
not join: it leaves a busy node alone and looks again when the work is done.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fliswarm.docker.containers import auto_removed, short_id
from fliswarm.docker.engine import connection_problem
from fliswarm.docker.launch import check_managed
from fliswarm.exceptions import FliswarmError, NodeError
from fliswarm.tools import Reporter

from .desired import DesiredNode, container_drift
from .ready import wait_device_ready


if TYPE_CHECKING:
    from fliswarm.camera.device import FlicameraDevice
    from fliswarm.docker.node import Node


__all__ = [
    "Action",
    "ProvisionError",
    "Provisioner",
    "Request",
    "Result",
]

log = logging.getLogger("fliswarm.provision")

#: Seconds a container being restarted gets between SIGTERM and SIGKILL.
RESTART_GRACE = 2.0


class ProvisionError(FliswarmError):
    """A node could not be brought to its desired state; the message says why."""

    def __init__(self, node: str, reason: str) -> None:
        self.node = node
        self.reason = reason
        super().__init__(f"{node}: {reason}")


class Action(enum.Enum):
    """What provisioning did with the container."""

    #: The container ran as desired and was kept.
    KEEP = "kept"
    #: A stopped container was started again.
    START = "started"
    #: There was no container: one was created.
    CREATE = "created"
    #: The container was removed and created again.
    REPLACE = "replaced"
    #: The running container was stopped (unpaused first) and started again.
    RESTART = "restarted"


@dataclass(frozen=True)
class Request:
    """What a caller asks of `Provisioner.provision`."""

    #: Replace the container (and re-create the volumes) unless the container was made by
    #: provisioning work this request joined and matches the desired state.
    force: bool = False
    #: Replace a container whose settings differ from the desired ones (config hash).
    replace_drifted: bool = False
    #: Reconnect the camera even if its connection is up (the operator's ``reconnect``).
    reconnect: bool = False
    #: Restart a running container (unpaused first): the supervisor's repair of a camera
    #: that does not answer.
    restart: bool = False


@dataclass(frozen=True)
class Result:
    """What `Provisioner.provision` did."""

    action: Action
    #: The container's id.
    container_id: str
    #: Seconds until flicamera accepted the connection (0 if it was already connected).
    ready_after: float
    #: Whether the request joined provisioning work already running on the node.
    joined: bool = False


def _reason(name: str, err: BaseException) -> str:
    """Why provisioning failed, in the words of fliswarm's errors (the node is named by the
    caller); the Python error itself goes to the log."""

    log.info("%s: provisioning failed: %r", name, err)
    if isinstance(err, NodeError):
        return err.message
    if isinstance(err, asyncio.TimeoutError):
        return "a step did not finish in time (the details are in fliswarm's log)"
    text = str(err).strip()
    if text.startswith(f"{name}: "):
        text = text[len(name) + 2 :]
    if text:
        return text
    if isinstance(err, OSError):
        return connection_problem(err)[1]
    return "failed (the details are in fliswarm's log)"


class Provisioner:
    """Brings nodes to their desired state, one provisioning at a time per node.

    Parameters
    ----------
    nodes
        The `.Node` of each node, by name (read at each call: nodes may be added).
    devices
        The `.FlicameraDevice` of each node, by name.
    desired
        Returns the desired state of a node from the current configuration.
    ready_timeout
        Seconds flicamera gets to accept connections once its container runs.
    attempt_timeout
        Seconds of one connection attempt to flicamera.
    on_done
        Called with the node name after each provisioning, whatever its outcome (the
        supervisor looks at the node again).
    """

    def __init__(
        self,
        nodes: Mapping[str, Node],
        devices: Mapping[str, FlicameraDevice],
        desired: Callable[[str], DesiredNode],
        ready_timeout: float,
        attempt_timeout: float,
        on_done: Callable[[str], None] | None = None,
    ) -> None:
        self.nodes = nodes
        self.devices = devices
        self.desired = desired
        self.ready_timeout = ready_timeout
        self.attempt_timeout = attempt_timeout
        self.on_done = on_done
        self._running: dict[str, asyncio.Task[Result]] = {}
        self._actions: dict[str, Action] = {}

    def busy(self, name: str) -> bool:
        """Whether provisioning work runs on the node."""

        task = self._running.get(name)
        return task is not None and not task.done()

    def stopping(self, name: str) -> bool:
        """Whether provisioning work on the node stops its container itself (restart,
        replace): the container's end is then no failure."""

        return self.busy(name) and self._actions.get(name) in (Action.RESTART, Action.REPLACE)

    async def provision(self, name: str, request: Request, report: Reporter) -> Result:
        """Brings a node to its desired state (see the module).

        Raises
        ------
        ProvisionError
            If the node cannot be brought to its desired state; the message says why.
        """

        joined: Result | None = None
        while (running := self._running.get(name)) is not None and not running.done():
            report.info(text=f"{name}: joining the work in progress on the node.")
            try:
                joined = await asyncio.shield(running)
            except ProvisionError:
                joined = None
            except asyncio.CancelledError:
                if not running.cancelled():  # We were cancelled, not the work we joined.
                    raise
                joined = None
        task = asyncio.ensure_future(self._provision(name, request, report, joined))
        self._running[name] = task
        try:
            return await task
        finally:
            if self._running.get(name) is task:
                del self._running[name]
                self._actions.pop(name, None)
            if self.on_done is not None:
                self.on_done(name)

    async def _provision(
        self, name: str, request: Request, report: Reporter, joined: Result | None
    ) -> Result:
        node = self.nodes[name]
        device = self.devices[name]
        desired = self.desired(name)
        try:
            return await self._steps(node, device, desired, request, report, joined)
        except (FliswarmError, ConnectionError, asyncio.TimeoutError) as err:
            raise ProvisionError(name, _reason(name, err)) from err

    async def _steps(
        self,
        node: Node,
        device: FlicameraDevice,
        desired: DesiredNode,
        request: Request,
        report: Reporter,
        joined: Result | None,
    ) -> Result:
        name = node.name
        container = desired.container
        await node.connect()  # Says whether the node or only its engine does not answer.
        info = await node.engine.inspect_container(container)
        if info is not None:
            check_managed(name, info, container)
        action = self._decide(info, desired, request, joined)
        self._actions[name] = action

        changing = action is not Action.KEEP
        if changing:
            device.auto_connect = False  # talk must not connect while the container changes.
        try:
            if action in (Action.REPLACE, Action.RESTART):
                await device.stop()  # Before the container goes, or the connection hangs.
            if action is Action.REPLACE:
                await node.stop_container(container, desired.spec["image"], True, report)
            await self._volumes(node, desired, request.force and changing, report)
            cid = await self._container(node, desired, action, info, report)
            # The camera is (re)connected when the container changed, when asked (unless the
            # work this request joined has just connected it) or when it is not connected.
            reconnect = request.reconnect and joined is None
            if changing or reconnect or not device.is_connected():
                if changing or reconnect:
                    await device.stop()
                took = await wait_device_ready(
                    device, node, container, self.ready_timeout, self.attempt_timeout
                )
                report.info(text=f"{name}: camera connected")
                report.debug(text=f"{name}: flicamera accepted the connection after {took:.2f} s.")
            else:
                took = 0.0
        finally:
            device.auto_connect = True
        return Result(action, cid, took, joined is not None)

    @staticmethod
    def _decide(
        info: Mapping[str, Any] | None,
        desired: DesiredNode,
        request: Request,
        joined: Result | None,
    ) -> Action:
        if info is None:
            return Action.CREATE
        drift = container_drift(info, desired)
        made_by_joined = joined is not None and joined.container_id == info["Id"]
        if request.force and not (made_by_joined and drift is None):
            return Action.REPLACE
        if drift is not None and request.replace_drifted:
            return Action.REPLACE
        state = info.get("State") or {}
        if not state.get("Running"):
            return Action.START
        return Action.RESTART if request.restart and not made_by_joined else Action.KEEP

    @staticmethod
    async def _volumes(node: Node, desired: DesiredNode, force: bool, report: Reporter) -> None:
        for vname, volume in desired.volumes.items():
            await node.create_volume(vname, volume["driver"], volume["opts"], force, report)
        report.info(text=f"{node.name}: volumes ready")

    @staticmethod
    async def _container(
        node: Node,
        desired: DesiredNode,
        action: Action,
        info: Mapping[str, Any] | None,
        report: Reporter,
    ) -> str:
        """The container in the state `_decide` chose; returns its id."""

        name = node.name
        policy = desired.engine_restart
        if info is not None and action in (Action.KEEP, Action.START, Action.RESTART):
            cid = str(info["Id"])
            if action is Action.RESTART:
                if (info.get("State") or {}).get("Paused"):  # It could not even take SIGTERM.
                    await node.engine.unpause_container(cid)
                await node.engine.stop_container(cid, RESTART_GRACE)
                report.info(text=f"{name}: container stopped ({short_id(cid)})")
            current = (info.get("HostConfig") or {}).get("RestartPolicy") or {}
            if current.get("Name", "no") != policy["Name"] and not auto_removed(info):
                await node.engine.update_restart_policy(cid, policy)
            if action is Action.KEEP:
                report.info(text=f"{name}: container already running ({short_id(cid)})")
                return cid
            try:
                await node.engine.start_container(cid)
                report.info(text=f"{name}: container started ({short_id(cid)})")
                return cid
            except NodeError as err:
                report.warning(
                    text=f"{name}: cannot start the container ({err.message.rstrip('.')}); "
                    "recreating it."
                )
        created = await node.run_container(
            **desired.spec, force=True, command=report, restart_policy=policy
        )
        cid = str(created.get("Id", ""))
        report.info(text=f"{name}: container started ({short_id(cid) or '?'})")
        return cid
