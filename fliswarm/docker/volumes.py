"""Safe creation and re-creation of Docker volumes on a node.

Re-creating a volume (``force=True``) only replaces the Docker volume *object*:

- the engine's ``local`` driver removes its own ``/var/lib/docker/volumes/<name>``
  directory, never the device behind a ``type=none,o=bind`` or ``type=nfs`` volume, which
  is only mounted while a container uses the volume;
- a volume used by a running container is never removed: a `.VolumeInUseError` asks to
  stop the container first; stopped fliswarm containers still referencing it are
  removed (the engine refuses to remove a referenced volume), other containers are
  never touched;
- the driver must be one the engine lists, and the new driver and options are tried on
  a scratch volume before the old volume is removed, so a bad driver or bad options
  leave the old volume as it was. When the old volume already has the same driver and
  options, they are known to work and this check is skipped.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from fliswarm.docker.containers import LABEL_MANAGED, LABEL_NODE, short_id
from fliswarm.docker.engine import Engine
from fliswarm.exceptions import DockerAPIError, FliswarmError, VolumeDriverError, VolumeInUseError


__all__ = ["create_volume", "volume_body", "check_driver", "same_definition"]


def volume_body(node: str, name: str, driver: str, opts: Mapping[str, Any]) -> dict[str, Any]:
    """The ``POST /volumes/create`` body of a fliswarm volume."""

    if not name or not driver:
        raise FliswarmError(f"{node}: a volume needs a name and a driver.")
    return {
        "Name": name,
        "Driver": driver,
        "DriverOpts": {str(k): str(v) for k, v in opts.items()},
        "Labels": {LABEL_MANAGED: "true", LABEL_NODE: node},
    }


def _driver_error(node: str, driver: str, err: DockerAPIError) -> Exception:
    text = err.message.lower()
    if "plugin" in text and ("not found" in text or "lookup" in text):
        return VolumeDriverError(node, f"volume driver {driver!r} is not available: {err.message}")
    return err


async def check_driver(engine: Engine, driver: str) -> None:
    """Raises `.VolumeDriverError` unless the engine has the volume driver.

    The engine's own answer to an unknown driver takes it ~15 s of plugin-discovery
    retries, so the drivers the engine lists (``GET /info``: built-in and active
    plugins; ``GET /plugins``: managed plugins) are checked first.
    """

    info = await engine.info()
    available = set((info.get("Plugins") or {}).get("Volume") or [])
    if driver in available:
        return
    for plugin in await engine.list_plugins():
        name = str(plugin.get("Name", ""))
        if plugin.get("Enabled") and driver in (name, name.removesuffix(":latest")):
            return
    raise VolumeDriverError(
        engine.node,
        f"volume driver {driver!r} is not available "
        f"(this engine has: {', '.join(sorted(available)) or 'none'}).",
    )


def same_definition(volume: Mapping[str, Any], body: Mapping[str, Any]) -> bool:
    """Whether an existing volume (inspect data) has the driver and options of ``body``."""

    options = {str(k): str(v) for k, v in (volume.get("Options") or {}).items()}
    return volume.get("Driver") == body["Driver"] and options == body["DriverOpts"]


async def _release(engine: Engine, name: str, command: Any) -> None:
    """Makes sure no container references the volume (see the module notes)."""

    users = await engine.list_containers({"volume": [name]})
    running = [c for c in users if c.get("State") == "running"]
    foreign = [c for c in users if (c.get("Labels") or {}).get(LABEL_MANAGED) != "true"]
    names = ", ".join((c.get("Names") or ["?"])[0].lstrip("/") for c in running or foreign)
    if running:
        raise VolumeInUseError(
            engine.node,
            f"volume {name} is used by running container(s) {names}: stop them first.",
        )
    if foreign:
        raise VolumeInUseError(
            engine.node,
            f"volume {name} is used by container(s) {names} not created by fliswarm.",
        )
    for container in users:
        command.warning(
            text=f"{engine.node}: removing stopped container {short_id(container['Id'])} "
            f"that uses volume {name}."
        )
        await engine.remove_container(container["Id"])


async def create_volume(
    engine: Engine,
    name: str,
    driver: str,
    opts: Mapping[str, Any],
    force: bool,
    command: Any,
) -> dict[str, Any]:
    """Creates a volume on a node (`.Node.create_volume`).

    Parameters
    ----------
    engine
        The node's engine.
    name
        The volume name.
    driver
        The volume driver (``local``).
    opts
        The driver options (``{"type": "nfs", "o": "addr=hub,rw", "device": ":/data"}``).
    force
        Re-create the volume object if it exists (the data behind it is kept).
    command
        Where to report.

    Returns
    -------
    dict
        The inspect data of the volume.

    Raises
    ------
    VolumeDriverError
        If the driver does not exist (nothing is created or removed).
    VolumeInUseError
        If ``force`` and the volume is used by a running or a non-fliswarm container.
    """

    node = engine.node
    body = volume_body(node, name, driver, opts)

    existing = await engine.inspect_volume(name)
    if existing is not None and not force:
        command.debug(text=f"{node}: volume {name} already exists.")
        return existing

    proven = existing is not None and same_definition(existing, body)
    if not proven:
        await check_driver(engine, driver)
    if existing is not None:
        await _release(engine, name, command)
        if not proven:  # Try the new driver and options first on a scratch volume.
            scratch = dict(body, Name=f"fliswarm-check-{uuid.uuid4().hex[:12]}")
            try:
                await engine.create_volume(scratch)
            except DockerAPIError as err:
                raise _driver_error(node, driver, err) from err
            await engine.remove_volume(scratch["Name"])
        command.warning(text=f"{node}: recreating existing volume {name}.")
        await engine.remove_volume(name)

    try:
        volume = await engine.create_volume(body)
    except DockerAPIError as err:
        raise _driver_error(node, driver, err) from err
    if not isinstance(volume, dict) or "Options" not in volume:  # Not the volume itself.
        volume = await engine.inspect_volume(name) or {}
    device = (volume.get("Options") or {}).get("device") or "NA"
    command.debug(text=f"{node}: created volume {name}.")
    command.debug(volume=[node, name, True, device])
    return volume
