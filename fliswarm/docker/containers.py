"""Pure translation of fliswarm's container settings into Docker Engine API objects.

Nothing here talks to Docker: these functions build the JSON bodies that `.Node` sends,
the labels that mark fliswarm's containers, and the configuration hash that lets a
supervisor detect drift between the configuration and a running container.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias


__all__ = [
    "LABEL_MANAGED",
    "LABEL_NODE",
    "LABEL_IMAGE",
    "LABEL_CONFIG_HASH",
    "USB_BUS",
    "PortsType",
    "image_reference",
    "normalize_ports",
    "port_bindings",
    "mount_target",
    "canonical_config",
    "config_hash",
    "managed_labels",
    "container_body",
    "short_id",
    "made_by_0_7",
    "made_by_fliswarm",
    "auto_removed",
]


LABEL_MANAGED = "org.sdss.fliswarm.managed"
LABEL_NODE = "org.sdss.fliswarm.node"
LABEL_IMAGE = "org.sdss.fliswarm.image"
LABEL_CONFIG_HASH = "org.sdss.fliswarm.config-hash"

#: Where the node's USB devices live; passed through to the container when present.
USB_BUS = "/dev/bus/usb"

PortsType: TypeAlias = "Sequence[int] | Mapping[str | int, Any]"

_PROTOCOLS = ("tcp", "udp", "sctp")


def image_reference(image: str, registry: str | None = None) -> str:
    """Returns the full reference of an image, prefixed with its registry.

    ``image_reference("sdss/flicamera:latest", "hub:5000")`` is
    ``"hub:5000/sdss/flicamera:latest"``; an image that already starts with the registry
    is returned as it is.
    """

    image = image.strip()
    if not image:
        raise ValueError("empty image name.")
    if not registry:
        return image
    registry = registry.strip().rstrip("/")
    if image.startswith(registry + "/"):
        return image
    return f"{registry}/{image}"


def _check_port(port: Any) -> int:
    if isinstance(port, bool) or not isinstance(port, (int, str)):
        raise ValueError(f"invalid port {port!r}.")
    try:
        value = int(port)
    except ValueError:
        raise ValueError(f"invalid port {port!r}.") from None
    if not 1 <= value <= 65535:
        raise ValueError(f"port {port!r} out of range 1-65535.")
    return value


def normalize_ports(ports: PortsType | None) -> dict[str, tuple[str, int]]:
    """Normalises the published ports to ``{"<port>/<proto>": (host_ip, host_port)}``.

    Parameters
    ----------
    ports
        A list of integers (each container port published on the same node port), or a
        mapping as in docker-py: ``{"2222/tcp": 3333}``, ``{2222: 3333}`` or
        ``{"2222/tcp": ("127.0.0.1", 3333)}``.

    Raises
    ------
    ValueError
        For a malformed port or protocol.
    """

    out: dict[str, tuple[str, int]] = {}
    if not ports:
        return out

    if isinstance(ports, Mapping):
        items = list(ports.items())
    elif isinstance(ports, (str, bytes)):
        raise ValueError(f"ports must be a list or a mapping, not {ports!r}.")
    else:
        items = [(port, port) for port in ports]

    for key, value in items:
        if isinstance(key, str) and "/" in key:
            number, proto = key.split("/", 1)
        else:
            number, proto = str(key), "tcp"
        proto = proto.lower()
        if proto not in _PROTOCOLS:
            raise ValueError(f"invalid protocol in port {key!r}.")
        container_port = _check_port(number)

        if isinstance(value, (tuple, list)):
            if len(value) != 2:
                raise ValueError(f"invalid host binding {value!r} for port {key!r}.")
            host_ip, host_port = str(value[0]), _check_port(value[1])
        else:
            host_ip, host_port = "0.0.0.0", _check_port(value)
        out[f"{container_port}/{proto}"] = (host_ip, host_port)

    return dict(sorted(out.items()))


def port_bindings(
    ports: Mapping[str, tuple[str, int]],
) -> tuple[dict[str, dict[str, Any]], dict[str, list[dict[str, str]]]]:
    """Returns the ``ExposedPorts`` and ``HostConfig.PortBindings`` for normalised ports."""

    exposed: dict[str, dict[str, Any]] = {key: {} for key in ports}
    bindings = {
        key: [{"HostIp": host_ip, "HostPort": str(host_port)}]
        for key, (host_ip, host_port) in ports.items()
    }
    return exposed, bindings


def mount_target(device: str | None, volume: str = "") -> str:
    """Returns the mount point in the container of a volume, from its device.

    As in the original fliswarm, a volume is mounted at the path of its device: an NFS
    device ``:/data`` or ``host:/data`` gives ``/data``; a bind device ``/srv/x`` gives
    ``/srv/x``.

    Raises
    ------
    ValueError
        If the device does not end in an absolute path (e.g. a ``tmpfs`` volume).
    """

    if not device:
        raise ValueError(f"volume {volume!r} has no device option: no mount point.")
    path = device.rsplit(":", 1)[-1] if ":" in device else device
    path = path.rstrip("/") or "/"
    if not path.startswith("/"):
        raise ValueError(
            f"volume {volume!r}: device {device!r} is not a path; cannot derive a mount point."
        )
    return path


def canonical_config(
    name: str,
    image: str,
    mounts: Mapping[str, str] | None = None,
    privileged: bool = False,
    envs: Mapping[str, Any] | None = None,
    ports: Mapping[str, tuple[str, int]] | None = None,
    network: str = "host",
    user: str | None = None,
    cmd: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The canonical (order-independent, JSON-able) configuration of a container.

    Parameters
    ----------
    name
        The container name.
    image
        The full image reference (with the registry).
    mounts
        Volume name to mount point.
    privileged, envs, network, user, cmd
        As in `.Node.run_container`.
    ports
        Normalised ports (`normalize_ports`); ignored with the ``host`` network.
    """

    return {
        "name": name,
        "image": image,
        "mounts": {str(k): str(v) for k, v in sorted((mounts or {}).items())},
        "privileged": bool(privileged),
        "envs": {str(k): str(v) for k, v in sorted((envs or {}).items())},
        "ports": (
            {}
            if network == "host"
            else {k: [v[0], int(v[1])] for k, v in sorted((ports or {}).items())}
        ),
        "network": network,
        "user": user or "",
        "cmd": list(cmd) if cmd is not None else None,
    }


def config_hash(config: Mapping[str, Any]) -> str:
    """The SHA-256 hex digest of a canonical configuration (see `canonical_config`)."""

    text = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def managed_labels(node: str, image: str, chash: str | None = None) -> dict[str, str]:
    """The labels that mark a container or volume created by fliswarm."""

    labels = {LABEL_MANAGED: "true", LABEL_NODE: node, LABEL_IMAGE: image}
    if chash is not None:
        labels[LABEL_CONFIG_HASH] = chash
    return labels


def container_body(
    node: str,
    config: Mapping[str, Any],
    usb: str | None = USB_BUS,
    restart_policy: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``POST /containers/create`` body for a canonical configuration.

    Parameters
    ----------
    node
        The node name (for the labels).
    config
        The canonical configuration (`canonical_config`).
    usb
        The USB bus directory to bind-mount and pass as a device, or `None`.
    restart_policy
        The engine's ``HostConfig.RestartPolicy`` (``{"Name": "unless-stopped"}``), or
        `None` for the engine's default (``no``).
    """

    mounts: list[dict[str, Any]] = [
        {"Type": "volume", "Source": source, "Target": target, "ReadOnly": False}
        for source, target in config["mounts"].items()
    ]
    host_config: dict[str, Any] = {
        "NetworkMode": config["network"],
        "Privileged": config["privileged"],
        "Mounts": mounts,
    }
    if restart_policy is not None:
        host_config["RestartPolicy"] = dict(restart_policy)
    body: dict[str, Any] = {
        "Image": config["image"],
        "Env": [f"{k}={v}" for k, v in config["envs"].items()],
        "User": config["user"],
        "Labels": managed_labels(node, config["image"], config_hash(config)),
        "Tty": False,
        "OpenStdin": False,
        "AttachStdin": False,
        "AttachStdout": False,
        "AttachStderr": False,
        "HostConfig": host_config,
    }
    if config["cmd"] is not None:
        body["Cmd"] = list(config["cmd"])
    if usb:
        mounts.append({"Type": "bind", "Source": usb, "Target": usb, "ReadOnly": False})
        host_config["Devices"] = [
            {"PathOnHost": usb, "PathInContainer": usb, "CgroupPermissions": "rwm"}
        ]
    if config["ports"]:
        ports = {k: (v[0], v[1]) for k, v in config["ports"].items()}
        exposed, bindings = port_bindings(ports)
        body["ExposedPorts"] = exposed
        host_config["PortBindings"] = bindings
    return body


def short_id(container_id: str) -> str:
    """The 12-character short id of a container (as ``docker ps`` shows it)."""

    return container_id.removeprefix("sha256:")[:12]


def made_by_0_7(info: Mapping[str, Any], node: str) -> bool:
    """Whether a container (inspect data) is one sdss-fliswarm 0.7 ran for ``node``.

    0.7 labelled nothing; its flicamera containers are privileged, removed by the engine
    when they stop (``docker run --rm``) and have ``ACTOR_NAME=<node>`` in their
    environment. After an upgrade in place they are fliswarm's (drifted: no config hash),
    not containers of someone else in the way.
    """

    config = info.get("Config") or {}
    host = info.get("HostConfig") or {}
    return (
        LABEL_MANAGED not in (config.get("Labels") or {})
        and f"ACTOR_NAME={node}" in (config.get("Env") or [])
        and bool(host.get("Privileged"))
        and bool(host.get("AutoRemove"))
    )


def made_by_fliswarm(info: Mapping[str, Any], node: str) -> bool:
    """Whether a container (inspect data) was made by fliswarm for ``node``: labelled
    `LABEL_MANAGED` by this version, or run by sdss-fliswarm 0.7 (`made_by_0_7`)."""

    labels = (info.get("Config") or {}).get("Labels") or {}
    return labels.get(LABEL_MANAGED) == "true" or made_by_0_7(info, node)


def auto_removed(info: Mapping[str, Any]) -> bool:
    """Whether the engine removes the container when it stops (0.7's ``--rm``): such a
    container cannot be given a restart policy."""

    return bool((info.get("HostConfig") or {}).get("AutoRemove"))
