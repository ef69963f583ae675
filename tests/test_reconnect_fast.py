"""Tests of the fast paths of ``reconnect``: waiting for flicamera's port, the engine
check without an ICMP ping, the USB-bus memo, volume re-creation without the scratch check.

The port wait runs against a real loopback listener; the engine paths run on the real test
bed (its engines have no USB bus), with the engine calls recorded, not replaced.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from fliswarm.camera.device import FlicameraDevice
from fliswarm.docker.launch import UsbMemo, create_and_start
from fliswarm.docker.node import Node
from fliswarm.docker.volumes import create_volume, same_definition
from fliswarm.exceptions import NodeUnreachableError
from fliswarm.provision import ready as rc
from fliswarm.tools import FakeCommand
from fliswarm_testbed.fixtures import TEST_PREFIX


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Node:
    """The node argument of ``wait_device_ready`` (only read when flicamera is not ready)."""

    name = "gfa1"
    engine = None


async def test_wait_device_ready_connects_soon_after_listen():
    port = _free_port()
    device = FlicameraDevice("gfa1", "127.0.0.1", port)
    node = _Node()
    listening = asyncio.get_running_loop().create_future()

    async def serve_later() -> asyncio.AbstractServer:
        await asyncio.sleep(0.4)
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", port)
        listening.set_result(asyncio.get_running_loop().time())
        return server

    server_task = asyncio.create_task(serve_later())
    try:
        took = await rc.wait_device_ready(device, node, "flicamera-gfa1", 60.0)  # type: ignore[arg-type]
        done = asyncio.get_running_loop().time()
        assert device.is_connected()
        assert took >= 0.4  # Not before the port listened.
        # Connected once the port listened, not at the 60 s timeout. (How soon, one retry
        # pause of RETRY_DELAY, is a speed: not checked here.)
        assert done - listening.result() < 20
    finally:
        await device.stop()
        server = await server_task
        server.close()
        await server.wait_closed()


async def test_wait_device_ready_times_out_with_reason():
    device = FlicameraDevice("gfa1", "127.0.0.1", _free_port())
    expected = r"within 0.3 s \(127.0.0.1:\d+: connection refused\): fliswarm logs -n gfa1 "
    with pytest.raises(rc.NotReadyError, match=expected):
        await rc.wait_device_ready(device, _Node(), "flicamera-gfa1", 0.3)  # type: ignore[arg-type]


def _node(bed: Any, name: str) -> Node:
    spec = bed.node(name)
    return Node(
        name,
        spec.addr,
        daemon_addr=spec.docker_url,
        connect_timeout=1.5,
        request_timeout=10,
        ping_timeout=1.0,
    )


def _spy(monkeypatch: pytest.MonkeyPatch, obj: Any, method: str, calls: list[str]) -> None:
    """Records each call of ``obj.method`` (by name) and runs the real one."""

    real = getattr(obj, method)

    async def recorded(*args: Any, **kwargs: Any) -> Any:
        calls.append(method)
        return await real(*args, **kwargs)

    monkeypatch.setattr(obj, method, recorded)


@pytest.mark.root
@pytest.mark.testbed
async def test_connect_pings_only_when_the_engine_does_not_answer(
    testbed: Any, testbed_faults: Any, monkeypatch: pytest.MonkeyPatch
):
    name = testbed.nodes[-1].name
    node = _node(testbed, name)
    pings: list[str] = []
    _spy(monkeypatch, node, "ping", pings)
    try:
        await node.connect()  # The engine answers: no ICMP ping.
        assert pings == []
        await testbed_faults.power_off(name)
        with pytest.raises(NodeUnreachableError, match="does not answer ping"):
            await node.connect()
        assert pings == ["ping"]
    finally:
        await node.close()


@pytest.mark.root
@pytest.mark.testbed
async def test_usb_memo_saves_the_refused_create(
    testbed: Any, testbed_clean: Any, testbed_busybox: str, monkeypatch: pytest.MonkeyPatch
):
    """The bed's engines have no /dev/bus/usb: the first create with the bus is refused,
    the memo sends the next one straight without it."""

    node = _node(testbed, testbed.nodes[0].name)
    engine, memo, calls = node.engine, UsbMemo(), []
    for method in ("create_container", "start_container"):
        _spy(monkeypatch, engine, method, calls)
    name = f"{TEST_PREFIX}-usb-memo"
    config = {
        "name": name,
        "image": testbed_busybox,
        "mounts": {},
        "privileged": False,
        "envs": {},
        "ports": {},
        "network": "host",
        "user": "",
        "cmd": ["sleep", "30"],
    }
    try:
        for _ in range(2):
            cid = await create_and_start(engine, name, config, "/dev/bus/usb", FakeCommand(), memo)
            await engine.remove_container(cid)
    finally:
        await node.close()
    assert calls == [
        "create_container",  # With the bus: refused by the engine.
        "create_container",
        "start_container",
        "create_container",  # The memo: straight without the bus.
        "start_container",
    ]
    assert memo.missing("/dev/bus/usb") and not memo.missing("/dev/other")
    memo.seconds = 0.0
    assert not memo.missing("/dev/bus/usb")


@pytest.mark.root
@pytest.mark.testbed
async def test_force_volume_same_definition_skips_the_scratch_check(
    testbed: Any, testbed_clean: Any, monkeypatch: pytest.MonkeyPatch
):
    node = _node(testbed, testbed.nodes[0].name)
    engine, calls = node.engine, []
    for method in ("inspect_volume", "info", "list_containers", "create_volume", "remove_volume"):
        _spy(monkeypatch, engine, method, calls)
    name = f"{TEST_PREFIX}-volume"
    opts = {"type": "tmpfs", "device": "tmpfs", "o": "size=1m"}
    try:
        await create_volume(engine, name, "local", opts, False, FakeCommand())
        calls.clear()
        volume = await create_volume(engine, name, "local", opts, True, FakeCommand())
        assert volume["Options"] == opts
        assert calls == ["inspect_volume", "list_containers", "remove_volume", "create_volume"]

        # Other options: the driver and the new options are tried first (scratch volume).
        calls.clear()
        other = dict(opts, o="size=2m")
        volume = await create_volume(engine, name, "local", other, True, FakeCommand())
        assert volume["Options"] == other
        assert calls == [
            "inspect_volume",
            "info",
            "list_containers",
            "create_volume",
            "remove_volume",
            "remove_volume",
            "create_volume",
        ]
        await engine.remove_volume(name)
    finally:
        await node.close()
    existing = {"Name": name, "Driver": "local", "Options": opts}
    assert not same_definition(
        dict(existing, Driver="nfs"), {"Driver": "local", "DriverOpts": opts}
    )
