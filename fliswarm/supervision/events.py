"""`EventWatcher`: the Docker event stream of one node's engine, kept subscribed.

The watcher subscribes to the engine's ``/events`` (container ``die``, ``oom``, ``kill``,
``start`` and ``destroy`` of fliswarm's containers, by label) and hands each event to a
callback. When the stream ends (engine stopped) or breaks (network cut, node powered off:
TCP keep-alive notices a silent peer within `KEEPALIVE` seconds), it reports the loss and
subscribes again with an exponential back-off: each attempt is a connection with a short
timeout, so it is also the cheap probe that tells when a dead node is back.

The stream is read with aiodocker's low-level query instead of ``docker.events.subscribe``
because the watcher must know the moment the subscription is live (`on_connected`): the
supervisor then inspects the node, and no event can fall between the two.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Callable
from typing import Any

import aiodocker
import aiohttp

from fliswarm.containers import LABEL_MANAGED
from fliswarm.engine import make_ssl_context

from .state import Backoff


__all__ = ["EventWatcher", "EVENT_FILTERS", "KEEPALIVE", "keepalive_socket", "set_keepalive"]

log = logging.getLogger("fliswarm.supervision")

#: The events the supervisor listens to.
EVENT_FILTERS: dict[str, list[str]] = {
    "type": ["container"],
    "label": [f"{LABEL_MANAGED}=true"],
    "event": ["die", "oom", "kill", "start", "destroy"],
}

#: TCP keep-alive of the event stream: idle seconds, probe interval, probes. A silent peer
#: (cable pulled, node powered off) breaks the stream after ~idle + interval * count s.
KEEPALIVE = (4, 1, 3)


def set_keepalive(sock: Any) -> None:
    """Turns on a short TCP keep-alive (`KEEPALIVE`) on a socket; never raises."""

    idle, interval, count = KEEPALIVE
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (
            ("TCP_KEEPIDLE", idle),
            ("TCP_KEEPINTVL", interval),
            ("TCP_KEEPCNT", count),
        ):
            option = getattr(socket, name, None)
            if option is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)


def keepalive_socket(addr_info: Any) -> socket.socket:
    """An aiohttp ``socket_factory``: a TCP socket with a short keep-alive."""

    sock = socket.socket(addr_info[0], addr_info[1], addr_info[2])
    set_keepalive(sock)
    return sock


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

    def _client(self) -> aiodocker.Docker:
        url = self.url
        connector: aiohttp.BaseConnector
        if url.startswith("unix://"):
            connector = aiohttp.UnixConnector(url[len("unix://") :], force_close=True)
        else:
            ssl_context = make_ssl_context(self.tls, self.node) if self.tls else None
            if ssl_context is not None and url.startswith("tcp://"):
                url = "https://" + url[len("tcp://") :]
            connector = aiohttp.TCPConnector(
                force_close=True,
                ssl=ssl_context if ssl_context else False,
                socket_factory=keepalive_socket,
            )
        timeout = aiohttp.ClientTimeout(
            total=2 * self.connect_timeout,
            connect=self.connect_timeout,
            sock_connect=self.connect_timeout,
        )
        session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        return aiodocker.Docker(url=url, connector=connector, session=session, timeout=timeout)

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
            docker = self._client()
        except (OSError, ValueError) as err:  # e.g. a missing TLS file (NodeTLSError).
            self.failures += 1
            return f"event stream of {self.url}: {err}"
        stream_timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self.connect_timeout,
            sock_connect=self.connect_timeout,
            sock_read=None,
        )
        params = {"filters": json.dumps(EVENT_FILTERS)}
        try:
            async with asyncio.timeout(2 * self.connect_timeout + 1) as deadline:
                async with docker._query(
                    "events", "GET", params=params, timeout=stream_timeout
                ) as response:
                    deadline.reschedule(None)
                    self.connected = True
                    self._reported_down = False
                    self.subscriptions += 1
                    self.backoff.reset()
                    log.debug("%s: subscribed to the engine's events.", self.node)
                    self.on_connected()
                    async for line in response.content:
                        if not line.strip():
                            continue
                        try:
                            event = json.loads(line)
                        except ValueError:
                            log.warning("%s: malformed event %r", self.node, line[:200])
                            continue
                        if isinstance(event, dict):
                            self.on_event(event)
            return "the engine closed the event stream"
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            self.failures += 1
            return f"the engine at {self.url} did not answer within {self.connect_timeout:g} s"
        except (aiodocker.DockerError, aiohttp.ClientError, OSError, ValueError) as err:
            self.failures += 1
            text = getattr(err, "message", None) or str(err) or type(err).__name__
            return f"event stream of {self.url}: {text}"
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(docker.close(), 2)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(docker.session.close(), 2)
