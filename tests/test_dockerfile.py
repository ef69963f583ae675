"""The Dockerfile, built and run for real on a test-bed node's engine.

No base image can be pulled here: ``python:3.11-slim`` is made locally from the host Python
(`fliswarm_testbed.image.build_python_base`) and imported into the node's engine. The node has
no network, so the Dockerfile's offline mode is used: fliswarm's wheel and its dependencies'
(built on the host with ``pip wheel``, cached) go in the build context as ``wheelhouse/``.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

import aiodocker
import pytest

from fliswarm_testbed import engine
from fliswarm_testbed.bed import Testbed
from fliswarm_testbed.image import DEFAULT_CACHE_DIR, build_python_base


try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")


pytestmark = [pytest.mark.root, pytest.mark.testbed, pytest.mark.timeout(400)]

ROOT = Path(__file__).resolve().parents[1]
BASE = "python:3.11-slim"
BASE_LABEL = "org.sdss.fliswarm.test-base"
TAG = "fliswarm-test/fliswarm:dockerfile"
UID = 10001


def cache_dir(tmp_path: Path) -> Path:
    """The shared image cache when writable (wheels and base built once), else a temp dir."""

    try:
        DEFAULT_CACHE_DIR.mkdir(parents=True, exist_ok=True)
        if os.access(DEFAULT_CACHE_DIR, os.W_OK):
            return DEFAULT_CACHE_DIR
    except OSError:
        pass
    return tmp_path / "cache"


def pip(*args: str, timeout: float) -> None:
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_ROOT_USER_ACTION="ignore")
    done = subprocess.run(
        [sys.executable, "-m", "pip", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def wheelhouse(cache: Path, target: Path) -> list[str]:
    """fliswarm's wheel (from this tree) and its dependencies' wheels (cached) in ``target``."""

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = sorted(project["dependencies"])
    key = hashlib.sha256(json.dumps([sys.version, deps]).encode()).hexdigest()[:16]
    wheels = cache / f"wheels-{key}"
    if not wheels.is_dir():
        work = wheels.with_name(wheels.name + ".tmp")
        shutil.rmtree(work, ignore_errors=True)
        pip("wheel", "--quiet", "--prefer-binary", "-w", str(work), *deps, timeout=600)
        work.rename(wheels)
    shutil.copytree(wheels, target)
    # Build fliswarm's wheel from a copy: an in-tree build would leave build/ in the tree.
    source = target.parent / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "fliswarm", source / "fliswarm", ignore=ignore)
    args = ["--quiet", "--no-deps", "-w", str(target), str(source)]
    pip("wheel", *args, timeout=300)
    return sorted(p.name for p in target.iterdir())


def build_context(tmp_path: Path, cache: Path) -> bytes:
    """The build context as ``docker build`` sends it (what .dockerignore lets through)."""

    wheels = wheelhouse(cache, tmp_path / "wheelhouse")
    assert any(name.startswith("fliswarm-") for name in wheels), wheels
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md"):
            tar.add(ROOT / name, arcname=name)
        staged = tmp_path / "package"
        shutil.copytree(ROOT / "fliswarm", staged, ignore=ignore)
        tar.add(staged, arcname="fliswarm")
        tar.add(tmp_path / "wheelhouse", arcname="wheelhouse")
    return buffer.getvalue()


def import_base(addr: str, cache: Path) -> None:
    """Imports the local ``python:3.11-slim`` stand-in into the engine (unless it has it)."""

    base = build_python_base(cache)
    status, body = engine.http_request(addr, f"/images/{BASE}/json", timeout=10)
    if status == 200 and (json.loads(body)["Config"].get("Labels") or {}).get(BASE_LABEL) == (
        base.inputs_hash
    ):
        return
    changes = [f"ENV {item}" for item in base.env] + [f"CMD {json.dumps(base.cmd)}"]
    changes.append(f"LABEL {BASE_LABEL}={base.inputs_hash}")
    query = urllib.parse.urlencode(
        {"fromSrc": "-", "repo": "python", "tag": "3.11-slim", "changes": changes}, doseq=True
    )
    status, body = engine.http_request(
        addr,
        f"/images/create?{query}",
        "POST",
        timeout=120,
        body=base.layer.read_bytes(),
        headers={"Content-Type": "application/x-tar"},
    )
    assert status == 200 and b'"error"' not in body, body[-2000:]


def write_config(directory: Path) -> None:
    """A configuration for fliswarm inside the node: one node whose ports are all closed."""

    import yaml

    config = {
        "actor": {"name": "fliswarm", "host": "127.0.0.1", "port": 29996},
        "image": "sdss/flicamera:latest",
        "timeouts": {"docker_connect": 0.5, "docker_request": 1},
        "ping_timeout": 0.5,
        "enabled_nodes": ["gfa1"],
        "nodes": {
            "gfa1": {
                "host": "127.0.0.1",
                "port": 1,
                "docker-client": "tcp://127.0.0.1:2",
                "category": "gfa",
            }
        },
    }
    directory.mkdir(parents=True)
    (directory / "fliswarm.yaml").write_text(yaml.safe_dump(config))
    directory.chmod(0o755)


def process_uids(pid: int) -> set[int]:
    """Real, effective, saved and filesystem uids of a process."""

    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return {int(uid) for uid in line.split()[1:]}
    raise AssertionError(f"no Uid line for pid {pid}")


async def wait_healthy(container: Any, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        info = await asyncio.wait_for(container.show(), 10)
        health = info["State"].get("Health") or {}
        if health.get("Status") == "healthy":
            return info
        if time.monotonic() > deadline or not info["State"]["Running"]:
            logs = await asyncio.wait_for(container.log(stdout=True, stderr=True), 10)
            raise AssertionError(f"not healthy: {health}\n{''.join(logs)[-3000:]}")
        await asyncio.sleep(0.5)


async def build(docker: aiodocker.Docker, context: bytes) -> None:
    """Builds the image; a failed build fails the test with the end of the build's output."""

    text: list[str] = []
    try:
        async for item in docker.images.build(
            fileobj=io.BytesIO(context),
            encoding="application/x-tar",
            tag=TAG,
            buildargs={"WHEELHOUSE": "wheelhouse"},
            forcerm=True,
            stream=True,
        ):
            text.append(str(item.get("stream") or item.get("error") or ""))
            assert "error" not in item, "".join(text)[-3000:]
    except aiodocker.DockerError as err:
        raise AssertionError(f"{err}\n{''.join(text)[-3000:]}") from None


async def test_dockerfile_builds_and_runs_healthy(testbed_clean: Testbed, tmp_path: Path) -> None:
    node = testbed_clean.nodes[0]
    cache = cache_dir(tmp_path)
    start = time.monotonic()
    context = await asyncio.to_thread(build_context, tmp_path, cache)
    await asyncio.to_thread(import_base, node.addr, cache)
    prepared = time.monotonic()
    config_dir, logs_dir = tmp_path / "config", tmp_path / "logs"
    write_config(config_dir)
    logs_dir.mkdir()
    logs_dir.chmod(0o777)

    async with aiodocker.Docker(url=f"http://{node.addr}:2375") as docker:
        await asyncio.wait_for(build(docker, context), 300)
        built = time.monotonic()
        print(f"context + base {prepared - start:.1f} s, docker build {built - prepared:.1f} s")

        image = await asyncio.wait_for(docker.images.inspect(TAG), 10)
        assert image["Config"]["User"] == "fliswarm"
        assert set(image["Config"]["Volumes"]) == {"/config", "/logs"}
        assert "ping" in " ".join(image["Config"]["Healthcheck"]["Test"])
        assert image["Config"]["Cmd"][:4] == ["fliswarm", "-c", "/config/fliswarm.yaml", "start"]

        spec = {
            "Image": TAG,
            # The image's own check, run every second instead of every 30 s.
            "Healthcheck": {"Interval": 1_000_000_000, "Timeout": 5_000_000_000, "Retries": 3},
            "HostConfig": {
                "NetworkMode": "host",
                "Binds": [f"{config_dir}:/config:ro", f"{logs_dir}:/logs"],
            },
        }
        container = await asyncio.wait_for(
            docker.containers.run(spec, name="fliswarm-test-dockerfile"), 30
        )
        try:
            info = await wait_healthy(container, 90)
            print(f"healthy {time.monotonic() - built:.1f} s after the build")
            assert info["Config"]["Healthcheck"]["Test"] == image["Config"]["Healthcheck"]["Test"]
            # The actor runs as the image's user, not root (the engine shares our pid namespace).
            assert await asyncio.to_thread(process_uids, info["State"]["Pid"]) == {UID}
            log_file = logs_dir / "fliswarm.log"
            assert (await asyncio.to_thread(log_file.stat)).st_uid == UID
            stopping = time.monotonic()
            await asyncio.wait_for(container.stop(t=15), 30)
            print(f"docker stop took {time.monotonic() - stopping:.1f} s")
        finally:
            await asyncio.wait_for(container.delete(force=True), 30)

        # The same check fails when no actor answers.
        spec.update(Cmd=["sleep", "120"])
        spec["Healthcheck"].update(Retries=1, StartPeriod=1_000_000)  # failures count at once
        idle = await asyncio.wait_for(docker.containers.run(spec, name="fliswarm-test-idle"), 30)
        try:
            deadline = time.monotonic() + 30
            while (info := await asyncio.wait_for(idle.show(), 10))["State"]["Health"][
                "Status"
            ] != "unhealthy":
                assert time.monotonic() < deadline, info["State"]["Health"]
                await asyncio.sleep(0.5)
            assert info["State"]["Health"]["Log"][-1]["ExitCode"] == 1
        finally:
            await asyncio.wait_for(idle.delete(force=True), 30)
