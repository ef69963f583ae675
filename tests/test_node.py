"""`fliswarm.docker.node.Node` against the real test bed (real dockerds in network namespaces).

Verification goes through aiodocker directly (not through fliswarm's engine layer), so
what is asserted is what the engines really hold.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import aiodocker
import aiohttp
import pytest

from fliswarm.docker import engine as engine_module
from fliswarm.docker.containers import (
    LABEL_CONFIG_HASH,
    LABEL_IMAGE,
    LABEL_MANAGED,
    LABEL_NODE,
    canonical_config,
    config_hash,
    normalize_ports,
)
from fliswarm.docker.node import Node
from fliswarm.exceptions import (
    ContainerConflictError,
    ImagePullError,
    NodeError,
    NodeTimeoutError,
    NodeUnreachableError,
    VolumeDriverError,
    VolumeInUseError,
)
from fliswarm_testbed import Testbed as _Bed
from fliswarm_testbed.registry import busybox_tar


PREFIX = "fswtest"
TINY = "fsw-test/tiny:1"


class Recorder:
    """A stand-in for a CLU command that records what is written to it."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []
        #: The fliswarm actor of the command (its ``config`` gives the volumes to report).
        self.actor: Any = None

    def _write(self, level: str, kwargs: dict[str, Any]) -> None:
        self.messages.append((level, kwargs))

    def debug(self, **kwargs: Any) -> None:
        self._write("d", kwargs)

    def info(self, **kwargs: Any) -> None:
        self._write("i", kwargs)

    def warning(self, **kwargs: Any) -> None:
        self._write("w", kwargs)

    def error(self, **kwargs: Any) -> None:
        self._write("e", kwargs)

    def keyword(self, name: str) -> list[tuple[str, Any]]:
        return [(level, kw[name]) for level, kw in self.messages if name in kw]

    def texts(self, level: str | None = None) -> list[str]:
        return [
            kw["text"]
            for lvl, kw in self.messages
            if "text" in kw and (level is None or lvl == level)
        ]


def raw(node: Node) -> aiodocker.Docker:
    """A plain aiodocker client of the node's engine, for setting up and verifying."""

    return aiodocker.Docker(url=node.daemon_addr, timeout=aiohttp.ClientTimeout(total=30))


async def wait_for(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.05)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def make_nodes(bed: _Bed) -> dict[str, Node]:
    return {
        n.name: Node(
            n.name,
            n.addr,
            category=n.category,
            daemon_addr=n.docker_url,
            connect_timeout=1.5,
            request_timeout=10,
            ping_timeout=1.0,
            pull_timeout=60,
            stop_grace=1,
        )
        for n in bed.nodes
    }


async def _import_tiny(docker: aiodocker.Docker, ref: str) -> None:
    name, tag = ref.rsplit(":", 1)
    params = {"fromSrc": "-", "repo": name, "tag": tag, "changes": 'CMD ["sleep", "3600"]'}
    async with docker._query(
        "images/create",
        "POST",
        params=params,
        data=busybox_tar(),
        headers={"Content-Type": "application/x-tar"},
    ) as response:
        text = await response.text()
    assert "error" not in text, text
    push = docker.images.push(name, tag=tag, auth={"username": "", "password": ""}, stream=True)
    async for item in push:
        assert "error" not in item, item


async def tiny_image(bed: _Bed) -> str:
    """Imports a busybox image on the first node, pushes it to the bed registry, then
    removes it from every node; returns its full reference."""

    ref = f"{bed.registry}/{TINY}"
    nodes = make_nodes(bed)
    async with raw(nodes[bed.nodes[0].name]) as docker:
        await _import_tiny(docker, ref)
    for node in nodes.values():
        async with raw(node) as docker:
            try:
                await docker.images.delete(ref, force=True)
            except aiodocker.DockerError:
                pass
    return ref


async def cleanup(bed: _Bed) -> None:
    """Removes the containers and volumes these tests created on the live nodes."""

    for node in make_nodes(bed).values():
        async with raw(node) as docker:
            try:
                for c in await docker.containers.list(all=True):
                    if c["Names"][0].startswith(f"/{PREFIX}"):
                        await c.delete(force=True)
                for v in (await docker.volumes.list())["Volumes"] or []:
                    if v["Name"].startswith(PREFIX):
                        await aiodocker.volumes.DockerVolume(docker, v["Name"]).delete()
            except (aiodocker.DockerError, aiohttp.ClientError, asyncio.TimeoutError):
                pass  # a node powered off by a test


pytestmark = [pytest.mark.root, pytest.mark.testbed, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def bed() -> Any:
    """The test bed (instance ``$FLISWARM_TESTBED_ID``), brought up if needed."""

    testbed = _Bed()
    was_up = testbed.is_up()
    testbed.up()
    yield testbed
    if not was_up:
        testbed.down()


@pytest.fixture(scope="module")
def image(bed) -> str:
    """The tiny test image, pushed to the bed registry (absent from every node)."""

    return asyncio.run(tiny_image(bed))


@pytest.fixture
async def nodes(bed, image) -> AsyncIterator[dict[str, Node]]:
    nodes = make_nodes(bed)
    yield nodes
    await asyncio.gather(*(n.close() for n in nodes.values()))
    await cleanup(bed)


def _name(tag: str) -> str:
    return f"{PREFIX}-{tag}-{uuid.uuid4().hex[:6]}"


async def test_connect_ping_connected(nodes):
    results = await asyncio.gather(*(n.connect() for n in nodes.values()))
    assert results == [None] * len(nodes)
    for node in nodes.values():
        assert await node.ping() is True
        assert await node.client_alive() is True
        assert await node.connected() is True
    node = next(iter(nodes.values()))
    node.enabled = False
    assert await node.connected() is False


async def test_run_container_pulls_and_configures(bed, nodes, image, tmp_path):
    node = nodes[bed.nodes[0].name]
    async with raw(node) as docker:
        try:
            await docker.images.delete(image, force=True)
        except aiodocker.DockerError:
            pass

    device = os.path.join(bed.data_dir, _name("vol"))
    os.makedirs(device, mode=0o777)
    os.chmod(device, 0o777)
    vname = _name("data")
    command = Recorder()
    await node.create_volume(
        vname, opts={"type": "none", "o": "bind", "device": device}, command=command
    )
    assert command.keyword("volume") == [("d", [node.name, vname, True, device])]

    name = _name("run")
    envs = {"ACTOR_NAME": node.name, "OBSERVATORY": "APO"}
    info = await node.run_container(
        name,
        TINY,
        volumes=[vname],
        privileged=True,
        registry=bed.registry,
        envs=envs,
        ports=[19995],
        user="1000:1000",
        command=command,
        cmd=["sh", "-c", f"id -u > {device}/uid && sleep 3600"],
    )

    # Pull progress and result were reported.
    texts = command.texts()
    assert any("pulling image" in t for t in texts)
    assert any("layers done" in t for t in command.texts("d"))
    assert any("pulled image" in t for t in texts)

    async with raw(node) as docker:
        inspect = await (await docker.containers.get(name)).show()
    assert inspect["Id"] == info["Id"]
    assert inspect["State"]["Running"] is True
    host = inspect["HostConfig"]
    assert host["Privileged"] is True
    assert host["NetworkMode"] == "host"
    assert not host.get("PortBindings")
    assert inspect["Config"]["User"] == "1000:1000"
    assert {"ACTOR_NAME=" + node.name, "OBSERVATORY=APO"} <= set(inspect["Config"]["Env"])
    mounts = {m["Destination"]: m for m in inspect["Mounts"]}
    assert mounts[device]["Type"] == "volume" and mounts[device]["Name"] == vname
    # This machine has no /dev/bus/usb: it is not passed through, and the operator is warned.
    assert "/dev/bus/usb" not in mounts
    assert any("/dev/bus/usb" in t for t in command.texts("w"))

    labels = inspect["Config"]["Labels"]
    ref = f"{bed.registry}/{TINY}"
    expected = canonical_config(
        name,
        ref,
        {vname: device},
        True,
        envs,
        normalize_ports([19995]),
        "host",
        "1000:1000",
        ["sh", "-c", f"id -u > {device}/uid && sleep 3600"],
    )
    assert labels[LABEL_MANAGED] == "true"
    assert labels[LABEL_NODE] == node.name
    assert labels[LABEL_IMAGE] == ref
    assert labels[LABEL_CONFIG_HASH] == config_hash(expected)

    # The container really runs as that user and writes into the volume.
    await wait_for(lambda: os.path.exists(f"{device}/uid"), 10)
    await wait_for(lambda: _read(f"{device}/uid").strip() == "1000", 5)
    assert await node.is_container_running(name) is True


async def test_usb_bus_passed_through_when_present(bed, nodes, image):
    node = nodes[bed.nodes[1].name]
    node.usb_bus = "/dev/net"  # exists on the node (shared /dev): stands in for the USB bus
    name = _name("usb")
    await node.run_container(name, TINY, registry=bed.registry, privileged=True)
    async with raw(node) as docker:
        inspect = await (await docker.containers.get(name)).show()
    binds = [m for m in inspect["Mounts"] if m["Type"] == "bind"]
    assert [m["Destination"] for m in binds] == ["/dev/net"]
    assert inspect["HostConfig"]["Devices"][0]["PathOnHost"] == "/dev/net"


async def test_run_twice_force_and_stop(bed, nodes, image):
    node = nodes[bed.nodes[0].name]
    name = _name("twice")
    first = await node.run_container(name, TINY, registry=bed.registry)

    command = Recorder()
    again = await node.run_container(name, TINY, registry=bed.registry, command=command)
    assert again["Id"] == first["Id"]
    assert any("already running" in t for t in command.texts())

    replaced = await node.run_container(name, TINY, registry=bed.registry, force=True)
    assert replaced["Id"] != first["Id"]
    async with raw(node) as docker:
        ids = [c["Id"] for c in await docker.containers.list(all=True)]
    assert first["Id"] not in ids and replaced["Id"] in ids

    # A second container of the same image: only force removes it along.
    other = _name("other")
    await node.run_container(other, TINY, registry=bed.registry)
    assert await node.stop_container(name, TINY) is True
    assert await node.is_container_running(name) is False
    assert await node.is_container_running(other) is True
    assert await node.stop_container(name, TINY) is False

    await node.run_container(name, TINY, registry=bed.registry)
    command = Recorder()
    assert await node.stop_container(name, TINY, force=True, command=command) is True
    async with raw(node) as docker:
        names = [c["Names"][0] for c in await docker.containers.list(all=True)]
    assert f"/{name}" not in names and f"/{other}" not in names
    assert any("removing running container" in t for t in command.texts("w"))
    assert command.keyword("container") == [("d", [node.name, "NA"])]


async def test_published_ports_on_bridge_network(bed, nodes, image):
    node = nodes[bed.nodes[2].name]
    name = _name("ports")
    await node.run_container(
        name, TINY, registry=bed.registry, network="bridge", ports={"2222/tcp": 3333}
    )
    async with raw(node) as docker:
        inspect = await (await docker.containers.get(name)).show()
    assert inspect["HostConfig"]["NetworkMode"] == "bridge"
    assert inspect["HostConfig"]["PortBindings"] == {
        "2222/tcp": [{"HostIp": "0.0.0.0", "HostPort": "3333"}]
    }


async def test_name_clash_with_unmanaged_container(bed, nodes, image):
    node = nodes[bed.nodes[0].name]
    await node.run_container(_name("pull"), TINY, registry=bed.registry)  # image present
    name = _name("foreign")
    async with raw(node) as docker:
        foreign = await docker.containers.run(
            {"Image": f"{bed.registry}/{TINY}", "Cmd": ["sleep", "3600"]}, name=name
        )
    with pytest.raises(ContainerConflictError, match="not created by fliswarm"):
        await node.run_container(name, TINY, registry=bed.registry, force=True)
    with pytest.raises(ContainerConflictError, match="not created by fliswarm"):
        await node.stop_container(name, TINY, force=True)
    async with raw(node) as docker:
        inspect = await (await docker.containers.get(name)).show()
    assert inspect["Id"] == foreign.id and inspect["State"]["Running"] is True


async def test_unknown_image_and_registry_down(bed, nodes, image):
    node = nodes[bed.nodes[1].name]
    name = _name("bad")
    command = Recorder()
    with pytest.raises(ImagePullError, match="fsw-test/nope:1") as err:
        await node.run_container(name, "fsw-test/nope:1", registry=bed.registry, command=command)
    assert "cannot pull image" in str(err.value)

    down = f"{bed.manager_addr}:5999"  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(ImagePullError, match="5999") as err:
        await node.run_container(name, TINY, registry=down)
    assert time.monotonic() - t0 < 30  # Refused at once: not at the pull timeout (60 s).
    assert "cannot pull image" in str(err.value)

    async with raw(node) as docker:
        names = [c["Names"][0] for c in await docker.containers.list(all=True)]
    assert f"/{name}" not in names


async def test_bad_volume_driver_leaves_nothing(bed, nodes):
    node = nodes[bed.nodes[2].name]
    vname = _name("vol")
    with pytest.raises(VolumeDriverError, match="nosuchdriver"):
        await node.create_volume(vname, driver="nosuchdriver")
    assert await node.get_volume(vname) is False

    opts = {"type": "tmpfs", "device": "tmpfs", "o": "size=1m"}
    created = await node.create_volume(vname, opts=opts)
    assert created["Options"] == opts
    assert created["Labels"][LABEL_MANAGED] == "true"
    again = await node.create_volume(vname, opts={"type": "other"})  # exists: untouched
    assert again["Options"] == opts
    with pytest.raises(VolumeDriverError, match="nosuchdriver"):
        await node.create_volume(vname, driver="nosuchdriver", force=True)
    assert (await node.get_volume(vname))["Options"] == opts
    async with raw(node) as docker:
        names = [v["Name"] for v in (await docker.volumes.list())["Volumes"] or []]
    assert vname in names and not [n for n in names if n.startswith("fliswarm-check-")]


async def test_data_survives_volume_recreation_and_replacement(bed, nodes, image):
    node = nodes[bed.nodes[1].name]
    device = os.path.join(bed.data_dir, _name("safe"))
    os.makedirs(device)
    _write(f"{device}/before.txt", "precious\n")
    vname = _name("safe")
    opts = {"type": "none", "o": "bind", "device": device}
    await node.create_volume(vname, opts=opts)

    name = _name("writer")
    script = f"echo inside > {device}/inside.txt && sleep 3600"
    await node.run_container(name, TINY, [vname], registry=bed.registry, cmd=["sh", "-c", script])
    await wait_for(lambda: os.path.exists(f"{device}/inside.txt"), 10)

    with pytest.raises(VolumeInUseError, match=f"{name}: stop them first"):
        await node.create_volume(vname, opts=opts, force=True)
    assert await node.get_volume(vname) is not False

    replaced = await node.run_container(
        name, TINY, [vname], registry=bed.registry, force=True, cmd=["sleep", "3600"]
    )
    assert replaced["State"]["Running"] is True
    assert sorted(os.listdir(device)) == ["before.txt", "inside.txt"]

    await node.stop_container(name, TINY)
    command = Recorder()
    recreated = await node.create_volume(vname, opts=opts, force=True, command=command)
    assert recreated["Options"]["device"] == device
    assert any("recreating" in t for t in command.texts("w"))
    assert sorted(os.listdir(device)) == ["before.txt", "inside.txt"]
    assert _read(f"{device}/before.txt") == "precious\n"


async def test_report_status(bed, nodes, image):
    node = nodes[bed.nodes[0].name]
    vname = _name("st")
    await node.create_volume(vname, opts={"type": "tmpfs", "device": "tmpfs"})
    name = _name("status")

    command = Recorder()
    # The volumes reported are those of the command's actor's configuration.
    command.actor = SimpleNamespace(config={"volumes": {vname: {}, "nope": {}}})
    result = await node.report_status(command)
    assert command.keyword("node") == [("i", [node.name, node.addr, node.daemon_addr, True, True])]
    assert command.keyword("container") == [("d", [node.name, "NA"])]
    assert command.keyword("volume") == [
        ("d", [node.name, vname, True, "tmpfs"]),
        ("d", [node.name, "nope", False, "NA"]),
    ]
    warnings = command.texts("w")
    assert f"No containers running on {node.addr}." in warnings
    assert f"Volume nope not present in {node.name}." in warnings
    assert result["container"] is None and result["volumes"] == {vname: "tmpfs", "nope": None}

    info = await node.run_container(name, TINY, registry=bed.registry)
    command = Recorder()
    await node.report_status(command, volumes=False)
    assert command.keyword("container") == [("d", [node.name, info["Id"][:12]])]
    assert command.keyword("volume") == [] and command.texts("w") == []

    await node.run_container(_name("second"), TINY, registry=bed.registry)
    command = Recorder()
    await node.report_status(command, volumes=False)  # any fliswarm container: two
    assert command.keyword("container") == [("d", [node.name, "NA"])]
    assert any("Multiple" in t for t in command.texts("w"))


async def test_engine_restart_under_connected_node(bed, nodes):
    node = nodes[bed.nodes[2].name]
    await node.connect()
    assert await node.get_volume("nope") is False

    await asyncio.to_thread(bed.stop_engine, node.name)
    t0 = time.monotonic()
    with pytest.raises(NodeUnreachableError):
        await node.get_volume("nope")
    # Refused at once (the node is up): far from the request timeout (10 s).
    assert time.monotonic() - t0 < node.request_timeout / 2
    assert await node.client_alive() is False

    await asyncio.to_thread(bed.start_engine, node.name)
    assert await node.get_volume("nope") is False  # the very next call works
    assert await node.connected() is True


def _engine_connections(addr: str) -> int:
    """This process's established TCP connections to the engine at ``addr``:2375 (``ss``)."""

    out = subprocess.run(
        ["ss", "-Htnp", "state", "established", "dst", f"{addr}:2375"],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout
    return sum(f"pid={os.getpid()}," in line for line in out.splitlines())


async def test_a_kept_connection_never_outlives_an_engine_restart(bed, monkeypatch):
    """Calls reuse a connection idle for less than ``IDLE_REUSE`` seconds; an engine that
    restarts closes it, so the first call after the restart works (kept far longer here
    than the restart takes)."""

    monkeypatch.setattr(engine_module, "IDLE_REUSE", 300.0)
    name = bed.nodes[2].name
    node = Node(name, bed.node(name).addr, daemon_addr=bed.node(name).docker_url)
    try:
        assert await node.get_volume("nope") is False
        assert await node.get_volume("nope") is False
        assert _engine_connections(node.addr) == 1  # kept, and reused by the second call

        await asyncio.to_thread(bed.stop_engine, name)
        await asyncio.to_thread(bed.start_engine, name)
        assert await node.get_volume("nope") is False  # not a stale kept connection
        assert await node.connected() is True
    finally:
        await node.close()
        await asyncio.to_thread(bed.start_engine, name)  # at once if it runs


#: The timeouts of the powered-off node (connect, ping): long, so that a call that waits on
#: it and one that does not are far apart.
DEAD_TIMEOUT = 8.0
#: What a call to the powered-off node may take: its timeout, with a wide margin. Without
#: the timeouts, a call to a dead host hangs (TCP connect retries, ping without a deadline).
DEAD_BOUND = DEAD_TIMEOUT + 10


async def test_powered_off_node_is_bounded_and_isolated(bed, nodes, image):
    dead_name = bed.nodes[-1].name
    spec = bed.node(dead_name)
    dead = Node(
        dead_name,
        spec.addr,
        category=spec.category,
        daemon_addr=spec.docker_url,
        connect_timeout=DEAD_TIMEOUT,
        request_timeout=30,
        ping_timeout=DEAD_TIMEOUT,
        pull_timeout=60,
        stop_grace=1,
    )
    live = [node for name, node in nodes.items() if name != dead_name]
    await asyncio.gather(*(n.connect() for n in [*live, dead]))
    # Something to do on the live nodes: each call ~10-100 ms.
    await asyncio.gather(
        *(n.run_container(_name("live"), TINY, registry=bed.registry) for n in live)
    )

    await asyncio.to_thread(bed.power_off, dead_name)
    try:

        async def timed(coro: Any) -> tuple[float, Any]:
            t0 = time.monotonic()
            try:
                result = await coro
            except NodeError as err:
                result = err
            return time.monotonic() - t0, result

        async def live_work() -> list[float]:
            durations = []
            for node in live:
                for _ in range(3):
                    t, ok = await timed(node.report_status(Recorder(), volumes=False))
                    assert ok["docker_alive"] is True
                    durations.append(t)
            return durations

        command = Recorder()
        t_start = time.monotonic()
        (
            (t_ping, ping),
            (t_conn, conn),
            (t_rep, rep),
            (t_call, call),
            durations,
        ) = await asyncio.gather(
            timed(dead.ping()),
            timed(dead.connected()),
            timed(dead.report_status(command)),
            timed(dead.is_container_running("x")),
            live_work(),
        )
        live_total = sum(durations)
        print(f"dead node: ping {t_ping:.1f} s, connected {t_conn:.1f} s, status {t_rep:.1f} s")

        # Each call to the dead node ends, bounded by its timeouts.
        assert ping is False and t_ping < DEAD_BOUND
        assert conn is False and t_conn < DEAD_BOUND
        assert rep["node_alive"] is False and rep["docker_alive"] is False
        assert t_rep < DEAD_BOUND
        assert isinstance(call, (NodeTimeoutError, NodeUnreachableError))
        assert t_call < DEAD_BOUND  # Not connect + request timeouts (38 s).
        assert command.keyword("node") == [
            ("i", [dead.name, dead.addr, dead.daemon_addr, False, False])
        ]
        assert f"Node {dead.addr} is not pinging back." in command.texts("w")
        assert f"Docker client on node {dead.addr} is not connected." in command.texts("w")
        # The live nodes were never slowed down by the dead one: a live call that waited on
        # it would take about DEAD_TIMEOUT; all of them were done before the dead calls.
        assert max(durations) < DEAD_TIMEOUT / 2, durations
        assert live_total < min(t_conn, t_rep), (live_total, t_conn, t_rep)
        assert time.monotonic() - t_start < DEAD_BOUND
    finally:
        await asyncio.to_thread(bed.power_on, dead_name)

    # The same Node object works again once the node is back.
    try:
        await dead.connect()
        assert await dead.connected() is True
    finally:
        await dead.close()
