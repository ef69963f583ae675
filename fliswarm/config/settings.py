"""Typed settings: the resolved configuration as frozen dataclasses.

`Settings.from_config` takes the flat configuration `fliswarm.config.load_config` returns.
Every default comes from the configuration schema (``etc/config.schema.json``), the one place
they are written: a key missing from the mapping (a configuration built in code rather than
read from a file) takes the schema's default, or, for the few settings the schema requires
(``image``, ``nodes``, ``enabled_nodes``), an empty value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fliswarm.config.loader import DOCKER_PORT, DOCKER_TLS_PORT
from fliswarm.config.schema import with_defaults


__all__ = [
    "Settings",
    "ActorSettings",
    "NodeSettings",
    "Timeouts",
    "LivenessSettings",
    "VolumeSettings",
    "SshSettings",
    "PowerSettings",
]


def _known(section: Mapping[str, Any] | None, *path: str) -> dict[str, Any]:
    """`.with_defaults`, where a ``null`` value also takes the default."""

    given = {key: value for key, value in (section or {}).items() if value is not None}
    return with_defaults(given, *path)


@dataclass(frozen=True)
class Timeouts:
    """Time limits, in seconds (``timeouts`` in the configuration)."""

    docker_connect: float
    docker_request: float
    docker_pull: float
    talk: float
    #: Default limit of a camera command that is not an exposure.
    command: float
    container_ready: float
    ssh: float
    device_connect: float
    power: float


@dataclass(frozen=True)
class LivenessSettings:
    """How the supervisor checks that connected cameras answer (``liveness``)."""

    enabled: bool
    #: The flicamera command sent as a check.
    command: str
    #: Seconds between two checks of a camera.
    interval: float
    #: Seconds the camera has to answer a check.
    timeout: float
    #: Failed checks in a row after which the camera is declared hung.
    failures: int
    #: Seconds per image an exposure may take beyond its exposure time (readout, writing).
    readout: float
    #: Seconds added once before an exposure counts as overrun.
    margin: float


@dataclass(frozen=True)
class ActorSettings:
    """The ``actor`` section: the CLU actor's name, address, tron and log directory."""

    name: str
    host: str
    port: int
    tron_host: str | None
    tron_port: int | None
    log_dir: str | None


@dataclass(frozen=True)
class NodeSettings:
    """One node."""

    name: str
    host: str
    #: flicamera's port on the node.
    port: int
    #: The Docker engine's address (``tcp://host:2375``, or ``:2376`` with TLS).
    docker_client: str
    category: str | None = None
    #: The ssh user for ``reboot``.
    user: str | None = None
    docker_uid: int | None = None
    docker_gid: int | None = None
    #: ``{ca, cert, key}`` client files for a TLS engine.
    docker_tls: dict[str, str] | None = None
    #: The node's device for the power actor.
    power_device: str | None = None
    environment: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(cls, name: str, config: Mapping[str, Any]) -> NodeSettings:
        tls = config.get("docker-tls") or None
        port = DOCKER_TLS_PORT if tls else DOCKER_PORT
        return cls(
            name=name,
            host=config["host"],
            port=int(config["port"]),
            docker_client=config.get("docker-client") or f"tcp://{config['host']}:{port}",
            category=config.get("category"),
            user=config.get("user"),
            docker_uid=config.get("docker-uid"),
            docker_gid=config.get("docker-gid"),
            docker_tls=dict(tls) if tls else None,
            power_device=(config.get("power") or {}).get("device"),
            environment={str(k): str(v) for k, v in (config.get("environment") or {}).items()},
        )


@dataclass(frozen=True)
class VolumeSettings:
    """One Docker volume created on every node."""

    driver: str
    opts: dict[str, Any]


@dataclass(frozen=True)
class SshSettings:
    """How ``reboot`` reaches the nodes."""

    known_hosts: str | None
    user: str | None


@dataclass(frozen=True)
class PowerSettings:
    """The actor that switches the nodes' power, and its commands."""

    actor: str
    poweron: str
    poweroff: str


@dataclass(frozen=True)
class Settings:
    """Every setting of fliswarm, typed (see ``etc/config.schema.json`` for each)."""

    actor: ActorSettings
    observatory: str | None
    registry: str | None
    image: str
    container_name: str
    ping_timeout: float
    status_interval: float
    timeouts: Timeouts
    liveness: LivenessSettings
    restart_policy: str
    self_healing: bool
    replace_drifted: bool
    environment: dict[str, str]
    reboot_command: str
    ssh: SshSettings
    power: PowerSettings | None
    enabled_nodes: tuple[str, ...]
    nodes: dict[str, NodeSettings]
    volumes: dict[str, VolumeSettings]
    #: The image each node was deployed with (``deploy``, ``rollback``; kept in the
    #: runtime-state file), a full reference pinned to a digest, by node name. A node not
    #: here runs the configuration's ``image``.
    deployed_images: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Settings:
        """The settings of a resolved configuration (see the module for missing keys)."""

        top = _known(config)
        actor = _known(config.get("actor"), "actor")
        timeouts = _known(config.get("timeouts"), "timeouts")
        liveness = _known(config.get("liveness"), "liveness")
        power = config.get("power")
        observatory = config.get("observatory") or os.environ.get("OBSERVATORY") or None
        return cls(
            actor=ActorSettings(
                name=actor.get("name", ""),
                host=actor.get("host", ""),
                port=int(actor.get("port", 0)),
                tron_host=actor.get("tron_host"),
                tron_port=actor.get("tron_port"),
                log_dir=actor.get("log_dir"),
            ),
            observatory=observatory,
            registry=config.get("registry"),
            image=config.get("image", ""),
            container_name=top["container_name"],
            ping_timeout=float(top["ping_timeout"]),
            status_interval=float(top["status_interval"]),
            timeouts=Timeouts(**{k: float(v) for k, v in timeouts.items()}),
            liveness=LivenessSettings(
                enabled=bool(liveness["enabled"]),
                command=str(liveness["command"]).strip(),
                interval=float(liveness["interval"]),
                timeout=float(liveness["timeout"]),
                failures=int(liveness["failures"]),
                readout=float(liveness["readout"]),
                margin=float(liveness["margin"]),
            ),
            restart_policy=top["restart_policy"],
            self_healing=bool(top["self_healing"]),
            replace_drifted=bool(top["replace_drifted"]),
            environment={str(k): str(v) for k, v in top["environment"].items()},
            reboot_command=top["reboot_command"],
            ssh=SshSettings(**_known(config.get("ssh"), "ssh")),
            power=(
                PowerSettings(
                    power["actor"], power["command"]["poweron"], power["command"]["poweroff"]
                )
                if power
                else None
            ),
            enabled_nodes=tuple(config.get("enabled_nodes") or ()),
            nodes={
                name: NodeSettings.from_config(name, node)
                for name, node in (config.get("nodes") or {}).items()
            },
            volumes={
                name: VolumeSettings(**_known(volume, "volumes", "*"))
                for name, volume in (config.get("volumes") or {}).items()
            },
        )

    def node_image(self, node: str) -> str:
        """The image a node should run: the one deployed to it, else the configuration's."""

        return self.deployed_images.get(node) or self.image

    def container(self, node: str) -> str:
        """The name of the flicamera container of a node (``flicamera-gfa1``)."""

        return f"{self.container_name}-{node}"
