"""`SubCommand`: one command sent to a flicamera actor on behalf of a fliswarm command."""

from __future__ import annotations

import asyncio
import shlex
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    from clu.command import BaseCommand


__all__ = ["SubCommand", "wait_all", "exposure_plan", "expected_duration"]

# Options of flicamera's ``expose`` that take a value.
_EXPOSE_VALUE_OPTIONS = {"-f", "--filename", "-n", "--num", "-s", "--stack", "-c", "--count"}


def exposure_plan(args: Sequence[str]) -> tuple[float, int] | None:
    """The exposure time and the number of images read out of a flicamera exposure.

    For ``expose [CAMERAS] EXPTIME [-c COUNT] [-s STACK] ...`` it is ``(EXPTIME, COUNT *
    STACK)``, with an exposure time of zero when it cannot be parsed; `None` for any other
    command.
    """

    if not args or args[0] != "expose":
        return None
    exptime: float | None = None
    values = {"count": 1, "stack": 1}
    tokens = list(args[1:])
    while tokens:
        token = tokens.pop(0)
        option, _, inline = token.partition("=")
        if option in _EXPOSE_VALUE_OPTIONS:
            value = inline if inline else (tokens.pop(0) if tokens else "")
            name = option.lstrip("-")
            name = {"c": "count", "s": "stack"}.get(name, name)
            if name in values:
                try:
                    values[name] = max(int(value), 1)
                except ValueError:
                    pass
        elif exptime is None and not token.startswith("--"):
            try:
                exptime = float(token)
            except ValueError:
                continue
    if exptime is None or exptime != exptime or exptime < 0:  # None, NaN or negative.
        exptime = 0.0
    return exptime, values["count"] * values["stack"]


def expected_duration(args: Sequence[str]) -> float:
    """How long a flicamera command is expected to take beyond the usual, in seconds.

    For ``expose [CAMERAS] EXPTIME [-c COUNT] [-s STACK] ...`` it is ``EXPTIME * COUNT *
    STACK``; zero for any other command (or when the values cannot be parsed).
    """

    plan = exposure_plan(args)
    return 0.0 if plan is None else plan[0] * plan[1]


class SubCommand:
    """A command sent to one flicamera actor on behalf of a fliswarm command.

    Await `wait` (or the ``future``) for its end; it never raises.

    Attributes
    ----------
    node
        The node (and flicamera actor) name.
    command_id
        The id used on the flicamera connection.
    command_string
        What was sent.
    ok
        `True` if flicamera finished it with ``:``, `False` if it failed, was cut by a
        connection loss or timed out, `None` while it runs.
    error
        Why it failed, or the last error text flicamera gave (``e`` replies).
    filenames
        Every file flicamera reported with the ``filename`` keyword, in order.
    started
        When it was made (`time.monotonic`).
    timed_out
        Whether it ended because no answer came within its time limit.
    """

    __slots__ = (
        "node",
        "command_id",
        "command_string",
        "parent",
        "future",
        "ok",
        "error",
        "filenames",
        "started",
        "timed_out",
        "_listeners",
    )

    def __init__(
        self, node: str, command_id: int, command_string: str, parent: BaseCommand | None
    ):
        self.node = node
        self.command_id = command_id
        self.command_string = command_string
        self.parent = parent
        self.future: asyncio.Future[SubCommand] = asyncio.get_running_loop().create_future()
        self.started = time.monotonic()
        self.timed_out = False
        self.ok: bool | None = None
        self.error: str | None = None
        self.filenames: list[str] = []
        self._listeners: list[Callable[[SubCommand], object]] | None = None

    @property
    def done(self) -> bool:
        return self.future.done()

    def _finish(self, ok: bool, error: str | None = None) -> None:
        if self.future.done():
            return
        self.ok = ok
        if error is not None:
            self.error = error
        self.future.set_result(self)
        listeners, self._listeners = self._listeners, None
        for listener in listeners or ():
            listener(self)

    def _time_out(self, timeout: float | None) -> None:
        """Fails it: no answer came within ``timeout`` seconds."""

        if not self.future.done():
            self.timed_out = True
            self._finish(False, f"no answer from {self.node} after {timeout:g} s.")

    @property
    def is_exposure(self) -> bool:
        """Whether the command is a flicamera exposure (``expose ...``)."""

        return self.command_string.split(maxsplit=1)[:1] == ["expose"]

    def overrun_limit(self, readout: float, margin: float) -> float | None:
        """For an exposure, the seconds after which it has overrun: its exposure time plus
        ``readout`` per image plus ``margin``; `None` for any other command."""

        if not self.is_exposure:
            return None
        try:
            args = shlex.split(self.command_string)
        except ValueError:
            args = self.command_string.split()
        plan = exposure_plan(args)
        if plan is None:
            return None
        exptime, images = plan
        return exptime * images + readout * images + margin

    def add_listener(self, listener: Callable[[SubCommand], object]) -> None:
        """Calls ``listener(self)`` as soon as the sub-command ends (at once if it has).

        Unlike ``future.add_done_callback``, the call is not deferred to the next iteration
        of the event loop.
        """

        if self.future.done():
            listener(self)
        elif self._listeners is None:
            self._listeners = [listener]
        else:
            self._listeners.append(listener)

    async def wait(self, timeout: float | None = None) -> SubCommand:
        """Waits until the sub-command ends, at most ``timeout`` seconds (then it fails)."""

        try:
            await asyncio.wait_for(asyncio.shield(self.future), timeout)
        except asyncio.TimeoutError:
            self._time_out(timeout)
        return self

    def __repr__(self) -> str:
        return f"<SubCommand {self.node}#{self.command_id} {self.command_string!r} ok={self.ok}>"


async def wait_all(subs: Sequence[SubCommand], timeout: float | None = None) -> None:
    """Waits until every sub-command has ended, at most ``timeout`` seconds in all; those
    still running then fail as `SubCommand.wait` fails them. Never raises (but cancellation).

    The waiting task wakes up in the loop iteration after the last sub-command ended (one
    future, no intermediate callbacks).
    """

    running = [sub for sub in subs if not sub.future.done()]
    if not running:
        return
    loop = asyncio.get_running_loop()
    all_done: asyncio.Future[None] = loop.create_future()
    left = [len(running)]

    def ended(sub: SubCommand) -> None:
        left[0] -= 1
        if left[0] == 0:
            release()

    def release() -> None:
        if not all_done.done():
            all_done.set_result(None)

    for sub in running:
        sub.add_listener(ended)
    timer = None
    if timeout is not None:
        timer = loop.call_later(timeout, release)
    try:
        await all_done
    finally:
        if timer is not None:
            timer.cancel()
    for sub in subs:
        sub._time_out(timeout)
