"""Self-healing supervision of the nodes: watch every engine's events, converge to the config.

`Supervisor` is what the actor holds (``actor.supervisor``)::

    supervisor = Supervisor(actor)
    await supervisor.start()          # watch every enabled node (adopts running containers)
    supervisor.watch("gfa1")          # start supervising a node (after ``enable``)
    await supervisor.unwatch("gfa1")  # stop (after ``disable``); its state becomes disabled
    supervisor.state("gfa1")          # NodeStatus(state=online, since=..., reason=...)
    await supervisor.stop()           # at the actor's stop: nothing is broadcast per node

Per node, an `.EventWatcher` keeps a subscription to the engine's container events and a
`.NodeReconciler` runs reconcile steps when something happens (see their modules). Repairs
go through the actor's `.Provisioner`, as operator commands do: the supervisor leaves a node
alone while other provisioning work runs on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from fliswarm.docker.containers import LABEL_NODE, short_id
from fliswarm.docker.events import EventWatcher
from fliswarm.provision import Provisioner

from .reconciler import NodeReconciler, Outcome
from .state import NodeState, NodeStatus, not_managed, should_restart


__all__ = [
    "Supervisor",
    "SupervisedActor",
    "NodeState",
    "NodeStatus",
    "Outcome",
    "should_restart",
]

if TYPE_CHECKING:
    from fliswarm.camera.device import FlicameraDevice
    from fliswarm.config.settings import Settings
    from fliswarm.docker.node import Node


log = logging.getLogger("fliswarm.supervision")

#: Seconds between two unprompted steps of a healthy node when ``status_interval`` is 0.
SAFETY_INTERVAL = 300.0


class SupervisedActor(Protocol):
    """What the supervisor needs from the actor (`.FLISwarmActor` is one)."""

    settings: Settings
    nodes: Mapping[str, Node]
    flicameras: Mapping[str, FlicameraDevice]

    def write(self, message_code: str, message: dict[str, Any]) -> Any:
        """Writes a reply to every user."""


class Supervisor:
    """Supervises the enabled nodes of a fliswarm actor.

    Parameters
    ----------
    actor
        The `.FLISwarmActor` (its ``config``, ``nodes``, ``flicameras`` and ``write``).
    provisioner
        The one provisioning path, shared with the operator's commands.
    max_concurrent
        How many nodes may be repaired (Docker calls) at the same time.
    backoff
        ``(initial, maximum, factor, jitter)`` of each node's reconcile back-off.
    safety_interval
        Seconds between two unprompted reconcile steps of a healthy node (the safety net
        behind the events); defaults to the configured ``status_interval`` (or
        `SAFETY_INTERVAL` when the timed status is off).
    """

    def __init__(
        self,
        actor: SupervisedActor,
        provisioner: Provisioner,
        max_concurrent: int = 4,
        backoff: tuple[float, float, float, float] = (0.5, 30.0, 2.0, 0.25),
        safety_interval: float | None = None,
    ) -> None:
        self.actor = actor
        self.provisioner = provisioner
        self.backoff = backoff
        if safety_interval is None:
            safety_interval = actor.settings.status_interval or SAFETY_INTERVAL
        self.safety_interval = safety_interval
        self.max_concurrent = max_concurrent
        self.reconcilers: dict[str, NodeReconciler] = {}
        self.watchers: dict[str, EventWatcher] = {}
        self._semaphore: asyncio.Semaphore | None = None
        self._statuses: dict[str, NodeStatus] = {}
        self.running = False
        self._stopping = False

    # ----------------------------------------------------------------- public API

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """One of the `max_concurrent` slots for Docker work across nodes."""

        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.max_concurrent)
        async with self._semaphore:
            yield

    def state(self, name: str) -> NodeStatus:
        """The state of a node (``disabled`` if it is not supervised)."""

        reconciler = self.reconcilers.get(name)
        if reconciler is not None:
            return reconciler.status
        return self._statuses.setdefault(
            name, NodeStatus(NodeState.DISABLED, reason=not_managed(name))
        )

    def states(self) -> dict[str, NodeStatus]:
        """The state of every configured node."""

        return {name: self.state(name) for name in self.actor.nodes}

    def is_offline(self, name: str) -> bool:
        """Whether the node's engine is known not to answer right now.

        Asked by the commands that want the node (``talk``, ``status``): when it is offline,
        its engine is probed again at once (`.EventWatcher.poke`), so that a node that
        answers again (its camera reached by that very command) is online within
        milliseconds, not after the watcher's back-off.
        """

        watcher = self.watchers.get(name)
        offline = bool(
            watcher is not None
            and watcher.running
            and not watcher.connected
            and self.state(name).state is NodeState.OFFLINE
        )
        if offline and watcher is not None:
            watcher.poke()
        return offline

    async def start(self) -> None:
        """Starts supervising every enabled node."""

        self.running = True
        self._stopping = False
        self.sync()

    def sync(self) -> None:
        """Watches the enabled nodes and stops watching the others (after enable/disable)."""

        for name, node in self.actor.nodes.items():
            if node.enabled:
                self.watch(name)
            elif name in self.reconcilers:
                asyncio.ensure_future(self.unwatch(name))

    def watch(self, name: str) -> None:
        """Starts supervising a node (no-op if already supervised or not running)."""

        if not self.running or name in self.reconcilers:
            return
        node = self.actor.nodes[name]
        reconciler = NodeReconciler(self, name)
        self.reconcilers[name] = reconciler
        self._statuses.pop(name, None)
        device = self.actor.flicameras.get(name)
        if device is not None:
            device.lost_callbacks.append(self._device_lost)
        watcher = EventWatcher(
            name,
            node.daemon_addr,
            on_event=lambda event: self._on_event(name, event),
            on_connected=reconciler.engine_connected,
            on_lost=reconciler.engine_lost,
            connect_timeout=float(node.connect_timeout),
            tls=node.tls,
        )
        self.watchers[name] = watcher
        watcher.start()
        reconciler.start()

    async def unwatch(self, name: str, broadcast: bool = True) -> None:
        """Stops supervising a node; its state becomes ``disabled`` (broadcast unless
        ``broadcast`` is false, or the supervisor is stopping)."""

        reconciler = self.reconcilers.pop(name, None)
        watcher = self.watchers.pop(name, None)
        device = self.actor.flicameras.get(name)
        if device is not None and self._device_lost in device.lost_callbacks:
            device.lost_callbacks.remove(self._device_lost)
        if watcher is not None:
            await watcher.stop()
        if reconciler is not None:
            await reconciler.stop()
        status = self._statuses.setdefault(name, NodeStatus())
        changed = status.set(NodeState.DISABLED, not_managed(name))
        if broadcast and (changed or reconciler is not None):
            self.broadcast("i", nodeState=status.keyword(name))

    def wake(self, name: str) -> None:
        """Asks for a reconcile step of a node."""

        reconciler = self.reconcilers.get(name)
        if reconciler is not None:
            reconciler.wake()

    async def stop(self) -> None:
        """Stops all supervision (containers are left as they are).

        Nothing is broadcast per node: the actor is stopping, its nodes are not disabled
        (``disable`` is what broadcasts ``nodeState=<node>,disabled``).
        """

        self.running = False
        self._stopping = True
        await asyncio.gather(
            *[self.unwatch(name, broadcast=False) for name in list(self.reconcilers)],
            return_exceptions=True,
        )

    # ----------------------------------------------------------------- callbacks

    def broadcast(self, code: str, **keywords: Any) -> None:
        """Writes an unsolicited reply to every user of the actor (never raises); nothing
        once the supervisor is stopping (what ends then is only logged)."""

        if self._stopping:
            log.debug("not broadcast (stopping): %r", keywords)
            return
        try:
            self.actor.write(code, keywords)
        except Exception as err:
            log.warning("cannot write %r: %s", keywords, err)

    def _on_event(self, name: str, event: dict[str, Any]) -> None:
        actor = event.get("Actor") or {}
        attrs = actor.get("Attributes") or {}
        reconciler = self.reconcilers.get(name)
        if reconciler is None or attrs.get(LABEL_NODE, name) != name:
            return
        if attrs.get("name") != self.actor.settings.container(name):
            return
        action = str(event.get("Action") or event.get("status") or "?")
        cid = short_id(str(actor.get("ID") or event.get("id") or "")) or "NA"  # Never empty.
        value: list[Any] = [name, action, cid]
        if "exitCode" in attrs:
            value.append(int(attrs["exitCode"]) if str(attrs["exitCode"]).isdigit() else None)
        reconciler.last_event = event
        self.broadcast("i", containerEvent=value)
        if action == "die":
            reconciler.died(attrs["name"])
        if action != "kill":  # die follows kill; a start may need the device connected.
            reconciler.wake()

    def _device_lost(self, device: FlicameraDevice, reason: str) -> None:
        reconciler = self.reconcilers.get(device.name)
        if reconciler is not None:
            reconciler.wake()
