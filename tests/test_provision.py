"""The one provisioning path on the real test bed: operator and supervisor share it.

fliswarm starts on nodes without containers: its supervisor creates them. A ``reconnect
--force`` sent meanwhile joins that work and keeps the containers it made (they were made
for this very configuration); a second ``reconnect --force`` replaces them (they predate
it). Whoever creates a container gives it its restart policy.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiodocker
import pytest
import yaml
from helpers_actor import ActorClient

from fliswarm.actor import FLISwarmActor
from fliswarm.provision import Request
from fliswarm_testbed.bed import Testbed
from fliswarm_testbed.image import ensure_flicamera_image_async


pytestmark = [pytest.mark.root, pytest.mark.testbed, pytest.mark.timeout(300)]


async def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout} s")
        await asyncio.sleep(0.01)


async def container_ids(bed: Testbed) -> dict[str, str]:
    ids = {}
    for node in bed.nodes:
        async with aiodocker.Docker(url=node.docker_url) as docker:
            info = await asyncio.wait_for(docker.containers.get(f"flicamera-{node.name}"), 10)
            ids[node.name] = info.id
    return ids


class Site:
    def __init__(self, actor: FLISwarmActor, client: ActorClient) -> None:
        self.actor = actor
        self.client = client

    def events(self, since: int, action: str) -> list[list[str]]:
        found = []
        for line in self.client.lines[since:]:
            value = line.values("containerEvent")
            if value and value[1] == action:
                found.append(value)
        return found


@pytest.fixture
async def site(testbed_clean: Testbed, tmp_path: Path) -> AsyncIterator[Site]:
    image = await ensure_flicamera_image_async(testbed_clean.registry)
    config = testbed_clean.fliswarm_config(image)
    config["timeouts"] = {"docker_connect": 1, "docker_request": 15, "talk": 20}
    path = tmp_path / "fliswarm.yaml"
    path.write_text(yaml.safe_dump(config))
    actor = FLISwarmActor.from_config(str(path))
    client: ActorClient | None = None
    try:
        await actor.start()
        client = await ActorClient.connect("127.0.0.1", actor.port)
        yield Site(actor, client)
    finally:
        if client is not None:
            await client.close()
        await actor.stop()


async def test_reconnect_force_joins_the_supervisor_then_replaces(
    site: Site, testbed_clean: Testbed
) -> None:
    actor, client = site.actor, site.client
    names = [node.name for node in testbed_clean.nodes]
    # The supervisor creates every container of the empty nodes.
    await wait_until(
        lambda: all(actor.provisioner.busy(name) for name in names), 30, "all provisioning"
    )

    start = len(client.lines)
    reply = await client.command("reconnect --force", 180)
    assert reply.code == ":", str(reply)
    texts = " | ".join(" ".join(line.values("text")) for line in reply.lines)
    for name in names:
        assert f"{name}: joining the work in progress on the node." in texts, texts
        assert f"{name}: container already running" in texts, texts
    # Nothing the supervisor made was undone: one container started per node, none removed.
    assert sorted(event[0] for event in site.events(start, "start")) == sorted(names)
    assert site.events(start, "destroy") == []
    first = await container_ids(testbed_clean)

    # Now every container predates the command: --force replaces each of them.
    start = len(client.lines)
    reply = await client.command("reconnect --force", 180)
    assert reply.code == ":", str(reply)
    second = await container_ids(testbed_clean)
    assert all(second[name] != first[name] for name in names), (first, second)
    assert sorted(event[0] for event in site.events(start, "destroy")) == sorted(names)

    for name in names:
        talk = await client.command(f"talk -n {name} status", 30)
        assert talk.code == ":", str(talk)
        async with aiodocker.Docker(url=testbed_clean.node(name).docker_url) as docker:
            container = await asyncio.wait_for(docker.containers.get(f"flicamera-{name}"), 10)
            info = container._container
        # Created by the operator's command, with the restart policy, as the supervisor does.
        assert info["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"


async def test_provisioning_twice_keeps_everything(site: Site, testbed_clean: Testbed) -> None:
    actor = site.actor
    name = testbed_clean.nodes[0].name
    report = _Lines()
    first = await actor.provisioner.provision(name, Request(force=True), report)
    again = await actor.provisioner.provision(name, Request(), report)
    assert again.action.value == "kept" and again.container_id == first.container_id
    assert again.ready_after == 0.0  # The camera was connected: left as it was.
    assert actor.flicameras[name].is_connected()
    reconnected = await actor.provisioner.provision(name, Request(reconnect=True), report)
    assert reconnected.action.value == "kept"
    assert reconnected.container_id == first.container_id
    assert actor.flicameras[name].is_connected()


class _Lines:
    """A reporter that keeps the lines."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def info(self, **keywords: Any) -> None:
        self.lines.append(("i", keywords))

    def warning(self, **keywords: Any) -> None:
        self.lines.append(("w", keywords))

    def debug(self, **keywords: Any) -> None:
        self.lines.append(("d", keywords))
