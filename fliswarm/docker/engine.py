"""A thin layer over aiodocker: one Docker engine, every call bounded and typed.

The only module of the actor that uses aiodocker (and aiohttp). `Engine` owns an
`aiodocker.Docker` client for one node. Each call:

- runs under ``asyncio.wait_for`` (connect timeout + request timeout, or the given one),
  on top of the aiohttp connect/read timeouts, so a node whose packets vanish fails the
  call in bounded time;
- turns aiodocker/aiohttp errors into `.NodeTimeoutError`, `.NodeUnreachableError`,
  `.NodeTLSError` or `.DockerAPIError`;
- uses a fresh TCP connection (no keep-alive pool), so a restarted or power-cycled
  engine never leaves a stale pooled connection behind; after a connection error the
  whole client session is also re-created.

Calls go through aiodocker's public API and return the engine's JSON as plain dicts. The
few Engine API calls aiodocker 0.27 has no public method for go through `_gap` (and only
those; each use says which public call is missing): the engine's ``/_ping``, a container's
restart-policy update, the plugin list, a volume creation that returns the created volume,
and an event subscription that says when it is live (`Engine.events`).

Engines share nothing: calls on different nodes run fully concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import aiodocker
import aiohttp
from aiodocker.containers import DockerContainer
from aiodocker.volumes import DockerVolume

from fliswarm.docker.tls import make_ssl_context, tls_reason
from fliswarm.exceptions import (
    DockerAPIError,
    NodeError,
    NodeTimeoutError,
    NodeTLSError,
    NodeUnreachableError,
)


__all__ = ["Engine", "make_ssl_context", "KEEPALIVE", "set_keepalive", "keepalive_socket"]

log = logging.getLogger("fliswarm.docker.engine")

T = TypeVar("T")

#: aiodocker's status code for "cannot connect to the engine".
_NO_CONNECTION = 900

#: TCP keep-alive of long-lived connections (the event stream, flicamera): idle seconds,
#: probe interval, probes. A silent peer (cable pulled, node powered off) breaks the
#: connection after ~idle + interval * count s.
KEEPALIVE = (2, 1, 2)

#: The fields of a container in the engine's container list (``ContainerSummary`` of the
#: Engine API): aiodocker's `DockerContainer` gives them by key only.
_SUMMARY_FIELDS = (
    "Id",
    "Names",
    "Image",
    "ImageID",
    "ImageManifestDescriptor",
    "Command",
    "Created",
    "Ports",
    "SizeRw",
    "SizeRootFs",
    "Labels",
    "State",
    "Status",
    "HostConfig",
    "NetworkSettings",
    "Mounts",
    "Health",
)


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


def _gap(
    docker: aiodocker.Docker, path: str, method: str = "GET", **kwargs: Any
) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
    """One raw Engine API request, for the calls aiodocker 0.27 has no public method for.

    aiodocker's own request primitive (private): HTTP errors raise `aiodocker.DockerError`
    like its public calls. Nothing else in fliswarm uses it; each caller says which public
    call is missing.
    """

    return docker._query(path, method, **kwargs)


def _summary(container: DockerContainer) -> dict[str, Any]:
    """A listed container as the engine's dict (no request: the list answer holds it)."""

    return {key: container[key] for key in _SUMMARY_FIELDS if key in container}


class Engine:
    """The Docker engine of one node.

    Parameters
    ----------
    node
        The node name, for error messages.
    url
        The engine address (``tcp://host:2375``, ``unix:///path``).
    connect_timeout
        Seconds to establish a connection.
    request_timeout
        Seconds for a request once connected.
    ssl_context
        For a TLS engine (the ``tcp://`` URL is then used as ``https://``).
    tls
        ``{ca, cert, key}`` file paths: the SSL context is made from them on first use (a
        file problem then fails the call with `.NodeTLSError`, and the next call tries
        again). With TLS, the engine is never tried over plain TCP.
    """

    def __init__(
        self,
        node: str,
        url: str,
        connect_timeout: float = 2.0,
        request_timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
        tls: Mapping[str, str] | None = None,
    ) -> None:
        self.node = node
        self.url = url
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.ssl_context = ssl_context
        self.tls = dict(tls) if tls else None
        #: Why the last call failed (`None` after a success), for status and messages.
        self.last_failure: NodeError | None = None
        self._docker: aiodocker.Docker | None = None

    def _timeouts(self) -> aiohttp.ClientTimeout:
        """The aiohttp time limits of one request (the client's, and of stop and remove)."""

        return aiohttp.ClientTimeout(
            total=self.connect_timeout + self.request_timeout,
            connect=self.connect_timeout,
            sock_connect=self.connect_timeout,
        )

    def _new_client(
        self, ssl_context: ssl.SSLContext | None, keepalive: bool = False
    ) -> aiodocker.Docker:
        """A client with its own session: one connection per request (``force_close``)."""

        url = self.url
        if ssl_context is not None and url.startswith("tcp://"):
            url = "https://" + url[len("tcp://") :]
        connector: aiohttp.BaseConnector
        if url.startswith("unix://"):
            connector = aiohttp.UnixConnector(url[len("unix://") :], force_close=True)
        elif keepalive:
            connector = aiohttp.TCPConnector(
                force_close=True,
                ssl=ssl_context if ssl_context else False,
                socket_factory=keepalive_socket,
            )
        else:
            connector = aiohttp.TCPConnector(
                force_close=True, ssl=ssl_context if ssl_context else False
            )
        timeout = self._timeouts()
        session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        return aiodocker.Docker(url=url, connector=connector, session=session, timeout=timeout)

    def _client(self) -> aiodocker.Docker:
        if self._docker is None:
            if self.ssl_context is None and self.tls:
                self.ssl_context = make_ssl_context(self.tls, self.node)
            self._docker = self._new_client(self.ssl_context)
        return self._docker

    @staticmethod
    async def _close_client(docker: aiodocker.Docker) -> None:
        try:
            await docker.close()
        finally:
            await docker.session.close()  # Ours (aiodocker leaves a given session open).

    async def close(self) -> None:
        """Closes the client session (a later call opens a new one)."""

        docker, self._docker = self._docker, None
        if docker is not None:
            await self._close_client(docker)

    def _translate(self, err: BaseException, what: str, timeout: float) -> NodeError:
        if isinstance(err, NodeError):
            return err
        if isinstance(err, asyncio.TimeoutError):
            connect_error = getattr(aiohttp, "ConnectionTimeoutError", None)
            if connect_error is not None and isinstance(err, connect_error):
                return NodeTimeoutError(
                    self.node,
                    f"cannot connect to the Docker engine at {self.url} ({what})",
                    self.connect_timeout,
                )
            return NodeTimeoutError(self.node, f"Docker engine at {self.url}: {what}", timeout)
        reason = tls_reason(err, self.url)
        if reason is not None:
            end = "" if reason.endswith("?") else "."
            return NodeTLSError(self.node, f"Docker engine at {self.url} ({what}): {reason}{end}")
        if isinstance(err, aiodocker.DockerError):
            if err.status == _NO_CONNECTION:
                return NodeUnreachableError(
                    self.node, f"cannot connect to the Docker engine at {self.url} ({what})"
                )
            message = str(err.message).strip()
            if err.status == 400 and "HTTPS server" in message:
                message += " (this engine requires TLS: configure docker-tls for the node)"
            return DockerAPIError(self.node, err.status, message)
        if isinstance(err, (aiohttp.ClientError, OSError)):
            return NodeUnreachableError(
                self.node, f"connection to the Docker engine at {self.url} failed ({what}): {err}"
            )
        raise err

    async def call(
        self,
        what: str,
        fn: Callable[[aiodocker.Docker], Awaitable[T]],
        timeout: float | None = None,
    ) -> T:
        """Runs ``fn(docker)`` with a timeout and typed errors.

        Parameters
        ----------
        what
            What is being done, for the error messages.
        fn
            A function of the aiodocker client returning an awaitable.
        timeout
            Seconds for the whole call; defaults to connect + request timeouts.
        """

        limit = timeout if timeout is not None else self.connect_timeout + self.request_timeout
        try:
            result = await asyncio.wait_for(fn(self._client()), limit)
        except NodeError as err:  # e.g. the TLS files (make_ssl_context).
            self.last_failure = err
            raise
        except (asyncio.TimeoutError, aiodocker.DockerError, aiohttp.ClientError, OSError) as err:
            error = self._translate(err, what, limit)
            self.last_failure = error
            if isinstance(error, (NodeUnreachableError, NodeTimeoutError)):
                await self.close()
            raise error from err
        self.last_failure = None
        return result

    @property
    def last_error(self) -> str | None:
        """The message of `last_failure`."""

        return self.last_failure.message if self.last_failure is not None else None

    async def get_or_none(
        self, what: str, fn: Callable[[aiodocker.Docker], Awaitable[T]]
    ) -> T | None:
        """`call` returning `None` for a 404 (no such object)."""

        try:
            return await self.call(what, fn)
        except DockerAPIError as err:
            if err.status == 404:
                return None
            raise

    # Engine

    async def ping(self, timeout: float | None = None) -> bool:
        """``GET /_ping``: whether the engine answers within ``timeout`` (never raises)."""

        async def _ping(docker: aiodocker.Docker) -> bool:
            # No public ping (docker.version() asks the engine for more, after an API version
            # negotiation on a fresh session).
            async with _gap(docker, "_ping", versioned_api=False) as response:
                return response.status == 200 and (await response.text()) == "OK"

        try:
            return await self.call("ping", _ping, timeout or self.connect_timeout)
        except NodeError:
            return False

    async def info(self) -> dict[str, Any]:
        """``GET /info``."""

        return await self.call("info", lambda d: _as_dict(d.system.info()))

    async def list_plugins(self) -> list[dict[str, Any]]:
        """``GET /plugins``: the engine's managed plugins."""

        async def _plugins(docker: aiodocker.Docker) -> Any:
            async with _gap(docker, "plugins") as response:  # No public plugin list.
                return await response.json()

        return list(await self.call("list plugins", _plugins) or [])

    # Containers

    async def list_containers(
        self, filters: dict[str, list[str]], all: bool = True
    ) -> list[dict[str, Any]]:
        """``GET /containers/json`` with filters, as raw dicts."""

        async def _list(docker: aiodocker.Docker) -> list[dict[str, Any]]:
            listed = await docker.containers.list(all=all, filters=json.dumps(filters))
            return [_summary(container) for container in listed]

        return await self.call("list containers", _list)

    async def inspect_container(self, name: str) -> dict[str, Any] | None:
        """Container inspect, or `None` if there is no such container."""

        return await self.get_or_none(
            f"inspect container {name}", lambda d: d.containers.container(name).show()
        )

    async def create_container(self, name: str, body: dict[str, Any]) -> str:
        """Creates a container and returns its id."""

        container = await self.call(
            f"create container {name}", lambda d: d.containers.create(body, name=name)
        )
        return str(container.id)

    async def start_container(self, cid: str) -> None:
        await self.call(
            f"start container {cid[:12]}", lambda d: d.containers.container(cid).start()
        )

    async def update_restart_policy(self, cid: str, policy: Mapping[str, Any]) -> None:
        """Sets the engine's restart policy of a container (``{"Name": "unless-stopped"}``)."""

        async def _update(docker: aiodocker.Docker) -> None:
            data = json.dumps({"RestartPolicy": dict(policy)})
            # No public container update.
            async with _gap(docker, f"containers/{cid}/update", "POST", data=data) as response:
                await response.read()

        await self.call(f"update container {cid[:12]}", _update)

    async def stop_container(self, cid: str, grace: float) -> None:
        """Stops a container (SIGTERM, SIGKILL after ``grace`` seconds)."""

        t = max(0, int(grace))
        try:
            await self.call(
                f"stop container {cid[:12]}",
                lambda d: d.containers.container(cid).stop(t=t, timeout=self._timeouts()),
                timeout=self.connect_timeout + self.request_timeout + t,
            )
        except DockerAPIError as err:
            if err.status not in (304, 404):  # already stopped / gone
                raise

    async def remove_container(self, cid: str) -> None:
        """Force-removes a container (never its volumes); a missing one is fine."""

        try:
            await self.call(
                f"remove container {cid[:12]}",
                lambda d: d.containers.container(cid).delete(force=True, timeout=self._timeouts()),
            )
        except DockerAPIError as err:
            if err.status != 404:
                raise

    # Volumes

    async def inspect_volume(self, name: str) -> dict[str, Any] | None:
        return await self.get_or_none(
            f"inspect volume {name}", lambda d: DockerVolume(d, name).show()
        )

    async def list_volumes(self) -> list[dict[str, Any]]:
        data = await self.call("list volumes", lambda d: d.volumes.list())
        return list(data.get("Volumes") or [])

    async def create_volume(self, body: dict[str, Any]) -> dict[str, Any]:
        async def _create(docker: aiodocker.Docker) -> Any:
            # docker.volumes.create() returns the name only: the volume would cost a second GET.
            async with _gap(docker, "volumes/create", "POST", data=json.dumps(body)) as response:
                return await response.json()

        return await self.call(f"create volume {body.get('Name')}", _create)

    async def remove_volume(self, name: str) -> None:
        await self.call(f"remove volume {name}", lambda d: DockerVolume(d, name).delete())

    # Images

    async def inspect_image(self, ref: str) -> dict[str, Any] | None:
        return await self.get_or_none(f"inspect image {ref}", lambda d: d.images.inspect(ref))

    async def pull_image(self, ref: str) -> AsyncIterator[dict[str, Any]]:
        """Pulls an image, yielding the engine's progress messages.

        The caller bounds the whole pull (e.g. with ``asyncio.wait_for``). An error
        reported in the stream raises `.DockerAPIError` with status 0.
        """

        name, tag = _split_tag(ref)
        try:
            client = self._client()
            # No read timeout (aiodocker's default for pulls): the caller bounds the pull.
            async for item in client.images.pull(name, tag=tag, stream=True):
                yield item
        except (aiodocker.DockerError, aiohttp.ClientError, OSError) as err:
            error = self._translate(err, f"pull {ref}", self.request_timeout)
            if isinstance(error, NodeUnreachableError):
                await self.close()
            raise error from err

    # Events

    @contextlib.asynccontextmanager
    async def events(
        self,
        filters: Mapping[str, list[str]],
        keepalive: bool = True,
        timeout: float | None = None,
    ) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """Subscribes to the engine's events (``GET /events``)::

            async with engine.events({"type": ["container"]}) as events:
                ...  # The subscription is live: no event from now on is missed.
                async for event in events:
                    ...

        The context is entered once the engine has answered, and gives the events as
        dicts (blank and malformed lines are skipped) until the engine ends the stream.
        The stream has its own client session (TLS files read again), closed on exit, and
        no read timeout; with ``keepalive`` its connection has a short TCP keep-alive
        (`KEEPALIVE`), so that a silent peer breaks it.

        Parameters
        ----------
        filters
            The engine's event filters (``{"type": ["container"], "label": [...]}``).
        keepalive
            Whether to turn on the short TCP keep-alive.
        timeout
            Seconds to subscribe (connect and get the answer); defaults to connect +
            request timeouts.

        Raises
        ------
        NodeError
            `.NodeTimeoutError` if the engine does not answer in time, `.NodeTLSError`,
            `.NodeUnreachableError` or `.DockerAPIError` if the subscription fails or the
            stream breaks; the message says which stream (``event stream of <url>: ...``).
        """

        limit = timeout if timeout is not None else self.connect_timeout + self.request_timeout
        try:
            ssl_context = make_ssl_context(self.tls, self.node) if self.tls else self.ssl_context
            docker = self._new_client(ssl_context, keepalive)
        except (OSError, ValueError) as err:  # e.g. a missing TLS file (NodeTLSError).
            kind = NodeTLSError if isinstance(err, NodeTLSError) else NodeUnreachableError
            raise kind(self.node, f"event stream of {self.url}: {err}") from err
        stream_timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self.connect_timeout,
            sock_connect=self.connect_timeout,
            sock_read=None,
        )
        params = {"filters": json.dumps(filters)}
        events: AsyncGenerator[dict[str, Any], None] | None = None
        try:
            async with contextlib.AsyncExitStack() as stack:
                try:
                    async with asyncio.timeout(limit):
                        # docker.events.subscribe() does not say when the subscription is live.
                        query = _gap(docker, "events", params=params, timeout=stream_timeout)
                        response = await stack.enter_async_context(query)
                except TimeoutError as err:
                    raise self._stream_timeout() from err
                except (aiodocker.DockerError, aiohttp.ClientError, OSError, ValueError) as err:
                    raise self._stream_error(err) from err
                stack.callback(response.close)
                events = self._decode_events(response)
                yield events
        finally:
            if events is not None:
                with contextlib.suppress(Exception):
                    await events.aclose()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._close_client(docker), 2)

    async def _decode_events(
        self, response: aiohttp.ClientResponse
    ) -> AsyncGenerator[dict[str, Any], None]:
        try:
            async for line in response.content:
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    log.warning("%s: malformed event %r", self.node, line[:200])
                    continue
                if isinstance(event, dict):
                    yield event
        except TimeoutError as err:
            raise self._stream_timeout() from err
        except (aiohttp.ClientError, OSError, ValueError) as err:
            raise self._stream_error(err) from err

    def _stream_timeout(self) -> NodeTimeoutError:
        return NodeTimeoutError(
            self.node,
            f"the engine at {self.url} did not answer within {self.connect_timeout:g} s",
        )

    def _stream_error(self, err: BaseException) -> NodeError:
        """An error of the event stream, typed, with the engine's or aiohttp's text."""

        text = getattr(err, "message", None) or str(err) or type(err).__name__
        message = f"event stream of {self.url}: {text}"
        if isinstance(err, aiodocker.DockerError) and err.status != _NO_CONNECTION:
            return DockerAPIError(self.node, err.status, message)
        if tls_reason(err, self.url) is not None:
            return NodeTLSError(self.node, message)
        return NodeUnreachableError(self.node, message)


async def _as_dict(awaitable: Awaitable[Mapping[str, Any]]) -> dict[str, Any]:
    """The JSON object an aiodocker call typed as a `Mapping` returns (already a dict)."""

    data = await awaitable
    return data if isinstance(data, dict) else dict(data)


def _split_tag(ref: str) -> tuple[str, str]:
    """Splits ``host:5000/repo/name:tag`` into name and tag (``latest`` by default)."""

    if "@" in ref:
        name, digest = ref.split("@", 1)
        return name, digest
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = ref.rsplit(":", 1)
        return name, tag
    return ref, "latest"
