"""Tests of the Docker test bed itself: real dockerds in network namespaces, real faults."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from typing import TYPE_CHECKING

import aiodocker
import pytest
import yaml
from click.testing import CliRunner

from fliswarm_testbed import Testbed, cli, default_names, ensure_packages
from fliswarm_testbed.bed import RUN_ROOT
from fliswarm_testbed.network import list_netns, netns_exists


if TYPE_CHECKING:
    from fliswarm_testbed.fixtures import Faults


root = pytest.mark.root

MANAGED_LABEL = "org.sdss.fliswarm.managed"
TEST_PREFIX = "fliswarm-test"


def assert_routed_to_bed(bed: Testbed, addr: str) -> None:
    assert bed.routed_to_bed(addr), f"traffic to {addr} would leave the test bed"


def icmp_ping(bed: Testbed, addr: str) -> bool:
    """One ICMP echo with a 1 s deadline (only towards the bed)."""

    assert_routed_to_bed(bed, addr)
    cmd = ["ping", "-c", "1", "-W", "1", "-q", addr]
    return subprocess.run(cmd, capture_output=True, timeout=5).returncode == 0


async def docker_call(bed: Testbed, url: str, timeout: float = 2.0) -> str:
    """Calls ``GET /version``: ``"ok"``, ``"timeout"`` (no answer within ``timeout``: the call
    hangs, as towards a dead host), ``"refused"``, or ``"error: ..."``."""

    assert_routed_to_bed(bed, url.split("//")[1].split(":")[0])
    docker = aiodocker.Docker(url=url)
    try:
        await asyncio.wait_for(docker.version(), timeout)
        return "ok"
    except asyncio.TimeoutError:
        return "timeout"
    except (aiodocker.DockerError, OSError) as err:
        cause: BaseException | None = err
        while cause is not None:
            if isinstance(cause, ConnectionRefusedError) or isinstance(
                getattr(cause, "os_error", None), ConnectionRefusedError
            ):
                return "refused"
            cause = cause.__cause__ or cause.__context__
        return f"error: {err!r}"
    finally:
        await docker.close()


def test_default_names() -> None:
    assert default_names(3) == ["gfa1", "gfa2", "fvc"]
    assert default_names(7) == ["gfa1", "gfa2", "gfa3", "gfa4", "gfa5", "gfa6", "fvc"]
    with pytest.raises(ValueError):
        default_names(0)


def test_addressing_and_config() -> None:
    bed = Testbed(instance=97, names=["gfa1", "gfa2", "fvc"])
    assert bed.manager_addr == "10.250.174.1"
    assert bed.registry == "10.250.174.1:5000"
    assert [n.addr for n in bed.nodes] == ["10.250.174.11", "10.250.174.12", "10.250.174.13"]
    assert bed.nodes[2].docker_url == "tcp://10.250.174.13:2375"
    assert all(len(n.netns) <= 15 for n in bed.nodes)
    assert len({n.mac for n in bed.nodes}) == 3

    config = bed.fliswarm_config("10.250.174.1:5000/flicamera:test", port=19999)
    assert config["actor"]["host"] == "127.0.0.1" and config["actor"]["port"] == 19999
    assert "tron_host" not in config["actor"]
    assert config["registry"] == bed.registry
    assert config["nodes"]["fvc"] == {
        "host": "10.250.174.13",
        "port": 19995,
        "docker-client": "tcp://10.250.174.13:2375",
        "category": "fvc",
    }
    assert config["nodes"]["gfa2"]["category"] == "gfa"
    assert config["enabled_nodes"] == ["gfa1", "gfa2", "fvc"]
    assert config["volumes"]["data"]["opts"]["device"] == bed.data_dir
    assert config["environment"] == {"FLICAMERA_DATA_DIR": bed.data_dir}

    with pytest.raises(ValueError):
        Testbed(instance=97, names=["gfa1", "gfa1"])
    with pytest.raises(ValueError):
        Testbed(instance=97, names=["Bad_Name"])


@root
def test_packages_present() -> None:
    assert ensure_packages() == []  # nothing left to install on this machine


@root
async def test_engines_have_their_own_identity(testbed: Testbed) -> None:
    ids = set()
    for node in testbed.nodes:
        docker = aiodocker.Docker(url=node.docker_url)
        try:
            info = await asyncio.wait_for(docker.system.info(), 10)
        finally:
            await docker.close()
        assert info["Name"] == node.name
        assert testbed.registry in str(info["RegistryConfig"]["IndexConfigs"])
        ids.add(info["ID"])
    assert len(ids) == len(testbed.nodes)


async def run_container(
    url: str, image: str, suffix: str, restart: dict[str, str] | None = None
) -> dict:
    """Runs ``sleep 300`` privileged in a managed test container; returns its inspect data."""

    docker = aiodocker.Docker(url=url)
    try:
        host_config: dict = {"Privileged": True}
        if restart:
            host_config["RestartPolicy"] = restart
        container = await docker.containers.run(
            {
                "Image": image,
                "Cmd": ["sleep", "300"],
                "Labels": {MANAGED_LABEL: "true"},
                "HostConfig": host_config,
            },
            name=f"{TEST_PREFIX}-{suffix}",
        )
        return await container.show()
    finally:
        await docker.close()


@root
async def test_privileged_container_on_every_node(
    testbed: Testbed, testbed_busybox: str, testbed_clean: Testbed
) -> None:
    async def run_on(url: str) -> None:
        info = await run_container(url, testbed_busybox, "privileged")
        assert info["HostConfig"]["Privileged"] is True
        assert info["State"]["Running"] is True

    await asyncio.wait_for(asyncio.gather(*(run_on(n.docker_url) for n in testbed.nodes)), 60)


@root
async def test_power_off_and_on(
    testbed: Testbed, testbed_busybox: str, testbed_faults: Faults
) -> None:
    node = testbed.node("gfa2")
    docker = aiodocker.Docker(url=node.docker_url)
    try:
        await docker.volumes.create({"Name": f"{TEST_PREFIX}-survivor"})
    finally:
        await docker.close()

    await run_container(node.docker_url, testbed_busybox, "restarts", {"Name": "always"})

    await testbed_faults.power_off("gfa2")
    assert not netns_exists(node.netns)
    assert not await asyncio.to_thread(icmp_ping, testbed, node.addr)
    # The engine's API hangs (no answer, no refusal), as a real dead host's.
    assert await docker_call(testbed, node.docker_url, timeout=2.0) == "timeout"
    status = await asyncio.to_thread(testbed.status)
    assert status["gfa2"]["powered"] is False and status["gfa1"]["answering"] is True

    await testbed_faults.power_on("gfa2")
    assert await asyncio.to_thread(icmp_ping, testbed, node.addr)
    assert await docker_call(testbed, node.docker_url, timeout=5.0) == "ok"
    docker = aiodocker.Docker(url=node.docker_url)
    try:
        names = [v["Name"] for v in (await docker.volumes.list())["Volumes"] or []]
        assert f"{TEST_PREFIX}-survivor" in names
        container = await docker.containers.get(f"{TEST_PREFIX}-restarts")
        deadline = time.monotonic() + 20  # its restart policy brings it back
        while not (await container.show())["State"]["Running"]:
            assert time.monotonic() < deadline, "the restart-policy container did not return"
            await asyncio.sleep(0.1)
    finally:
        await docker.close()


@root
async def test_unplug_and_plug(testbed: Testbed, testbed_faults: Faults) -> None:
    node = testbed.node("fvc")
    await testbed_faults.unplug("fvc")
    assert not await asyncio.to_thread(icmp_ping, testbed, node.addr)
    assert await docker_call(testbed, node.docker_url, timeout=2.0) == "timeout"  # Hangs.
    status = await asyncio.to_thread(testbed.status)
    assert status["fvc"]["engine"] is True and status["fvc"]["plugged"] is False

    await testbed_faults.plug("fvc")
    assert await asyncio.to_thread(icmp_ping, testbed, node.addr)
    assert await docker_call(testbed, node.docker_url, timeout=5.0) == "ok"


@root
async def test_stop_and_start_engine(testbed: Testbed, testbed_faults: Faults) -> None:
    node = testbed.node("gfa1")
    await testbed_faults.stop_engine("gfa1")
    assert await asyncio.to_thread(icmp_ping, testbed, node.addr)
    # Refused (the host is up), not a hang: even with a long timeout it is not waited for.
    assert await docker_call(testbed, node.docker_url, timeout=30.0) == "refused"

    await testbed_faults.start_engine("gfa1")
    assert await docker_call(testbed, node.docker_url, timeout=5.0) == "ok"


@root
async def test_up_repairs_several_faults(testbed: Testbed, testbed_faults: Faults) -> None:
    await testbed_faults.power_off("gfa1")
    await testbed_faults.unplug("gfa2")
    await testbed_faults.stop_engine("fvc")
    status = await asyncio.to_thread(testbed.status)
    assert [s["answering"] for s in status.values()] == [False, False, False]
    await asyncio.wait_for(asyncio.to_thread(testbed.up), 30)
    status = await asyncio.to_thread(testbed.status)
    assert all(s["answering"] and s["reachable"] for s in status.values()), status


@root
async def test_fault_fixture_restores(testbed: Testbed, testbed_faults: Faults) -> None:
    """What ``testbed_faults`` does after each test (``Testbed.restore``) repairs every kind
    of fault (made here, not left over by an earlier test)."""

    await testbed_faults.power_off("gfa1")
    await testbed_faults.unplug("gfa2")
    await testbed_faults.stop_engine("fvc")
    status = await asyncio.to_thread(testbed.status)
    assert not any(s["answering"] for s in status.values()), status
    await asyncio.wait_for(asyncio.to_thread(testbed.restore), 90)
    status = await asyncio.to_thread(testbed.status)
    assert all(s["powered"] and s["plugged"] and s["answering"] for s in status.values())


@root
def test_cli_reports_the_bed(testbed: Testbed) -> None:
    runner = CliRunner()
    instance = ["--instance", str(testbed.instance)]
    result = runner.invoke(cli.testbed, ["status", *instance])
    assert result.exit_code == 0, result.output
    assert all(n.name in result.output for n in testbed.nodes)
    result = runner.invoke(cli.testbed, ["env", *instance])
    assert f"export FLISWARM_TESTBED_REGISTRY={testbed.registry}" in result.output
    result = runner.invoke(cli.testbed, ["config", *instance, "--image", "x/flicamera:1"])
    config = yaml.safe_load(result.output)
    assert config["image"] == "x/flicamera:1"
    assert set(config["nodes"]) == {n.name for n in testbed.nodes}


def _bed_leftovers(bed: Testbed) -> list[str]:
    found = [f"netns {ns}" for ns in list_netns(bed.plan.prefix + "-")]
    if os.path.exists(f"/sys/class/net/{bed.plan.manager_link}"):
        found.append(bed.plan.manager_link)
    with open("/proc/self/mountinfo") as f:
        found += [line.split()[4] for line in f if bed.run_dir in line or bed.lib_dir in line]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if (bed.run_dir + "/").encode() in f.read():
                    found.append(f"process {pid}")
        except OSError:
            pass
    for path in (bed.run_dir, bed.lib_dir):
        if os.path.exists(path):
            found.append(path)
    return found


@root
def test_up_down_idempotent(testbed: Testbed, testbed_busybox: str) -> None:
    bed = Testbed(instance=testbed.instance + 50, n_nodes=2)
    bed.down()
    assert not bed.is_up()
    try:
        bed.up()
        pids = dict(bed._state()["nodes"])
        bed.up()
        assert bed._state()["nodes"] == pids  # Nothing restarted.
        assert all(s["answering"] for s in bed.status().values())
        # The registry storage is shared: the session bed's image is already there.
        ref = testbed_busybox.replace(testbed.registry, bed.registry)
        asyncio.run(run_container(bed.nodes[0].docker_url, ref, "at-down", {"Name": "always"}))
    finally:
        bed.down()
    bed.down()
    assert _bed_leftovers(bed) == []
    assert os.path.isdir(RUN_ROOT)
    route = subprocess.run(
        ["ip", "route", "get", f"10.250.{77 + bed.instance}.50"], capture_output=True, timeout=5
    )
    assert route.returncode != 0 and b"No route to host" in route.stderr
    routes = subprocess.run(["ip", "route", "show"], capture_output=True, timeout=5).stdout
    assert b"unreachable 10.250.0.0/16" in routes
