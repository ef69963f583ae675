"""`NodeReconciler`: observes one node and moves it towards its desired state.

One asyncio task per supervised node waits for a reason to look at the node (an engine
event, the flicamera connection dropping, the event stream coming back, or the slow
safety-net timer), then runs one idempotent `reconcile` step. Repairs go through the one
provisioning path (`fliswarm.provision`). Steps are rate-limited by an exponential back-off
with jitter that is only reset once the node has stayed healthy for
`NodeReconciler.stable_after` seconds, so a flapping node never causes a hot loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from typing import TYPE_CHECKING, Any

from fliswarm.docker.containers import auto_removed, made_by_fliswarm, short_id
from fliswarm.exceptions import NodeError, PingError
from fliswarm.provision import ProvisionError, Request
from fliswarm.provision.desired import DesiredNode, container_drift, desired_node
from fliswarm.tools import Backoff, wait_set

from .liveness import LivenessProbe
from .state import NodeState, NodeStatus, not_managed, should_restart


if TYPE_CHECKING:
    from . import Supervisor


__all__ = ["NodeReconciler", "Outcome"]

log = logging.getLogger("fliswarm.supervision")

#: What `.EventWatcher` reports when the engine ends its event stream (a dockerd stopping).
_STREAM_CLOSED = "the engine closed the event stream"

#: The ``recovering`` reasons while a repair runs.
_DOING = {
    "create": "creating the flicamera container",
    "replace": "replacing the flicamera container (it differs from the configuration)",
    "start": "starting the flicamera container",
    "connect": "connecting to flicamera",
    "restart": "restarting the flicamera container (the camera does not answer)",
}

#: Seconds the node gets to answer an ICMP echo when its engine does not answer while the
#: camera's connection still looks open (`NodeReconciler._engine_down`).
SILENT_PING = 0.5

#: How many of the last lines of a container's output go to fliswarm's log before the
#: container is restarted after a failure (crash, hang).
EVIDENCE_LINES = 50


class Outcome(enum.Enum):
    """How a reconcile step ended, which decides when the next one runs."""

    #: Observed equals desired (possibly after a repair).
    OK = "ok"
    #: A repair was made and worked.
    REPAIRED = "repaired"
    #: Not right and could not be repaired now: retry after the back-off.
    RETRY = "retry"
    #: Not right, but nothing is to be done (policy, self-healing off, disabled, busy).
    HOLD = "hold"
    #: The engine does not answer: wait for the event stream to come back.
    OFFLINE = "offline"


class NodeReconciler:
    """Supervision of one node.

    Parameters
    ----------
    supervisor
        The `.Supervisor`.
    name
        The node name.
    """

    #: Seconds a node must stay healthy before the back-off starts again from its minimum.
    stable_after: float = 10.0

    def __init__(self, supervisor: Supervisor, name: str) -> None:
        self.supervisor = supervisor
        self.actor = supervisor.actor
        self.name = name
        self.status = NodeStatus(reason="fliswarm is starting to supervise the node")
        self.backoff = Backoff(*supervisor.backoff)
        self.wake_event = asyncio.Event()
        #: Ends the back-off's hold at once (`engine_connected`).
        self._released = asyncio.Event()
        #: Reconcile steps run, and those that tried a repair.
        self.steps = 0
        self.repairs = 0
        self.last_event: dict[str, Any] | None = None
        self._not_before = 0.0
        self._last_trouble = 0.0
        self._engine_up: bool | None = None
        self._engine_reason = ""
        self._warned: str | None = None
        self._task: asyncio.Task | None = None
        self._stopping = False
        self.report = SupervisorReport(self)
        #: Why the camera was declared hung, until its container has been restarted.
        self.hung: str | None = None
        #: Why flicamera has no camera connected (liveness), while it has none.
        self.no_camera: str | None = None
        #: The container died and its output was kept (`died`), not yet repaired.
        self._died = False
        self._evidence_task: asyncio.Task[None] | None = None
        self.liveness = LivenessProbe(
            name,
            device=lambda: self.actor.flicameras.get(name),
            settings=lambda: self.actor.settings.liveness,
            may_check=self._may_check,
            on_hung=self.declare_hung,
            on_camera=self.camera_missing,
        )

    # ------------------------------------------------------------------ plumbing

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._stopping = False
            self._task = asyncio.create_task(self._loop(), name=f"fliswarm-reconcile-{self.name}")
        self.liveness.start()

    async def stop(self) -> None:
        """Ends the supervision of the node (a step in progress is cancelled)."""

        await self.liveness.stop()
        if self._evidence_task is not None:
            self._evidence_task.cancel()
        task, self._task = self._task, None
        if task is not None:
            # The flag and the wake-up end the loop even if the cancellation is lost (on
            # Python 3.11, wait_for swallows one that comes as its awaitable completes).
            self._stopping = True
            self.wake_event.set()
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    def wake(self) -> None:
        """Asks for a reconcile step as soon as the back-off allows."""

        self.wake_event.set()

    def _may_check(self) -> bool:
        """Whether the liveness of the camera is checked now: a healthy node, self-healing,
        no provisioning work, no hang being repaired."""

        return (
            self.hung is None
            and (
                self.status.state in (NodeState.ONLINE, NodeState.DRIFTED)
                or self.no_camera is not None
            )
            and self.actor.settings.self_healing
            and not self.supervisor.provisioner.busy(self.name)
        )

    def declare_hung(self, reason: str) -> None:
        """Liveness found the camera hung: the node is degraded, every command in flight to
        the camera fails at once, and the next step restarts the container."""

        self.hung = reason
        self._set(NodeState.DEGRADED, f"{reason}; fliswarm restarts its container")
        device = self.actor.flicameras.get(self.name)
        if device is not None:
            device.fail_running(f"the camera does not answer ({reason}).")
        self.wake()

    def camera_missing(self, reason: str | None) -> None:
        """Liveness: flicamera answers but has no camera connected (``reason``: the node is
        degraded, nothing is restarted), or has it (`None`: the next step says online)."""

        was, self.no_camera = self.no_camera, reason
        if reason is not None:
            if was is None:
                log.warning("%s: %s", self.name, reason)
            self._set(NodeState.DEGRADED, reason)
        elif was is not None:
            log.info("%s: flicamera has its camera again", self.name)
            self.wake()

    def died(self, container: str) -> None:
        """The container died (an engine event) outside any provisioning work: its output
        is kept at once, before the engine (restart policy) or a repair starts it again."""

        if self.supervisor.provisioner.stopping(self.name):
            return  # Provisioning stops it (restart, replace): not a failure.
        self._died = True
        previous = self._evidence_task
        if previous is None or previous.done():
            self._evidence_task = asyncio.create_task(
                self._keep_evidence(container), name=f"fliswarm-evidence-{self.name}"
            )

    def engine_connected(self) -> None:
        """The engine answers again (its event stream is live): a step at once, whatever
        the back-off of the steps that failed while it did not (reconnections are spaced by
        the watcher; the back-off still spaces repairs)."""

        self._engine_up = True
        self._not_before = 0.0
        self._released.set()
        self.wake()

    def engine_lost(self, reason: str) -> None:
        if reason == _STREAM_CLOSED:  # Say what it means for the operator.
            node = self.actor.nodes.get(self.name)
            where = f" at {node.daemon_addr}" if node is not None else ""
            reason = (
                f"Docker engine{where} closed its connection: dockerd may be stopping or "
                "restarting; fliswarm reconnects when it answers."
            )
        self._engine_up = False
        self._engine_reason = reason
        self.wake()

    def _loop_time(self) -> float:
        return asyncio.get_running_loop().time()

    async def _loop(self) -> None:
        safety = self.supervisor.safety_interval
        retry_at: float | None = 0.0  # First step at once.
        while True:
            now = self._loop_time()
            wait = safety if retry_at is None else max(0.0, retry_at - now)
            await wait_set(self.wake_event, wait)
            hold = self._not_before - self._loop_time()
            if hold > 0 and not self._stopping:  # Back-off: events meanwhile make one step.
                await wait_set(self._released, hold)  # Unless the engine is back.
            self._released.clear()
            if self._stopping:
                return
            self.wake_event.clear()
            try:
                outcome = await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:  # A bug must not end the supervision of the node.
                log.exception("%s: reconcile step failed", self.name)
                self._set(
                    NodeState.DEGRADED,
                    "internal error of the supervisor (the details are in fliswarm's log); "
                    "it tries again",
                )
                outcome = Outcome.RETRY
            retry_at = self._schedule(outcome)

    def _schedule(self, outcome: Outcome) -> float | None:
        """Sets the back-off after a step; returns when to retry unprompted (`None`: the
        safety-net interval)."""

        now = self._loop_time()
        if outcome in (Outcome.REPAIRED, Outcome.RETRY):
            if now - self._last_trouble > self.stable_after + self.backoff.peek():
                self.backoff.reset()
            self._last_trouble = now
            self._not_before = now + self.backoff.next()
            return self._not_before if outcome is Outcome.RETRY else None
        return None

    # ------------------------------------------------------------------ output

    def _set(self, state: NodeState, reason: str = "") -> None:
        if self.status.set(state, reason):
            log.info("%s: %s (%s)", self.name, state.value, reason)
            self.supervisor.broadcast("i", nodeState=self.status.keyword(self.name))

    def _warn(self, text: str) -> None:
        log.warning("%s", text)
        self.supervisor.broadcast("w", text=text)

    # ------------------------------------------------------------------ the step

    async def step(self) -> Outcome:
        """One reconcile step (none while provisioning work runs on the node)."""

        node = self.actor.nodes.get(self.name)
        if node is None or not node.enabled:
            self._set(NodeState.DISABLED, not_managed(self.name))
            return Outcome.HOLD
        if self.supervisor.provisioner.busy(self.name):  # We are woken when it is done.
            return Outcome.HOLD
        self.steps += 1
        return await self._reconcile(desired_node(self.actor.settings, self.name))

    async def _reconcile(self, desired: DesiredNode) -> Outcome:
        name = self.name
        node = self.actor.nodes[name]
        device = self.actor.flicameras[name]
        healing = desired.self_healing

        if self._engine_up is False:
            return await self._engine_down(self._engine_reason, Outcome.OFFLINE)

        try:
            async with self.supervisor.slot():
                info = await node.engine.inspect_container(desired.container)
        except NodeError as err:
            return await self._engine_down(err.message, Outcome.RETRY)

        if info is None:
            if device.is_connected():
                await device.stop()
            if not healing:
                self._set(
                    NodeState.DEGRADED,
                    f"no flicamera container, and self_healing is off: fliswarm reconnect -n "
                    f"{name} creates it",
                )
                return Outcome.HOLD
            why = f"{name}: flicamera container {desired.container} is missing; creating it."
            return await self._repair(desired, _DOING["create"], warning=why)

        if not made_by_fliswarm(info, name):
            self._set(
                NodeState.DEGRADED,
                f"a container {desired.container} not created by fliswarm is in the way: "
                f"remove it on the node (docker rm -f {desired.container}), fliswarm then "
                "creates its own",
            )
            return Outcome.HOLD

        drift = container_drift(info, desired)
        if drift and healing and desired.replace_drifted:
            why = f"{name}: container {desired.container} drifted ({drift}); replacing it."
            return await self._repair(desired, _DOING["replace"], warning=why)

        state = info.get("State") or {}
        cid = short_id(info.get("Id", ""))
        if state.get("Running") and not state.get("Restarting"):
            return await self._running(desired, info, drift)
        if state.get("Restarting"):
            self._set(NodeState.RECOVERING, "the engine is restarting the container")
            return Outcome.RETRY

        if device.is_connected():
            await device.stop()
        code, oom = state.get("ExitCode"), bool(state.get("OOMKilled"))
        how = "was OOM-killed" if oom else f"{state.get('Status', 'stopped')} (exit code {code})"
        todo = f"fliswarm reconnect -n {name} starts it"
        if not healing:
            self._set(
                NodeState.DEGRADED,
                f"the flicamera container {how}, and self_healing is off: {todo}",
            )
            return Outcome.HOLD
        if not should_restart(desired.restart_policy, code, oom):
            self._set(
                NodeState.DEGRADED,
                f"the flicamera container {how}, and restart_policy "
                f"{desired.restart_policy} does not restart it: {todo}",
            )
            return Outcome.HOLD
        why = f"{name}: flicamera container {cid} {how}; restarting it."
        evidence, self._died = not self._died, False  # Else kept when it died (`died`).
        return await self._repair(desired, _DOING["start"], warning=why, evidence=evidence)

    async def _engine_down(self, reason: str, outcome: Outcome) -> Outcome:
        """The engine does not answer: offline, unless the camera is still connected and
        the node answers an ICMP echo (a stopped or hung dockerd, a TLS problem: the camera
        works). A node that answers neither (network cut, powered off) is offline at once,
        and its camera connection, dead too but not noticed yet (its TCP keep-alive takes
        longer than the engine's heartbeat), is closed: the commands in flight on it fail at
        once, and ``talk`` says the node is offline."""

        device = self.actor.flicameras[self.name]
        if not device.is_connected():
            self._set(NodeState.OFFLINE, reason)
            return outcome
        if await self._node_answers():
            self._set(NodeState.DEGRADED, f"the camera still works; {reason}")
            return Outcome.HOLD
        self._set(NodeState.OFFLINE, reason)
        device.fail_running(
            "the connection to flicamera was lost (the node answers neither ping nor its "
            "Docker engine: is the node powered on and on the network?)."
        )
        await device.stop()
        return outcome

    async def _node_answers(self) -> bool:
        """Whether the node answers an ICMP echo within `SILENT_PING` s (`True` when it
        cannot be told: no ``ping`` program)."""

        node = self.actor.nodes[self.name]
        try:
            return await node.ping(min(SILENT_PING, node.ping_timeout))
        except PingError as err:
            log.debug("%s: cannot ping the node: %s", self.name, err)
            return True

    async def _running(
        self, desired: DesiredNode, info: dict[str, Any], drift: str | None
    ) -> Outcome:
        name = self.name
        device = self.actor.flicameras[name]
        if drift and self._warned != drift:
            self._warned = drift
            self._warn(
                f"{name}: container {desired.container} drifted ({drift}); fliswarm reconnect "
                f"--force -n {name} replaces it (or set replace_drifted: true)."
            )
        healthy = NodeState.DRIFTED if drift else NodeState.ONLINE
        reason = drift or "container running, camera connected"
        self._died = False
        if self.hung is not None and desired.self_healing:
            why = f"{name}: {self.hung}; restarting its container."
            return await self._repair(
                desired, _DOING["restart"], healthy, reason, why, restart=True, evidence=True
            )
        restart = (info.get("HostConfig") or {}).get("RestartPolicy") or {}
        # A container of 0.7 (removed when it stops) takes no restart policy: kept as it is.
        wanted = desired.engine_restart["Name"]
        policy_ok = auto_removed(info) or restart.get("Name", "no") == wanted
        if device.is_connected() and (policy_ok or not desired.self_healing):
            if self.no_camera is not None:
                self._set(NodeState.DEGRADED, self.no_camera)
            else:
                self._set(healthy, reason)
            return Outcome.OK
        if not desired.self_healing:
            self._set(
                NodeState.DEGRADED,
                f"flicamera is not connected, and self_healing is off: fliswarm reconnect -n "
                f"{name} connects it",
            )
            return Outcome.HOLD
        # Connect the camera, or only give the container its restart policy (no state change).
        doing = None if device.is_connected() else _DOING["connect"]
        return await self._repair(desired, doing, healthy, reason)

    async def _repair(
        self,
        desired: DesiredNode,
        doing: str | None,
        healthy: NodeState = NodeState.ONLINE,
        reason: str = "container running, camera connected",
        warning: str | None = None,
        restart: bool = False,
        evidence: bool = False,
    ) -> Outcome:
        """Brings the node to its desired state through the one provisioning path.

        ``doing`` is the reason of the ``recovering`` state meanwhile (none if `None`);
        ``warning`` tells every user what is being repaired; ``restart`` restarts a running
        container (a hung camera); with ``evidence`` (a repair after a failure) the last lines
        of the container's output go to fliswarm's log first. Nothing is done or said if other
        provisioning work (an operator's command) runs on the node.
        """

        provisioner = self.supervisor.provisioner
        request = Request(replace_drifted=desired.replace_drifted, restart=restart)
        async with self.supervisor.slot():
            if provisioner.busy(self.name):  # An operator got there first.
                return Outcome.HOLD
            self.repairs += 1
            if warning is not None:
                self._warn(warning)
            if evidence:
                await self._keep_evidence(desired.container)
            if doing is not None:
                self._set(NodeState.RECOVERING, doing)
            try:
                result = await provisioner.provision(self.name, request, self.report)
            except ProvisionError as err:
                reason = err.reason.rstrip(".")
                self._set(NodeState.DEGRADED, f"repair failed: {reason}; fliswarm tries again")
                self._warn(f"{self.name}: repair failed: {reason}; fliswarm tries again.")
                return Outcome.RETRY
        self.hung = None
        log.info(
            "%s: container %s %s; flicamera connected after %.2f s",
            self.name,
            short_id(result.container_id),
            result.action.value,
            result.ready_after,
        )
        self._set(healthy, reason)
        return Outcome.REPAIRED

    async def _keep_evidence(self, container: str) -> None:
        """The last lines of a failed container's output, to fliswarm's log (WARNING), and a
        warning to every user that says where they are and where the rest is."""

        name = self.name
        node = self.actor.nodes[name]
        try:
            lines = await node.engine.container_logs(container, tail=EVIDENCE_LINES)
        except NodeError as err:
            log.warning("%s: cannot read the output of %s: %s", name, container, err.message)
            return
        if lines is None:
            return
        if not lines:
            log.warning("%s: %s wrote no output before its restart.", name, container)
            return
        log.warning(
            "%s: the last %d lines of the output of %s, kept before its restart:%s",
            name,
            len(lines),
            container,
            "".join(f"\n  | {line}" for line in lines),
        )
        self._warn(
            f"{name}: the last {len(lines)} lines of flicamera's output are in fliswarm's log; "
            f"fliswarm send logs -n {name} --tail 1000 shows more."
        )


class SupervisorReport:
    """The `.Reporter` of the supervisor's repairs: the log, and warnings to every user."""

    def __init__(self, reconciler: NodeReconciler) -> None:
        self.reconciler = reconciler

    def info(self, **keywords: Any) -> None:
        log.info("%s", keywords.get("text", keywords))

    def debug(self, **keywords: Any) -> None:
        log.debug("%s", keywords.get("text", keywords))

    def warning(self, **keywords: Any) -> None:
        if "text" in keywords:
            self.reconciler._warn(str(keywords["text"]))
        else:
            log.warning("%s", keywords)
