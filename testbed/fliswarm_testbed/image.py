"""The simulated flicamera image: the real flicamera actor, built offline, pushed to a registry.

No base image can be pulled here, so the image is made from the host Python: the interpreter,
its shared libraries (the ``ldd`` closure) and its standard library, plus
``pip install --target /opt/python-packages sdss-flicamera`` run by the same interpreter (so the
wheels match), precompiled bytecode, busybox as ``/bin/sh`` and our launcher
(``files/flicamera_launcher.py``), see `.rootfs`. The single layer, the image config and a
Docker schema 2 manifest are written by hand and cached by a hash of the inputs; pushing uses the
registry HTTP API directly, so no Docker engine is needed (see `.oci`).
`start_flicamera_on_host` runs the same launcher with the host Python, for fast tests.

Run ``python3 -m fliswarm_testbed.image --registry 127.0.0.1:5000`` to build and push.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

from fliswarm_testbed.oci import (
    MANIFEST_TYPE,
    Progress,
    check_registry,
    push_image,
    write_image,
    write_layer,
)
from fliswarm_testbed.rootfs import (
    DEFAULT_CACHE_DIR,
    LAUNCHER,
    LAUNCHER_IN_IMAGE,
    PACKAGES_DIR,
    PythonBase,
    add_files,
    build_python_base,
    compile_bytecode,
    copy_libraries,
    copy_python,
    pip_install,
)
from fliswarm_testbed.rootfs import locked as _locked


__all__ = [
    "LAUNCHER",
    "FLICAMERA_VERSION",
    "REQUIREMENTS",
    "IMAGE_INPUTS_HASH",
    "DEFAULT_CACHE_DIR",
    "ImageBuild",
    "PythonBase",
    "build_python_base",
    "image_inputs",
    "build_flicamera_image",
    "ensure_flicamera_image",
    "ensure_flicamera_image_async",
    "start_flicamera_on_host",
    "wait_flicamera_ready",
    "MANIFEST_TYPE",
]


FLICAMERA_VERSION = "0.7.2"
#: What ``pip install --target`` puts in the image.
REQUIREMENTS: tuple[str, ...] = (f"sdss-flicamera=={FLICAMERA_VERSION}",)
#: Bump when the recipe below changes, to invalidate cached builds.
RECIPE_VERSION = 2

log = logging.getLogger(__name__)


def image_inputs() -> dict[str, str]:
    """Returns what the image is built from; any change means a rebuild."""

    return {
        "recipe": str(RECIPE_VERSION),
        "python": sys.version,
        "python_executable": os.path.realpath(sys.executable),
        "requirements": " ".join(REQUIREMENTS),
        "launcher_sha256": hashlib.sha256(LAUNCHER.read_bytes()).hexdigest(),
    }


def _inputs_hash() -> str:
    blob = json.dumps(image_inputs(), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


#: Hash of `image_inputs`: names the cache entry and labels the image.
IMAGE_INPUTS_HASH = _inputs_hash()


@dataclass
class ImageBuild:
    """The result of `build_flicamera_image`."""

    #: ``<registry>/<repository>:<tag>``, ready for ``docker pull``.
    reference: str
    #: The digest of the pushed manifest.
    digest: str
    inputs_hash: str
    #: Bytes of the compressed layer and of the uncompressed root file system tar.
    layer_size: int
    rootfs_size: int
    #: Whether this call built the image (`False`: it came from the cache).
    built: bool
    #: How many blobs this call uploaded (0 when the registry already had them).
    uploaded: int
    seconds: float


def build_flicamera_image(
    registry: str,
    repository: str = "sdss/flicamera",
    tag: str = "sim",
    cache_dir: Path | None = None,
    rebuild: bool = False,
    progress: Progress | None = None,
    lock_timeout: float = 900.0,
) -> ImageBuild:
    """Builds the image if its inputs changed, and makes sure the registry has it.

    Parameters
    ----------
    registry
        ``HOST:PORT`` of a plain-HTTP registry on loopback or on the test bed (10.250.x.y).
    repository, tag
        Where to push in the registry.
    cache_dir
        Where builds are cached (default `DEFAULT_CACHE_DIR`). A file lock there keeps
        concurrent callers from building twice.
    rebuild
        Build even when the cache has this build.
    progress
        Called with a line of text for each step (default: log at INFO).

    Returns
    -------
    build
        The reference, digest, sizes and whether anything was built or uploaded.
    """

    start = time.monotonic()
    say = progress or log.info
    host = check_registry(registry)
    cache_dir = Path(cache_dir or DEFAULT_CACHE_DIR)
    entry = cache_dir / IMAGE_INPUTS_HASH
    with _locked(cache_dir / ".lock", lock_timeout):
        built = rebuild or not (entry / "build.json").exists()
        if built:
            _build(entry, say)
        meta = json.loads((entry / "build.json").read_text())
        uploaded = push_image(host, repository, tag, entry, meta, say)
    seconds = time.monotonic() - start
    reference = f"{registry}/{repository}:{tag}"
    say(f"{reference} {meta['digest']} ready in {seconds:.2f} s (built={built}).")
    return ImageBuild(
        reference,
        meta["digest"],
        IMAGE_INPUTS_HASH,
        meta["layer_size"],
        meta["rootfs_size"],
        built,
        uploaded,
        seconds,
    )


def ensure_flicamera_image(
    registry: str,
    repository: str = "sdss/flicamera",
    tag: str = "sim",
    cache_dir: Path | None = None,
) -> str:
    """Makes sure ``<registry>/<repository>:<tag>`` exists (see `build_flicamera_image`).

    Returns
    -------
    reference
        ``<registry>/<repository>:<tag>``.
    """

    return build_flicamera_image(registry, repository, tag, cache_dir).reference


async def ensure_flicamera_image_async(
    registry: str,
    repository: str = "sdss/flicamera",
    tag: str = "sim",
    cache_dir: Path | None = None,
) -> str:
    """`ensure_flicamera_image` in a worker thread."""

    return await asyncio.to_thread(ensure_flicamera_image, registry, repository, tag, cache_dir)


def _build(entry: Path, say: Progress) -> None:
    """Builds the root file system, the layer, the config and the manifest into ``entry``."""

    work = entry.with_name(entry.name + ".tmp")
    shutil.rmtree(work, ignore_errors=True)
    rootfs = work / "rootfs"
    times: dict[str, float] = {}

    def step(name: str, func: Callable[[], object]) -> None:
        t0 = time.monotonic()
        func()
        times[name] = round(time.monotonic() - t0, 2)
        say(f"  {name}: {times[name]:.1f} s")

    say(f"Building the flicamera image {IMAGE_INPUTS_HASH} in {work}")
    step("copy python", lambda: copy_python(rootfs))
    step("pip install", lambda: pip_install(rootfs / PACKAGES_DIR.lstrip("/"), REQUIREMENTS))
    step("add launcher and busybox", lambda: add_files(rootfs))
    step("compile bytecode", lambda: compile_bytecode(rootfs))
    step("copy shared libraries", lambda: copy_libraries(rootfs))
    layer = work / "layer.tar.gz"
    sizes: dict[str, Any] = {}
    step("write layer", lambda: sizes.update(write_layer(rootfs, layer)))
    packages = sorted(p.name for p in (rootfs / PACKAGES_DIR.lstrip("/")).glob("*.dist-info"))
    shutil.rmtree(rootfs)

    python = os.path.realpath(sys.executable)
    config = {
        "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), "amd64"),
        "os": "linux",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": {
            "Env": [
                "PATH=/usr/local/bin:/usr/bin:/bin",
                f"PYTHONPATH={PACKAGES_DIR}",
                "PYTHONDONTWRITEBYTECODE=1",
                "PYTHONUNBUFFERED=1",
                "HOME=/root",
                "LANG=C.UTF-8",
                "FLICAMERA_DATA_DIR=/data",
            ],
            "Cmd": [python, LAUNCHER_IN_IMAGE],
            "WorkingDir": "/",
            "Labels": {"org.sdss.fliswarm.inputs": IMAGE_INPUTS_HASH},
        },
        "rootfs": {"type": "layers", "diff_ids": [sizes["diff_id"]]},
        "history": [{"created_by": "fliswarm_testbed.image (offline build)"}],
    }
    digests = write_image(work, config, sizes)
    meta = {
        "digest": digests["digest"],
        "layer_digest": sizes["digest"],
        "config_digest": digests["config_digest"],
        "layer_size": sizes["size"],
        "rootfs_size": sizes["rootfs_size"],
        "inputs": image_inputs(),
        "step_seconds": times,
        "packages": packages,
    }
    (work / "build.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(entry, ignore_errors=True)
    work.rename(entry)
    for old in entry.parent.iterdir():  # drop builds of other inputs (and nothing else)
        if old != entry and re.fullmatch(r"[0-9a-f]{16}(\.tmp)?", old.name) and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    mib = 1024 * 1024
    say(
        f"Built: rootfs {sizes['rootfs_size'] / mib:.0f} MiB, "
        f"layer {sizes['size'] / mib:.0f} MiB (gzip), {len(packages)} packages."
    )


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


def main(argv: list[str] | None = None) -> int:
    """``python3 -m fliswarm_testbed.image --registry HOST:PORT``: build and push."""

    parser = argparse.ArgumentParser(
        prog="python3 -m fliswarm_testbed.image",
        description="Build the simulated flicamera image offline and push it to a registry.",
    )
    parser.add_argument("--registry", required=True, help="HOST:PORT of the registry.")
    parser.add_argument("--repository", default="sdss/flicamera")
    parser.add_argument("--tag", default="sim")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--rebuild", action="store_true", help="ignore the cache")
    args = parser.parse_args(argv)
    start = time.monotonic()

    def progress(line: str) -> None:
        print(f"[{time.monotonic() - start:6.1f} s] {line}", flush=True)

    build = build_flicamera_image(
        args.registry, args.repository, args.tag, args.cache_dir, args.rebuild, progress
    )
    print(json.dumps(asdict(build), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
