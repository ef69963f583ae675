"""Liveness: a camera that is up (container running, connection open) but does not answer.

A frozen flicamera (a stuck USB call, a paused container) keeps its TCP port open: the
container runs, the connection stays up, and only a command shows that nothing answers. Every
`LivenessSettings.interval` seconds, `LivenessProbe` looks at the connected camera of a node:

- a command sent through fliswarm that got no answer within its time limit since the last
  look, one other than an exposure in flight for longer than `LivenessSettings.timeout`
  while flicamera sent no reply line for that long, or an exposure in flight for longer
  than its exposure time plus `LivenessSettings.readout` per image plus
  `LivenessSettings.margin` (it overran: a camera hung in an exposure), is a failed check;
- otherwise, while a command sent through fliswarm runs on the camera, nothing is sent (those
  commands have their own time limits);
- otherwise the check command (``ping``) is sent, with ``timeout`` to answer. When it
  answers, whether flicamera has its camera is looked at: its answers and broadcasts tell
  (``no cameras connected.``, ``Camera disconnected: <name>``), and ``list`` is asked when
  they have not on this connection or while the camera is missing. A camera that is not
  connected is no failed check: ``on_camera`` is called with the reason (the reconciler
  degrades the node, restarts nothing), then with `None` when it is back.

`LivenessCounter` (pure logic) counts failed checks in a row; at `LivenessSettings.failures`
the probe calls ``on_hung`` with the reason (the reconciler then degrades the node, fails the
commands in flight and restarts the container). Nothing is checked while the camera is not
connected or provisioning work runs on the node, and the count then starts again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast


if TYPE_CHECKING:
    from clu.command import BaseCommand

    from fliswarm.camera.device import FlicameraDevice
    from fliswarm.config.settings import LivenessSettings


__all__ = ["LivenessCounter", "LivenessProbe"]

log = logging.getLogger("fliswarm.supervision")


class _Discard:
    """Where the replies to a check go: nowhere (users do not see the checks)."""

    def write(self, *args: Any, **kwargs: Any) -> None:
        pass


_DISCARD = cast("BaseCommand", _Discard())


class LivenessCounter:
    """Failed checks in a row of one camera; says when it is hung (pure logic)."""

    def __init__(self, failures: int) -> None:
        self.threshold = max(1, int(failures))
        self.failures = 0
        #: Why the last check failed.
        self.last_reason = ""

    def ok(self) -> None:
        """The camera answered."""

        self.failures = 0
        self.last_reason = ""

    def failed(self, reason: str) -> bool:
        """A failed check; returns whether the camera is now declared hung (the count then
        starts again)."""

        self.failures += 1
        self.last_reason = reason
        if self.failures >= self.threshold:
            self.failures = 0
            return True
        return False

    def reset(self) -> None:
        """Nothing to check (disconnected, being provisioned): start counting again."""

        self.ok()


class LivenessProbe:
    """The liveness checks of one node's camera (one task while supervised).

    Parameters
    ----------
    name
        The node name.
    device
        Returns the node's `.FlicameraDevice` (or `None`).
    settings
        Returns the current `.LivenessSettings`.
    may_check
        Whether the camera may be checked now (supervised, self-healing, no provisioning).
    on_hung
        Called with the reason when the camera is declared hung.
    on_camera
        Called at each look that tells, with the reason when flicamera answers but has no
        camera connected, with `None` when it has one (or its connection went).
    """

    def __init__(
        self,
        name: str,
        device: Callable[[], FlicameraDevice | None],
        settings: Callable[[], LivenessSettings],
        may_check: Callable[[], bool],
        on_hung: Callable[[str], object],
        on_camera: Callable[[str | None], object] | None = None,
    ) -> None:
        self.name = name
        self.device = device
        self.settings = settings
        self.may_check = may_check
        self.on_hung = on_hung
        self.on_camera = on_camera
        self.counter = LivenessCounter(settings().failures)
        #: Checks sent, and the camera declared hung.
        self.checks = 0
        self.hangs = 0
        self._unanswered: int | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop(), name=f"fliswarm-liveness-{self.name}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except BaseException:  # noqa: S110 - ends with the task, whatever it was.
                pass

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self.look()
            except asyncio.CancelledError:
                raise
            except Exception:  # A bug must not end the checks of the node.
                log.exception("%s: liveness check failed", self.name)
            interval = self.settings().interval
            await asyncio.sleep(max(0.0, started + interval - loop.time()))

    async def look(self) -> None:
        """One look at the camera (see the module)."""

        settings = self.settings()
        counter = self.counter
        counter.threshold = max(1, settings.failures)
        device = self.device()
        if (
            not settings.enabled
            or device is None
            or not device.is_connected()
            or not self.may_check()
        ):
            counter.reset()
            self._unanswered = None
            if device is None or not device.is_connected():
                self._camera(None)  # A new connection tells again.
            return

        seen, self._unanswered = self._unanswered, device.unanswered
        reason: str | None = None
        if seen is not None and device.unanswered > seen:
            reason = "a command sent to it got no answer within its time limit"
        elif (late := device.overdue(settings.timeout)) is not None:
            reason = (
                f"'{late.command_string}' has had no answer for more than {settings.timeout:g} s"
            )
        elif (overrun := device.overrun(settings.readout, settings.margin)) is not None:
            sub, limit = overrun
            reason = (
                f"the exposure '{sub.command_string}' has run for more than {limit:g} s, "
                "its exposure time + readout + margin"
            )
        elif device.busy:
            return  # Its commands have their own time limits.
        else:
            self.checks += 1
            sub = await device.run(settings.command, _DISCARD, timeout=settings.timeout)
            self._unanswered = device.unanswered  # Its own time-out is not counted twice.
            if not sub.ok and (not device.is_connected() or not self.may_check()):
                counter.reset()  # The connection went, or a repair began: not a hang.
                return
            if sub.timed_out:
                reason = f"no answer to '{settings.command}' within {settings.timeout:g} s"
            else:  # It answers, even if with an error: not hung.
                counter.ok()
                await self._look_at_camera(device, settings)
                return

        if counter.failed(reason):
            self.hangs += 1
            self.on_hung(
                f"flicamera did not answer {counter.threshold} liveness check"
                f"{'s' if counter.threshold > 1 else ''} in a row (last: {reason})"
            )
        else:
            log.info(
                "%s: liveness check %d of %d failed: %s",
                self.name,
                counter.failures,
                counter.threshold,
                reason,
            )

    async def _look_at_camera(self, device: FlicameraDevice, settings: LivenessSettings) -> None:
        """flicamera answers: whether it has its camera. Its answers and broadcasts tell
        (`.FlicameraDevice.camera_missing`); when they have not on this connection, or while
        the camera is missing, ``list`` is asked (its ``cameras`` keyword)."""

        if not self.may_check():
            return
        if not device.camera_known or device.camera_missing is not None:
            sub = await device.run("list", _DISCARD, timeout=settings.timeout)
            if not sub.ok or not device.is_connected() or not self.may_check():
                return  # No news; the next look asks again.
        if device.camera_known:
            self._camera(device.camera_missing)

    def _camera(self, missing: str | None) -> None:
        """Reports whether flicamera has its camera (``on_camera``)."""

        if self.on_camera is not None:
            self.on_camera(missing)
