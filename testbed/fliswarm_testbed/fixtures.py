"""pytest fixtures for the Docker test bed.

Register them with ``pytest_plugins = ["fliswarm_testbed.fixtures"]``. All need root.

- ``testbed`` (session): a 3-node `Testbed` (instance ``$FLISWARM_TESTBED_ID`` or 0),
  brought up once and torn down at the end of the session (left up if it already was).
- ``testbed_clean``: after the test, removes from every live node the containers and
  volumes labelled ``org.sdss.fliswarm.managed=true`` or named ``fliswarm-test*``.
- ``testbed_faults``: async fault helpers (`Faults`); whatever the test did, every node
  is powered on, plugged in and has its engine running again afterwards.
- ``testbed_busybox`` (session): a ~2 MB busybox image built offline, pushed to the bed
  registry and pulled on every node; its reference.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import urllib.parse
from collections.abc import Iterator

import pytest

from . import engine, procs
from .bed import Node, Testbed
from .registry import busybox_tar, publish_image_tar


__all__ = [
    "testbed",
    "testbed_clean",
    "testbed_faults",
    "testbed_busybox",
    "Faults",
    "cleanup_node",
    "restored_bed",
    "assert_routed_to_bed",
    "MANAGED_LABEL",
    "TEST_PREFIX",
]


MANAGED_LABEL = "org.sdss.fliswarm.managed"
TEST_PREFIX = "fliswarm-test"


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("NOT ROOT: the Docker test bed needs root (netns, dockerd).")


@pytest.fixture(scope="session")
def testbed() -> Iterator[Testbed]:
    """A running 3-node test bed for the whole session."""

    _require_root()
    bed = Testbed(n_nodes=3)
    was_up = bed.is_up()
    bed.up()
    try:
        yield bed
    finally:
        if not was_up:
            bed.down()


def restored_bed() -> Iterator[Testbed]:
    """The body (``yield from restored_bed()``) of a module-scoped ``bed`` fixture for tests
    that inject faults: the default bed, brought up if needed; at the end, every fault undone
    (`Testbed.restore`), fliswarm's containers removed from every node, and the bed taken
    down if it was not up before."""

    bed = Testbed()
    was_up = bed.is_up()
    bed.up()
    try:
        yield bed
    finally:
        with contextlib.suppress(Exception):
            bed.restore()
        bed._parallel(lambda node: cleanup_node(bed, node))
        if not was_up:
            bed.down()


def assert_routed_to_bed(bed: Testbed, addr: str) -> None:
    """Fails unless traffic to ``addr`` stays on the bed (see `.Testbed.routed_to_bed`)."""

    assert bed.routed_to_bed(addr), f"traffic to {addr} would leave the test bed."


def _managed(labels: dict[str, str] | None, name: str) -> bool:
    return (labels or {}).get(MANAGED_LABEL) == "true" or name.startswith(TEST_PREFIX)


def cleanup_node(bed: Testbed, node: Node, timeout: float = 10.0) -> None:
    """Removes the managed and test containers and volumes of one node (if it is live)."""

    state = bed._load()
    info = (state or {}).get("nodes", {}).get(node.name, {})
    spec = bed.engine_spec(node.name)
    if not (info.get("powered") and info.get("plugged")):
        return
    if not procs.process_alive(info.get("pid"), spec.config_path):
        return
    addr = node.addr
    _, body = engine.http_request(addr, "/containers/json?all=1", timeout=timeout)
    for container in json.loads(body):
        name = (container.get("Names") or ["/"])[0].lstrip("/")
        if _managed(container.get("Labels"), name):
            path = f"/containers/{container['Id']}?force=1&v=1"
            engine.http_request(addr, path, "DELETE", timeout=timeout)
    _, body = engine.http_request(addr, "/volumes", timeout=timeout)
    for volume in json.loads(body).get("Volumes") or []:
        if _managed(volume.get("Labels"), volume["Name"]):
            path = f"/volumes/{urllib.parse.quote(volume['Name'])}?force=1"
            engine.http_request(addr, path, "DELETE", timeout=timeout)


@pytest.fixture()
def testbed_clean(testbed: Testbed) -> Iterator[Testbed]:
    """Yields the bed; afterwards removes test containers and volumes on every node."""

    yield testbed
    testbed._parallel(lambda node: cleanup_node(testbed, node))


class Faults:
    """Async fault injection on a `Testbed` (the blocking work runs in a thread)."""

    def __init__(self, bed: Testbed) -> None:
        self.bed = bed

    async def power_off(self, name: str) -> None:
        await asyncio.to_thread(self.bed.power_off, name)

    async def power_on(self, name: str) -> None:
        await asyncio.to_thread(self.bed.power_on, name)

    async def unplug(self, name: str) -> None:
        await asyncio.to_thread(self.bed.unplug, name)

    async def plug(self, name: str) -> None:
        await asyncio.to_thread(self.bed.plug, name)

    async def stop_engine(self, name: str) -> None:
        await asyncio.to_thread(self.bed.stop_engine, name)

    async def start_engine(self, name: str) -> None:
        await asyncio.to_thread(self.bed.start_engine, name)

    async def restore(self) -> None:
        """Powers on, plugs in and starts the engine of every node."""
        await asyncio.to_thread(self.bed.restore)


@pytest.fixture()
def testbed_faults(testbed: Testbed, testbed_clean: Testbed) -> Iterator[Faults]:
    """Fault helpers; every node is restored at the end of the test (before the clean-up)."""

    yield Faults(testbed)
    testbed.restore()


@pytest.fixture(scope="session")
def testbed_busybox(testbed: Testbed) -> str:
    """Reference of a tiny busybox image present in the bed registry and on every node."""

    ref = f"{testbed.registry}/{TEST_PREFIX}/busybox:1"
    first, *others = testbed.nodes
    publish_image_tar(
        busybox_tar(),
        ref,
        first.addr,
        [node.addr for node in others],
        changes=['CMD ["/bin/sh"]'],
    )
    return ref
