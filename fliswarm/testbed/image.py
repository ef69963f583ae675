"""The simulated flicamera image: the real flicamera actor, built offline.

`start_flicamera_on_host` runs the same launcher with the host Python, for fast tests.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import BinaryIO


__all__ = ["LAUNCHER", "start_flicamera_on_host", "wait_flicamera_ready"]


#: The launcher script that runs flicamera with one simulated camera.
LAUNCHER = Path(__file__).parent / "files" / "flicamera_launcher.py"


def _open_log(path: Path) -> BinaryIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "ab")


async def start_flicamera_on_host(
    name: str,
    port: int,
    data_dir: Path,
    host: str = "127.0.0.1",
    observatory: str = "APO",
) -> asyncio.subprocess.Process:
    """Starts the real flicamera actor with one simulated camera, on the host.

    Parameters
    ----------
    name
        The actor name, which is also the camera name.
    port
        The TCP port to listen on.
    data_dir
        Where images (``<data_dir>/<n>cam/<sjd>/<n>img-<name>-NNNN.fits``) and logs go. The
        launcher's output goes to ``<data_dir>/logs/flicamera-launcher-<name>.log``.
    host
        The address to listen on; keep it on loopback.
    observatory
        ``APO`` or ``LCO``.

    Returns
    -------
    process
        The running process. The caller must terminate and wait for it. Use
        `wait_flicamera_ready` to know when it listens.
    """

    env = dict(os.environ)
    env.update(
        ACTOR_NAME=name,
        OBSERVATORY=observatory,
        FLICAMERA_HOST=host,
        FLICAMERA_PORT=str(port),
        FLICAMERA_DATA_DIR=str(data_dir),
    )
    with _open_log(Path(data_dir) / "logs" / f"flicamera-launcher-{name}.log") as log:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            str(LAUNCHER),
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )


async def wait_flicamera_ready(host: str, port: int, timeout: float = 30.0) -> float:
    """Waits until a flicamera actor accepts TCP connections.

    Returns
    -------
    elapsed
        The seconds waited.

    Raises
    ------
    TimeoutError
        If nothing listens on ``host:port`` after ``timeout`` seconds.
    """

    start = time.monotonic()
    while True:
        left = timeout - (time.monotonic() - start)
        if left <= 0:
            raise TimeoutError(f"flicamera on {host}:{port} not ready after {timeout} s.")
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), timeout=min(left, 2.0)
            )
        except (OSError, asyncio.TimeoutError):
            await asyncio.sleep(0.1)
            continue
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), timeout=2.0)
        except (OSError, asyncio.TimeoutError):
            pass
        return time.monotonic() - start
