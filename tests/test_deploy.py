"""``deploy`` and ``rollback`` on the real test bed.

Three images of the simulated flicamera in the bed registry: the usual one (``sim``), a new
one (``deploy-new``: the same layer, another label, so another digest) and a bad one
(``deploy-bad``: its entrypoint exits at once). One fliswarm actor with its own log
directory (its runtime-state file is the test's own), restarted by one test.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import shutil
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiodocker
import pytest
import pytest_asyncio
from helpers_actor import ActorClient, ActorReply
from test_operator_text import assert_plain

from fliswarm.actor import FLISwarmActor
from fliswarm.commands.deploy import target_reference
from fliswarm.config import load_config
from fliswarm.config.state import DeployedImage, NodeOverrides, RuntimeState, StateFileError
from fliswarm.docker.registry import RegistryError, repository_of, resolve_digest, split_reference
from fliswarm.docker.registry import pinned as pinned_reference
from fliswarm_testbed.bed import Testbed
from fliswarm_testbed.fixtures import cleanup_node, restored_bed
from fliswarm_testbed.image import IMAGE_INPUTS_HASH, build_flicamera_image
from fliswarm_testbed.oci import check_registry, push_image, write_image
from fliswarm_testbed.rootfs import DEFAULT_CACHE_DIR


pytestmark = [pytest.mark.timeout(300)]


def on_bed(test: Any) -> Any:
    """Marks a test that runs on the bed (with the module's actor, on the module's loop)."""

    for mark in (pytest.mark.asyncio(loop_scope="module"), pytest.mark.testbed, pytest.mark.root):
        test = mark(test)
    return test


REPOSITORY = "sdss/flicamera"


def push_variant(registry: str, tag: str, change: dict[str, Any], work: Path) -> str:
    """Pushes the cached sim image with its configuration changed under ``tag``; returns
    the manifest digest."""

    entry = DEFAULT_CACHE_DIR / IMAGE_INPUTS_HASH
    meta = json.loads((entry / "build.json").read_text())
    config = json.loads((entry / "config.json").read_text())
    config["config"].update(change)
    out = work / tag
    out.mkdir(parents=True, exist_ok=True)
    layer = {"size": meta["layer_size"], "digest": meta["layer_digest"]}
    digests = write_image(out, config, layer)
    shutil.copyfile(entry / "layer.tar.gz", out / "layer.tar.gz")
    meta = {**meta, **digests}
    push_image(check_registry(registry), REPOSITORY, tag, out, meta, print)
    return digests["digest"]


@pytest.fixture(scope="module")
def bed() -> Iterator[Testbed]:
    yield from restored_bed()


@pytest.fixture(scope="module")
def images(bed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Digests of the ``sim``, ``deploy-new`` and ``deploy-bad`` tags."""

    base = build_flicamera_image(bed.registry, REPOSITORY, "sim")
    work = tmp_path_factory.mktemp("images")
    labels = {"org.sdss.fliswarm.inputs": IMAGE_INPUTS_HASH, "org.sdss.test": "deploy-new"}
    new = push_variant(bed.registry, "deploy-new", {"Labels": labels}, work)
    bad = push_variant(
        bed.registry,
        "deploy-bad",
        {"Cmd": ["/bin/sh", "-c", "echo a bad flicamera image; exit 3"]},
        work,
    )
    assert len({base.digest, new, bad}) == 3
    return {"sim": base.digest, "deploy-new": new, "deploy-bad": bad}


@pytest.fixture(scope="module")
def config(bed: Testbed, images: dict[str, str], tmp_path_factory: pytest.TempPathFactory):
    config = bed.fliswarm_config(f"{bed.registry}/{REPOSITORY}:sim")
    config["actor"]["log_dir"] = str(tmp_path_factory.mktemp("deploy-logs"))
    config["timeouts"] = {"docker_connect": 1.0, "docker_request": 10, "talk": 30}
    # Not the default (ping): deploy must wait on the configured liveness command.
    config["liveness"] = {"command": "version"}
    return config


class Site:
    """The fliswarm actor under test and a client."""

    def __init__(self, bed: Testbed, config: dict[str, Any]) -> None:
        self.bed = bed
        self.config = config
        self.actor: FLISwarmActor | None = None
        self.client: ActorClient | None = None

    async def start(self) -> None:
        self.actor = FLISwarmActor.from_config(load_config_dict(self.config))
        await self.actor.start()
        self.client = await ActorClient.connect("127.0.0.1", self.actor.port)

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.close()
        if self.actor is not None:
            await self.actor.stop()
        self.actor = self.client = None

    async def command(self, text: str, timeout: float = 30.0) -> ActorReply:
        assert self.client is not None
        return await self.client.command(text, timeout)

    async def inspect(self, name: str) -> dict[str, Any]:
        node = self.bed.node(name)
        async with aiodocker.Docker(url=f"http://{node.addr}:2375") as docker:
            container = await asyncio.wait_for(docker.containers.get(f"flicamera-{name}"), 10)
            return container._container

    async def running(self) -> dict[str, tuple[str, str]]:
        """Per node: container id and the image reference it was made from."""

        infos = await asyncio.gather(*[self.inspect(node.name) for node in self.bed.nodes])
        return {
            node.name: (info["Id"], info["Config"]["Image"])
            for node, info in zip(self.bed.nodes, infos, strict=True)
        }

    async def all_answer(self) -> None:
        reply = await self.command("talk ping", 30)
        assert reply.code == ":", str(reply)

    async def ready(self) -> None:
        reply = await self.command("reconnect", 120)
        assert reply.code == ":", str(reply)
        await self.all_answer()


def load_config_dict(config: dict[str, Any]) -> dict[str, Any]:
    """The configuration resolved as `load_config` does, from a dictionary."""

    import tempfile

    import yaml

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as file:
        yaml.safe_dump(config, file)
    try:
        return load_config(file.name)
    finally:
        os.unlink(file.name)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def site(bed: Testbed, config: dict[str, Any]) -> AsyncIterator[Site]:
    await asyncio.to_thread(bed._parallel, lambda node: cleanup_node(bed, node))
    site = Site(bed, copy.deepcopy(config))
    await site.start()
    try:
        await site.ready()
        yield site
    finally:
        await site.stop()


def pinned(bed: Testbed, digest: str) -> str:
    return f"{bed.registry}/{REPOSITORY}@{digest}"


@on_bed
async def test_unknown_image_touches_nothing(site: Site, bed: Testbed) -> None:
    before = await site.running()
    start = time.monotonic()
    reply = await site.command("deploy -c gfa no-such-image:1", 30)
    assert reply.code == "f", str(reply)
    error = reply.lines[-1].raw
    assert "no-such-image" in error and "No node was touched" in error, error
    assert time.monotonic() - start < 15
    assert await site.running() == before


@on_bed
async def test_deploy_during_an_exposure(site: Site, bed: Testbed, images: dict[str, str]) -> None:
    assert site.client is not None and site.actor is not None
    client = site.client
    before = await site.running()
    new = pinned(bed, images["deploy-new"])
    index = len(client.lines)
    expose = asyncio.ensure_future(client.command("talk -n gfa1 expose 5", 60))
    await client.wait_for(
        lambda line: "exposure_state" in line.keywords or line.code in ":f", 15, index
    )
    start = time.monotonic()
    reply = await site.command("deploy -c gfa deploy-new", 240)
    took = time.monotonic() - start
    exposure = await expose
    print(f"deploy of 2 gfa nodes during a 5 s exposure: {took:.1f} s")
    print("\n".join(reply.texts()))
    assert exposure.code == ":", str(exposure)
    [bundle] = exposure.with_keyword("filename_bundle")
    [path] = bundle.values("filename_bundle")
    assert await asyncio.to_thread(os.path.exists, path), path
    assert reply.code == ":", str(reply)
    assert any("waiting up to" in text and "gfa1" in text for text in reply.texts())
    after = await site.running()
    for name in ("gfa1", "gfa2"):
        assert after[name][1] == new, after
        assert after[name][0] != before[name][0]
    assert after["fvc"] == before["fvc"]
    await site.all_answer()
    assert_plain(reply.lines)

    # A restart of fliswarm keeps the deployed containers (same ids) and their image.
    await site.stop()
    await site.start()
    await site.ready()
    assert await site.running() == after
    status = await site.command("status", 30)
    assert status.code == ":", str(status)
    shown = {
        line.values("image")[0]: line.values("image") for line in status.with_keyword("image")
    }
    for name in ("gfa1", "gfa2"):
        assert shown[name][1] == new and shown[name][2] == images["deploy-new"], shown
        assert shown[name][3] == images["deploy-new"], shown
    assert shown["fvc"][2] == images["sim"], shown

    # reconnect --force recreates with the deployed image, not the configuration's.
    reply = await site.command("reconnect --force -n gfa2", 60)
    assert reply.code == ":", str(reply)
    again = await site.running()
    assert again["gfa2"][1] == new and again["gfa2"][0] != after["gfa2"][0]


@on_bed
async def test_rollback_after_a_good_deploy(site: Site, bed: Testbed, images: dict[str, str]):
    before = await site.running()
    reply = await site.command("rollback -c gfa", 180)
    assert reply.code == ":", str(reply)
    after = await site.running()
    for name in ("gfa1", "gfa2"):
        assert after[name][1] == pinned(bed, images["sim"]), after
    assert after["fvc"] == before["fvc"]
    texts = [" ".join(line.values("text")) for line in reply.lines]
    for name in ("gfa1", "gfa2"):  # Waited until it answered the liveness command.
        assert any(
            text.startswith(f"{name}: runs ") and "the camera answers 'version'" in text
            for text in texts
        ), texts
    await site.all_answer()


@on_bed
async def test_bad_image_puts_the_first_node_back(
    site: Site, bed: Testbed, images: dict[str, str]
) -> None:
    before = await site.running()
    start = time.monotonic()
    reply = await site.command("deploy -c gfa deploy-bad", 150)
    took = time.monotonic() - start
    print(f"bad deploy failed in {took:.1f} s")
    print(str(reply))
    assert reply.code == "f", str(reply)
    assert took < 120
    error = reply.lines[-1].raw
    assert "gfa1" in error and "gfa2" not in error.split("stopped at", 1)[1].split(":")[0]
    after = await site.running()
    assert after["gfa1"][1] == before["gfa1"][1]  # The image it ran before.
    assert after["gfa2"] == before["gfa2"]  # Not touched.
    assert after["fvc"] == before["fvc"]
    await site.all_answer()
    assert_plain(reply.lines)


@on_bed
async def test_bad_image_in_a_batch_of_two_puts_both_back(site: Site) -> None:
    before = await site.running()
    start = time.monotonic()
    reply = await site.command("deploy -c gfa --batch 2 --now deploy-bad", 150)
    took = time.monotonic() - start
    print(f"bad deploy, batch of 2: failed in {took:.1f} s")
    assert reply.code == "f", str(reply)
    assert took < 120
    texts = reply.texts()
    assert any("gfa1, gfa2: going back to the image it ran before" in text for text in texts)
    after = await site.running()
    for name in ("gfa1", "gfa2"):
        assert after[name][1] == before[name][1], after
    assert after["fvc"] == before["fvc"]
    await site.all_answer()


# Pure pieces (no bed needed).


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("1.1", "hub:5000/sdss/flicamera:1.1"),
        (":1.1", "hub:5000/sdss/flicamera:1.1"),
        ("@sha256:" + "a" * 64, "hub:5000/sdss/flicamera@sha256:" + "a" * 64),
        ("sdss/other:2", "hub:5000/sdss/other:2"),
        ("hub:5000/sdss/other:2", "hub:5000/sdss/other:2"),
        ("other:3", "hub:5000/other:3"),
    ],
)
def test_target_reference(image: str, expected: str) -> None:
    assert target_reference(image, "sdss/flicamera:latest", "hub:5000") == expected


def test_references() -> None:
    digest = "sha256:" + "b" * 64
    assert pinned_reference("hub:5000/sdss/flicamera:1.1", digest) == (
        f"hub:5000/sdss/flicamera@{digest}"
    )
    assert repository_of(f"hub:5000/sdss/flicamera@{digest}") == "hub:5000/sdss/flicamera"
    parts = split_reference("hub:5000/sdss/flicamera")
    assert (parts.registry, parts.repository, parts.tag) == (
        "hub:5000",
        "sdss/flicamera",
        "latest",
    )
    with pytest.raises(ValueError):
        split_reference("hub:5000/sdss/flicamera@sha256:short")


async def test_registry_down_is_one_clear_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(RegistryError, match=f"cannot reach registry 127.0.0.1:{port}"):
        await resolve_digest(f"127.0.0.1:{port}/sdss/flicamera:1", 2.0)
    assert time.monotonic() - start < 5


def test_deployed_images_kept(tmp_path: Path) -> None:
    path = tmp_path / "fliswarm-state.json"
    state = RuntimeState(path)
    image = DeployedImage("hub:5000/a@sha256:" + "c" * 64, "hub:5000/a:1", "2")
    state.set_deployed_images({"gfa1": image})
    again = RuntimeState(path)
    assert again.load() is None
    assert again.deployed_images() == {"gfa1": image}
    assert again.node_overrides() == NodeOverrides()
    again.set_deployed_images({})
    assert "images" not in json.loads(path.read_text())
    path.write_text(json.dumps({"format": 1, "images": {"gfa1": {"previous": 3}}}))
    bad = RuntimeState(path)
    bad.load()
    with pytest.raises(StateFileError, match="images.gfa1"):
        bad.deployed_images()
