"""The fliswarm actor: a CLU `~clu.legacy.LegacyActor` that manages the nodes and cameras."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import inspect
import logging
import pathlib
from typing import TYPE_CHECKING, Any

from fliswarm import __version__
from fliswarm.camera.device import FlicameraDevice
from fliswarm.commands import parser
from fliswarm.compat import HardenedLegacyActor
from fliswarm.config.settings import Settings
from fliswarm.provision import Provisioner
from fliswarm.provision.desired import desired_node
from fliswarm.supervision import Supervisor


if TYPE_CHECKING:
    from fliswarm.docker.node import Node


__all__ = ["FLISwarmActor", "KEYWORDS_SCHEMA"]

#: JSON Schema of the keywords fliswarm writes itself.
KEYWORDS_SCHEMA = pathlib.Path(__file__).parent / "etc" / "keywords.json"


class FLISwarmActor(HardenedLegacyActor):
    """The fliswarm actor.

    Create it with `from_config`. Commands (``fliswarm.commands``) receive the command and
    ``self.nodes``; the actor keeps:

    - ``config``: the resolved configuration (`fliswarm.config.load_config`), and
      ``settings``, the same typed (`fliswarm.config.settings.Settings`);
    - ``nodes``: a `.Node` per configured node, by name (``enabled`` as configured);
    - ``flicameras``: a `.FlicameraDevice` per configured node, by name.
    """

    parser = parser

    #: Upper limit of the tron reconnection back-off, in seconds.
    tron_max_delay: float = 15.0
    #: How often the tron connection is checked, in seconds.
    tron_check_interval: float = 1.0

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("schema", str(KEYWORDS_SCHEMA))
        kwargs.setdefault("version", __version__)
        super().__init__(*args, **kwargs)
        if kwargs.get("additional_properties") and self.model is not None:
            self.model.schema["additionalProperties"] = True  # Old configurations.
        #: The configuration, typed (`fliswarm.config.settings.Settings`).
        self.settings = Settings.from_config(self.config)
        self.observatory = self.settings.observatory
        #: Nodes by name. Mutate in place: it is the first of the commands' parser_args.
        self.nodes: dict[str, Node] = {}
        #: Connections to the flicamera actors, by node name.
        self.flicameras: dict[str, FlicameraDevice] = {}
        self.parser_args = [self.nodes]

        self._tron_task: asyncio.Task | None = None
        self._started = False

        for name in self.settings.nodes:
            self.add_node(name)

        #: The one way a node is brought to its desired state (`fliswarm.provision`).
        self.provisioner = Provisioner(
            self.nodes,
            self.flicameras,
            lambda name: desired_node(self.settings, name),
            ready_timeout=self.settings.timeouts.container_ready,
            attempt_timeout=self.settings.timeouts.device_connect,
            on_done=lambda name: self.supervisor.wake(name),
        )
        #: Self-healing supervision of the enabled nodes (`fliswarm.supervision`).
        self.supervisor = Supervisor(self, self.provisioner)

        if self.settings.status_interval:
            self.timed_commands.add_command("status", delay=self.settings.status_interval)

    @classmethod
    def from_config(cls, config: Any = None, *args: Any, **kwargs: Any) -> FLISwarmActor:
        """Creates the actor from a configuration file or an already loaded configuration.

        Parameters
        ----------
        config
            A path (loaded and validated with `fliswarm.config.load_config`), `None` for the
            default configuration, or a dictionary as returned by ``load_config``.
        kwargs
            Override the values of the ``actor`` section (`~clu.legacy.LegacyActor`
            arguments).
        """

        if not isinstance(config, dict):
            from fliswarm.config import load_config

            config = load_config(config)
        config = copy.deepcopy(config)
        actor_kwargs = dict(config.get("actor") or {})
        actor_kwargs.update(kwargs)
        return cls(*args, config=config, **actor_kwargs)

    def get_container_name(self, node: Node | str) -> str:
        """Returns the name of the flicamera container of a node (``flicamera-gfa1``)."""

        return self.settings.container(node if isinstance(node, str) else node.name)

    def add_node(self, name: str) -> Node:
        """Creates (or replaces) the `.Node` and `.FlicameraDevice` of a configured node.

        A node added to ``config`` since the actor was made is read from there.
        """

        from fliswarm.docker.node import Node

        if name not in self.settings.nodes:
            self.settings = Settings.from_config(self.config)
        settings = self.settings
        config = settings.nodes[name]
        timeouts = settings.timeouts
        node = Node(
            name,
            config.host,
            category=config.category,
            daemon_addr=config.docker_client,
            registry=settings.registry,
            connect_timeout=timeouts.docker_connect,
            request_timeout=timeouts.docker_request,
            pull_timeout=timeouts.docker_pull,
            ping_timeout=settings.ping_timeout,
            tls=config.docker_tls,
        )
        node.enabled = name in (self.config.get("enabled_nodes") or [])
        self.nodes[name] = node
        if name not in self.flicameras:
            self.flicameras[name] = FlicameraDevice(
                name,
                config.host,
                config.port,
                actor=self,
                connect_timeout=timeouts.device_connect,
            )
        return node

    # Connections to nodes and devices

    async def connect_nodes(self, names: list[str] | None = None) -> dict[str, bool]:
        """Connects to the Docker engines of the enabled (or the named) nodes, concurrently.

        Returns whether each connection succeeded; failures are logged, never raised.
        """

        selected = names if names is not None else [n.name for n in self._enabled()]
        limit = 2 * self.settings.timeouts.docker_connect + 1

        async def connect(name: str) -> bool:
            try:
                await asyncio.wait_for(self.nodes[name].connect(), limit)
            except Exception as err:
                self.log.warning(f"{name}: cannot connect to the Docker engine: {err}")
                return False
            return True

        results = await asyncio.gather(*[connect(name) for name in selected])
        return dict(zip(selected, results, strict=True))

    async def connect_device(self, name: str, timeout: float | None = None) -> FlicameraDevice:
        """Connects to the flicamera actor of a node, whatever the state of its container.

        Raises
        ------
        ConnectionError
            If the connection fails.
        """

        device = self.flicameras[name]
        await device.start(timeout)
        return device

    async def connect_devices(
        self, names: list[str] | None = None, check_container: bool = True
    ) -> dict[str, bool]:
        """Connects the flicamera devices of the enabled (or the named) nodes, concurrently.

        With ``check_container``, only nodes whose container (`get_container_name`) runs are
        connected. Returns whether each device is connected; never raises.
        """

        selected = names if names is not None else [n.name for n in self._enabled()]
        limit = self.settings.timeouts.docker_connect + self.settings.timeouts.docker_request

        async def connect(name: str) -> bool:
            if check_container:
                node = self.nodes[name]
                try:
                    running = await asyncio.wait_for(
                        node.is_container_running(self.get_container_name(node)), limit
                    )
                except Exception as err:
                    self.log.warning(f"{name}: cannot check the flicamera container: {err}")
                    return False
                if not running:
                    return False
            try:
                await self.connect_device(name)
            except ConnectionError as err:
                self.write("w", text=f"{name}: failed to connect to the flicamera device: {err}")
                return False
            return True

        results = await asyncio.gather(*[connect(name) for name in selected])
        return dict(zip(selected, results, strict=True))

    def _enabled(self) -> list[Node]:
        return [node for node in self.nodes.values() if node.enabled]

    # Start and stop

    async def start(self, get_keys: bool = False, start_nubs: bool = True) -> FLISwarmActor:
        """Connects the nodes and devices, starts the server, tron and the timed status.

        Tron being absent is not an error: the actor keeps trying to connect (with a back-off
        capped at `tron_max_delay`) and asks tron to connect back (``hub startNubs``) every time
        the connection is made. If the server cannot start, everything is closed and the error
        raised.
        """

        if self._started:
            return self
        self.set_loop_exception_handler()
        try:
            await self._connect_all()
            await self._server.start()
        except BaseException:
            await self._close_connections()
            raise
        self.log.info(f"running TCP server on {self.host}:{self.port}")
        self._started = True
        if self.tron:
            self._tron_task = asyncio.create_task(self._keep_tron(get_keys, start_nubs))
        self.timed_commands.start()
        # After the devices of running containers are connected: they are adopted as is.
        await self.supervisor.start()
        return self

    async def _connect_all(self) -> None:
        """Per enabled node, concurrently: Docker engine, then container check and device."""

        async def one(name: str) -> None:
            connected = await self.connect_nodes([name])
            if connected.get(name):
                await self.connect_devices([name])

        await asyncio.gather(*[one(node.name) for node in self._enabled()])

    async def _keep_tron(self, get_keys: bool, start_nubs: bool) -> None:
        """Keeps the tron connection up and registers with tron each time it is made."""

        assert self.tron is not None
        tron = self.tron
        registered = False
        while True:
            try:
                if tron.protocol is None:
                    await asyncio.wait_for(tron.start(get_keys=get_keys), 10)
                protocol = tron.protocol
                if protocol is not None:
                    protocol.max_delay = self.tron_max_delay
                connected = tron.connected()
                if connected and not registered and protocol is not None:
                    protocol._delay = protocol.initial_delay
                    registered = True
                    self.log.info(f"connected to tron at {tron.host}:{tron.port}.")
                    if start_nubs:
                        self.send_command("hub", f"startNubs {self.name}")
                elif not connected and registered:
                    registered = False
                    self.log.warning("lost the connection to tron; reconnecting.")
            except asyncio.CancelledError:
                raise
            except Exception as err:
                self.log.warning(f"tron connection: {err!r}")
                with contextlib.suppress(Exception):
                    tron.stop()
                registered = False
                await asyncio.sleep(self.tron_max_delay)
            await asyncio.sleep(self.tron_check_interval)

    async def stop(self) -> None:
        """Stops the server, tron, the timed commands, devices and node clients. Never raises."""

        self._started = False
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.supervisor.stop(), 10)
        if self._tron_task is not None:
            self._tron_task.cancel()
            with contextlib.suppress(BaseException):
                await self._tron_task
            self._tron_task = None
        if self.tron:
            with contextlib.suppress(Exception):
                self.tron.stop()
        with contextlib.suppress(Exception):
            await self.timed_commands.stop()
        with contextlib.suppress(Exception):
            if self._server.serving:
                self._server.stop()
        for transport in list(self.transports.values()):
            with contextlib.suppress(Exception):
                transport.close()
        await self._close_connections()
        # The actor's own log file (``log_dir``): a stopped actor keeps no file open.
        for handler in list(getattr(self.log, "handlers", [])):
            if isinstance(handler, logging.FileHandler):
                with contextlib.suppress(Exception):
                    handler.close()

    async def _close_connections(self) -> None:
        async def close_node(node: Any) -> None:
            close = getattr(node, "close", None) or getattr(node, "disconnect", None)
            if close is not None:
                result = close()
                if inspect.isawaitable(result):
                    await asyncio.wait_for(result, 5)

        jobs = [device.stop() for device in self.flicameras.values()]
        jobs += [close_node(node) for node in self.nodes.values()]
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*jobs, return_exceptions=True), 10)
