"""Creating, starting and removing fliswarm containers on one engine."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from fliswarm.docker.containers import (
    LABEL_IMAGE,
    LABEL_MANAGED,
    LABEL_NODE,
    container_body,
    made_by_fliswarm,
    short_id,
)
from fliswarm.docker.engine import Engine
from fliswarm.exceptions import (
    ContainerConflictError,
    ContainerStartError,
    DockerAPIError,
    NodeError,
)


__all__ = ["check_managed", "create_and_start", "remove", "remove_named", "UsbMemo"]

#: Seconds a node is remembered to have no usable USB bus (it is tried again after that).
USB_MEMO_SECONDS = 600.0


def check_managed(node: str, info: Mapping[str, Any], name: str) -> None:
    """Raises `.ContainerConflictError` if a container was not created by fliswarm (this
    version or 0.7: `.made_by_fliswarm`)."""

    if not made_by_fliswarm(info, node):
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


class UsbMemo:
    """Remembers, for a while, that a node has no usable USB bus at a path.

    Each container creation would otherwise first try the bind mount and be refused by
    the engine (one wasted request per creation).
    """

    def __init__(self, seconds: float = USB_MEMO_SECONDS) -> None:
        self.seconds = seconds
        self._missing: dict[str, float] = {}

    def missing(self, bus: str) -> bool:
        """Whether ``bus`` was found unusable less than `seconds` ago."""

        since = self._missing.get(bus)
        return since is not None and time.monotonic() - since < self.seconds

    def set_missing(self, bus: str) -> None:
        self._missing[bus] = time.monotonic()


def _repository(ref: str) -> str:
    """An image reference without its tag or digest."""

    ref = ref.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        ref = ref.rsplit(":", 1)[0]
    return ref


async def remove_named(
    engine: Engine,
    name: str,
    image: str,
    grace: float | None,
    force: bool,
    command: Any,
) -> bool:
    """Stops and removes the fliswarm container ``name`` (see `.Node.stop_container`).

    With ``force`` the container is killed and the other fliswarm containers of the node
    running the same image repository are removed too; the container inspect and the
    container list are then made concurrently, and the containers removed concurrently.
    Returns whether a container was removed.
    """

    node = engine.node
    if force:
        filters = {"label": [f"{LABEL_MANAGED}=true", f"{LABEL_NODE}={node}"]}
        info, others = await asyncio.gather(
            engine.inspect_container(name), engine.list_containers(filters)
        )
    else:
        info, others = await engine.inspect_container(name), []

    removals = []
    if info is not None:
        check_managed(node, info, name)
        if info["State"].get("Running"):
            command.warning(text=f"{node}: removing running container {name}.")
        removals.append(remove(engine, info, grace))

    repository = _repository(image)
    for other in others:
        ref = _repository((other.get("Labels") or {}).get(LABEL_IMAGE, ""))
        if info is not None and other["Id"] == info["Id"]:
            continue
        if ref != repository and not ref.endswith("/" + repository):
            continue
        other_name = (other.get("Names") or ["?"])[0].lstrip("/")
        command.warning(
            text=f"{node}: removing container ({other_name}, "
            f"{short_id(other['Id'])}) that uses image {repository}."
        )
        removals.append(engine.remove_container(other["Id"]))

    results = await asyncio.gather(*removals, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    if info is not None:
        command.debug(container=[node, "NA"])
    return bool(removals)


def _no_usb(node: str, usb: str) -> str:
    """The warning for a node without a usable USB bus (quoted in the runbook)."""

    return (
        f"{node}: no usable {usb} on the node; not passing it through "
        "(flicamera will see no camera)."
    )


async def create_and_start(
    engine: Engine,
    name: str,
    config: Mapping[str, Any],
    usb: str | None,
    command: Any,
    memo: UsbMemo | None = None,
    restart_policy: Mapping[str, Any] | None = None,
) -> str:
    """Creates and starts a container from its canonical configuration; returns its id.

    The USB bus is passed through only when the node has it. The node's filesystem
    cannot be checked from the manager, so the container is first created with a bind
    mount of ``usb``: the engine validates bind sources when it creates a container and
    refuses a missing one (``400 ... bind source path does not exist``), and one without
    device nodes (``500 ... not a device node``); the container is then created without
    the USB bus. ``memo`` remembers that for a while, so that the next creations on the
    node go straight to the container without the USB bus. A container that does not start
    is removed.

    Raises
    ------
    ContainerConflictError
        If the name was taken meanwhile.
    ContainerStartError
        If the container cannot be created or started.
    """

    node = engine.node
    if usb and memo is not None and memo.missing(usb):
        command.warning(text=_no_usb(node, usb))
        usb = None
    cid: str | None = None
    for bus in (usb, None) if usb else (None,):
        try:
            body = container_body(node, config, bus, restart_policy)
            cid = await engine.create_container(name, body)
            break
        except DockerAPIError as err:
            # 400: no such bind source; 500: the path exists but holds no device node.
            if bus and err.status in (400, 500) and bus in err.message:
                command.warning(text=_no_usb(node, bus))
                if memo is not None:
                    memo.set_missing(bus)
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
