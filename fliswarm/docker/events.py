"""`EventWatcher`: the Docker event stream of one node's engine, kept subscribed.

The watcher subscribes to the engine's ``/events`` (container ``die``, ``oom``, ``kill``,
``start`` and ``destroy`` of fliswarm's containers, by label) and hands each event to a
callback. When the stream ends (engine stopped) or breaks (network cut, node powered off:
TCP keep-alive notices a silent peer within `.engine.KEEPALIVE` seconds), it reports the loss and
subscribes again with an exponential back-off: each attempt is a connection with a short
timeout, so it is also the cheap probe that tells when a dead node is back.

The stream comes from the engine layer (`.Engine.events`), which says the moment the
subscription is live (`on_connected`): the supervisor then inspects the node, and no event
can fall between the two.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from fliswarm.docker.containers import LABEL_MANAGED
from fliswarm.docker.engine import Engine
from fliswarm.exceptions import NodeError
from fliswarm.tools import Backoff


__all__ = ["EventWatcher", "EVENT_FILTERS"]

log = logging.getLogger("fliswarm.supervision")

#: The events the supervisor listens to.
EVENT_FILTERS: dict[str, list[str]] = {
    "type": ["container"],
    "label": [f"{LABEL_MANAGED}=true"],
    "event": ["die", "oom", "kill", "start", "destroy"],
}


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
        The back-off between subscription attempts.
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
    ) -> None:
        self.node = node
        self.url = url
        self.on_event = on_event
        self.on_connected = on_connected
        self.on_lost = on_lost
        self.connect_timeout = connect_timeout
        self.tls = tls
        #: The engine the stream comes from (its own: a stream holds a connection).
        self.engine = Engine(
            node, url, connect_timeout=connect_timeout, request_timeout=connect_timeout, tls=tls
        )
        self.backoff = backoff or Backoff(0.25, 3.0, 2.0, 0.25)
        #: Whether the subscription is live.
        self.connected = False
        #: How many times a subscription was made, and attempts that failed.
        self.subscriptions = 0
        self.failures = 0
        self._task: asyncio.Task | None = None
        self._reported_down = False

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

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _run(self) -> None:
        while True:
            reason = await self._subscribe_once()
            was_connected = self.connected
            self.connected = False
            if was_connected or not self._reported_down:
                self._reported_down = True
                log.info("%s: event stream lost: %s", self.node, reason)
                self.on_lost(reason)
            await asyncio.sleep(self.backoff.next())

    async def _subscribe_once(self) -> str:
        """One subscription: returns why it ended (never raises but for cancellation)."""

        try:
            async with self.engine.events(
                EVENT_FILTERS, keepalive=True, timeout=2 * self.connect_timeout + 1
            ) as events:
                self.connected = True
                self._reported_down = False
                self.subscriptions += 1
                self.backoff.reset()
                log.debug("%s: subscribed to the engine's events.", self.node)
                self.on_connected()
                async for event in events:
                    self.on_event(event)
            return "the engine closed the event stream"
        except asyncio.CancelledError:
            raise
        except NodeError as err:  # Its message says which stream and why.
            self.failures += 1
            return err.message
        except (OSError, ValueError) as err:  # From a callback.
            self.failures += 1
            text = getattr(err, "message", None) or str(err) or type(err).__name__
            return f"event stream of {self.url}: {text}"
