"""A thin layer over aiodocker: one Docker engine, every call bounded and typed.

`Engine` owns an `aiodocker.Docker` client for one node. Each call:

- runs under ``asyncio.wait_for`` (connect timeout + request timeout, or the given one),
  on top of the aiohttp connect/read timeouts, so a node whose packets vanish fails the
  call in bounded time;
- turns aiodocker/aiohttp errors into `.NodeTimeoutError`, `.NodeUnreachableError` or
  `.DockerAPIError`;
- uses a fresh TCP connection (no keep-alive pool), so a restarted or power-cycled
  engine never leaves a stale pooled connection behind; after a connection error the
  whole client session is also re-created.

Engines share nothing: calls on different nodes run fully concurrently.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

import aiodocker
import aiohttp

from .exceptions import (
    DockerAPIError,
    NodeError,
    NodeTimeoutError,
    NodeTLSError,
    NodeUnreachableError,
)
from .tls import make_ssl_context, tls_reason


__all__ = ["Engine", "make_ssl_context"]

T = TypeVar("T")

#: aiodocker's status code for "cannot connect to the engine".
_NO_CONNECTION = 900


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

    def _client(self) -> aiodocker.Docker:
        if self._docker is None:
            if self.ssl_context is None and self.tls:
                self.ssl_context = make_ssl_context(self.tls, self.node)
            url = self.url
            if self.ssl_context is not None and url.startswith("tcp://"):
                url = "https://" + url[len("tcp://") :]
            connector: aiohttp.BaseConnector
            if url.startswith("unix://"):
                connector = aiohttp.UnixConnector(url[len("unix://") :], force_close=True)
            else:
                connector = aiohttp.TCPConnector(
                    force_close=True, ssl=self.ssl_context if self.ssl_context else False
                )
            timeout = aiohttp.ClientTimeout(
                total=self.connect_timeout + self.request_timeout,
                connect=self.connect_timeout,
                sock_connect=self.connect_timeout,
            )
            session = aiohttp.ClientSession(connector=connector, timeout=timeout)
            self._docker = aiodocker.Docker(
                url=url, connector=connector, session=session, timeout=timeout
            )
        return self._docker

    async def close(self) -> None:
        """Closes the client session (a later call opens a new one)."""

        docker, self._docker = self._docker, None
        if docker is not None:
            try:
                await docker.close()
            finally:
                await docker.session.close()

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

    async def get_or_none(self, what: str, path: str) -> dict[str, Any] | None:
        """``GET path`` returning the JSON answer, or `None` for a 404."""

        try:
            return await self.call(what, lambda d: d._query_json(path))
        except DockerAPIError as err:
            if err.status == 404:
                return None
            raise

    # Engine

    async def ping(self, timeout: float | None = None) -> bool:
        """``GET /_ping``: whether the engine answers within ``timeout`` (never raises)."""

        async def _ping(docker: aiodocker.Docker) -> bool:
            async with docker._query("_ping", versioned_api=False) as response:
                return response.status == 200 and (await response.text()) == "OK"

        try:
            return await self.call("ping", _ping, timeout or self.connect_timeout)
        except NodeError:
            return False

    async def info(self) -> dict[str, Any]:
        """``GET /info``."""

        return await self.call("info", lambda d: d._query_json("info"))

    # Containers

    async def list_containers(
        self, filters: dict[str, list[str]], all: bool = True
    ) -> list[dict[str, Any]]:
        """``GET /containers/json`` with filters, as raw dicts."""

        params = {"all": "1" if all else "0", "filters": json.dumps(filters)}
        return await self.call(
            "list containers", lambda d: d._query_json("containers/json", params=params)
        )

    async def inspect_container(self, name: str) -> dict[str, Any] | None:
        """Container inspect, or `None` if there is no such container."""

        return await self.get_or_none(f"inspect container {name}", f"containers/{name}/json")

    async def create_container(self, name: str, body: dict[str, Any]) -> str:
        """Creates a container and returns its id."""

        data = await self.call(
            f"create container {name}",
            lambda d: d._query_json("containers/create", "POST", params={"name": name}, data=body),
        )
        return str(data["Id"])

    async def start_container(self, cid: str) -> None:
        await self.call(
            f"start container {cid[:12]}",
            lambda d: d._query_json(f"containers/{cid}/start", "POST"),
        )

    async def update_restart_policy(self, cid: str, policy: Mapping[str, Any]) -> None:
        """Sets the engine's restart policy of a container (``{"Name": "unless-stopped"}``)."""

        await self.call(
            f"update container {cid[:12]}",
            lambda d: d._query_json(
                f"containers/{cid}/update", "POST", data={"RestartPolicy": dict(policy)}
            ),
        )

    async def stop_container(self, cid: str, grace: float) -> None:
        """Stops a container (SIGTERM, SIGKILL after ``grace`` seconds)."""

        t = max(0, int(grace))
        try:
            await self.call(
                f"stop container {cid[:12]}",
                lambda d: d._query_json(f"containers/{cid}/stop", "POST", params={"t": t}),
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
                lambda d: d._query_json(
                    f"containers/{cid}", "DELETE", params={"force": "1", "v": "0"}
                ),
            )
        except DockerAPIError as err:
            if err.status != 404:
                raise

    # Volumes

    async def inspect_volume(self, name: str) -> dict[str, Any] | None:
        return await self.get_or_none(f"inspect volume {name}", f"volumes/{name}")

    async def list_volumes(self) -> list[dict[str, Any]]:
        data = await self.call("list volumes", lambda d: d._query_json("volumes"))
        return list(data.get("Volumes") or [])

    async def create_volume(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self.call(
            f"create volume {body.get('Name')}",
            lambda d: d._query_json("volumes/create", "POST", data=body),
        )

    async def remove_volume(self, name: str) -> None:
        await self.call(
            f"remove volume {name}",
            lambda d: d._query_json(f"volumes/{name}", "DELETE"),
        )

    # Images

    async def inspect_image(self, ref: str) -> dict[str, Any] | None:
        return await self.get_or_none(f"inspect image {ref}", f"images/{ref}/json")

    async def pull_image(self, ref: str) -> AsyncIterator[dict[str, Any]]:
        """Pulls an image, yielding the engine's progress messages.

        The caller bounds the whole pull (e.g. with ``asyncio.wait_for``). An error
        reported in the stream raises `.DockerAPIError` with status 0.
        """

        name, tag = _split_tag(ref)
        params = {"fromImage": name, "tag": tag}
        try:
            client = self._client()
            # No read timeout: the caller bounds the whole pull.
            timeout = aiohttp.ClientTimeout(
                connect=self.connect_timeout, sock_connect=self.connect_timeout
            )
            async with client._query(
                "images/create", "POST", params=params, timeout=timeout
            ) as response:
                buffer = b""
                async for chunk in response.content.iter_any():
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        if not line.strip():
                            continue
                        item = json.loads(line)
                        if "error" in item or "errorDetail" in item:
                            detail = item.get("errorDetail") or {}
                            message = detail.get("message") or item.get("error") or str(item)
                            raise DockerAPIError(self.node, 0, message)
                        yield item
        except (aiodocker.DockerError, aiohttp.ClientError, OSError) as err:
            error = self._translate(err, f"pull {ref}", self.request_timeout)
            if isinstance(error, NodeUnreachableError):
                await self.close()
            raise error from err


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
