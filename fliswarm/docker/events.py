"""`EventWatcher`: the Docker event stream of one node's engine, kept subscribed and checked.

The watcher subscribes to the engine's ``/events`` (container ``die``, ``oom``, ``kill``,
``start`` and ``destroy`` of fliswarm's containers, by label) and hands each event to a
callback. While subscribed, a heartbeat (`HEARTBEAT`) asks the engine ``GET /_ping`` every
1.5 s with a 1 s timeout, on one connection kept between pings (`.engine.IDLE_REUSE`): an
event stream whose peer goes silent (network cut, node powered off: packets dropped, the
stream just stops without an error) is declared lost after two unanswered pings in a row,
within `HEARTBEAT_LIMIT` (3.5) seconds. The heartbeat is the one mechanism that notices a
silent engine (the stream has no TCP keep-alive of its own).

When the stream ends (engine stopped), breaks or the heartbeat fails, the watcher reports
the loss and subscribes again, with a back-off capped at `RESUBSCRIBE_MAX` seconds: each
attempt is a connection with a short timeout, so it is also the cheap probe that tells
within a couple of seconds when a silent or dead node answers again.

The stream comes from the engine layer (`.Engine.events`), which says the moment the
subscription is live (`on_connected`): the supervisor then inspects the node, and no event
can fall between the two.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fliswarm.docker.containers import LABEL_MANAGED
from fliswarm.docker.engine import Engine
from fliswarm.exceptions import DockerAPIError, NodeError
from fliswarm.tools import Backoff, wait_set


__all__ = ["EventWatcher", "EVENT_FILTERS", "HEARTBEAT", "HEARTBEAT_LIMIT", "RESUBSCRIBE_MAX"]

log = logging.getLogger("fliswarm.supervision")

#: The events the supervisor listens to.
EVENT_FILTERS: dict[str, list[str]] = {
    "type": ["container"],
    "label": [f"{LABEL_MANAGED}=true"],
    "event": ["die", "oom", "kill", "start", "destroy"],
}

#: The heartbeat of a live subscription: seconds between two engine pings, seconds each
#: ping may take, and how many pings in a row may fail before the link is declared lost.
#: The interval is shorter than `.engine.IDLE_REUSE`, so the pings share one connection.
HEARTBEAT = (1.5, 1.0, 2)

#: The longest a silent engine goes unnoticed: a ping interval, then the failed pings.
HEARTBEAT_LIMIT = HEARTBEAT[0] + HEARTBEAT[1] * HEARTBEAT[2]

#: The longest pause between two subscription attempts (each one also bounded by the
#: connect timeout): how soon a node that answers again is found.
RESUBSCRIBE_MAX = 1.0


class EventWatcher:
    """Keeps a subscription to the container events of one engine.

    Parameters
    ----------
    node
        The node name (for logs).
    url
        The engine address (``tcp://host:2375`` or ``unix:///path``).
    on_event
        Called with each event (the engine's JSON object).
    on_connected
        Called each time the subscription is (re)established.
    on_lost
        Called with the reason each time an established subscription ends, and once when
        the first attempts fail.
    connect_timeout
        Seconds to connect (and to get the stream's headers).
    tls
        ``{ca, cert, key}`` for a TLS engine.
    backoff
        The back-off between subscription attempts (at most `RESUBSCRIBE_MAX` s by
        default).
    heartbeat
        ``(interval, timeout, failures)`` of the heartbeat (`HEARTBEAT`).
    """

    def __init__(
        self,
        node: str,
        url: str,
        on_event: Callable[[dict[str, Any]], None],
        on_connected: Callable[[], None],
        on_lost: Callable[[str], None],
        connect_timeout: float = 2.0,
        tls: dict[str, str] | None = None,
        backoff: Backoff | None = None,
        heartbeat: tuple[float, float, int] = HEARTBEAT,
    ) -> None:
        self.node = node
        self.url = url
        self.on_event = on_event
        self.on_connected = on_connected
        self.on_lost = on_lost
        self.connect_timeout = connect_timeout
        self.tls = tls
        #: The engine the stream comes from and the heartbeat asks (its own: a stream holds
        #: a connection; the heartbeat's pings reuse one connection, see `HEARTBEAT`).
        self.engine = Engine(
            node,
            url,
            connect_timeout=connect_timeout,
            request_timeout=connect_timeout,
            tls=tls,
        )
        self.backoff = backoff or Backoff(0.25, RESUBSCRIBE_MAX, 2.0, 0.25)
        self.heartbeat = heartbeat
        #: Heartbeats that failed (each one counts, also those below the limit).
        self.missed_beats = 0
        #: Whether the subscription is live.
        self.connected = False
        #: How many times a subscription was made, and attempts that failed.
        self.subscriptions = 0
        self.failures = 0
        self._task: asyncio.Task | None = None
        self._reported_down = False
        self._poked = asyncio.Event()

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"fliswarm-events-{self.node}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        self.connected = False
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.engine.close(), 2)  # The heartbeat's connection.

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def poke(self) -> None:
        """Asks for the next subscription attempt now, without the back-off's pause (a user
        wants the node: if it answers again, it is found at once). No-op while subscribed."""

        if not self.connected:
            self._poked.set()

    async def _run(self) -> None:
        while True:
            reason = await self._subscribe_once()
            was_connected = self.connected
            self.connected = False
            if was_connected or not self._reported_down:
                self._reported_down = True
                log.info("%s: event stream lost: %s", self.node, reason)
                self.on_lost(reason)
            await wait_set(self._poked, self.backoff.next())  # Less if `poke` asks.
            self._poked.clear()

    async def _subscribe_once(self) -> str:
        """One subscription: returns why it ended (never raises but for cancellation)."""

        try:
            async with self.engine.events(
                EVENT_FILTERS, timeout=2 * self.connect_timeout + 1
            ) as events:
                self.connected = True
                self._reported_down = False
                self.subscriptions += 1
                self.backoff.reset()
                log.debug("%s: subscribed to the engine's events.", self.node)
                self.on_connected()
                reader = asyncio.ensure_future(self._read(events))
                beat = asyncio.ensure_future(self._beat())
                try:
                    await asyncio.wait({reader, beat}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in (reader, beat):
                        task.cancel()
                    await asyncio.gather(reader, beat, return_exceptions=True)
                if not reader.cancelled():
                    reader.result()  # Raises if the stream broke.
                    return "the engine closed the event stream"
                return beat.result()
        except asyncio.CancelledError:
            raise
        except NodeError as err:  # Its message says which stream and why.
            self.failures += 1
            return err.message
        except (OSError, ValueError) as err:  # From a callback.
            self.failures += 1
            text = getattr(err, "message", None) or str(err) or type(err).__name__
            return f"event stream of {self.url}: {text}"

    async def _read(self, events: AsyncIterator[dict[str, Any]]) -> None:
        async for event in events:
            self.on_event(event)

    async def _beat(self) -> str:
        """Pings the engine until `heartbeat` pings in a row fail; returns why."""

        interval, timeout, failures = self.heartbeat
        missed = 0
        while True:
            await asyncio.sleep(interval if missed == 0 else 0.0)
            try:
                await self.engine.check(timeout)
            except DockerAPIError:  # An answer, if not the expected one: the link works.
                missed = 0
            except NodeError as err:
                missed += 1
                self.missed_beats += 1
                log.debug("%s: heartbeat %d failed: %s", self.node, missed, err.message)
                if missed >= failures:
                    self.failures += 1
                    return err.message
            else:
                missed = 0
