"""Runs the real flicamera actor (sdss-flicamera 0.7.2) with ONE simulated camera.

Started like the upstream image (``flicamera actor --host 0.0.0.0 --actor-name $ACTOR_NAME
start --debug``), but with a generated configuration and simulation profile. Environment:

- ``ACTOR_NAME`` (required): the node name, e.g. ``gfa1``. It is also the camera name; the
  camera serial is derived from it deterministically (`serial_for`).
- ``OBSERVATORY``: ``APO`` (default) or ``LCO``; flicamera reads it at import.
- ``FLICAMERA_DATA_DIR``: where images and logs go (default ``/data``, the mounted volume).
- ``FLICAMERA_HOST`` / ``FLICAMERA_PORT``: listening address (default ``0.0.0.0:19995``).

This file is stand-alone (stdlib + flicamera only): it runs with the image's Python.
"""

from __future__ import annotations

import hashlib
import json
import os
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
    from flicamera.__main__ import main as flicamera_main

    sys.argv = ["flicamera", "-c", f.name, "--simulate", "--simulation-profile", "sim"]
    sys.argv += ["actor", "--host", host, "--port", port, "--actor-name", name]
    sys.argv += ["start", "--debug"]
    flicamera_main()


if __name__ == "__main__":
    main()
