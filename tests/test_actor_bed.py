"""The actor commands against real Docker nodes running real flicamera containers.

The test bed (`fliswarm_testbed.Testbed`, instance ``$FLISWARM_TESTBED_ID``) provides the
nodes and the registry with the simulated flicamera image. fliswarm runs on a loopback port
and is talked to with a raw LegacyActor client, or through a real tron hub. Self-healing is
off here so that every container change is the command's doing.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from clu.legacy import LegacyActor
from clu.parsers.click import CluGroup, ping
from helpers_actor import ActorClient, ActorReply, free_port, tron_ready

from fliswarm.actor import FLISwarmActor
from fliswarm.docker.containers import short_id
from fliswarm_testbed import Testbed
from fliswarm_testbed.image import ensure_flicamera_image


pytestmark = [pytest.mark.root, pytest.mark.testbed]


@pytest.fixture(scope="module")
def bed(testbed: Testbed) -> Testbed:
    """The session's test bed (``fliswarm_testbed.fixtures``), brought up if needed."""

    return testbed


@pytest.fixture(scope="module")
def image(bed: Testbed) -> str:
    return ensure_flicamera_image(bed.registry)


def bed_config(bed: Testbed, image: str, path: Path, **extra: Any) -> Path:
    """A fliswarm configuration file for the bed (power devices ``outlet-<node>``)."""

    config = bed.fliswarm_config(image)
    # A log folder of its own: the runtime state (enable/disable) is kept next to the log.
    config["actor"]["log_dir"] = str(path.parent / "logs")
    config["timeouts"] = {
        "docker_connect": 1,
        "docker_request": 15,
        "container_ready": 40,
        "ssh": 4,
        "talk": 5,
    }
    config["ping_timeout"] = 0.5
    config["self_healing"] = False
    config["ssh"] = {"user": "root"}
    for name, node in config["nodes"].items():
        node.update({"docker-uid": 0, "docker-gid": 0, "power": {"device": f"outlet-{name}"}})
    for key, value in extra.items():
        if key == "actor":
            config["actor"].update(value)
        else:
            config[key] = value
    path.write_text(yaml.safe_dump(config))
    return path


async def start_actor(bed: Testbed, image: str, tmp_path: Path, **extra: Any) -> FLISwarmActor:
    path = bed_config(bed, image, tmp_path / "fliswarm.yaml", **extra)
    actor = FLISwarmActor.from_config(str(path))
    await actor.start()
    return actor


def nodes_of(reply: ActorReply, key: str) -> dict[str, list[str]]:
    """The values of a per-node keyword, by node (the last one wins)."""

    return {line.values(key)[0]: line.values(key) for line in reply.with_keyword(key)}


async def inspect(actor: FLISwarmActor, name: str) -> dict[str, Any]:
    info = await actor.nodes[name].engine.inspect_container(actor.get_container_name(name))
    assert info is not None, f"no container on {name}"
    return info


async def test_reconnect_status_talk(bed: Testbed, image: str, tmp_path: Path):
    names = [node.name for node in bed.nodes]
    actor = await start_actor(bed, image, tmp_path)
    client = await ActorClient.connect("127.0.0.1", actor.port)
    try:
        t0 = time.monotonic()
        forced = await client.command("reconnect --force", 120)
        elapsed = time.monotonic() - t0
        print(f"reconnect --force of {len(names)} nodes: {elapsed:.1f} s")
        assert forced.code == ":", str(forced)
        texts = forced.texts()
        for name in names:
            stages = [t for t in texts if t.startswith(f"{name}: ") and not t.endswith(".")]
            assert stages[0] == f"{name}: volumes ready", texts
            assert stages[1].startswith(f"{name}: container started ("), texts
            assert stages[2] == f"{name}: camera connected", texts
            assert actor.flicameras[name].is_connected()

        ids = {}
        for name in names:
            info = await inspect(actor, name)
            ids[name] = info["Id"]
            assert info["State"]["Running"]
            assert info["HostConfig"]["Privileged"] is True
            assert info["HostConfig"]["NetworkMode"] == "host"
            assert info["Config"]["User"] == "0:0"
            assert f"ACTOR_NAME={name}" in info["Config"]["Env"]
            assert f"FLICAMERA_DATA_DIR={bed.data_dir}" in info["Config"]["Env"]
            assert info["Config"]["Image"] == image

        talk = await client.command("talk status", 30)
        assert talk.code == ":", str(talk)
        assert sorted(nodes_of(talk, "status")) == sorted(names)

        t0 = time.monotonic()
        status = await client.command("status", 30)
        print(f"status of {len(names)} live nodes: {time.monotonic() - t0:.2f} s")
        assert status.code == ":", str(status)
        assert sorted(status.with_keyword("enabledNodes")[0].values("enabledNodes")) == sorted(
            names
        )
        node_kw = nodes_of(status, "node")
        containers = nodes_of(status, "container")
        devices = nodes_of(status, "device")
        volumes = nodes_of(status, "volume")
        for node in bed.nodes:
            assert node_kw[node.name] == [node.name, node.addr, node.docker_url, "T", "T"]
            assert containers[node.name] == [node.name, short_id(ids[node.name])]
            assert devices[node.name] == [node.name, "T", node.addr, "19995"]
            assert volumes[node.name] == [node.name, "data", "T", bed.data_dir]

        # Without --force: running containers are left alone, the cameras reconnected.
        again = await client.command("reconnect", 60)
        assert again.code == ":", str(again)
        for name in names:
            assert f"{name}: container already running ({short_id(ids[name])})" in again.texts()
            assert (await inspect(actor, name))["Id"] == ids[name]
            assert actor.flicameras[name].is_connected()
        talk = await client.command("talk status", 30)
        assert talk.code == ":" and sorted(nodes_of(talk, "status")) == sorted(names)
    finally:
        await client.close()
        await actor.stop()


async def test_status_and_reconnect_with_a_powered_off_node(
    bed: Testbed, image: str, tmp_path: Path
):
    names = [node.name for node in bed.nodes]
    dead = names[-1]
    actor = await start_actor(bed, image, tmp_path)
    client = await ActorClient.connect("127.0.0.1", actor.port)
    try:
        assert (await client.command("reconnect", 120)).code == ":"
        await asyncio.to_thread(bed.power_off, dead)

        t0 = time.monotonic()
        status = await client.command("status", 30)
        elapsed = time.monotonic() - t0
        print(f"status with {dead} powered off: {elapsed:.2f} s")
        assert status.code == ":", str(status)
        node_kw = nodes_of(status, "node")
        assert node_kw[dead][3:] == ["F", "F"]
        for name in names[:-1]:
            assert node_kw[name][3:] == ["T", "T"]
            assert nodes_of(status, "container")[name][1] != "NA"
        # ~ one ping / engine timeout (0.5 s / 1 s), whatever the dead node does: far from
        # the dead engine's request timeout (docker_request 15 s) it must not wait out.
        assert elapsed < 8, elapsed

        t0 = time.monotonic()
        failed = await client.command(f"reconnect -n {dead}", 30)
        elapsed = time.monotonic() - t0
        print(f"reconnect of a powered-off node failed in {elapsed:.2f} s")
        assert failed.code == "f", str(failed)
        assert failed.with_keyword("failedNodes")[0].values("failedNodes") == [dead]
        assert f"Failed to reconnect {dead}." in failed.lines[-1].raw
        # ~ one engine timeout (1 s): far from docker_request (15 s) and container_ready (40 s).
        assert elapsed < 8, elapsed

        talk = await client.command("talk status", 30)
        assert talk.code == ":", str(talk)
        assert sorted(nodes_of(talk, "status")) == sorted(names[:-1])
        assert talk.with_keyword("failedNodes")[0].values("failedNodes") == [dead]
    finally:
        await client.close()
        await actor.stop()
        await asyncio.to_thread(bed.power_on, dead)


async def test_enable_disable(bed: Testbed, image: str, tmp_path: Path):
    names = [node.name for node in bed.nodes]
    other = names[-1]
    actor = await start_actor(bed, image, tmp_path, enabled_nodes=names[:-1])
    client = await ActorClient.connect("127.0.0.1", actor.port)
    try:
        assert not actor.nodes[other].enabled
        status = await client.command("status", 30)
        assert other not in nodes_of(status, "node")

        enabled = await client.command(f"enable {other}", 30)
        assert enabled.code == ":", str(enabled)
        assert other in enabled.with_keyword("enabledNodes")[0].values("enabledNodes")
        reconnect = await client.command(f"reconnect -n {other}", 120)
        assert reconnect.code == ":", str(reconnect)
        container = (await inspect(actor, other))["Id"]

        # Disabling stops the relay, never the container.
        disabled = await client.command(f"disable {other}", 15)
        assert disabled.code == ":", str(disabled)
        assert other not in disabled.with_keyword("enabledNodes")[0].values("enabledNodes")
        assert not actor.flicameras[other].is_connected()
        info = await inspect(actor, other)
        assert info["Id"] == container and info["State"]["Running"]
        talk = await client.command(f"talk -n {other} status", 15)
        assert talk.code == "f" and f"{other}: node is disabled." in talk.texts()

        # Enabling connects the camera of the running container.
        enabled = await client.command(f"enable {other} nosuchnode", 30)
        assert enabled.code == ":", str(enabled)
        assert f"{other}: enabled; camera connected." in enabled.texts()
        assert "nosuchnode: no such node in the configuration." in enabled.texts()
        assert actor.flicameras[other].is_connected()
        talk = await client.command(f"talk -n {other} status", 15)
        assert talk.code == ":" and list(nodes_of(talk, "status")) == [other]
    finally:
        await client.close()
        await actor.stop()


async def test_reboot_soft_ssh_to_a_node_without_sshd(bed: Testbed, image: str, tmp_path: Path):
    name = bed.nodes[0].name
    actor = await start_actor(bed, image, tmp_path)
    client = await ActorClient.connect("127.0.0.1", actor.port)
    try:
        reply = await client.command(f"reboot -n {name}", 30)
        assert reply.code == "f", str(reply)
        [text] = [t for t in reply.texts() if t.startswith(f"{name}: ssh")]
        assert text.startswith(f"{name}: ssh failed with exit code 255: ")
        assert "Connection refused" in text, text  # Refused at once, not at the ssh timeout.
        argv = f"-o BatchMode=yes -o ConnectTimeout=3 -- root@{bed.nodes[0].addr} sudo reboot"
        assert any(argv in line.raw for line in reply.lines if line.code == "d")
    finally:
        await client.close()
        await actor.stop()


# A small power actor, as jaeger's ``ieb switch --on/--off DEVICE``, that really switches the
# test bed's nodes.


@click.group(cls=CluGroup)
def power_parser(*args: Any) -> None:
    """The power actor's commands."""


power_parser.add_command(ping)


@power_parser.group()
def ieb(*args: Any) -> None:
    """The power switches."""


@ieb.command()
@click.argument("DEVICE", type=str)
@click.option("--on", "mode", flag_value="on")
@click.option("--off", "mode", flag_value="off")
async def switch(command: Any, bed: Testbed, log: list[tuple[str, str, bool]], device, mode):
    """Switches the power of a node of the bed (device outlet-<node>)."""

    name = device.removeprefix("outlet-")
    if mode is None or name not in [node.name for node in bed.nodes]:
        return command.fail(error=f"unknown device {device}.")
    action = bed.power_on if mode == "on" else bed.power_off
    await asyncio.to_thread(action, name)
    powered = (await asyncio.to_thread(bed.status))[name]["powered"]
    log.append((mode, device, powered))
    return command.finish(text=f"{device} is {mode}.")


class PowerActor(LegacyActor):
    parser = power_parser


@pytest.mark.tron
async def test_reboot_hard_through_tron_and_a_power_actor(
    bed: Testbed, image: str, tmp_path: Path, tron_hub_factory, tron_client_factory
):
    names = [node.name for node in bed.nodes]
    target, unknown, without = names[-1], names[0], names[1]
    actor_port, power_port = free_port(), free_port()
    hub = await tron_hub_factory(
        {"fliswarm": ("127.0.0.1", actor_port), "power": ("127.0.0.1", power_port)}
    )
    log: list[tuple[str, str, bool]] = []
    power = PowerActor("power", "127.0.0.1", power_port)
    power.parser_args = [bed, log]
    await power.start()

    path = bed_config(
        bed,
        image,
        tmp_path / "fliswarm.yaml",
        actor={"port": actor_port, "tron_host": hub.host, "tron_port": hub.commander_port},
        power={
            "actor": "power",
            "command": {"poweron": "ieb switch --on", "poweroff": "ieb switch --off"},
        },
    )
    config = yaml.safe_load(path.read_text())
    config["nodes"][unknown]["power"]["device"] = "outlet-nothing"
    del config["nodes"][without]["power"]
    path.write_text(yaml.safe_dump(config))
    actor = FLISwarmActor.from_config(str(path))
    actor.tron_max_delay = 1.0
    await actor.start()
    try:
        client = await tron_client_factory(hub)
        await client.start_nubs("power")
        await tron_ready(client, "fliswarm", 20)
        await tron_ready(client, "power", 10)

        t0 = time.monotonic()
        reply = await client.send(f"reboot --hard --off-time 0.2 -n {target}", timeout=90)
        elapsed = time.monotonic() - t0
        print(f"reboot --hard of {target} through tron: {elapsed:.1f} s")
        assert reply.ok, str(reply)
        assert log == [("off", f"outlet-{target}", False), ("on", f"outlet-{target}", True)]
        nodes = [line.keywords["node"] for line in reply.lines if "node" in line.keywords]
        assert nodes and nodes[-1][:2] == [target, bed.node(target).addr]  # type: ignore[index]
        assert (await asyncio.to_thread(bed.status))[target]["answering"]

        failed = await client.send(f"reboot --hard -n {unknown},{without}", timeout=60)
        assert failed.code == "f", str(failed)
        text = str(failed)
        assert f"{without}: no power device configured for this node." in text
        assert "power off: 'power ieb switch --off outlet-nothing' failed: " in text
        assert "unknown device outlet-nothing." in text
        assert len(log) == 2  # Nothing switched.
    finally:
        await actor.stop()
        await power.stop()
        await asyncio.to_thread(bed.power_on, target)  # No-op if it is on.


@pytest.mark.tron
async def test_daemon_from_the_cli_through_tron(
    bed: Testbed, image: str, tmp_path: Path, tron_hub_factory, tron_client_factory
):
    actor_port = free_port()
    hub = await tron_hub_factory({"fliswarm": ("127.0.0.1", actor_port)})
    path = bed_config(
        bed,
        image,
        tmp_path / "fliswarm.yaml",
        actor={
            "port": actor_port,
            "tron_host": hub.host,
            "tron_port": hub.commander_port,
            "log_dir": str(tmp_path / "logs"),
        },
    )
    env = dict(os.environ, FLISWARM_PID_FILE=str(tmp_path / "fliswarm.pid"))

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "fliswarm", "-c", str(path), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )

    t0 = time.monotonic()
    started = await asyncio.to_thread(cli, "start")
    assert started.returncode == 0, started.stdout + started.stderr
    print(f"daemon started in {time.monotonic() - t0:.1f} s")
    try:
        client = await tron_client_factory(hub)
        await tron_ready(client, "fliswarm", 30)
        print(f"daemon reachable through tron {time.monotonic() - t0:.1f} s after start")
        status = await client.send("status", timeout=30)
        assert status.ok, str(status)
        names = {line.keywords["node"][0] for line in status.lines if "node" in line.keywords}  # type: ignore[index]
        assert names == {node.name for node in bed.nodes}

        reconnect = await client.send("reconnect", timeout=120)
        assert reconnect.ok, str(reconnect)
        talk = await client.send("talk status", timeout=30)
        assert talk.ok, str(talk)
        relayed = {
            line.keywords["status"][0]  # type: ignore[index]
            for line in talk.lines
            if "status" in line.keywords
        }
        assert relayed == {node.name for node in bed.nodes}
        print(f"status, reconnect, talk done {time.monotonic() - t0:.1f} s after start")
    finally:
        t1 = time.monotonic()
        stopped = await asyncio.to_thread(cli, "stop")
        print(f"daemon stopped in {time.monotonic() - t1:.1f} s")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert not (tmp_path / "fliswarm.pid").exists()
    gone = await client.send("ping", timeout=10)
    assert not gone.ok
