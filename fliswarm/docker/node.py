"""`Node`: fliswarm's hand on one node computer and its Docker engine."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from fliswarm.config.loader import DOCKER_PORT, DOCKER_TLS_PORT
from fliswarm.docker import volumes as _volumes
from fliswarm.docker.containers import (
    USB_BUS,
    PortsType,
    canonical_config,
    image_reference,
    mount_target,
    normalize_ports,
    short_id,
)
from fliswarm.docker.engine import Engine
from fliswarm.docker.images import ensure_image
from fliswarm.docker.launch import UsbMemo, check_managed, create_and_start, remove, remove_named
from fliswarm.docker.ping import PING_GRACE
from fliswarm.docker.ping import ping as _ping
from fliswarm.docker.report import report_engine
from fliswarm.exceptions import (
    DockerAPIError,
    FliswarmError,
    NodeTLSError,
    NodeUnreachableError,
    VolumeNotFoundError,
)
from fliswarm.tools import FakeCommand, Reporter


__all__ = ["Node", "DEFAULT_DOCKER_PORT"]

#: The engine's port when the node gives no ``docker-client`` (plain, and with TLS).
DEFAULT_DOCKER_PORT = DOCKER_PORT
DEFAULT_DOCKER_TLS_PORT = DOCKER_TLS_PORT


class Node:
    """A node computer and its Docker engine.

    Parameters
    ----------
    name
        The name of the node (``gfa1``).
    addr
        The address of the node, for ``ping``.
    category
        A category, to select nodes (`.select_nodes`).
    daemon_addr
        The Docker engine address; defaults to ``tcp://<addr>:2375``, or
        ``tcp://<addr>:2376`` with ``tls``.
    registry
        The registry images are pulled from when `run_container` is not given one.
    connect_timeout
        Seconds to connect to the Docker engine (also bounds `client_alive`).
    request_timeout
        Seconds for one Docker request once connected.
    pull_timeout
        Seconds for a whole image pull.
    ping_timeout
        Default timeout of `ping`, in seconds.
    tls
        ``{ca, cert, key}`` file paths to talk to a TLS engine (``tcp://`` is then used
        as ``https://``).
    stop_grace
        Seconds a container gets to exit after SIGTERM in a non-forced `stop_container`.
    usb_bus
        The directory of the USB bus passed through to containers, when it exists on
        the node.
    """

    def __init__(
        self,
        name: str,
        addr: str,
        category: str | None = None,
        daemon_addr: str | None = None,
        registry: str | None = None,
        *,
        connect_timeout: float = 2.0,
        request_timeout: float = 10.0,
        pull_timeout: float = 600.0,
        ping_timeout: float = 2.0,
        tls: Mapping[str, str] | None = None,
        stop_grace: float = 5.0,
        usb_bus: str | None = USB_BUS,
    ) -> None:
        self.name = name
        self.addr = addr
        self.category = category
        port = DEFAULT_DOCKER_TLS_PORT if tls else DEFAULT_DOCKER_PORT
        self.daemon_addr = daemon_addr or f"tcp://{addr}:{port}"
        self.registry = registry
        self.enabled = True

        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.pull_timeout = pull_timeout
        self.ping_timeout = ping_timeout
        self.stop_grace = stop_grace
        self.usb_bus = usb_bus
        self.tls = dict(tls) if tls else None
        self.usb_memo = UsbMemo()

        self.engine = Engine(
            name,
            self.daemon_addr,
            connect_timeout=connect_timeout,
            request_timeout=request_timeout,
            tls=self.tls,  # Read on first use: a bad file is reported per call, clearly.
        )

    def __repr__(self) -> str:
        return f"<Node {self.name} addr={self.addr} daemon={self.daemon_addr}>"

    @property
    def client(self) -> Engine:
        """The Docker engine client (kept for compatibility; see `engine`)."""

        return self.engine

    async def close(self) -> None:
        """Closes the connection to the Docker engine (a later call reopens it)."""

        await self.engine.close()

    # Reachability

    async def probe(
        self, ping_timeout: float | None = None, grace: float = PING_GRACE, wait: bool = True
    ) -> tuple[bool, bool]:
        """Whether the node is alive and whether its Docker engine answers.

        The engine is asked first (``/_ping``); an answer within ``grace`` seconds proves the
        node alive without an ICMP echo (a subprocess). Otherwise the node is pinged while
        the engine's answer is awaited (at most ``connect_timeout``). With ``wait`` false, a
        node that does not answer the echo is reported down at once, engine included, as
        the original fliswarm's status does, instead of waiting out the engine's timeout.

        Returns
        -------
        tuple
            ``(node_alive, docker_alive)``.
        """

        engine = asyncio.ensure_future(self.client_alive())
        try:
            done, _ = await asyncio.wait({engine}, timeout=grace)
            if engine in done and engine.result():
                return True, True
            alive = await self.ping(ping_timeout)
            if not alive and not wait:
                engine.cancel()
                return False, False
            return alive, await engine
        except BaseException:
            engine.cancel()
            raise

    async def connect(self) -> None:
        """Checks that the Docker engine answers.

        The node is pinged (ICMP) only if the engine has not answered within `PING_GRACE`
        seconds, to say whether the node itself is down (`probe`).

        Raises
        ------
        NodeUnreachableError
            (a `ConnectionError`) If the engine does not answer within ``connect_timeout``.
        """

        alive, docker = await self.probe()
        if not docker:
            failure = self.engine.last_failure
            if isinstance(failure, NodeTLSError):
                raise failure
            if not alive:
                message = (
                    f"Docker engine at {self.daemon_addr} is not answering and the node "
                    f"({self.addr}) does not answer ping: check that it is powered on and on "
                    f"the network (fliswarm reboot --hard -n {self.name} power-cycles it)."
                )
            elif isinstance(failure, DockerAPIError):
                message = (
                    f"Docker engine at {self.daemon_addr} is not answering as an engine "
                    f"should: {failure.message}"
                )
            elif failure is not None:
                message = failure.message  # Says that it is not answering, and why.
            else:
                message = (
                    f"Docker engine at {self.daemon_addr} is not answering: check that "
                    "dockerd runs on the node."
                )
            raise NodeUnreachableError(self.name, message)

    async def client_alive(self) -> bool:
        """Whether the Docker engine answers ``/_ping`` within ``connect_timeout``."""

        return await self.engine.ping(self.connect_timeout)

    async def ping(self, timeout: float | None = None) -> bool:
        """Whether the node answers an ICMP echo within ``timeout`` (``ping_timeout``)."""

        return await _ping(self.addr, timeout or self.ping_timeout)

    async def connected(self) -> bool:
        """Whether the node is enabled, pings and its Docker engine answers."""

        if not self.enabled:
            return False
        alive, docker = await asyncio.gather(self.ping(), self.client_alive())
        return alive and docker

    # Volumes

    async def get_volume(self, name: str) -> dict[str, Any] | Literal[False]:
        """Returns the inspect data of a volume, or `False` if it does not exist."""

        return (await self.engine.inspect_volume(name)) or False

    async def create_volume(
        self,
        name: str,
        driver: str = "local",
        opts: Mapping[str, Any] | None = None,
        force: bool = False,
        command: Reporter | None = None,
    ) -> dict[str, Any]:
        """Creates a volume (`fliswarm.docker.volumes.create_volume`); returns its inspect data."""

        return await _volumes.create_volume(
            self.engine, name, driver, opts or {}, force, command or FakeCommand()
        )

    # Containers

    async def is_container_running(self, name: str) -> bool:
        """Whether a container with exactly this name is running."""

        info = await self.engine.inspect_container(name)
        return bool(info and info["State"].get("Running"))

    async def stop_container(
        self,
        name: str,
        image: str,
        force: bool = False,
        command: Reporter | None = None,
    ) -> bool:
        """Stops and removes the fliswarm container ``name`` (never its volumes).

        Without ``force`` the container gets ``stop_grace`` seconds to exit after SIGTERM;
        with ``force`` it is killed, and every other fliswarm container of this node
        running the same image repository is removed too.

        Returns
        -------
        bool
            Whether a container was removed.

        Raises
        ------
        ContainerConflictError
            If ``name`` is a container not created by fliswarm (it is left alone).
        """

        grace = None if force else self.stop_grace
        return await remove_named(self.engine, name, image, grace, force, command or FakeCommand())

    async def run_container(
        self,
        name: str,
        image: str,
        volumes: Sequence[str] = (),
        privileged: bool = False,
        registry: str | None = None,
        envs: Mapping[str, Any] | None = None,
        ports: PortsType | None = None,
        force: bool = False,
        command: Reporter | None = None,
        network: str = "host",
        user: str | None = None,
        *,
        cmd: Sequence[str] | None = None,
        always_pull: bool = False,
        restart_policy: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Runs a container on the node, detached, marked with fliswarm's labels.

        Parameters
        ----------
        name
            The container name.
        image
            The image; prefixed with ``registry`` (or the node's registry) if given.
        volumes
            Names of existing volumes to mount, each at the path of its device
            (``:/data`` -> ``/data``).
        privileged
            Whether to run the container privileged.
        registry
            The registry to pull from (``host:5000``).
        envs
            Environment variables.
        ports
            Published ports (``[19995]`` or ``{"2222/tcp": 3333}``); ignored with the
            ``host`` network.
        force
            Replace a running container of the same name.
        command
            Where to report progress.
        network
            The network mode (``host`` by default).
        user
            ``uid`` or ``uid:gid`` to run as.
        cmd
            Overrides the image's command.
        always_pull
            Pull the image even if it is present (a failed pull then falls back to the
            local image).
        restart_policy
            The engine's restart policy for the container (``{"Name": "unless-stopped"}``);
            the engine's default (``no``) if `None`.

        Returns
        -------
        dict
            The inspect data of the running container.

        Raises
        ------
        ContainerConflictError
            If a container of that name exists but was not created by fliswarm.
        VolumeNotFoundError
            If a volume does not exist.
        ImagePullError
            If the image is missing and cannot be pulled.
        ContainerStartError
            If the container does not start (it is removed again).
        """

        command = command or FakeCommand()
        ref = image_reference(image, registry or self.registry)

        # The container, the volumes and the image are looked up at the same time.
        lookups = await asyncio.gather(
            self.engine.inspect_container(name),
            self.engine.inspect_image(ref),
            *[self.engine.inspect_volume(vname) for vname in volumes],
        )
        existing, image_info, found = lookups[0], lookups[1], lookups[2:]
        if existing is not None:
            check_managed(self.name, existing, name)
            if existing["State"].get("Running") and not force:
                command.info(
                    text=f"{self.name}: container {name} already running "
                    f"({short_id(existing['Id'])}); not replacing it without force."
                )
                return existing

        try:
            nports = normalize_ports(ports)
        except ValueError as err:
            raise FliswarmError(f"{self.name}: {err}") from None
        mounts: dict[str, str] = {}
        for vname, volume in zip(volumes, found, strict=True):
            if volume is None:
                raise VolumeNotFoundError(
                    self.name,
                    f"volume {vname} does not exist on the node; create it first (fliswarm "
                    "reconnect creates the configured volumes).",
                )
            try:
                mounts[vname] = mount_target((volume.get("Options") or {}).get("device"), vname)
            except ValueError as err:
                raise FliswarmError(f"{self.name}: {err}") from None

        config = canonical_config(name, ref, mounts, privileged, envs, nports, network, user, cmd)
        if network == "host" and nports:
            command.debug(text=f"{self.name}: network is 'host': ports are not published.")

        await ensure_image(
            self.engine,
            ref,
            command,
            always_pull,
            self.pull_timeout,
            present=image_info is not None,
        )

        if existing is not None:
            command.warning(text=f"{self.name}: replacing container {name}.")
            await remove(self.engine, existing, None if force else self.stop_grace)

        cid = await create_and_start(
            self.engine, name, config, self.usb_bus, command, self.usb_memo, restart_policy
        )
        command.info(text=f"{self.name}: running {name} from {ref}.")
        command.debug(container=[self.name, short_id(cid)])
        info = await self.engine.inspect_container(cid)
        return info or {"Id": cid}

    # Status

    async def report_status(
        self, command: Reporter, volumes: bool = True, containers: bool = True
    ) -> dict[str, Any]:
        """Reports the node, its fliswarm container and its volumes to a command.

        Outputs ``node={name, addr, daemon_addr, node_alive, docker_alive}`` (info), then,
        if Docker answers, ``container={name, container_short_id}`` (debug; ``NA`` if there
        is none or several) and one ``volume={name, volume, present, device}`` per
        configured volume (debug; device ``NA`` if missing), with a warning for a node not
        pinging, Docker not answering, no or several containers and a missing volume (see
        `fliswarm.docker.report`). The volumes and ``ping_timeout`` are those of
        ``command.actor.config`` when the command has an actor.

        Parameters
        ----------
        command
            Where to write the keywords.
        volumes
            Whether to report the volumes.
        containers
            Whether to report the container.

        Returns
        -------
        dict
            ``node_alive``, ``docker_alive``, ``container`` (short id or `None`) and
            ``volumes`` (name to device, `None` if missing).
        """

        actor = getattr(command, "actor", None)
        config = getattr(actor, "config", None)
        config = config if isinstance(config, Mapping) else {}
        volume_names = list(config.get("volumes") or []) if volumes else []
        ping_timeout = float(config.get("ping_timeout") or self.ping_timeout)
        [result] = await report_engine(
            command, [self], [None], volume_names, ping_timeout, containers
        )
        return result
