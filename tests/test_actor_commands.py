"""The actor commands status, enable/disable, reboot and simulate without the Docker test bed.

Unit tests of the pure helpers, then wire tests: a real fliswarm actor on a loopback port, a
raw client speaking the LegacyActor protocol, nodes whose Docker engines are unreachable.
The same commands against real Docker nodes and flicamera containers are in
``test_actor_bed.py``.
"""

from __future__ import annotations

import asyncio
import gc
from collections import Counter
from pathlib import Path

import pytest
import yaml
from helpers_actor import ActorClient, free_port, write_config

from fliswarm.actor import FLISwarmActor
from fliswarm.commands.reboot import ssh_argv, ssh_outcome
from fliswarm.commands.simulate import find_files, image_cycle
from fliswarm.config import load_config
from fliswarm.config.settings import NodeSettings
from fliswarm.provision.desired import container_spec, container_user


# Unit tests


def test_ssh_argv_plain():
    argv = ssh_argv("sdss-gfa1", "sudo reboot", user="sdss", connect_timeout=10)
    assert argv == [
        "ssh",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=10",
        "--",
        "sdss@sdss-gfa1",
        "sudo",
        "reboot",
    ]


def test_ssh_argv_known_hosts_quoting_and_no_user():
    argv = ssh_argv(
        "10.1.2.3", "sudo 'shutdown now' -r", connect_timeout=0.2, known_hosts="/etc/kh"
    )
    assert argv[:5] == ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=1"]
    assert argv[5:9] == ["-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=/etc/kh"]
    assert argv[9:] == ["--", "10.1.2.3", "sudo", "shutdown now", "-r"]
    # Shell syntax is a plain word for the remote side, never run by a local shell.
    assert ssh_argv("h", "reboot; rm -rf /")[-4:] == ["reboot;", "rm", "-rf", "/"]
    assert ssh_argv("h", ["reboot", "$(x)"])[-2:] == ["reboot", "$(x)"]


@pytest.mark.parametrize(
    "host, user, command",
    [
        ("-oProxyCommand=x", None, "reboot"),
        ("h", "-x", "reboot"),
        ("h", "a@b", "reboot"),
        ("h", None, ""),
        ("h", None, "'unclosed"),
    ],
)
def test_ssh_argv_rejects(host, user, command):
    with pytest.raises(ValueError):
        ssh_argv(host, command, user=user)


def test_ssh_outcome():
    assert ssh_outcome(0, b"") is None
    assert ssh_outcome(255, b"Connection to 10.0.0.1 closed by remote host.\n") is None
    refused = ssh_outcome(255, b"ssh: connect to host h port 22: Connection refused\n")
    assert (
        refused == "ssh failed with exit code 255: ssh: connect to host h port 22: "
        "Connection refused"
    )
    denied = ssh_outcome(1, "a\nb\nc\nsudo: a password is required\n")
    assert denied is not None and denied.startswith("ssh failed with exit code 1: ")
    assert denied.endswith("b | c | sudo: a password is required")
    assert ssh_outcome(255, b"") == "ssh failed with exit code 255: no error output"


def test_image_cycle_sorted_and_random():
    cycle = image_cycle(["a", "b", "c"])
    assert [next(cycle) for _ in range(7)] == ["a", "b", "c", "a", "b", "c", "a"]
    shuffled = image_cycle(["a", "b", "c", "d"], shuffle=True)
    passes = [[next(shuffled) for _ in range(4)] for _ in range(30)]
    assert all(sorted(p) == ["a", "b", "c", "d"] for p in passes)  # Every file each pass.
    assert len({tuple(p) for p in passes}) > 1  # 24 orders: 30 equal passes ~ impossible.
    assert list(image_cycle([])) == []


def test_find_files(tmp_path: Path):
    for name in ("b.fits", "a.fits", "sub/c.fits", "x.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("")
    (tmp_path / "dir.fits").mkdir()
    assert find_files(str(tmp_path / "*.fits")) == [
        str(tmp_path / "a.fits"),
        str(tmp_path / "b.fits"),
    ]
    assert len(find_files(str(tmp_path / "**" / "*.fits"))) == 3
    assert find_files(str(tmp_path / "*.nothing")) == []


def test_container_user():
    def node(**ids: int | None) -> NodeSettings:
        return NodeSettings("gfa1", "h", 19995, "tcp://h:2375", docker_uid=ids.get("uid"),
                            docker_gid=ids.get("gid"))  # fmt: skip

    assert container_user(node(uid=2005, gid=3005)) == "2005:3005"
    assert container_user(node(uid=0)) == "0"
    assert container_user(node(gid=5)) is None


# async: a CLU actor takes the running loop; made outside one it creates a loop of its own
# that nothing closes (a ResourceWarning in whichever later test the garbage collector runs).
async def test_container_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OBSERVATORY", "APO")
    config = load_config()  # The shipped APO/LCO configuration.
    config["environment"] = {"EXTRA": "1"}
    actor = FLISwarmActor.from_config(config)
    spec = container_spec(actor.settings, "gfa3")
    assert spec == {
        "name": "flicamera-gfa3",
        "image": "sdss/flicamera:latest",
        "registry": "sdss-hub:5000",
        "volumes": ["data", "home"],
        "privileged": True,
        "envs": {"ACTOR_NAME": "gfa3", "OBSERVATORY": "APO", "EXTRA": "1"},
        "user": "2005:3005",
        "network": "host",
    }


# Wire tests: an actor whose nodes have no Docker engine.


async def start_actor(tmp_path: Path, enabled: list[str], **extra) -> FLISwarmActor:
    ports = {name: free_port() for name in ("gfa1", "gfa2", "fvc", "gfa6")}
    extra.setdefault("timeouts", {"docker_connect": 0.5, "docker_request": 1, "ssh": 3})
    extra.setdefault("ping_timeout", 0.5)
    path = write_config(tmp_path / "fliswarm.yaml", free_port(), ports, enabled, **extra)
    actor = FLISwarmActor.from_config(str(path))
    await actor.start()
    return actor


@pytest.fixture
async def actor(tmp_path: Path):
    actor = await start_actor(tmp_path, ["gfa1", "gfa2", "fvc"])
    yield actor
    await actor.stop()


@pytest.fixture
async def client(actor: FLISwarmActor):
    client = await ActorClient.connect("127.0.0.1", actor.port)
    yield client
    await client.close()


async def test_status_without_docker(client: ActorClient):
    reply = await client.command("status", 15)
    assert reply.code == ":", str(reply)
    [enabled] = reply.with_keyword("enabledNodes")
    assert sorted(enabled.values("enabledNodes")) == ["fvc", "gfa1", "gfa2"]
    nodes = {line.values("node")[0]: line.values("node") for line in reply.with_keyword("node")}
    assert set(nodes) == {"gfa1", "gfa2", "fvc"}
    assert all(values[4] == "F" for values in nodes.values())  # No Docker engine.
    devices = {
        line.values("device")[0]: line.values("device")[1] for line in reply.with_keyword("device")
    }
    assert devices == {"gfa1": "F", "gfa2": "F", "fvc": "F"}
    warned = {text.split(":")[0] for text in reply.texts() if "Docker" in text}
    assert (
        warned >= {"gfa1", "gfa2", "fvc"}
        or "Docker client on node 127.0.0.1 is not connected." in reply.texts()
    ), reply.texts()


class HungEngine:
    """A Docker engine address that accepts connections and never answers (a hung engine).

    ``requests`` records the loop time and request line of each request it gets.
    """

    def __init__(self) -> None:
        self.requests: list[tuple[float, str]] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> HungEngine:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        while line := await reader.readline():
            if line.split(b" ")[0] in (b"GET", b"POST", b"DELETE", b"HEAD", b"PUT"):
                self.requests.append((asyncio.get_running_loop().time(), line.decode().strip()))

    def first(self, path: str) -> float:
        """When the first request for ``path`` came."""

        times = [when for when, line in self.requests if f" {path}" in line]
        assert times, f"no request for {path}: {self.requests}"
        return min(times)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in self.writers:
            writer.close()


#: How long a hung engine is waited for (``docker_connect``): a serial wait for three of them
#: (3 x HUNG) and a parallel one (1 x HUNG) are far apart.
HUNG = 4.0


async def test_start_and_status_wait_for_hung_engines_in_parallel(tmp_path: Path):
    """Three nodes whose Docker engines accept connections and never answer: start and
    status ask them all at once and wait ~one ``docker_connect`` (4 s), not three (12 s)."""

    engines = [await HungEngine().start() for _ in range(3)]
    names = ["gfa1", "gfa2", "fvc"]
    path = write_config(
        tmp_path / "fliswarm.yaml",
        free_port(),
        {name: free_port() for name in names},
        names,
        timeouts={"docker_connect": HUNG, "docker_request": 30, "ssh": 3},
        ping_timeout=0.5,
    )
    config = yaml.safe_load(path.read_text())
    for name, engine in zip(names, engines, strict=True):
        config["nodes"][name]["docker-client"] = f"tcp://127.0.0.1:{engine.port}"
    actor = FLISwarmActor.from_config(config)
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        await asyncio.wait_for(actor.start(), 60)
        took = loop.time() - started
        asked = [engine.first("/_ping") for engine in engines]
        spread = max(asked) - min(asked)
        print(f"start with 3 hung engines: {took:.2f} s, all asked within {spread:.3f} s")
        assert spread < HUNG / 2, asked  # Serially: >= HUNG apart.
        assert took < 2 * HUNG, took  # Serially: >= 3 * HUNG.

        # The supervisor (which would soon report them offline without asking) is stopped:
        # status asks the engines itself.
        await actor.supervisor.stop()
        for engine in engines:
            engine.requests.clear()
        errors: list[dict] = []  # What the loop would log as a traceback.
        loop.set_exception_handler(lambda _, context: errors.append(context))
        client = await ActorClient.connect("127.0.0.1", actor.port)
        try:
            started = loop.time()
            reply = await client.command("status", 60)
            took = loop.time() - started
        finally:
            await client.close()
            gc.collect()  # An unretrieved task exception is reported when the task goes.
            loop.set_exception_handler(None)
        assert not errors, errors
        assert reply.code == ":", str(reply)
        nodes = [line.values("node") for line in reply.with_keyword("node")]
        assert {values[0]: values[4] for values in nodes} == dict.fromkeys(names, "F"), nodes
        asked = [engine.first("/_ping") for engine in engines]
        spread = max(asked) - min(asked)
        print(f"status of 3 hung engines: {took:.2f} s, all asked within {spread:.3f} s")
        assert spread < HUNG / 2, asked
        assert took < 2 * HUNG, took
    finally:
        await actor.stop()
        for engine in engines:
            await engine.stop()


async def test_enable_disable_and_unknown_nodes(client: ActorClient, actor: FLISwarmActor):
    nothing = await client.command("enable", 5)
    assert nothing.code == "f" and "Give the nodes" in str(nothing)
    unknown = await client.command("enable gfa9", 5)
    assert unknown.code == "f", str(unknown)
    assert "gfa9: no such node in the configuration." in unknown.texts()
    assert "None of the nodes" in str(unknown.lines[-1].raw)

    mixed = await client.command("enable gfa6 gfa9", 10)
    assert mixed.code == ":", str(mixed)
    assert "gfa9: no such node in the configuration." in mixed.texts()
    assert "gfa6: enabled, but its Docker engine is not answering." in mixed.texts()
    [enabled] = mixed.with_keyword("enabledNodes")
    assert sorted(enabled.values("enabledNodes")) == ["fvc", "gfa1", "gfa2", "gfa6"]
    assert actor.nodes["gfa6"].enabled and "gfa6" in actor.config["enabled_nodes"]

    disabled = await client.command("disable gfa1,gfa6 nope", 5)
    assert disabled.code == ":", str(disabled)
    assert "nope: no such node in the configuration." in disabled.texts()
    assert sorted(disabled.with_keyword("enabledNodes")[0].values("enabledNodes")) == [
        "fvc",
        "gfa2",
    ]
    assert not actor.nodes["gfa1"].enabled

    talk = await client.command("talk -n gfa1 status", 5)
    assert talk.code == "f" and "gfa1: node is disabled." in talk.texts()
    status = await client.command("status", 10)
    assert {line.values("node")[0] for line in status.with_keyword("node")} == {"gfa2", "fvc"}

    everything = await client.command("disable --all", 5)
    assert everything.code == ":" and everything.lines[-2].values("enabledNodes") == []
    none_left = await client.command("reconnect", 5)
    assert none_left.code == "f" and "No enabled node" in none_left.lines[-1].raw
    back = await client.command("enable -a", 10)
    assert back.code == ":"
    assert sorted(back.with_keyword("enabledNodes")[0].values("enabledNodes")) == [
        "fvc",
        "gfa1",
        "gfa2",
        "gfa6",
    ]


async def test_reconnect_unreachable_docker_fails_in_bounded_time(client: ActorClient):
    # Bounded: within 15 s, half the container_ready timeout (30 s by default) it must not
    # wait for (the engines refuse at once here).
    reply = await client.command("reconnect -n gfa1,nope -c fvc --force", 15)
    assert reply.code == "f", str(reply)
    assert "nope: no such node." in reply.texts()
    [failed] = reply.with_keyword("failedNodes")
    assert sorted(failed.values("failedNodes")) == ["fvc", "gfa1"]
    error = " ".join(reply.lines[-1].values("error"))
    assert error.startswith("Failed to reconnect ") and "not answering" in error


async def test_reboot_errors_without_power_or_ssh(client: ActorClient):
    for option in ("--hard", "-f"):  # -f: 0.7's short form of --hard
        hard = await client.command(f"reboot {option} -n gfa1", 5)
        assert hard.code == "f", str(hard)
        assert "gfa1: no power section in the configuration." in hard.texts()

    # Nothing listens on port 22 of 127.0.0.1 (the nodes' host): ssh fails cleanly, refused
    # (checked below), not at its timeout.
    soft = await client.command("reboot -n gfa1,gfa2", 15)
    assert soft.code == "f", str(soft)
    argv = [line for line in soft.lines if line.code == "d" and "running ssh" in line.raw]
    assert (
        len(argv) == 2
        and "ssh -o BatchMode=yes -o ConnectTimeout=2 -- 127.0.0.1 sudo reboot" in argv[0].raw
    )
    texts = [t for t in soft.texts() if t.startswith(("gfa1: ssh", "gfa2: ssh"))]
    assert len(texts) == 2
    for text in texts:
        assert "ssh failed with exit code 255" in text, text
        assert "Connection refused" in text or "port 22" in text, text
    assert soft.with_keyword("failedNodes")[0].values("failedNodes") == ["gfa1", "gfa2"]


async def test_reboot_hard_node_without_power_device(tmp_path: Path):
    power = {"actor": "power", "command": {"poweron": "on", "poweroff": "off"}}
    actor = await start_actor(tmp_path, ["gfa1"], power=power)
    client = await ActorClient.connect("127.0.0.1", actor.port)
    try:
        reply = await client.command("reboot --hard", 5)
        assert reply.code == "f", str(reply)
        assert "gfa1: no power device configured for this node." in reply.texts()
    finally:
        await client.close()
        await actor.stop()


async def test_simulate(client: ActorClient, tmp_path: Path):
    images = tmp_path / "images"
    images.mkdir()
    for i in (3, 1, 2):
        (images / f"img-{i}.fits").write_text("")

    no_glob = await client.command("simulate", 5)
    assert no_glob.code == "f" and "GLOB" in no_glob.lines[-1].raw
    no_match = await client.command(f"simulate {tmp_path}/*.nothing", 5)
    assert no_match.code == "f" and "No files match" in no_match.lines[-1].raw
    no_stop = await client.command("simulate --stop", 5)
    assert no_stop.code == "f" and "No simulation is running." in no_stop.lines[-1].raw

    start = len(client.lines)
    mid = client.send(f"simulate {images}/*.fits --delay 0.05")
    # Two rounds of three nodes: six images, cycling through the sorted files.
    for _ in range(6):
        await client.wait_for(
            lambda line: line.command_id == mid and "filename" in line.keywords, 5, start
        )
        start = next(
            i + 1
            for i in range(start, len(client.lines))
            if client.lines[i].command_id == mid and "filename" in client.lines[i].keywords
        )
    emitted = [
        line.values("filename")
        for line in client.lines
        if line.command_id == mid and "filename" in line.keywords
    ][:6]
    assert [v[0] for v in emitted] == ["fvc", "gfa1", "gfa2"] * 2  # Configuration order.
    assert all(v[0] == v[1] for v in emitted)
    assert [Path(v[2]).name for v in emitted] == ["img-1.fits", "img-2.fits", "img-3.fits"] * 2
    assert all(
        line.code == "i"
        for line in client.lines
        if line.command_id == mid and "filename" in line.keywords
    )

    second = await client.command(f"simulate {images}/*.fits", 5)
    assert second.code == "f" and "already running" in second.lines[-1].raw

    stop = await client.command("simulate --stop", 5)
    assert stop.code == ":", str(stop)
    end = await client.wait_for(lambda line: line.command_id == mid and line.code in ":f", 5)
    assert end.code == ":" and "Simulation ended after" in end.raw

    # Random order: every file appears once per pass.
    mid = client.send(f"simulate {images}/*.fits --delay 0.02 --random")
    await client.wait_for(
        lambda line: (
            line.command_id == mid
            and sum(1 for x in client.lines if x.command_id == mid and "filename" in x.keywords)
            >= 6
        ),
        5,
    )
    assert (await client.command("simulate --stop", 5)).code == ":"
    names = [
        Path(line.values("filename")[2]).name
        for line in client.lines
        if line.command_id == mid and "filename" in line.keywords
    ]
    assert Counter(names[:3]) == Counter(["img-1.fits", "img-2.fits", "img-3.fits"])
