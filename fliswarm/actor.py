"""The fliswarm actor: a CLU `~clu.legacy.LegacyActor` that manages the nodes and cameras."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import logging
import pathlib
from typing import TYPE_CHECKING, Any

from clu.command import Command

from fliswarm import __version__
from fliswarm.camera.device import FlicameraDevice
from fliswarm.commands import parser
from fliswarm.compat import HardenedLegacyActor
from fliswarm.config.settings import Settings
from fliswarm.config.state import RuntimeState, StateFileError, state_path
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
    #: How long fliswarm waits for the answer to the ``ping`` it sends itself through tron
    #: after connecting, to learn whether tron is connected to it already, in seconds. tron
    #: sleeps 1 s on each client it accepts, and they all come back at once after a restart: on
    #: loopback, with only fliswarm and two clients, the answer took up to 3.8 s (0.05 s without
    #: that sleep). Waiting longer costs nothing when tron is connected to fliswarm.
    tron_probe_timeout: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("schema", str(KEYWORDS_SCHEMA))
        kwargs.setdefault("version", __version__)
        super().__init__(*args, **kwargs)
        if kwargs.get("additional_properties") and self.model is not None:
            self.model.schema["additionalProperties"] = True  # Old configurations.
        # fliswarm's own modules (supervision, provisioning, engines) log under "fliswarm":
        # their records go to the actor's log file too, from INFO.
        self._log_files = [h for h in self.log.handlers if isinstance(h, logging.FileHandler)]
        package_log = logging.getLogger("fliswarm")
        if package_log.level == logging.NOTSET or package_log.level > logging.INFO:
            package_log.setLevel(logging.INFO)
        for handler in self._log_files:
            package_log.addHandler(handler)
        #: The configuration, typed (`fliswarm.config.settings.Settings`).
        self.settings = Settings.from_config(self.config)
        self.observatory = self.settings.observatory
        #: Nodes by name. Mutate in place: it is the first of the commands' parser_args.
        self.nodes: dict[str, Node] = {}
        #: Connections to the flicamera actors, by node name.
        self.flicameras: dict[str, FlicameraDevice] = {}
        self.parser_args = [self.nodes]

        self._tron_task: asyncio.Task | None = None
        #: How often, after connecting to tron, fliswarm found tron connected to it already
        #: (tron connects by itself, when it starts, to the actors of its ``nubs`` list).
        self.tron_found_connected = 0
        #: How often fliswarm asked tron to connect to it (``hub startNubs``).
        self.tron_start_nubs_sent = 0
        self._started = False
        #: What runs when a ``deploy`` or ``rollback`` runs (for the error of a second one),
        #: `None` when none does: one at a time.
        self.deploying: str | None = None
        #: Commands running, each with the tasks CLU started to run it (`parse_command`):
        #: what `stop` interrupts.
        self._in_flight: dict[Command, set[asyncio.Task]] = {}
        #: The configuration's ``enabled_nodes`` (``enable`` and ``disable`` change
        #: ``config["enabled_nodes"]``, not this).
        self.configured_enabled = tuple(self.settings.enabled_nodes)
        #: What operators changed at run time and fliswarm keeps across restarts, next to
        #: the actor's log (`fliswarm.config.state`); read by `start`.
        self.runtime_state = RuntimeState(state_path(kwargs.get("log_dir"), self.name))

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
            deployed = getattr(self, "settings", None)
            self.settings = Settings.from_config(self.config)
            if deployed is not None:  # The images deployed at run time stay.
                self.set_deployed_images(deployed.deployed_images)
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
        capped at `tron_max_delay`) and, every time the connection is made, asks tron to connect
        back (``hub startNubs``) unless tron is connected to it already (`_register_with_tron`).
        If the server cannot start, everything is closed and the error raised.
        """

        if self._started:
            return self
        self.set_loop_exception_handler()
        self._apply_runtime_state()
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

    def _apply_runtime_state(self) -> None:
        """Enables the nodes as the runtime-state file says (``enable`` and ``disable`` of an
        earlier run); a file that cannot be read is a warning and the configuration wins."""

        state = self.runtime_state
        if not state.kept:
            return
        state.load()
        enabled, problems = state.enabled_nodes(self.configured_enabled, list(self.nodes))
        for problem in problems:
            self.log.warning(problem)
        for name, node in self.nodes.items():
            node.enabled = name in enabled
        self.config["enabled_nodes"] = enabled
        if enabled != [name for name in self.nodes if name in self.configured_enabled]:
            self.log.info(f"{state.path}: nodes {state.node_overrides().describe()}.")
        try:
            deployed = state.deployed_images()
        except StateFileError as err:
            self.log.warning(f"{err} Running the configuration's image on every node.")
            deployed = {}
        unknown = [name for name in deployed if name not in self.nodes]
        if unknown:
            self.log.warning(
                f"{state.path}: ignoring the images deployed to {', '.join(unknown)}: they "
                "are not in the configuration."
            )
        images = {name: item.image for name, item in deployed.items() if name in self.nodes}
        self.set_deployed_images(images)
        for name, image in images.items():
            self.log.info(f"{state.path}: {name} runs the deployed image {image}.")

    def set_deployed_images(self, images: dict[str, str]) -> None:
        """Makes these images (full references pinned to digests, by node) the nodes' desired
        images (``deploy``, ``rollback``); the other nodes run the configuration's ``image``."""

        self.settings = dataclasses.replace(self.settings, deployed_images=dict(images))

    async def _connect_all(self) -> None:
        """Per enabled node, concurrently: Docker engine, then container check and device."""

        async def one(name: str) -> None:
            connected = await self.connect_nodes([name])
            if connected.get(name):
                await self.connect_devices([name])

        await asyncio.gather(*[one(node.name) for node in self._enabled()])

    async def _keep_tron(self, get_keys: bool, start_nubs: bool) -> None:
        """Keeps the tron connection up and registers with tron each time it is made.

        Registering is asking tron to connect to fliswarm, only when tron is not connected to
        fliswarm already (`_register_with_tron`).
        """

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
                        await self._register_with_tron()
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

    async def _register_with_tron(self) -> None:
        """Asks tron to connect to fliswarm (``hub startNubs``) unless it is connected already.

        When tron starts, it connects by itself to the actors of its configuration's ``nubs``
        list (fliswarm is in it at APO); ``hub startNubs`` drops such a connection and makes a
        new one, losing the commands in flight on it. So fliswarm first sends itself a ``ping``
        through tron. Answered (``:``), tron reaches fliswarm: nothing more is sent. Failed
        (tron's ``NoTarget``: it has no connection to fliswarm), fliswarm sends ``hub startNubs``
        at once; unanswered twice within `tron_probe_timeout` (tron mislabels commands to an
        actor until it has read its first line, or its connection leads nowhere), too. tron runs
        no client's command before it has connected to the actors of its ``nubs`` list, so the
        answer is never early. Returns without registering if the tron connection drops.
        """

        assert self.tron is not None
        tron = self.tron
        for _ in range(2):
            if not tron.connected():
                return
            sent = asyncio.get_running_loop().time()
            probe = tron.send_command(self.name, "ping")
            try:
                await asyncio.wait_for(probe, self.tron_probe_timeout)
            except asyncio.TimeoutError:
                for mid, command in list(tron.running_commands.items()):
                    if command is probe:  # Never answered: not kept for good.
                        tron.running_commands.pop(mid, None)
                self.log.warning(
                    f"no answer from tron to a ping to {self.name} within "
                    f"{self.tron_probe_timeout} s."
                )
                continue
            if probe.status.did_succeed:
                elapsed = asyncio.get_running_loop().time() - sent
                self.tron_found_connected += 1
                self.log.info(
                    f"tron is connected to {self.name} already (ping through tron answered in "
                    f"{elapsed:.3f} s); not sending hub startNubs."
                )
                return
            break
        if not tron.connected():
            return
        self.log.info(f"asking tron to connect to {self.name} (hub startNubs {self.name}).")
        self.send_command("hub", f"startNubs {self.name}")
        self.tron_start_nubs_sent += 1

    def parse_command(self, command: Any) -> Any:
        """Runs a command (CLU's `~clu.base.BaseActor.parse_command`), kept in flight until
        done together with the tasks started to run it, so that `stop` can interrupt it."""

        try:
            before = asyncio.all_tasks()
        except RuntimeError:  # No running loop: CLU runs nothing concurrently.
            return super().parse_command(command)
        result = super().parse_command(command)
        if isinstance(command, Command) and not command.done():
            self._in_flight[command] = asyncio.all_tasks() - before
            command.add_done_callback(lambda done: self._in_flight.pop(done, None))
        return result

    async def stop(self, reason: str = "fliswarm is stopping") -> None:
        """Stops the server, tron, the timed commands, devices and node clients. Never raises.

        New connections are refused first. Commands still running then fail at once
        (``f``, ``error="<reason>; the command was interrupted."``) while their users are
        still connected, and their tasks are cancelled and waited for (at most 5 s); then
        the rest stops.
        """

        self._started = False
        with contextlib.suppress(Exception):
            if self._server.serving:
                self._server.stop()
        running: set[asyncio.Task] = set()
        for command, tasks in list(self._in_flight.items()):
            with contextlib.suppress(Exception):
                if not command.status.is_done:
                    command.fail(error=f"{reason}; the command was interrupted.")
            running |= {task for task in tasks if not task.done()}
        self._in_flight.clear()
        for task in running:
            task.cancel()
        if running:
            with contextlib.suppress(Exception):
                await asyncio.wait(running, timeout=5)
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
        for transport in list(self.transports.values()):
            with contextlib.suppress(Exception):
                transport.close()
        await self._close_connections()
        # The actor's own log file (``log_dir``): a stopped actor keeps no file open.
        for handler in self._log_files:
            logging.getLogger("fliswarm").removeHandler(handler)
            with contextlib.suppress(Exception):
                handler.close()

    async def _close_connections(self) -> None:
        jobs = [device.stop() for device in self.flicameras.values()]
        jobs += [asyncio.wait_for(node.close(), 5) for node in self.nodes.values()]
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*jobs, return_exceptions=True), 10)
