"""The fliswarm actor and its talk command, with real flicamera actors on the host."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from helpers_actor import (
    ActorClient,
    FlicameraProcesses,
    free_port,
    running_flicameras,
    tron_ready,
    write_config,
)

from fliswarm.actor import FLISwarmActor
from fliswarm.camera.subcommand import expected_duration


@pytest.fixture(scope="module")
def flicameras(tmp_path_factory: pytest.TempPathFactory):
    yield from running_flicameras(tmp_path_factory.mktemp("flicamera-data"), ["gfa1", "gfa2"])


async def make_actor(tmp_path: Path, ports: dict[str, int], enabled: list[str], **extra):
    port = free_port()
    path = write_config(tmp_path / "fliswarm.yaml", port, ports, enabled, **extra)
    actor = FLISwarmActor.from_config(str(path))
    await actor.start()
    return actor


@pytest.fixture
async def actor(flicameras: FlicameraProcesses, tmp_path: Path):
    ports = dict(flicameras.ports, fvc=free_port(), gfa6=free_port())
    actor = await make_actor(tmp_path, ports, ["gfa1", "gfa2", "fvc"])
    for name in ("gfa1", "gfa2"):
        await actor.connect_device(name)
    yield actor
    await actor.stop()


@pytest.fixture
async def client(actor: FLISwarmActor):
    client = await ActorClient.connect("127.0.0.1", actor.port)
    yield client
    await client.close()


def fits_ok(path: str) -> bool:
    from astropy.io import fits

    with fits.open(path) as hdus:
        data = hdus["RAW"].data
        return data.shape == (256, 256) and 900 < data.mean() < 1100  # Simulated noise.


def test_expected_duration():
    assert expected_duration(["status"]) == 0
    assert expected_duration(["expose", "2.5"]) == 2.5
    assert expected_duration(["expose", "gfa1", "2", "-c", "3", "--stack=2"]) == 12
    assert expected_duration(["expose", "--count", "2", "-f", "x.fits", "1.5"]) == 3
    assert expected_duration(["expose", "--bias"]) == 0
    assert expected_duration(["expose", "nan"]) == 0


async def test_nodes_and_devices_from_config(actor: FLISwarmActor):
    assert set(actor.nodes) == {"gfa1", "gfa2", "fvc", "gfa6"}
    assert [n for n, node in actor.nodes.items() if not node.enabled] == ["gfa6"]
    assert set(actor.flicameras) == set(actor.nodes)
    assert actor.flicameras["gfa1"].is_connected()
    assert not actor.flicameras["fvc"].is_connected()
    assert actor.get_container_name("gfa1") == "flicamera-gfa1"
    assert actor.get_container_name(actor.nodes["gfa2"]) == "flicamera-gfa2"
    assert actor.parser_args[0] is actor.nodes


async def test_ping_version_unknown(client: ActorClient):
    ping = await client.command("ping", 5)
    assert ping.code == ":" and ping.lines[-1].values("text") == ["Pong."]
    version = await client.command("version", 5)
    assert version.code == ":" and version.lines[-1].values("version")
    bad = await client.command("nosuchcommand", 5)
    assert bad.code == "f"


async def test_talk_status_relays_node_name(client: ActorClient):
    reply = await client.command("talk -n gfa1 status", 15)
    assert reply.code == ":", str(reply)
    [line] = reply.with_keyword("status")
    assert line.code == "i"
    assert line.values("status")[:3] == ["gfa1", "gfa1", "MicroLine ML4240"]


async def test_talk_expose_category_bundle(client: ActorClient):
    reply = await client.command("talk -c gfa expose 0.1", 30)
    assert reply.code == ":", str(reply)
    files = {
        line.values("filename")[0]: line.values("filename")[2]
        for line in reply.lines
        if "filename" in line.keywords
    }
    assert set(files) == {"gfa1", "gfa2"}
    [bundle] = reply.with_keyword("filename_bundle")
    assert bundle.values("filename_bundle") == [files["gfa1"], files["gfa2"]]
    assert reply.lines[-1].keywords == {}
    for path in files.values():
        assert await asyncio.to_thread(fits_ok, path)


async def test_talk_options_after_the_camera_command_go_to_flicamera(client: ActorClient):
    reply = await client.command("talk -n gfa1 expose 0.1 -c 2", 30)
    assert reply.code == ":", str(reply)
    [bundle] = reply.with_keyword("filename_bundle")
    assert len(bundle.values("filename_bundle")) == 2


async def test_talk_warns_for_unconnected_camera(client: ActorClient):
    # Within 15 s: half the talk timeout (30 s) it must not wait out for fvc.
    reply = await client.command("talk status", 15)
    assert reply.code == ":", str(reply)
    assert any(t.startswith("fvc: flicamera is not connected") for t in reply.texts())
    [failed] = reply.with_keyword("failedNodes")
    assert failed.code == "w" and failed.values("failedNodes") == ["fvc"]
    assert {line.values("status")[0] for line in reply.with_keyword("status")} == {"gfa1", "gfa2"}

    only_fvc = await client.command("talk -c fvc status", 15)
    assert only_fvc.code == "f"
    assert "fvc" in " ".join(only_fvc.lines[-1].values("error"))


async def test_talk_failed_camera_command(client: ActorClient):
    reply = await client.command("talk -n gfa1,gfa2 nosuchcommand", 15)
    assert reply.code == "f", str(reply)
    assert reply.with_keyword("failedNodes")[0].values("failedNodes") == ["gfa1", "gfa2"]
    assert not [line for line in reply.lines[:-1] if line.code in ":f"]
    nothing = await client.command("talk -n gfa6 status", 5)  # Disabled node.
    assert nothing.code == "f" and "gfa6: node is disabled." in nothing.texts()


async def test_talk_timeout_then_camera_still_usable(actor: FLISwarmActor, client: ActorClient):
    reply = await client.command("talk -t 0.5 -n gfa2 expose 1.5", 15)
    # Failed by the 0.5 s timeout (not at the end of the 1.5 s exposure, which succeeds).
    assert reply.code == "f", str(reply)
    assert any("no answer from gfa2 after 0.5 s" in t for t in reply.texts())
    # The abandoned exposure ends on flicamera's side: its sub-command (kept so that its id
    # is not reused meanwhile) goes when flicamera's final reply comes.
    device = actor.flicameras["gfa2"]
    assert device.running, "the timed-out exposure was forgotten before flicamera ended it"
    deadline = time.monotonic() + 20
    while device.running:
        assert time.monotonic() < deadline, f"flicamera never ended it: {device.running}"
        await asyncio.sleep(0.05)
    assert device.id_pool.in_use == 0
    after = await client.command("talk -n gfa2 status", 15)
    assert after.code == ":" and len(after.with_keyword("status")) == 1


async def test_talk_that_connects_the_camera_gets_the_talk_time_limit(
    flicameras: FlicameraProcesses, tmp_path: Path
):
    """A talk that first connects the camera runs with the talk's own time limit, not with the
    connect time limit (here 1 s, shorter than the 2 s exposure)."""

    actor = await make_actor(
        tmp_path, dict(flicameras.ports), ["gfa1"], timeouts={"device_connect": 1}
    )
    try:
        await actor.flicameras["gfa1"].stop()  # Not connected when the talk comes.
        client = await ActorClient.connect("127.0.0.1", actor.port)
        try:
            reply = await client.command("talk -n gfa1 expose 2", 60)
        finally:
            await client.close()
        assert reply.code == ":", str(reply)
        assert reply.with_keyword("filename_bundle")
    finally:
        await actor.stop()


async def test_flicamera_killed_mid_expose(actor: FLISwarmActor, client: ActorClient, tmp_path):
    procs = FlicameraProcesses(tmp_path / "gfa3").start(["gfa3"])
    try:
        actor.config["nodes"]["gfa3"] = dict(
            actor.config["nodes"]["fvc"], port=procs.ports["gfa3"]
        )
        actor.config["enabled_nodes"].append("gfa3")
        actor.add_node("gfa3")
        await actor.connect_device("gfa3")

        start = len(client.lines)
        mid = client.send("talk -n gfa1,gfa3 expose 2")
        await client.wait_for(
            lambda line: line.command_id == mid and line.values("exposure_state")[:1] == ["gfa3"],
            10,
            start,
        )
        procs.kill("gfa3")
        # Within 15 s: far from the talk timeout (30 s + the 2 s exposure) gfa3's part must
        # not wait out (the text below says it ended with the connection).
        end = await client.wait_for(lambda ln: ln.command_id == mid and ln.code in ":f", 15, start)
        lines = [line for line in client.lines[start:] if line.command_id == mid]
        texts = [" ".join(line.values("text")) for line in lines if "text" in line.keywords]
        assert end.code == ":"  # gfa1 finished its exposure.
        assert any(t.startswith("gfa3: ") and "connection to flicamera" in t for t in texts)
        failed = [line.values("failedNodes") for line in lines if "failedNodes" in line.keywords]
        assert failed == [["gfa3"]]
        bundle = [
            line.values("filename_bundle") for line in lines if "filename_bundle" in line.keywords
        ]
        assert len(bundle) == 1 and len(bundle[0]) == 1 and "gfa1" in bundle[0][0]
        assert not actor.flicameras["gfa3"].is_connected()
    finally:
        procs.stop()


async def test_start_without_tron_and_with_unreachable_docker(flicameras, tmp_path: Path):
    ports = dict(flicameras.ports)
    # Starts (does not hang) without tron and with the engines refusing; that start waits
    # for hung engines at once, not one after the other, is in test_actor_commands.py.
    actor = await asyncio.wait_for(
        make_actor(tmp_path, ports, ["gfa1", "gfa2"], timeouts={"docker_connect": 1}), 30
    )
    try:
        assert not any(device.is_connected() for device in actor.flicameras.values())
        client = await ActorClient.connect("127.0.0.1", actor.port)
        reply = await client.command("talk -n gfa1 status", 15)  # Connects on demand.
        assert reply.code == ":" and actor.flicameras["gfa1"].is_connected()
        await client.close()
    finally:
        await actor.stop()
    assert not actor.flicameras["gfa1"].is_connected()
    with pytest.raises(ConnectionRefusedError):  # Not listening any more (not a timeout).
        await asyncio.wait_for(asyncio.open_connection("127.0.0.1", actor.port), 10)


async def test_keywords_are_validated_but_relayed_ones_are_not(actor, client: ActorClient):
    start = len(client.lines)
    actor.write("i", {"enabledNodes": ["gfa1", "gfa2"]})
    actor.write("i", {"notAKeyword": 1})
    actor.write("i", {"status": ["gfa1", "x"]}, validate=False)
    line = await client.wait_for(lambda line: "status" in line.keywords, 5, start)
    got = [ln.keywords for ln in client.lines[start:] if ln.command_id == 0]
    assert {"enabledNodes": ["gfa1", "gfa2"]} in got
    assert any("error" in kw and "notAKeyword" in str(kw["error"]) for kw in got)
    assert line.values("status") == ["gfa1", "x"]


@pytest.mark.tron
async def test_talk_through_tron_and_tron_restart(
    flicameras, tmp_path: Path, tron_hub_factory, tron_client_factory
):
    actor_port = free_port()
    hub = await tron_hub_factory({"fliswarm": ("127.0.0.1", actor_port)})
    path = write_config(
        tmp_path / "fliswarm.yaml",
        actor_port,
        dict(flicameras.ports),
        ["gfa1", "gfa2"],
        actor={"tron_host": hub.host, "tron_port": hub.commander_port},
    )
    actor = FLISwarmActor.from_config(str(path))
    actor.tron_max_delay = 1.0
    await actor.start()
    try:
        for name in ("gfa1", "gfa2"):
            await actor.connect_device(name)
        client = await tron_client_factory(hub)
        await tron_ready(client, "fliswarm", 15)  # fliswarm registered itself (hub startNubs).

        reply = await client.send("talk -c gfa expose 0.1", actor="fliswarm", timeout=30)
        assert reply.ok, str(reply)
        bundle = reply.values("filename_bundle")
        assert len(bundle) == 2 and "gfa1" in bundle[0] and "gfa2" in bundle[1]
        for fits_path in bundle:
            assert await asyncio.to_thread(fits_ok, fits_path)

        assert (actor.tron_start_nubs_sent, actor.tron_found_connected) == (1, 0)

        # This tron does not connect to fliswarm by itself (fliswarm is not in its nubs list):
        # fliswarm finds it so (its ping through tron fails) and registers again.
        await hub.restart()
        client = await tron_client_factory(hub)
        t0 = time.monotonic()
        await tron_ready(client, "fliswarm", 20)
        print(f"re-registered {time.monotonic() - t0:.1f} s after tron restarted")
        assert (actor.tron_start_nubs_sent, actor.tron_found_connected) == (2, 0)
        commander = actor.tron.commander
        from_fliswarm = [
            (c.actor, c.command) for c in hub.received_commands() if c.cid == commander
        ]
        assert from_fliswarm == [("fliswarm", "ping"), ("hub", "startNubs fliswarm")]
        reply = await client.send("talk -n gfa1 status", actor="fliswarm", timeout=15)
        assert reply.ok and reply.values("status")[0] == "gfa1"
    finally:
        await actor.stop()


@pytest.mark.tron
async def test_tron_absent_at_start(tmp_path: Path, tron_hub_factory, tron_client_factory):
    actor_port, tron_port = free_port(), free_port()
    path = write_config(
        tmp_path / "fliswarm.yaml",
        actor_port,
        {"gfa1": free_port()},
        ["gfa1"],
        actor={"tron_host": "127.0.0.1", "tron_port": tron_port},
    )
    actor = FLISwarmActor.from_config(str(path))
    actor.tron_max_delay = 1.0
    try:
        # start() does not wait for tron: tron only comes up below, after start returned.
        await asyncio.wait_for(actor.start(), 30)
        direct = await ActorClient.connect("127.0.0.1", actor_port)
        assert (await direct.command("ping", 5)).code == ":"
        await direct.close()

        hub = await tron_hub_factory({"fliswarm": ("127.0.0.1", actor_port)}, port=tron_port)
        client = await tron_client_factory(hub)
        await tron_ready(client, "fliswarm", 20)
    finally:
        await actor.stop()
