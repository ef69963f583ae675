"""FITS files on the data volume survive everything fliswarm and the nodes go through.

On the real test bed, with real flicamera containers writing real FITS files to the shared
``data`` volume: after each of ``reconnect --force``, a killed container, a node powered off
(and on again) and a restart of fliswarm itself, every file written before still has its
sha256, the ``data`` volume still exists on every node with its options, and new exposures
get new file names (nothing is overwritten).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

import aiodocker
import pytest
import yaml
from helpers_actor import ActorClient

from fliswarm.actor import FLISwarmActor
from fliswarm.testbed import Testbed
from fliswarm.testbed.image import ensure_flicamera_image


pytestmark = [pytest.mark.root, pytest.mark.testbed, pytest.mark.timeout(420)]


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Site:
    """The actor on the bed, a client, and the files written so far with their sha256."""

    def __init__(self, bed: Testbed, config_path: Path) -> None:
        self.bed = bed
        self.config_path = config_path
        self.actor: FLISwarmActor | None = None
        self.client: ActorClient | None = None
        self.files: dict[str, str] = {}

    async def start(self) -> None:
        self.actor = FLISwarmActor.from_config(str(self.config_path))
        await self.actor.start()
        self.client = await ActorClient.connect("127.0.0.1", self.actor.port)

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.close()
        if self.actor is not None:
            await self.actor.stop()
        self.client = self.actor = None

    async def command(self, body: str, timeout: float = 120) -> Any:
        assert self.client is not None
        reply = await self.client.command(body, timeout)
        assert reply.code == ":", str(reply)
        return reply

    async def expose(self, names: list[str]) -> list[str]:
        """One exposure on each node; records the new files and their checksums."""

        reply = await self.command(f"talk -n {','.join(names)} expose 0.1", 90)
        [bundle] = [
            line.values("filename_bundle") for line in reply.with_keyword("filename_bundle")
        ]
        assert len(bundle) == len(names), str(reply)
        for path in bundle:
            assert path not in self.files, f"{path} was written twice"
            assert path.startswith(self.bed.data_dir + os.sep)
            self.files[path] = await asyncio.to_thread(sha256, path)
        return bundle

    async def check(self, step: str, off: tuple[str, ...] = ()) -> None:
        """Every file has its checksum; the data volume is on every node (not ``off``)."""

        for path, digest in self.files.items():
            assert await asyncio.to_thread(os.path.isfile, path), f"after {step}: {path} gone"
            assert await asyncio.to_thread(sha256, path) == digest, f"after {step}: {path}"
        for node in self.bed.nodes:
            if node.name in off:
                continue
            docker = aiodocker.Docker(url=node.docker_url)
            try:
                volume = await asyncio.wait_for(docker.volumes.get("data"), 10)
                options = (await volume.show())["Options"]
                assert options["device"] == self.bed.data_dir, f"after {step}: {node.name}"
            finally:
                await docker.close()


@pytest.fixture
async def site(testbed: Testbed, testbed_faults: Any, tmp_path: Path):
    image = await asyncio.to_thread(ensure_flicamera_image, testbed.registry)
    config = testbed.fliswarm_config(image)
    config["timeouts"] = {"docker_connect": 1, "docker_request": 15, "talk": 20}
    config["ping_timeout"] = 0.5
    config["self_healing"] = False  # Every container change is a command's doing here.
    for node in config["nodes"].values():
        node.update({"docker-uid": 0, "docker-gid": 0})
    path = tmp_path / "fliswarm.yaml"
    path.write_text(yaml.safe_dump(config))
    site = Site(testbed, path)
    await site.start()
    try:
        yield site
    finally:
        await site.stop()


async def test_fits_files_survive_every_fault(site: Site, testbed_faults: Any):
    bed = site.bed
    names = [node.name for node in bed.nodes]

    await site.command("reconnect --force", 180)
    await site.expose(names)
    await site.check("the first exposures")

    # 1. reconnect --force replaces every container (never the volume).
    await site.command("reconnect --force", 180)
    await site.check("reconnect --force")
    await site.expose(names)

    # 2. A container killed (as by the OOM killer), then brought back.
    assert site.actor is not None
    docker = aiodocker.Docker(url=bed.node("gfa1").docker_url)
    try:
        container = await docker.containers.get(site.actor.get_container_name("gfa1"))
        await asyncio.wait_for(container.kill(), 10)
    finally:
        await docker.close()
    await site.check("a container kill")
    await site.command("reconnect -n gfa1", 120)
    await site.expose(["gfa1"])

    # 3. A node powered off (its engine and containers die with it), then on again.
    await testbed_faults.power_off("gfa2")
    await site.check("a node power-off", off=("gfa2",))
    await testbed_faults.power_on("gfa2")
    await site.command("reconnect -n gfa2", 120)
    await site.check("a node power-on")
    await site.expose(["gfa2"])

    # 4. fliswarm itself restarted: it adopts the running containers.
    await site.stop()
    await site.check("fliswarm stopped")
    await site.start()
    await site.expose(names)
    await site.check("fliswarm restarted")

    # Every file is still a readable FITS image.
    from astropy.io import fits

    def readable(path: str) -> bool:
        with fits.open(path) as hdus:
            return hdus[-1].data is not None

    for path in site.files:
        assert await asyncio.to_thread(readable, path), path
    print(f"{len(site.files)} FITS files intact through 4 kinds of fault")
