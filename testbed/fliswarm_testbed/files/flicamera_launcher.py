"""Runs the real flicamera actor (sdss-flicamera 0.7.2) with ONE simulated camera.

Started like the upstream image (``flicamera actor --host 0.0.0.0 --actor-name $ACTOR_NAME
start --debug``), but with a generated configuration and simulation profile. Environment:

- ``ACTOR_NAME`` (required): the node name, e.g. ``gfa1``. It is also the camera name; the
  camera serial is derived from it deterministically (`serial_for`).
- ``OBSERVATORY``: ``APO`` (default) or ``LCO``; flicamera reads it at import.
- ``FLICAMERA_DATA_DIR``: where images and logs go (default ``/data``, the mounted volume).
- ``FLICAMERA_HOST`` / ``FLICAMERA_PORT``: listening address (default ``0.0.0.0:19995``).

Signals (sent through the engine, ``POST /containers/{id}/kill?signal=...``) unplug and plug
the simulated camera: ``SIGUSR1`` takes its device off the simulated USB bus and removes the
camera from flicamera's camera system, as flicamera's camera poller does when a real camera
is unplugged (flicamera then answers ``no cameras connected.`` and broadcasts ``Camera
disconnected: <name>``); ``SIGUSR2`` puts it back and adds the camera again (``Camera
connected: <name>``).

This file is stand-alone (stdlib + flicamera only): it runs with the image's Python.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import sys
import tempfile


SHAPE = 256  # Noise-only 256x256 images: ``expose 0.1`` takes well under a second.


def serial_for(name: str) -> str:
    """Returns a stable, FLI-looking serial (``ML`` + 7 digits) for a camera name."""

    return f"ML{int(hashlib.sha256(name.encode()).hexdigest(), 16) % 10**7:07d}"


def make_config(name: str, observatory: str, data_dir: str) -> dict:
    """Returns the flicamera configuration with one simulated camera called ``name``."""

    serial = serial_for(name)
    params = {
        "temperature": {"CCD": -25, "base": -10},
        "cooler_power": 60,
        "serial": serial,
        "model": "MicroLine ML4240",
        "ul_x": 0,
        "ul_y": 0,
        "lr_x": SHAPE,
        "lr_y": SHAPE,
    }
    # Upstream bug 2: profiles with a ``sources:`` block fail every exposure under photutils
    # >= 2 ("model must be a Model instance"), so the profile only has noise.
    noise = {"distribution": "gaussian", "mean": 1000.0, "stddev": 20.0}
    exposure = {"seed": None, "shape": [SHAPE, SHAPE], "noise": noise}
    return {
        "actor": {
            "name": name,
            "host": "0.0.0.0",
            "port": 19995,
            "data_dir": data_dir + "/{camera.name[0]}cam/{int(sjd)}",
            "image_name": "{camera.name[0]}img-{camera.name}-{num:04d}.fits",
            "log_dir": data_dir + "/logs/actors/{actor_name}/",
        },
        "cameras": {
            name: {
                "uid": serial,
                "serial": serial,
                "autoconnect": True,
                "gain": 1.0,
                "read_noise": 15.0,
                "observatory": observatory,
                "find_calibrations": False,
            }
        },
        "simulation": {
            "profiles": {
                "sim": {
                    "fast_read": True,
                    "devices": {name: {"uid": serial, "params": params, "exposures": [exposure]}},
                }
            }
        },
    }


def patch_flicamera() -> None:
    """Upstream bug 1: ``--simulate`` exits with ``cannot find camera with serial``.

    ``get_mock_camera_system()`` calls ``FLICameraSystem.setup()`` twice and the second call
    replaces the mock library (which holds the simulated devices) by an empty one. Keep an
    existing library.
    """

    from basecam import CameraSystem
    from flicamera.camera import FLICameraSystem
    from flicamera.lib import LibFLI

    def setup(self: FLICameraSystem) -> object:
        if self.lib is None:
            self.lib = LibFLI(simulation_mode=self.simulation_mode, log=self.log)
        return CameraSystem.setup(self)

    FLICameraSystem.setup = setup


def add_unplug_signals() -> None:
    """``SIGUSR1`` unplugs the simulated camera, ``SIGUSR2`` plugs it back (see the module)."""

    import flicamera.__main__ as cli

    make_system = cli.get_mock_camera_system

    async def get_mock_camera_system(*args: object, **kwargs: object) -> object:
        system = await make_system(*args, **kwargs)
        devices = system.lib.libc.devices
        known = {camera.name: camera.uid for camera in system.cameras}
        unplugged: list = []
        busy: list[asyncio.Task] = []

        async def unplug() -> None:
            for name in list(known):  # Closed first, as flicamera's poller does.
                if system.get_camera(name=name):
                    await system.remove_camera(name=name)
            unplugged.extend(devices)
            devices.clear()

        async def plug() -> None:
            devices.extend(unplugged)
            unplugged.clear()
            for name, uid in known.items():
                if not system.get_camera(name=name):
                    await system.add_camera(name=name, uid=uid)

        def run(action: object) -> None:
            busy[:] = [task for task in busy if not task.done()]
            previous = list(busy)

            async def after() -> None:  # In the order the signals came.
                for task in previous:
                    await asyncio.gather(task, return_exceptions=True)
                await action()  # type: ignore[operator]

            busy.append(asyncio.ensure_future(after()))

        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, run, unplug)
        loop.add_signal_handler(signal.SIGUSR2, run, plug)
        return system

    cli.get_mock_camera_system = get_mock_camera_system


def main() -> None:
    """Writes the configuration, patches flicamera and runs its command line."""

    name = os.environ["ACTOR_NAME"]
    observatory = os.environ.setdefault("OBSERVATORY", "APO").upper()
    data_dir = os.environ.get("FLICAMERA_DATA_DIR", "/data").rstrip("/") or "/"
    host = os.environ.get("FLICAMERA_HOST", "0.0.0.0")
    port = os.environ.get("FLICAMERA_PORT", "19995")

    # JSON is valid YAML; flicamera's -c needs an existing file.
    with tempfile.NamedTemporaryFile("w", prefix="flicamera-", suffix=".yaml", delete=False) as f:
        json.dump(make_config(name, observatory, data_dir), f)

    patch_flicamera()
    add_unplug_signals()
    from flicamera.__main__ import main as flicamera_main

    sys.argv = ["flicamera", "-c", f.name, "--simulate", "--simulation-profile", "sim"]
    sys.argv += ["actor", "--host", host, "--port", port, "--actor-name", name]
    sys.argv += ["start", "--debug"]
    flicamera_main()


if __name__ == "__main__":
    main()
