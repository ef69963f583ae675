"""The `Testbed` orchestrator: several Docker nodes, a registry, faults, and a state file."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from subprocess import DEVNULL
from typing import Any

from . import engine, network, procs
from .network import Plan, ensure_packages, run
from .registry import start_registry, stop_registry


__all__ = ["Testbed", "Node", "ensure_packages", "default_names", "RUN_ROOT", "LIB_ROOT"]


RUN_ROOT = "/run/fliswarm-testbed"
LIB_ROOT = "/var/lib/fliswarm-testbed"

_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,31}$")


def default_names(n_nodes: int) -> list[str]:
    """``gfa1 .. gfa(N-1)`` plus ``fvc``."""

    if n_nodes < 1:
        raise ValueError("a test bed needs at least one node.")
    return [f"gfa{i}" for i in range(1, n_nodes)] + ["fvc"]


@dataclass(frozen=True)
class Node:
    """A node of the test bed (a network namespace with its own Docker engine)."""

    name: str
    index: int
    addr: str
    mac: str
    netns: str

    @property
    def docker_url(self) -> str:
        """The engine's URL, ``tcp://<addr>:2375``."""
        return f"tcp://{self.addr}:2375"

    @property
    def category(self) -> str:
        """``gfa`` for ``gfa3``: the name without its trailing digits."""
        return re.sub(r"\d+$", "", self.name) or self.name


class Testbed:
    """A test bed of Docker nodes in network namespaces on this machine.

    Parameters
    ----------
    instance
        Selects an independent bed (subnet ``10.250.(77+instance).0/24``, names
        ``fsw<instance>-*``). Defaults to ``$FLISWARM_TESTBED_ID`` or 0.
    n_nodes
        How many nodes (default 3, or the number of the running bed).
    names
        Node names; default `default_names` (``gfa1, gfa2, fvc`` for 3 nodes), or those
        of the running bed of this instance.
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        instance: int | None = None,
        n_nodes: int | None = None,
        names: list[str] | None = None,
    ) -> None:
        if instance is None:
            instance = int(os.environ.get("FLISWARM_TESTBED_ID", "0") or 0)
        self.plan = Plan(instance)
        self.instance = instance
        self.run_dir = os.path.join(RUN_ROOT, str(instance))
        self.lib_dir = os.path.join(LIB_ROOT, str(instance))
        self.data_dir = os.path.join(self.lib_dir, "data")
        self.state_path = os.path.join(self.run_dir, "state.json")
        self.manager_addr = self.plan.manager_addr
        self.registry = f"{self.manager_addr}:5000"
        self._rlock = threading.RLock()  # serialises operations of this object's threads
        self._depth = 0
        self._owner: int | None = None
        self._lock_fd: int | None = None
        self._tls = threading.local()  # .inherited: a worker of an operation holding the lock
        self._state_lock = threading.Lock()  # state-file read-modify-write

        if names is None:
            state = self._load()
            if state is not None and (n_nodes is None or n_nodes == len(state["names"])):
                names = list(state["names"])
            else:
                names = default_names(3 if n_nodes is None else n_nodes)
        elif n_nodes is not None and n_nodes != len(names):
            raise ValueError("n_nodes and names disagree.")
        for name in names:
            if not _NAME_RE.match(name) or name == "switch":
                raise ValueError(f"invalid node name {name!r}.")
        if len(set(names)) != len(names) or not 1 <= len(names) <= 200:
            raise ValueError("node names must be unique, 1 to 200 of them.")
        self.nodes = [
            Node(
                name=name,
                index=i,
                addr=self.plan.node_addr(i),
                mac=self.plan.node_mac(i),
                netns=self.plan.node_netns(name),
            )
            for i, name in enumerate(names, start=1)
        ]

    # ------------------------------------------------------------------ helpers

    def __repr__(self) -> str:
        return f"<Testbed instance={self.instance} nodes={[n.name for n in self.nodes]}>"

    def node(self, name: str) -> Node:
        """The node called ``name`` (`KeyError` if there is none)."""

        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"no node {name!r} in {self!r}.")

    def engine_spec(self, name: str) -> engine.EngineSpec:
        """Paths and addresses of a node's engine."""

        node = self.node(name)
        wrapper = os.path.join(self.run_dir, "runc-wrapper")
        return engine.EngineSpec(
            name=node.name,
            netns=node.netns,
            addr=node.addr,
            registry=self.registry,
            dns=self.manager_addr,
            run_dir=os.path.join(self.run_dir, node.name),
            data_dir=os.path.join(self.lib_dir, "nodes", node.name),
            runtime_wrapper=wrapper if engine.needs_runtime_wrapper() else None,
        )

    @property
    def _registry_marker(self) -> str:
        return os.path.join(self.run_dir, "registry.yml")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialises operations on this instance, across threads and processes.

        Re-entrant, and also entered at once by the worker threads of an operation that
        holds it (see `_parallel`).
        """

        if getattr(self._tls, "inherited", False):
            yield
            return
        with self._rlock:
            if self._depth == 0:
                os.makedirs(RUN_ROOT, exist_ok=True)
                path = os.path.join(RUN_ROOT, f".lock-{self.instance}")
                self._lock_fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
                self._owner = threading.get_ident()
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._lock_fd is not None:
                    self._owner = None
                    os.close(self._lock_fd)
                    self._lock_fd = None

    def _load(self) -> dict[str, Any] | None:
        try:
            with open(self.state_path) as f:
                return json.load(f)
        except (FileNotFoundError, ValueError):
            return None

    def _save(self, state: dict[str, Any]) -> None:
        os.makedirs(self.run_dir, exist_ok=True)
        with open(self.state_path + ".tmp", "w") as f:
            json.dump(state, f, indent=1)
        os.replace(self.state_path + ".tmp", self.state_path)

    def _state(self) -> dict[str, Any]:
        state = self._load()
        if state is None:
            raise RuntimeError(f"test bed {self.instance} is not up.")
        return state

    def is_up(self) -> bool:
        """Whether this instance has been brought up (its state file exists)."""

        return self._load() is not None

    def _parallel(self, func: Callable[[Node], Any], nodes: list[Node] | None = None) -> None:
        """Runs ``func(node)`` for every node in threads; they inherit our lock if we hold it."""

        nodes = self.nodes if nodes is None else nodes
        if not nodes:
            return
        inherit = getattr(self._tls, "inherited", False) or self._owner == threading.get_ident()

        def work(node: Node) -> Any:
            self._tls.inherited = inherit
            try:
                return func(node)
            finally:
                self._tls.inherited = False

        with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
            for future in [pool.submit(work, node) for node in nodes]:
                future.result()

    # --------------------------------------------------------------- up / down

    def up(self, timeout: float = 60.0) -> None:
        """Brings the bed up: switch, registry and every node with its engine, in parallel.

        If it is already up, only repairs it (see `restore`): calling ``up`` twice is
        a no-op.
        """

        with self._locked():
            state = self._load()
            if state is not None:
                if state["names"] != [n.name for n in self.nodes]:
                    raise RuntimeError(
                        f"test bed {self.instance} is up with nodes {state['names']}; "
                        "bring it down first."
                    )
                self.restore(timeout=timeout)
                return
            ensure_packages()
            network.safety_route()
            self._teardown()
            procs.note_host_dirs(RUN_ROOT)
            try:
                self._bring_up(timeout)
            except BaseException:
                self._teardown()
                raise

    def _bring_up(self, timeout: float) -> None:
        os.makedirs(self.run_dir, exist_ok=True)
        os.makedirs(self.data_dir, exist_ok=True)
        os.chmod(self.data_dir, 0o1777)
        state: dict[str, Any] = {
            "instance": self.instance,
            "names": [n.name for n in self.nodes],
            "created": time.time(),
            "registry": {"pid": None, "marker": self._registry_marker},
            "nodes": {
                n.name: {"powered": False, "plugged": True, "engine": False, "pid": None}
                for n in self.nodes
            },
        }
        self._save(state)
        if engine.needs_runtime_wrapper():
            engine.write_runtime_wrapper(os.path.join(self.run_dir, "runc-wrapper"))
        network.create_switch(self.plan)

        update_lock = threading.Lock()

        def node_up(node: Node) -> None:
            network.create_node_net(self.plan, node.name, node.index)
            spec = self.engine_spec(node.name)
            pid = engine.start_engine(spec)
            with update_lock:
                state["nodes"][node.name].update(powered=True, engine=True, pid=pid)
            engine.wait_ready(spec, pid, timeout=timeout)

        with ThreadPoolExecutor(max_workers=len(self.nodes) + 1) as pool:
            registry = pool.submit(start_registry, self.manager_addr, self.run_dir)
            futures = [pool.submit(node_up, node) for node in self.nodes]
            try:
                state["registry"]["pid"] = registry.result()
                for future in futures:
                    future.result()
            finally:
                self._save(state)

    def down(self) -> None:
        """Tears the bed down and leaves the machine as found (no-op if nothing is up).

        Containers are killed first, then the engines and the registry; namespaces,
        links, mounts, cgroups, state and node data are removed. The safety route and
        the registry cache stay.
        """

        with self._locked():
            self._teardown()

    def _leftovers(self) -> bool:
        return bool(
            os.path.exists(self.run_dir)
            or os.path.exists(self.lib_dir)
            or network.list_netns(self.plan.prefix + "-")
            or network.link_exists(self.plan.manager_link)
            or procs.cgroups_with_prefix(self.plan.prefix + "-")
        )

    def _teardown(self) -> None:
        state = self._load()
        if state is not None and state["names"] != [n.name for n in self.nodes]:
            other = Testbed(self.instance, names=state["names"])
            other._tls.inherited = True  # we already hold the lock
            other._teardown()
            return
        if not self._leftovers():
            return
        # Containers first (gracefully would take 10 s each), then the daemons.
        self._parallel(lambda n: engine.kill_containers(self.engine_spec(n.name), timeout=3))

        def kill(node: Node) -> None:
            spec = self.engine_spec(node.name)
            pid = (state or {}).get("nodes", {}).get(node.name, {}).get("pid")
            procs.kill_cgroup(spec.cgroup, ((pid, spec.config_path),) if pid else ())

        self._parallel(kill)
        for cgroup in procs.cgroups_with_prefix(self.plan.prefix + "-"):
            procs.kill_cgroup(cgroup)
        reg = (state or {}).get("registry", {})
        stop_registry(reg.get("pid"), self._registry_marker)
        procs.sweep_processes(self.run_dir + "/")
        for node in self.nodes:
            network.delete_node_net(self.plan, node.name, node.index)
        for netns in network.list_netns(self.plan.prefix + "-"):
            run(["ip", "netns", "del", netns], check=False)
        network.delete_switch(self.plan)
        procs.unmount_under((self.run_dir + "/", self.lib_dir + "/"))
        procs.remove_cgroups(self.plan.prefix + "-")
        shutil.rmtree(self.run_dir, ignore_errors=True)
        shutil.rmtree(self.lib_dir, ignore_errors=True)
        procs.reap_children()
        procs.remove_host_dirs(RUN_ROOT)
        with contextlib.suppress(OSError):
            os.rmdir(LIB_ROOT)

    # ------------------------------------------------------------ configuration

    def fliswarm_config(self, image: str, port: int | None = None) -> dict[str, Any]:
        """A flat fliswarm configuration for this bed.

        Parameters
        ----------
        image
            The flicamera image (``<registry>/<name>:<tag>``, or a name in the bed registry).
        port
            The actor's port on 127.0.0.1; a free one when `None`.
        """

        if port is None:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
        return {
            "actor": {
                "name": "fliswarm",
                "host": "127.0.0.1",
                "port": port,
                "log_dir": os.path.join(self.lib_dir, "logs"),
            },
            "registry": self.registry,
            "image": image,
            "container_name": "flicamera",
            "nodes": {
                node.name: {
                    "host": node.addr,
                    "port": 19995,
                    "docker-client": node.docker_url,
                    "category": node.category,
                }
                for node in self.nodes
            },
            "enabled_nodes": [node.name for node in self.nodes],
            "volumes": {
                "data": {
                    "driver": "local",
                    "opts": {"type": "none", "o": "bind", "device": self.data_dir},
                }
            },
            "environment": {"FLICAMERA_DATA_DIR": self.data_dir},
        }

    def env(self) -> dict[str, str]:
        """Environment variables describing this bed (``FLISWARM_TESTBED_*``)."""

        out = {
            "FLISWARM_TESTBED_ID": str(self.instance),
            "FLISWARM_TESTBED_REGISTRY": self.registry,
            "FLISWARM_TESTBED_MANAGER": self.manager_addr,
            "FLISWARM_TESTBED_DATA_DIR": self.data_dir,
            "FLISWARM_TESTBED_NODES": " ".join(n.name for n in self.nodes),
        }
        for node in self.nodes:
            out[f"FLISWARM_TESTBED_DOCKER_{node.name.upper()}"] = node.docker_url
        return out

    # ---------------------------------------------------------------- repair

    def restore(self, timeout: float = 60.0) -> None:
        """Powers on, plugs in and starts the engine of every node that needs it."""

        with self._locked():
            state = self._state()
            reg = state["registry"]
            if not procs.process_alive(reg.get("pid"), self._registry_marker):
                pid = start_registry(self.manager_addr, self.run_dir)
                with self._state_lock:
                    fresh = self._state()
                    fresh["registry"]["pid"] = pid
                    self._save(fresh)

            def fix(node: Node) -> None:
                info = state["nodes"][node.name]
                spec = self.engine_spec(node.name)
                if not info["powered"] or not network.netns_exists(node.netns):
                    self.power_on(node.name, timeout=timeout)
                    return
                if not info["plugged"]:
                    self.plug(node.name)
                if not procs.process_alive(info.get("pid"), spec.config_path):
                    self.start_engine(node.name, timeout=timeout)

            self._parallel(fix)

    # ------------------------------------------------------------------ faults

    def _node_info(self, name: str) -> dict[str, Any]:
        self.node(name)
        return dict(self._state()["nodes"][name])

    def _update_node(self, name: str, **changes: Any) -> None:
        """Changes a node's entry in the state file (atomically among threads)."""

        with self._state_lock:
            state = self._state()
            state["nodes"][name].update(changes)
            self._save(state)

    def power_off(self, name: str) -> None:
        """Pulls the node's power: SIGKILLs all its processes, deletes its veth and netns.

        Its address disappears and packets to it vanish (a Docker call hangs until the
        client's timeout). Its images and volumes survive for `power_on`.
        """

        with self._locked():
            info = self._node_info(name)
            node, spec = self.node(name), self.engine_spec(name)
            pid = info.get("pid")
            if info["powered"] and network.netns_exists(node.netns):
                network.set_port(self.plan, node.index, False)  # the cable first: no RST
            procs.kill_cgroup(spec.cgroup, ((pid, spec.config_path),) if pid else ())
            network.delete_node_net(self.plan, node.name, node.index)
            engine.remove_cgroup(spec)
            self._update_node(name, powered=False, engine=False, pid=None)

    def power_on(self, name: str, timeout: float = 60.0) -> None:
        """Powers the node back on: same MAC and address, its engine with its old data.

        The node comes back plugged in; containers with a restart policy restart.
        """

        with self._locked():
            info = self._node_info(name)
            node, spec = self.node(name), self.engine_spec(name)
            if info["powered"] and network.netns_exists(node.netns):
                return
            network.create_node_net(self.plan, node.name, node.index)
            pid = engine.start_engine(spec)
            self._update_node(name, powered=True, plugged=True, engine=True, pid=pid)
            engine.wait_ready(spec, pid, timeout=timeout)

    def unplug(self, name: str) -> None:
        """Unplugs the node's network cable (its switch port goes down); the engine runs on."""

        with self._locked():
            info = self._node_info(name)
            if not info["powered"]:
                raise RuntimeError(f"node {name} is powered off.")
            network.set_port(self.plan, self.node(name).index, False)
            self._update_node(name, plugged=False)

    def plug(self, name: str) -> None:
        """Plugs the node's network cable back in."""

        with self._locked():
            info = self._node_info(name)
            if not info["powered"]:
                raise RuntimeError(f"node {name} is powered off.")
            node = self.node(name)
            network.set_port(self.plan, node.index, True)
            network.pin_neighbour(self.plan, node.index)
            self._update_node(name, plugged=True)

    def camera_unplug(self, name: str, container: str | None = None) -> None:
        """Unplugs the simulated camera of the node's flicamera (its camera system loses it,
        as when a real camera is unplugged): ``SIGUSR1`` to the container, through the
        engine (see ``files/flicamera_launcher.py``)."""

        self._signal_container(name, container or f"flicamera-{name}", "SIGUSR1")

    def camera_plug(self, name: str, container: str | None = None) -> None:
        """Plugs the simulated camera back in (``SIGUSR2`` to the container)."""

        self._signal_container(name, container or f"flicamera-{name}", "SIGUSR2")

    def _signal_container(self, name: str, container: str, signal: str) -> None:
        import urllib.error
        import urllib.request

        node = self.node(name)
        url = f"http://{node.addr}:2375/containers/{container}/kill?signal={signal}"
        request = urllib.request.Request(url, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
                answer.read()
        except urllib.error.HTTPError as err:
            raise RuntimeError(f"{name}: cannot signal {container}: {err.read()!r}") from err
        except OSError as err:
            raise RuntimeError(f"{name}: cannot signal {container}: {err}") from err

    def stop_engine(self, name: str, timeout: float = 15.0) -> None:
        """Stops the node's dockerd (SIGTERM, then SIGKILL after ``timeout``); the netns stays."""

        with self._locked():
            info = self._node_info(name)
            engine.terminate_engine(self.engine_spec(name), info.get("pid"), timeout=timeout)
            self._update_node(name, engine=False, pid=None)

    def start_engine(
        self, name: str, timeout: float = 60.0, tls: dict[str, Any] | None = None
    ) -> None:
        """Starts the node's dockerd again and waits until it answers.

        With ``tls`` (``daemon.json`` TLS keys, see `.tls.EngineTLS.daemon_options`) the
        engine listens only on ``tcp://0.0.0.0:2376`` with ``tlsverify`` (no plain TCP)
        until it is stopped and started again without.
        """

        with self._locked():
            info = self._node_info(name)
            if not info["powered"]:
                raise RuntimeError(f"node {name} is powered off.")
            spec = self.engine_spec(name)
            if tls:
                spec = dataclasses.replace(spec, tls=tls)
            if procs.process_alive(info.get("pid"), spec.config_path):
                return
            pid = engine.start_engine(spec)
            self._update_node(name, engine=True, pid=pid)
            if info["plugged"]:
                engine.wait_ready(spec, pid, timeout=timeout)

    def status(self) -> dict[str, dict[str, Any]]:
        """The state of every node, probed now.

        Returns
        -------
        dict
            Per node name: ``addr``, ``powered`` (its netns exists), ``plugged``,
            ``engine`` (dockerd process alive), ``answering`` (``GET /_ping`` over TCP
            within 1 s) and ``reachable`` (ICMP echo within 1 s). Nodes that do not
            exist are never probed over the network.
        """

        state = self._load()
        out: dict[str, dict[str, Any]] = {}

        def probe(node: Node) -> None:
            info = (state or {}).get("nodes", {}).get(node.name, {})
            spec = self.engine_spec(node.name)
            powered = state is not None and network.netns_exists(node.netns)
            result = {
                "addr": node.addr,
                "powered": powered,
                "plugged": powered and network.port_is_up(self.plan, node.index),
                "engine": powered and procs.process_alive(info.get("pid"), spec.config_path),
                "answering": False,
                "reachable": False,
            }
            if powered and network.link_exists(self.plan.manager_link):
                cmd = ["ping", "-c", "1", "-W", "1", "-q", node.addr]
                icmp = subprocess.Popen(cmd, stdin=DEVNULL, stdout=DEVNULL, stderr=DEVNULL)
                try:
                    result["answering"] = engine.ping(node.addr, timeout=1.0)
                    result["reachable"] = icmp.wait(timeout=5) == 0
                finally:
                    if icmp.poll() is None:
                        icmp.kill()
                        icmp.wait()
            out[node.name] = result

        self._parallel(probe)
        return {n.name: out[n.name] for n in self.nodes}

    def routed_to_bed(self, addr: str) -> bool:
        """Whether traffic to ``addr`` stays on this bed's switch or is refused locally.

        Check it before probing a node that may be off: its packets must go to the bed's
        switch (where they vanish) and never follow another route off the machine.
        """

        out = run(["ip", "-o", "route", "get", addr], check=False)
        text = (out.stdout + out.stderr).decode()
        return (
            f"dev {self.plan.manager_link} " in text
            or "unreachable" in text
            or "No route to host" in text
        )
