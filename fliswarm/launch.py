"""Creating, starting and removing fliswarm containers on one engine."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .containers import LABEL_MANAGED, container_body, short_id
from .engine import Engine
from .exceptions import (
    ContainerConflictError,
    ContainerStartError,
    DockerAPIError,
    NodeError,
)


__all__ = ["check_managed", "create_and_start", "remove"]


def check_managed(node: str, info: Mapping[str, Any], name: str) -> None:
    """Raises `.ContainerConflictError` if a container was not created by fliswarm."""

    labels = (info.get("Config") or {}).get("Labels") or {}
    if labels.get(LABEL_MANAGED) != "true":
        raise ContainerConflictError(
            node,
            f"a container named {name!r} ({short_id(info['Id'])}) exists but was not "
            "created by fliswarm; it is left alone: remove or rename it by hand.",
        )


async def remove(engine: Engine, info: Mapping[str, Any], grace: float | None) -> None:
    """Removes a container, first stopping it with SIGTERM unless ``grace`` is `None`."""

    if grace is not None and (info.get("State") or {}).get("Running"):
        await engine.stop_container(info["Id"], grace)
    await engine.remove_container(info["Id"])


async def create_and_start(
    engine: Engine,
    name: str,
    config: Mapping[str, Any],
    usb: str | None,
    command: Any,
) -> str:
    """Creates and starts a container from its canonical configuration; returns its id.

    The USB bus is passed through only when the node has it. The node's filesystem
    cannot be checked from the manager, so the container is first created with a bind
    mount of ``usb``: the engine validates bind sources when it creates a container and
    refuses a missing one (``400 ... bind source path does not exist``), and one without
    device nodes (``500 ... not a device node``); the container is then created without
    the USB bus. A container that does not start is removed.

    Raises
    ------
    ContainerConflictError
        If the name was taken meanwhile.
    ContainerStartError
        If the container cannot be created or started.
    """

    node = engine.node
    cid: str | None = None
    for bus in (usb, None) if usb else (None,):
        try:
            cid = await engine.create_container(name, container_body(node, config, bus))
            break
        except DockerAPIError as err:
            # 400: no such bind source; 500: the path exists but holds no device node.
            if bus and err.status in (400, 500) and bus in err.message:
                command.debug(text=f"{node}: no usable {bus} on the node; not passing it through.")
                continue
            if err.status == 409:
                raise ContainerConflictError(node, err.message) from err
            raise ContainerStartError(
                node, f"cannot create container {name}: {err.message}"
            ) from err
    assert cid is not None

    try:
        await engine.start_container(cid)
    except NodeError as err:
        try:
            await engine.remove_container(cid)
        except NodeError:
            pass
        raise ContainerStartError(
            node, f"container {name} did not start (removed again): {err.message}"
        ) from err
    return cid
