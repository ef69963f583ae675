"""Unit tests of the fast paths of ``reconnect``: waiting for flicamera's port, the engine
check without an ICMP ping, the USB-bus memo, volume re-creation without the scratch check.

No Docker here: a loopback listener stands in for flicamera, small fakes for the engine.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from fliswarm.commands import reconnect as rc
from fliswarm.device import FlicameraDevice
from fliswarm.exceptions import DockerAPIError, NodeUnreachableError
from fliswarm.launch import UsbMemo, create_and_start
from fliswarm.node import Node
from fliswarm.tools import FakeCommand
from fliswarm.volumes import create_volume, same_definition


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Engine:
    """Records calls; answers like an engine with a running container."""

    node = "gfa1"

    def __init__(self, volume: dict[str, Any] | None = None) -> None:
        self.calls: list[str] = []
        self.volume = volume

    async def inspect_container(self, name: str) -> dict[str, Any]:
        self.calls.append("inspect_container")
        return {"State": {"Running": True}}

    async def create_container(self, name: str, body: dict[str, Any]) -> str:
        self.calls.append("create_container")
        bus = [m["Source"] for m in body["HostConfig"]["Mounts"] if m["Type"] == "bind"]
        if bus:
            raise DockerAPIError(self.node, 400, f"bind source path does not exist: {bus[0]}")
        return "c" * 64

    async def start_container(self, cid: str) -> None:
        self.calls.append("start_container")

    async def inspect_volume(self, name: str) -> dict[str, Any] | None:
        self.calls.append("inspect_volume")
        return self.volume

    async def info(self) -> dict[str, Any]:
        self.calls.append("info")
        return {"Plugins": {"Volume": ["local"]}}

    async def list_containers(self, filters: dict[str, list[str]]) -> list[dict[str, Any]]:
        self.calls.append("list_containers")
        return []

    async def create_volume(self, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append("create_volume:" + body["Name"].split("-")[0])
        return {"Name": body["Name"], "Driver": body["Driver"], "Options": body["DriverOpts"]}

    async def remove_volume(self, name: str) -> None:
        self.calls.append("remove_volume:" + name.split("-")[0])


class _Node:
    def __init__(self) -> None:
        self.engine = _Engine()


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
        took = await rc.wait_device_ready(device, node, "flicamera-gfa1", 10.0)  # type: ignore[arg-type]
        done = asyncio.get_running_loop().time()
        assert device.is_connected()
        assert took >= 0.4
        # Connected within one retry pause (plus scheduling) of the port listening.
        assert done - listening.result() < rc.RETRY_DELAY + 0.1
    finally:
        await device.stop()
        server = await server_task
        server.close()
        await server.wait_closed()


async def test_wait_device_ready_times_out_with_reason():
    device = FlicameraDevice("gfa1", "127.0.0.1", _free_port())
    with pytest.raises(
        rc.NotReadyError, match=r"within 0.3 s \(cannot connect to 127.0.0.1:\d+: "
    ):
        await rc.wait_device_ready(device, _Node(), "flicamera-gfa1", 0.3)  # type: ignore[arg-type]


async def test_connect_skips_icmp_when_engine_answers(monkeypatch):
    node = Node("gfa1", "127.0.0.1")
    pings: list[float | None] = []

    async def ping(timeout: float | None = None) -> bool:
        pings.append(timeout)
        return False

    async def alive() -> bool:
        return True

    monkeypatch.setattr(node, "ping", ping)
    monkeypatch.setattr(node, "client_alive", alive)
    await node.connect()
    assert pings == []

    async def dead() -> bool:
        return False

    monkeypatch.setattr(node, "client_alive", dead)
    with pytest.raises(NodeUnreachableError, match="does not answer ping"):
        await node.connect()
    assert len(pings) == 1


async def test_usb_memo_saves_the_refused_create():
    engine = _Engine()
    memo = UsbMemo()
    config = {
        "name": "flicamera-gfa1",
        "image": "img",
        "mounts": {},
        "privileged": True,
        "envs": {},
        "ports": {},
        "network": "host",
        "user": "",
        "cmd": None,
    }
    for _ in range(2):
        command = FakeCommand()
        await create_and_start(engine, "flicamera-gfa1", config, "/dev/bus/usb", command, memo)  # type: ignore[arg-type]
    assert engine.calls == [
        "create_container",  # with the bus: refused
        "create_container",
        "start_container",
        "create_container",  # the memo: straight without the bus
        "start_container",
    ]
    assert memo.missing("/dev/bus/usb") and not memo.missing("/dev/other")
    memo.seconds = 0.0
    assert not memo.missing("/dev/bus/usb")


async def test_force_volume_same_definition_skips_the_scratch_check():
    opts = {"type": "none", "o": "bind", "device": "/srv/data"}
    existing = {"Name": "data", "Driver": "local", "Options": dict(opts)}
    engine = _Engine(existing)
    volume = await create_volume(engine, "data", "local", opts, True, FakeCommand())  # type: ignore[arg-type]
    assert volume["Options"]["device"] == "/srv/data"
    assert engine.calls == [
        "inspect_volume",
        "list_containers",
        "remove_volume:data",
        "create_volume:data",
    ]

    # Other options: the driver and the new options are tried first.
    engine = _Engine(dict(existing, Options={"type": "tmpfs", "device": "tmpfs"}))
    await create_volume(engine, "data", "local", opts, True, FakeCommand())  # type: ignore[arg-type]
    assert engine.calls == [
        "inspect_volume",
        "info",
        "list_containers",
        "create_volume:fliswarm",
        "remove_volume:fliswarm",
        "remove_volume:data",
        "create_volume:data",
    ]
    assert not same_definition(
        dict(existing, Driver="nfs"), {"Driver": "local", "DriverOpts": opts}
    )
