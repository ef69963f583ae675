"""The real flicamera actor with a simulated camera: on the host, and as an offline image."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from astropy.io import fits
from helpers_net import free_port

from fliswarm_testbed import image as image_module
from fliswarm_testbed.bed import Testbed
from fliswarm_testbed.image import (
    DEFAULT_CACHE_DIR,
    FLICAMERA_VERSION,
    IMAGE_INPUTS_HASH,
    MANIFEST_TYPE,
    build_flicamera_image,
    ensure_flicamera_image,
    ensure_flicamera_image_async,
    start_flicamera_on_host,
    wait_flicamera_ready,
)


async def command(
    host: str, port: int, cmd_id: int, text: str, timeout: float = 20.0
) -> list[dict[str, Any]]:
    """Sends one command to a CLU JSON actor; returns its replies up to ``:`` or ``f``."""

    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    replies: list[dict[str, Any]] = []
    try:
        writer.write(f"{cmd_id} {text}\n".encode())
        await writer.drain()
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            line = await asyncio.wait_for(reader.readline(), max(left, 0.01))
            assert line, f"connection closed before {text!r} finished: {replies}"
            reply = json.loads(line)
            if reply["header"]["command_id"] != cmd_id:
                continue  # a broadcast
            replies.append(reply)
            if reply["header"]["message_code"] in (":", "f", "e"):
                return replies
    finally:
        writer.close()


def keyword(replies: list[dict[str, Any]], key: str) -> Any:
    values = [r["data"][key] for r in replies if key in r["data"]]
    assert values, f"no {key!r} keyword in {replies}"
    return values[-1]


async def check_flicamera(host: str, port: int, name: str, data_dir: Path) -> Path:
    """Checks ``status`` and ``expose 0.1`` on a running flicamera; returns the FITS path."""

    replies = await command(host, port, 1, "status")
    assert replies[-1]["header"]["message_code"] == ":"
    status = keyword(replies, "status")
    assert status["camera"] == name
    assert status["serial"].startswith("ML")
    assert status["temperature_ccd"] == -25.0

    replies = await command(host, port, 2, "expose 0.1")
    assert replies[-1]["header"]["message_code"] == ":", replies
    filename = keyword(replies, "filename")
    assert filename["camera"] == name
    path = Path(filename["filename"])
    assert name in path.name
    return path


def check_fits(path: Path, name: str) -> None:
    assert path.is_file(), path
    with fits.open(path) as hdus:
        image = hdus[-1]
        assert image.data.shape == (256, 256)
        assert 900 < float(image.data.mean()) < 1100  # gaussian noise around 1000
        headers = [repr(h.header) for h in hdus]
        assert any(name in h for h in headers)


async def test_flicamera_launcher_on_host(tmp_path: Path) -> None:
    port = free_port()
    proc = await start_flicamera_on_host("gfa9", port, tmp_path)
    try:
        await wait_flicamera_ready("127.0.0.1", port, timeout=60)
        path = await check_flicamera("127.0.0.1", port, "gfa9", tmp_path)
        assert path.is_relative_to(tmp_path)
        check_fits(path, "gfa9")
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 20)


# The image: build offline, push to a real registry on loopback, reuse the cache.


def image_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared cache when we may write it (so the suite builds once), else a temp dir."""

    try:
        DEFAULT_CACHE_DIR.mkdir(parents=True, exist_ok=True)
        if os.access(DEFAULT_CACHE_DIR, os.W_OK):
            return DEFAULT_CACHE_DIR
    except OSError:
        pass
    return tmp_path_factory.mktemp("image-cache")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``docker-registry`` on a free loopback port; yields ``HOST:PORT``."""

    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.fail("docker-registry is not installed (Debian package docker-registry).")
    root = tmp_path_factory.mktemp("registry")
    addr = f"127.0.0.1:{free_port()}"
    config = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(root / "data")}},
        "http": {"addr": addr},
    }
    (root / "config.yml").write_text(json.dumps(config))
    with open(root / "log", "wb") as log:
        args = [binary, "serve", str(root / "config.yml")]
        proc = subprocess.Popen(args, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 15
        while registry_get(addr, "/v2/")[0] != 200:
            assert proc.poll() is None, (root / "log").read_text()
            assert time.monotonic() < deadline, "the registry did not answer in 15 s"
            time.sleep(0.05)
        yield addr
    finally:
        proc.terminate()
        proc.wait(10)


def registry_get(addr: str, path: str, accept: str = "*/*") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(f"http://{addr}{path}", headers={"Accept": accept})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), b""
    except OSError:
        return 0, {}, b""


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return image_cache_dir(tmp_path_factory)


def test_image_build_and_push(registry: str, cache_dir: Path) -> None:
    # A repository no other test pushes to: whatever ran before, it gets both blobs.
    build = build_flicamera_image(registry, "test/fresh", "sim", cache_dir)
    assert build.reference == f"{registry}/test/fresh:sim"
    assert build.inputs_hash == IMAGE_INPUTS_HASH
    assert build.uploaded == 2  # a fresh repository gets the layer and the config
    assert 50e6 < build.layer_size < build.rootfs_size < 600e6

    status, headers, body = registry_get(registry, "/v2/test/fresh/manifests/sim", MANIFEST_TYPE)
    assert status == 200
    assert headers["Docker-Content-Digest"] == build.digest
    manifest = json.loads(body)
    assert manifest["layers"][0]["size"] == build.layer_size
    config_digest = manifest["config"]["digest"]
    status, _, body = registry_get(registry, f"/v2/test/fresh/blobs/{config_digest}")
    config = json.loads(body)["config"]
    assert config["Cmd"][-1] == "/opt/fliswarm/flicamera_launcher.py"
    assert "PYTHONPATH=/opt/python-packages" in config["Env"]
    assert config["Labels"]["org.sdss.fliswarm.inputs"] == IMAGE_INPUTS_HASH
    meta = json.loads((cache_dir / IMAGE_INPUTS_HASH / "build.json").read_text())
    assert any(p.startswith(f"sdss_flicamera-{FLICAMERA_VERSION}") for p in meta["packages"])


def test_image_cache_is_reused(registry: str, cache_dir: Path) -> None:
    first = build_flicamera_image(registry, "test/flicamera", "sim", cache_dir)
    again = build_flicamera_image(registry, "test/flicamera", "sim", cache_dir)
    assert not again.built and again.uploaded == 0  # (how fast: benchmarks/image_bench.py)
    assert again.digest == first.digest
    # The cached build goes to another repository without a rebuild.
    other = build_flicamera_image(registry, "test/other", "v1", cache_dir)
    assert not other.built and other.uploaded == 2 and other.digest == first.digest
    assert ensure_flicamera_image(registry, "test/other", "v1", cache_dir) == other.reference


def test_image_build_waits_for_the_lock(registry: str, cache_dir: Path) -> None:
    with image_module._locked(cache_dir / ".lock", 5):
        with pytest.raises(TimeoutError):
            build_flicamera_image(registry, "test/flicamera", "sim", cache_dir, lock_timeout=0.3)


@pytest.mark.parametrize("registry_addr", ["8.8.8.8:5000", "192.168.1.1:5000", "example.org:80"])
def test_image_refuses_registries_off_this_machine(registry_addr: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        build_flicamera_image(registry_addr, cache_dir=tmp_path)


# The image on a test bed node: privileged, host network, the bed's data dir as /data.


@pytest.mark.root
@pytest.mark.testbed
async def test_image_runs_flicamera_on_a_node(testbed_clean: Testbed, cache_dir: Path) -> None:
    import aiodocker

    bed = testbed_clean
    reference = await ensure_flicamera_image_async(bed.registry, cache_dir=cache_dir)
    node = bed.nodes[0]
    data_dir = Path(bed.data_dir)
    async with aiodocker.Docker(url=f"http://{node.addr}:2375") as docker:
        await asyncio.wait_for(docker.images.pull(reference), 120)
        config = {
            "Image": reference,
            "Env": [f"ACTOR_NAME={node.name}", "OBSERVATORY=APO"],
            "HostConfig": {
                "Privileged": True,
                "NetworkMode": "host",
                "Binds": [f"{data_dir}:/data"],
            },
        }
        name = f"fliswarm-test-flicamera-{node.name}"  # testbed_clean removes fliswarm-test*
        container = await asyncio.wait_for(docker.containers.run(config, name=name), 30)
        try:
            info = await asyncio.wait_for(container.show(), 10)
            assert info["HostConfig"]["Privileged"] is True
            await wait_flicamera_ready(node.addr, 19995, timeout=60)
            path = await check_flicamera(node.addr, 19995, node.name, Path("/data"))
            check_fits(data_dir / path.relative_to("/data"), node.name)
        finally:
            await asyncio.wait_for(container.delete(force=True), 30)
