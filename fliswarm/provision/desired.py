"""The desired state of a node, derived from the configuration (pure logic).

`container_spec` is the one definition of the flicamera container of a node; `desired_node`
adds what provisioning converges to: the volumes, the config hash the running container must
carry, the restart policies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fliswarm.docker.containers import (
    LABEL_CONFIG_HASH,
    LABEL_MANAGED,
    canonical_config,
    config_hash,
    image_reference,
    made_by_0_7,
    mount_target,
)


if TYPE_CHECKING:
    from fliswarm.config.settings import NodeSettings, Settings


__all__ = [
    "RESTART_POLICIES",
    "engine_restart_policy",
    "DesiredNode",
    "container_user",
    "container_spec",
    "desired_hash",
    "desired_node",
    "container_drift",
]


#: The values of the ``restart_policy`` setting.
RESTART_POLICIES = ("always", "on-failure", "never")


def container_user(node: NodeSettings) -> str | None:
    """``uid:gid`` (or ``uid``) the container runs as, from ``docker-uid``/``docker-gid``."""

    if node.docker_uid is None:
        return None
    return (
        f"{node.docker_uid}:{node.docker_gid}"
        if node.docker_gid is not None
        else str(node.docker_uid)
    )


def container_spec(settings: Settings, name: str) -> dict[str, Any]:
    """The keyword arguments of `.Node.run_container` for the flicamera container of a node.

    Parameters
    ----------
    settings
        fliswarm's settings.
    name
        The node name.
    """

    node = settings.nodes[name]
    envs: dict[str, str] = {"ACTOR_NAME": name}
    if settings.observatory:
        envs["OBSERVATORY"] = settings.observatory
    envs.update(settings.environment)
    envs.update(node.environment)
    return {
        "name": settings.container(name),
        "image": settings.node_image(name),
        "registry": settings.registry,
        "volumes": list(settings.volumes),
        "privileged": True,
        "envs": envs,
        "user": container_user(node),
        "network": "host",
    }


def desired_hash(
    spec: Mapping[str, Any],
    volumes: Mapping[str, Mapping[str, Any]],
    registry: str | None = None,
) -> str | None:
    """The config hash `.Node.run_container` gives a container made from ``spec``.

    Mount points come from the configured volumes' ``device`` option, as the node derives
    them from the volumes it creates from the same configuration. `None` if a volume has
    no usable device (the container could not be created either).
    """

    ref = image_reference(spec["image"], spec.get("registry") or registry)
    mounts: dict[str, str] = {}
    for vname in spec.get("volumes") or ():
        opts = (volumes.get(vname) or {}).get("opts") or {}
        try:
            mounts[vname] = mount_target(opts.get("device"), vname)
        except ValueError:
            return None
    canonical = canonical_config(
        spec["name"],
        ref,
        mounts,
        bool(spec.get("privileged")),
        spec.get("envs"),
        {},
        spec.get("network", "host"),
        spec.get("user"),
        spec.get("cmd"),
    )
    return config_hash(canonical)


@dataclass(frozen=True)
class DesiredNode:
    """What one enabled node should look like."""

    #: The node name.
    name: str
    #: The flicamera container name (``flicamera-gfa1``).
    container: str
    #: `.Node.run_container` keyword arguments.
    spec: dict[str, Any]
    #: Volumes to create: name to ``{driver, opts}``.
    volumes: dict[str, dict[str, Any]]
    #: The config hash label the container must carry (`None`: cannot be computed).
    config_hash: str | None
    #: ``always``, ``on-failure`` or ``never``.
    restart_policy: str
    #: Whether fliswarm repairs the node.
    self_healing: bool
    #: Whether a drifted container is replaced without an operator command.
    replace_drifted: bool
    #: The engine's restart policy for the container (`.engine_restart_policy`).
    engine_restart: dict[str, Any] = field(default_factory=dict)


def desired_node(settings: Settings, name: str) -> DesiredNode:
    """The desired state of a node from fliswarm's settings."""

    spec = container_spec(settings, name)
    volumes = {
        vname: {"driver": volume.driver, "opts": dict(volume.opts)}
        for vname, volume in settings.volumes.items()
    }
    policy = settings.restart_policy
    return DesiredNode(
        name=name,
        container=spec["name"],
        spec=spec,
        volumes=volumes,
        config_hash=desired_hash(spec, volumes, settings.registry),
        restart_policy=policy,
        self_healing=settings.self_healing,
        replace_drifted=settings.replace_drifted,
        engine_restart=engine_restart_policy(policy, settings.self_healing),
    )


def container_drift(info: Mapping[str, Any], desired: DesiredNode) -> str | None:
    """Why a container differs from the desired one, or `None` if it does not.

    Only fliswarm's own containers are compared (by their config hash label).
    """

    labels = (info.get("Config") or {}).get("Labels") or {}
    if made_by_0_7(info, desired.name):
        return "sdss-fliswarm 0.7 made it (without fliswarm's labels)"
    if labels.get(LABEL_MANAGED) != "true" or desired.config_hash is None:
        return None
    found = labels.get(LABEL_CONFIG_HASH)
    if found == desired.config_hash:
        return None
    if not found:
        return "the container has no config hash label: an older fliswarm made it"
    return (
        f"made from other settings than the configuration's: config hash {found[:12]}, "
        f"configured {desired.config_hash[:12]}"
    )


def engine_restart_policy(policy: str, self_healing: bool = True) -> dict[str, object]:
    """The Docker ``HostConfig.RestartPolicy`` given to the flicamera containers.

    The engine restarts the container by itself when the node reboots or the engine
    restarts, even if fliswarm is not running: ``always`` becomes ``unless-stopped`` (a
    container stopped on purpose stays stopped), ``on-failure`` stays ``on-failure``,
    ``never`` (or self-healing off) becomes ``no``.
    """

    if policy not in RESTART_POLICIES:
        raise ValueError(f"unknown restart policy {policy!r}.")
    if not self_healing or policy == "never":
        return {"Name": "no", "MaximumRetryCount": 0}
    if policy == "always":
        return {"Name": "unless-stopped", "MaximumRetryCount": 0}
    return {"Name": "on-failure", "MaximumRetryCount": 0}
