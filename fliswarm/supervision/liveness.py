"""Liveness: a camera that is up (container running, connection open) but does not answer.

A frozen flicamera (a stuck USB call, a paused container) keeps its TCP port open: the
container runs, the connection stays up, and only a command shows that nothing answers. Every
`LivenessSettings.interval` seconds, `LivenessProbe` looks at the connected camera of a node:

- a command sent through fliswarm that got no answer within its time limit since the last
  look, or one other than an exposure in flight for longer than `LivenessSettings.timeout`
  while flicamera sent no reply line for that long, is a failed check;
- otherwise, while a command sent through fliswarm runs on the camera, nothing is sent (those
  commands have their own time limits);
- otherwise the check command (``ping``) is sent, with ``timeout`` to answer.

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
    """

    def __init__(
        self,
        name: str,
        device: Callable[[], FlicameraDevice | None],
        settings: Callable[[], LivenessSettings],
        may_check: Callable[[], bool],
        on_hung: Callable[[str], object],
    ) -> None:
        self.name = name
        self.device = device
        self.settings = settings
        self.may_check = may_check
        self.on_hung = on_hung
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
            return

        seen, self._unanswered = self._unanswered, device.unanswered
        reason: str | None = None
        if seen is not None and device.unanswered > seen:
            reason = "a command sent to it got no answer within its time limit"
        elif (late := device.overdue(settings.timeout)) is not None:
            reason = (
                f"'{late.command_string}' has had no answer for more than {settings.timeout:g} s"
            )
        elif device.busy:
            return  # Its commands have their own time limits.
        else:
            self.checks += 1
            sub = await device.run(settings.command, _DISCARD, timeout=settings.timeout)
            self._unanswered = device.unanswered  # Its own time-out is not counted twice.
            if sub.ok:
                counter.ok()
                return
            if not device.is_connected() or not self.may_check():
                counter.reset()  # The connection went, or a repair began: not a hang.
                return
            if sub.timed_out:
                reason = f"no answer to '{settings.command}' within {settings.timeout:g} s"
            else:  # It answers, even if with an error: not hung.
                counter.ok()
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
