"""Faults of the test bed's nodes: power, network cable, engine; repair and status."""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import threading
from collections.abc import Callable
from subprocess import DEVNULL
from typing import TYPE_CHECKING, Any

from . import engine, network, procs
from .network import Plan, run
from .registry import start_registry


if TYPE_CHECKING:
    from .bed import Node


__all__ = ["FaultsMixin"]


class FaultsMixin:
    """The fault, repair and status methods of `.Testbed`."""

    plan: Plan
    nodes: list[Node]
    manager_addr: str
    run_dir: str

    if TYPE_CHECKING:

        def _locked(self) -> contextlib.AbstractContextManager[None]: ...
        def _load(self) -> dict[str, Any] | None: ...
        def _save(self, state: dict[str, Any]) -> None: ...

        _state_lock: threading.Lock

        def _state(self) -> dict[str, Any]: ...
        def _parallel(self, func: Callable[[Node], Any]) -> None: ...
        def node(self, name: str) -> Node: ...
        def engine_spec(self, name: str) -> engine.EngineSpec: ...

        @property
        def _registry_marker(self) -> str: ...

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
