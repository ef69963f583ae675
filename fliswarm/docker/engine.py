"""A thin layer over aiodocker: one Docker engine, every call bounded and typed.

The only module of the actor that uses aiodocker (and aiohttp). `Engine` owns an
`aiodocker.Docker` client for one node. Each call:

- runs under ``asyncio.wait_for`` (connect timeout + request timeout, or the given one),
  on top of the aiohttp connect/read timeouts, so a node whose packets vanish fails the
  call in bounded time;
- turns aiodocker/aiohttp errors into `.NodeTimeoutError`, `.NodeUnreachableError`,
  `.NodeTLSError` or `.DockerAPIError`, whose message is for operators: the engine, what
  happened, what to check (``Docker engine at tcp://10.1.2.11:2375 is not answering:
  connection refused (check that dockerd runs on the node and listens on that port).``);
  the library's own error goes to this module's log. A TLS engine that drops a connection
  without a TLS error is asked once more whether it refuses fliswarm's certificate
  (`.tls.refusal_reason`);
- reuses an HTTP connection only while it has been idle less than `IDLE_REUSE` seconds
  (the calls of one command, such as ``status``'s lists and inspects): a restarted engine
  closes its connections, and a power-cycled one cannot come back within that time, so
  no call meets a stale connection. A call on a kept connection to a node just powered
  off or cut off fails after the connect timeout, as on a new connection (the socket's
  ``TCP_USER_TIMEOUT``). After a connection error the whole client session is re-created.
  The heartbeat of `.events.EventWatcher` pings more often than that, so its pings share
  one connection.

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
import errno
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

from fliswarm.docker.tls import make_ssl_context, refusal_reason, tls_reason
from fliswarm.exceptions import (
    DockerAPIError,
    NodeError,
    NodeTimeoutError,
    NodeTLSError,
    NodeUnreachableError,
)


__all__ = [
    "Engine",
    "make_ssl_context",
    "KEEPALIVE",
    "set_keepalive",
    "connection_problem",
]

log = logging.getLogger("fliswarm.docker.engine")

T = TypeVar("T")

#: aiodocker's status code for "cannot connect to the engine".
_NO_CONNECTION = 900

#: TCP keep-alive of the flicamera connections (`set_keepalive`): idle seconds, probe
#: interval, probes. A silent peer (cable pulled, node powered off) breaks the connection
#: after ~idle + interval * count s. The engine's event stream has none: the heartbeat of
#: `.events.EventWatcher` (engine pings) notices a silent engine sooner.
KEEPALIVE = (2, 1, 2)

#: Seconds an idle HTTP connection to an engine is kept for the next call (aiohttp's
#: ``keepalive_timeout``). Far shorter than any power cycle (see the module). Each call on
#: a kept connection saves the TCP connection set-up: about a fifth of ``status``'s time
#: with every node up, and a third of the heartbeat's CPU (`.events.HEARTBEAT`).
IDLE_REUSE = 2.0

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


#: What a connection error means, in plain words, by kind (`connection_problem`).
_ERRNO_KINDS = {
    errno.ECONNREFUSED: ("refused", "connection refused"),
    errno.EHOSTUNREACH: ("unreachable", "no route to the node"),
    errno.EHOSTDOWN: ("unreachable", "the node is down"),
    errno.ENETUNREACH: ("unreachable", "no route to the node's network"),
    errno.ETIMEDOUT: ("timeout", "the connection timed out"),
    errno.ECONNRESET: ("reset", "the connection was reset"),
    errno.ECONNABORTED: ("reset", "the connection was aborted"),
    errno.EPIPE: ("reset", "the connection was closed while sending"),
}

#: What to check, for each kind of problem with a node's Docker engine.
_ENGINE_HINTS = {
    "refused": "check that dockerd runs on the node and listens on that port",
    "unreachable": "check that the node is powered on and on the network",
    "timeout": "check that the node is powered on and on the network",
    "reset": "dockerd may be stopping or restarting",
    "closed": "dockerd may be stopping or restarting",
    "dns": "check the node's host (or docker-client) in the configuration",
    "other": "fliswarm's log has the details",
}


def _chain(err: BaseException) -> list[BaseException]:
    """The error and those behind it (causes, contexts, aiohttp's ``os_error``)."""

    seen: list[BaseException] = []
    todo = [err]
    while todo:
        item = todo.pop(0)
        if any(item is other for other in seen):
            continue
        seen.append(item)
        for name in ("os_error", "__cause__", "__context__"):
            inner = getattr(item, name, None)
            if isinstance(inner, BaseException):
                todo.append(inner)
    return seen


def connection_problem(err: BaseException) -> tuple[str, str]:
    """What a connection error means, without Python's or aiohttp's decoration.

    Returns
    -------
    tuple
        ``(kind, words)``: kind is one of ``refused``, ``unreachable``, ``timeout``,
        ``reset``, ``closed`` (the peer closed the connection without an answer), ``dns``
        and ``other``; words say it plainly (``"connection refused"``).
    """

    chain = _chain(err)
    for item in chain:
        if isinstance(item, socket.gaierror):
            return "dns", "unknown host name"
        code = getattr(item, "errno", None)
        if isinstance(code, int) and code in _ERRNO_KINDS:
            return _ERRNO_KINDS[code]
    for item in chain:
        if isinstance(item, aiohttp.ServerDisconnectedError):
            return "closed", "the connection was closed without an answer"
        if isinstance(item, aiohttp.ClientPayloadError):
            # aiohttp keeps the socket's error only in the text (``... . TimeoutError(110,
            # 'Connection timed out')``): a silent peer (TCP keep-alive) or a reset.
            text = str(item)
            if "TimeoutError(" in text or "timed out" in text:
                return "timeout", "the connection timed out"
            if "ConnectionResetError(" in text or "reset by peer" in text:
                return "reset", "the connection was reset"
            return "closed", "the connection broke during the answer"
        if isinstance(item, (asyncio.TimeoutError, socket.timeout)):
            return "timeout", "no answer in time"
    for item in chain:
        strerror = getattr(item, "strerror", None)
        if isinstance(item, OSError) and isinstance(strerror, str) and strerror:
            return "other", strerror[0].lower() + strerror[1:]
    return "other", "the connection failed"


def _dropped(err: BaseException) -> bool:
    """Whether a connection was made, then dropped by the engine without an answer."""

    for item in _chain(err):
        if isinstance(item, aiohttp.ClientConnectorError):
            return False  # No connection was made.
    return connection_problem(err)[0] in ("reset", "closed")


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
        #: Manifest digests found by image inspects, by (image id, repository): an image id's
        #: digest in a repository never changes, so `status` inspects each image once.
        self.image_digests: dict[tuple[str, str], str] = {}
        self._docker: aiodocker.Docker | None = None
        #: Calls in flight per client (by id), and clients to close once no call uses them.
        self._in_use: dict[int, int] = {}
        self._retired: dict[int, aiodocker.Docker] = {}

    def _timeouts(self) -> aiohttp.ClientTimeout:
        """The aiohttp time limits of one request (the client's, and of stop and remove)."""

        return aiohttp.ClientTimeout(
            total=self.connect_timeout + self.request_timeout,
            connect=self.connect_timeout,
            sock_connect=self.connect_timeout,
        )

    def _new_client(self, ssl_context: ssl.SSLContext | None) -> aiodocker.Docker:
        """A client with its own session, idle connections kept `IDLE_REUSE` seconds."""

        url = self.url
        if ssl_context is not None and url.startswith("tcp://"):
            url = "https://" + url[len("tcp://") :]
        connector: aiohttp.BaseConnector
        if url.startswith("unix://"):
            connector = aiohttp.UnixConnector(url[len("unix://") :], keepalive_timeout=IDLE_REUSE)
        else:
            connector = aiohttp.TCPConnector(
                ssl=ssl_context if ssl_context else False,
                socket_factory=self._socket,
                keepalive_timeout=IDLE_REUSE,
            )
        timeout = self._timeouts()
        session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        return aiodocker.Docker(url=url, connector=connector, session=session, timeout=timeout)

    def _socket(self, addr_info: tuple[Any, ...]) -> socket.socket:
        """A socket for a connection to the engine that gives up when data it sent stays
        unacknowledged ``connect_timeout`` seconds (``TCP_USER_TIMEOUT``): a call on a kept
        connection to a node that was just powered off or cut off fails as soon as a new
        connection would, not after the whole request timeout."""

        family, kind, proto = addr_info[:3]
        sock = socket.socket(family, kind, proto)
        option = getattr(socket, "TCP_USER_TIMEOUT", None)
        if option is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, option, int(self.connect_timeout * 1000))
        return sock

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
        """Closes the client sessions (a later call opens a new one); calls in flight fail."""

        docker, self._docker = self._docker, None
        retired, self._retired = list(self._retired.values()), {}
        for client in [docker, *retired]:
            if client is not None:
                await self._close_client(client)

    @contextlib.asynccontextmanager
    async def _using(self) -> AsyncIterator[aiodocker.Docker]:
        """The client, for one call. A call that fails with a connection error retires it
        (`_retire`): it is closed when the last call using it ends, never under another."""

        docker = self._client()
        key = id(docker)
        self._in_use[key] = self._in_use.get(key, 0) + 1
        try:
            yield docker
        finally:
            left = self._in_use.pop(key) - 1
            if left:
                self._in_use[key] = left
            elif key in self._retired:
                del self._retired[key]
                with contextlib.suppress(Exception):
                    await self._close_client(docker)

    def _retire(self, docker: aiodocker.Docker) -> None:
        """After a connection error: later calls get a new client; this one is closed once
        the calls using it have ended (closing it now would fail them with "Session is
        closed" or "Connector is closed", and lose their own reason)."""

        if self._docker is docker:
            self._docker = None
            self._retired[id(docker)] = docker

    def _translate(self, err: BaseException, what: str, timeout: float) -> NodeError:
        """A typed error with a message for operators: the engine, what happened, what to
        check; the library's own text goes to the log."""

        if isinstance(err, NodeError):
            return err
        if not isinstance(err, aiodocker.DockerError) or err.status == _NO_CONNECTION:
            log.info("%s: %s on %s failed: %r", self.node, what, self.url, err)
        if isinstance(err, asyncio.TimeoutError):
            connect_error = getattr(aiohttp, "ConnectionTimeoutError", None)
            if connect_error is not None and isinstance(err, connect_error):
                timeout = self.connect_timeout
            hint = _ENGINE_HINTS["timeout"] + ", and that dockerd is not hung"
            error = NodeTimeoutError(
                self.node,
                f"Docker engine at {self.url} is not answering: no answer within "
                f"{timeout:g} s ({hint}).",
            )
            error.timeout = timeout
            return error
        reason = tls_reason(err, self.url)
        if reason is not None:
            return self._tls_error(reason)
        if isinstance(err, aiodocker.DockerError) and err.status != _NO_CONNECTION:
            message = str(err.message).strip()
            if err.status == 400 and "HTTPS server" in message:
                message += " (this engine requires TLS: configure docker-tls for the node)"
            return DockerAPIError(self.node, err.status, message)
        if isinstance(err, (aiodocker.DockerError, aiohttp.ClientError, OSError)):
            kind, words = connection_problem(err)
            return NodeUnreachableError(
                self.node,
                f"Docker engine at {self.url} is not answering: {words} ({_ENGINE_HINTS[kind]}).",
            )
        raise err

    def _tls_error(self, reason: str) -> NodeTLSError:
        end = "" if reason.endswith("?") else "."
        return NodeTLSError(self.node, f"Docker engine at {self.url}: {reason}{end}")

    async def _explain(
        self,
        err: BaseException,
        what: str,
        timeout: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> NodeError:
        """`_translate`, and for a TLS engine that dropped the connection without a TLS
        error, whether it refuses fliswarm's certificate (`.tls.refusal_reason`: its alert
        can be lost when it resets the connection; one short connection asks again)."""

        error = self._translate(err, what, timeout)
        context = ssl_context or self.ssl_context
        if context is None or isinstance(error, NodeTLSError) or not _dropped(err):
            return error
        reason = await refusal_reason(self.url, context, self.connect_timeout, self.node)
        return self._tls_error(reason) if reason is not None else error

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
            async with self._using() as docker:
                try:
                    result = await asyncio.wait_for(fn(docker), limit)
                except (
                    asyncio.TimeoutError,
                    aiodocker.DockerError,
                    aiohttp.ClientError,
                    OSError,
                    RuntimeError,
                ) as err:
                    if docker.session.closed:  # By `close` (a reboot, fliswarm stopping).
                        log.info("%s: %s on %s: %r", self.node, what, self.url, err)
                        raise NodeUnreachableError(
                            self.node,
                            f"Docker engine at {self.url}: fliswarm closed the connection "
                            "(the node is being rebooted, or fliswarm is stopping).",
                        ) from err
                    if isinstance(err, RuntimeError):
                        raise
                    error = await self._explain(err, what, limit)
                    if isinstance(error, (NodeUnreachableError, NodeTimeoutError)):
                        self._retire(docker)
                    raise error from err
        except NodeError as err:  # Also the TLS files (make_ssl_context).
            self.last_failure = err
            raise
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

    async def check(self, timeout: float | None = None) -> bool:
        """``GET /_ping`` within ``timeout`` (default: the connect timeout): whether the
        engine says ``OK``; the heartbeat of `.EventWatcher`.

        Raises
        ------
        NodeError
            As `call`: why the engine did not answer (an HTTP error status is a
            `.DockerAPIError`: the engine answered).
        """

        async def _ping(docker: aiodocker.Docker) -> bool:
            # No public ping (docker.version() asks the engine for more, after an API version
            # negotiation on a fresh session).
            async with _gap(docker, "_ping", versioned_api=False) as response:
                return response.status == 200 and (await response.text()) == "OK"

        return await self.call("ping", _ping, timeout or self.connect_timeout)

    async def ping(self, timeout: float | None = None) -> bool:
        """``GET /_ping``: whether the engine answers within ``timeout`` (never raises)."""

        try:
            return await self.check(timeout)
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

    async def container_logs(
        self, name: str, tail: int | None = None, since: float | None = None
    ) -> list[str] | None:
        """The output of a container (stdout and stderr, in the engine's order), as lines.

        ``GET /containers/{name}/logs``, through aiodocker's public ``DockerContainer.log``,
        bounded like every call; a stopped container's lines are given while the engine keeps
        them (until the container is removed).

        Parameters
        ----------
        name
            The container's name or id.
        tail
            Only the last ``tail`` lines (all of them when `None`).
        since
            Only the lines written since this UNIX time (the node's clock).

        Returns
        -------
        list
            The lines, oldest first, without their line ends; `None` if there is no such
            container.

        Raises
        ------
        NodeError
            As `call`; `.DockerAPIError` when the engine cannot give the log (e.g. a logging
            driver that keeps none).
        """

        options: dict[str, Any] = {}
        if tail is not None:
            options["tail"] = max(0, int(tail))
        if since is not None:
            options["since"] = f"{max(0.0, since):.3f}"

        async def _log(docker: aiodocker.Docker) -> Any:
            container = docker.containers.container(name)
            return await container.log(
                stdout=True, stderr=True, timeout=self._timeouts(), **options
            )

        chunks = await self.get_or_none(f"read the log of container {name}", _log)
        if chunks is None:
            return None
        text = "".join(chunks)  # Frames need not end at line ends.
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return [line[:-1] if line.endswith("\r") else line for line in lines]

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

    async def unpause_container(self, cid: str) -> None:
        """Unpauses a paused container (a frozen process cannot be stopped gracefully);
        one that is not paused, or gone, is fine."""

        try:
            await self.call(
                f"unpause container {cid[:12]}", lambda d: d.containers.container(cid).unpause()
            )
        except DockerAPIError as err:
            # Gone (404), not paused (409; dockerd 20.10 says it with a 500).
            if err.status not in (404, 409) and "is not paused" not in str(err.message):
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
        async with self._using() as client:
            try:
                # No read timeout (aiodocker's default for pulls): the caller bounds the pull.
                async for item in client.images.pull(name, tag=tag, stream=True):
                    yield item
            except (aiodocker.DockerError, aiohttp.ClientError, OSError) as err:
                error = await self._explain(err, f"pull {ref}", self.request_timeout)
                if isinstance(error, NodeUnreachableError):
                    self._retire(client)
                raise error from err

    # Events

    @contextlib.asynccontextmanager
    async def events(
        self,
        filters: Mapping[str, list[str]],
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
        no read timeout and no TCP keep-alive: a silent peer (network cut) leaves it open
        and quiet, which the caller notices by pinging the engine (`check`; the heartbeat
        of `.events.EventWatcher`).

        Parameters
        ----------
        filters
            The engine's event filters (``{"type": ["container"], "label": [...]}``).
        timeout
            Seconds to subscribe (connect and get the answer); defaults to connect +
            request timeouts.

        Raises
        ------
        NodeError
            `.NodeTimeoutError` if the engine does not answer in time, `.NodeTLSError`,
            `.NodeUnreachableError` or `.DockerAPIError` if the subscription fails or the
            stream breaks; the message names the engine, says what happened and what to
            check (the library's own error is in the log).
        """

        limit = timeout if timeout is not None else self.connect_timeout + self.request_timeout
        try:
            ssl_context = make_ssl_context(self.tls, self.node) if self.tls else self.ssl_context
            docker = self._new_client(ssl_context)
        except NodeTLSError:  # e.g. a missing TLS file.
            raise
        except (OSError, ValueError) as err:
            log.info("%s: event stream of %s: %r", self.node, self.url, err)
            raise NodeUnreachableError(
                self.node,
                f"Docker engine at {self.url}: fliswarm cannot open a connection to it (check "
                "the node's docker-client; fliswarm's log has the details).",
            ) from err
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
                    raise self._stream_timeout(limit) from err
                except (aiodocker.DockerError, aiohttp.ClientError, OSError, ValueError) as err:
                    raise await self._stream_error(err, ssl_context) from err
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
            raise self._stream_timeout(self.connect_timeout) from err
        except (aiohttp.ClientError, OSError, ValueError) as err:
            log.info("%s: the event stream of %s broke: %r", self.node, self.url, err)
            kind, words = connection_problem(err)
            if kind == "closed":  # Cut mid-stream, without the stream's clean end.
                words = "the connection broke"
            raise NodeUnreachableError(
                self.node,
                f"Docker engine at {self.url} stopped answering: {words} ({_ENGINE_HINTS[kind]}).",
            ) from err

    def _stream_timeout(self, limit: float) -> NodeError:
        return self._translate(asyncio.TimeoutError(), "subscribe to events", limit)

    async def _stream_error(
        self, err: BaseException, ssl_context: ssl.SSLContext | None
    ) -> NodeError:
        """An error of the event subscription, typed and explained as a call's is."""

        if isinstance(err, ValueError) and not isinstance(err, OSError):
            log.info("%s: event subscription to %s: %r", self.node, self.url, err)
            return NodeUnreachableError(
                self.node,
                f"Docker engine at {self.url}: its answer to the event subscription is "
                f"not understood ({_ENGINE_HINTS['other']}).",
            )
        return await self._explain(err, "subscribe to events", self.connect_timeout, ssl_context)


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
