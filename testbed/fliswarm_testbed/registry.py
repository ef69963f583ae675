"""The test bed's private image registry, and a tiny offline test image.

The registry is Debian's ``docker-registry serve`` on ``<manager>:5000`` in the root
namespace. Its storage is a cache directory shared by every instance (`CACHE_DIR`), so
pushed images survive ``down`` and are pushed once for all beds.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
import urllib.parse

import yaml

from .engine import http_request
from .procs import process_alive, spawn


__all__ = [
    "CACHE_DIR",
    "start_registry",
    "stop_registry",
    "registry_ready",
    "busybox_tar",
    "publish_image_tar",
]


CACHE_DIR = "/var/cache/fliswarm-testbed/registry"


def start_registry(addr: str, run_dir: str, timeout: float = 15.0) -> int:
    """Starts ``docker-registry serve`` on ``addr:5000`` and waits until it answers.

    Parameters
    ----------
    addr
        The manager address (must already exist on a local interface).
    run_dir
        Where to write its configuration and log.
    timeout
        Seconds to wait for ``GET /v2/``.

    Returns
    -------
    int
        The registry's PID.
    """

    os.makedirs(CACHE_DIR, exist_ok=True)
    os.makedirs(run_dir, exist_ok=True)
    config_path = os.path.join(run_dir, "registry.yml")
    config = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": CACHE_DIR},
            "delete": {"enabled": True},
        },
        "http": {"addr": f"{addr}:5000"},
    }
    with open(config_path, "w") as f:
        yaml.safe_dump(config, f)
    binary = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    pid = spawn([binary, "serve", config_path], os.path.join(run_dir, "registry.log"))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if registry_ready(addr):
            return pid
        if not process_alive(pid, config_path):
            raise RuntimeError(f"the registry died; see {run_dir}/registry.log")
        time.sleep(0.05)
    stop_registry(pid, config_path)
    raise RuntimeError(f"the registry did not answer in {timeout} s.")


def registry_ready(addr: str, timeout: float = 0.5) -> bool:
    """Whether the registry on ``addr:5000`` answers ``GET /v2/``."""

    try:
        status, _ = http_request(addr, "/v2/", timeout=timeout, port=5000)
    except OSError:
        return False
    return status == 200


def stop_registry(pid: int | None, marker: str, timeout: float = 5.0) -> None:
    """Stops the registry (SIGTERM, then SIGKILL) if ``pid`` is still it."""

    if not process_alive(pid, marker):
        return
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while process_alive(pid, marker):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)


def busybox_tar() -> bytes:
    """A minimal root filesystem (busybox-static and its applets) as a tar archive.

    Suitable for ``POST /images/create?fromSrc=-`` (``docker import``): an image of
    about 2 MB built without any network access.
    """

    busybox = shutil.which("busybox") or "/bin/busybox"
    applets = subprocess.run(
        [busybox, "--list"], capture_output=True, timeout=10, check=True
    ).stdout.split()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for directory in ("bin", "dev", "etc", "proc", "sys", "tmp", "data", "var"):
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
        tar.add(busybox, arcname="bin/busybox")
        for applet in applets:
            name = applet.decode()
            if name == "busybox" or "/" in name:
                continue
            info = tarfile.TarInfo(f"bin/{name}")
            info.type = tarfile.SYMTYPE
            info.linkname = "busybox"
            tar.addfile(info)
        for name, text in (
            ("etc/passwd", "root:x:0:0:root:/:/bin/sh\n"),
            ("etc/group", "root:x:0:\n"),
        ):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _check_stream(status: int, body: bytes, what: str) -> None:
    """Raises if an engine's JSON-lines progress stream reports an error."""

    if status != 200:
        raise RuntimeError(f"{what} failed ({status}): {body[:500]!r}")
    for line in body.splitlines():
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict) and message.get("error"):
            raise RuntimeError(f"{what} failed: {message['error']}")


def publish_image_tar(
    tar: bytes,
    ref: str,
    import_addr: str,
    pull_addrs: list[str],
    changes: list[str] | None = None,
    timeout: float = 120.0,
) -> None:
    """Imports a root filesystem as an image, pushes it to a registry and pulls it elsewhere.

    Parameters
    ----------
    tar
        The root filesystem as a tar archive (e.g. `busybox_tar`).
    ref
        The image reference, ``<registry>/<name>:<tag>``.
    import_addr
        Address of the engine that imports and pushes the image.
    pull_addrs
        Addresses of the engines that pull it afterwards.
    changes
        Dockerfile instructions to apply on import (``CMD ["/bin/sh"]``).
    timeout
        Seconds allowed for each engine call.
    """

    repo, _, tag = ref.rpartition(":")
    if not repo or "/" in tag:
        repo, tag = ref, "latest"
    query = [("fromSrc", "-"), ("repo", repo), ("tag", tag)]
    query += [("changes", change) for change in changes or []]
    path = "/images/create?" + urllib.parse.urlencode(query)
    headers = {"Content-Type": "application/x-tar"}
    status, body = http_request(import_addr, path, "POST", timeout, tar, headers)
    _check_stream(status, body, f"import of {ref}")
    auth = {"X-Registry-Auth": base64.urlsafe_b64encode(b"{}").decode()}
    push = f"/images/{urllib.parse.quote(repo)}/push?" + urllib.parse.urlencode({"tag": tag})
    status, body = http_request(import_addr, push, "POST", timeout, b"", auth)
    _check_stream(status, body, f"push of {ref}")
    pull = "/images/create?" + urllib.parse.urlencode({"fromImage": repo, "tag": tag})
    for addr in pull_addrs:
        status, body = http_request(addr, pull, "POST", timeout, b"", auth)
        _check_stream(status, body, f"pull of {ref} on {addr}")
