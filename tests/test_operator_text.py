"""What operators read: node names, what happened and what to do, never a library's internals.

The messages of the engine layer for real failures on loopback (refused, closed without an
answer, no answer in time), the flicamera connection's, and those of a whole actor (status,
reconnect, the supervisor's ``nodeState``) whose engines do not answer; no ``nodeState`` is
broadcast per node when the actor stops (``disable`` still broadcasts). The same checks run on
the test bed's faults in ``test_supervision.py`` and on TLS engines in ``test_tls.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest
from helpers_actor import ActorClient, ActorLine, free_port, write_config

from fliswarm.actor import FLISwarmActor
from fliswarm.camera.device import FlicameraDevice
from fliswarm.docker.engine import Engine
from fliswarm.exceptions import NodeError, NodeTimeoutError, NodeUnreachableError


#: What must never reach an operator: exception reprs, library names and texts, call names.
FORBIDDEN = (
    "Error(",
    "Exception(",
    "Session is closed",
    "Connector is closed",
    "aiohttp",
    "aiodocker",
    "ClientConnector",
    "ServerDisconnected",
    "Cannot connect to Docker Engine via",
    "Traceback",
    "<",
    "object at 0x",
    "Errno",
    "_ssl.c",
    "(ping)",
    "('",
)


def leaks(text: str) -> list[str]:
    """The forbidden fragments in a text."""

    return [fragment for fragment in FORBIDDEN if fragment in text]


def operator_texts(lines: Iterable[ActorLine]) -> list[str]:
    """fliswarm's own texts in reply lines: ``text`` and ``error`` values (a relayed flicamera
    text has the node name as its first value and is left out) and ``nodeState`` reasons."""

    texts = []
    for line in lines:
        for key in ("text", "error"):
            values = line.values(key)
            if len(values) == 1:
                texts.append(values[0])
        state = line.values("nodeState")
        if len(state) == 4:
            texts.append(state[3])
    return texts


def assert_plain(lines: Iterable[ActorLine]) -> list[str]:
    """Fails if a text of the lines leaks internals; returns the texts."""

    texts = operator_texts(lines)
    bad = {text: leaks(text) for text in texts if leaks(text)}
    assert not bad, bad
    return texts


def test_leaks_finds_what_it_should():
    assert leaks("gfa1: Cannot connect to Docker Engine via https://x [Session is closed]")
    assert leaks("ServerDisconnectedError('Server disconnected')")
    assert leaks("[Errno 111] Connect call failed ('127.0.0.1', 2375)")
    assert not leaks("gfa1: Docker engine at tcp://10.1.2.11:2375 is not answering: connection")


# ----------------------------------------------------------------------- engine messages


@contextlib.asynccontextmanager
async def server(handler) -> AsyncIterator[int]:
    """A TCP server on loopback; yields its port."""

    srv = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield srv.sockets[0].getsockname()[1]
    finally:
        srv.close()
        await srv.wait_closed()


async def _close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readline()
    writer.close()


async def _never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        await reader.read()  # Until the client goes.
    writer.close()


def assert_engine_message(err: NodeError, url: str, *words: str) -> None:
    message = str(err)
    assert message.startswith(f"gfa1: Docker engine at {url} is not answering: "), message
    assert all(word in message for word in words), message
    assert not leaks(message), message


async def test_refused_engine_says_so_and_what_to_check():
    url = f"tcp://127.0.0.1:{free_port()}"
    engine = Engine("gfa1", url, connect_timeout=5, request_timeout=5)
    with pytest.raises(NodeUnreachableError) as info:
        await engine.list_containers({})
    assert_engine_message(info.value, url, "connection refused", "dockerd runs")
    assert not await engine.ping()
    assert engine.last_error is not None and not leaks(engine.last_error)
    assert "ping" not in engine.last_error  # The call's name stays in the log.
    await engine.close()


async def test_engine_closing_without_an_answer():
    async with server(_close_at_once) as port:
        url = f"tcp://127.0.0.1:{port}"
        engine = Engine("gfa1", url, connect_timeout=5, request_timeout=5)
        with pytest.raises(NodeUnreachableError) as info:
            await engine.info()
        await engine.close()
    assert_engine_message(info.value, url, "closed without an answer", "restarting")


async def test_engine_not_answering_in_time():
    async with server(_never_answer) as port:
        url = f"tcp://127.0.0.1:{port}"
        engine = Engine("gfa1", url, connect_timeout=0.3, request_timeout=0.3)
        with pytest.raises(NodeTimeoutError) as info:
            await engine.info()
        await engine.close()
    assert_engine_message(info.value, url, "no answer within 0.6 s", "powered on")
    assert info.value.timeout == 0.6


async def test_a_failing_call_does_not_fail_the_others():
    """A call that fails with a connection error retires the client, but the calls still
    using it end with their own answer (closing it under them failed them with "Session is
    closed" or "Connector is closed", and the status then said that instead of the reason)."""

    requests: list[bytes] = []

    async def engine(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readline()
        requests.append(request)
        if b"/_ping" not in request:
            writer.close()  # This call fails: the connection closed without an answer.
            return
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nOK")
        await writer.drain()
        writer.close()

    async with server(engine) as port:
        engine_ = Engine("gfa1", f"tcp://127.0.0.1:{port}", connect_timeout=5, request_timeout=5)
        first = engine_._client()
        failed = asyncio.Event()

        async def ping_after_the_failure(docker):
            await failed.wait()  # The other call has failed (and retired the client) by now.
            async with docker._query("_ping", versioned_api=False) as response:
                return await response.text()

        pinging = asyncio.ensure_future(engine_.call("ping", ping_after_the_failure))
        with pytest.raises(NodeUnreachableError):
            await engine_.info()
        assert engine_._docker is None and not first.session.closed  # Retired, still in use.
        failed.set()
        assert await asyncio.wait_for(pinging, 10) == "OK"
        assert first.session.closed  # Closed once its last call ended.
        assert engine_.last_failure is None
        await engine_.close()
    assert requests[-1].startswith(b"GET /_ping ")


async def test_flicamera_connection_messages():
    device = FlicameraDevice("gfa1", "127.0.0.1", free_port())
    with pytest.raises(ConnectionError) as info:
        await device.start(timeout=5)
    assert device.last_error is not None
    assert device.last_error.startswith("cannot connect to 127.0.0.1:")
    assert "connection refused; is its flicamera container running?" in device.last_error
    assert not leaks(str(info.value)) and not leaks(device.last_error), device.last_error


# ----------------------------------------------------------------------- a whole actor


@pytest.fixture
async def actor(tmp_path: Path) -> AsyncIterator[FLISwarmActor]:
    ports = {name: free_port() for name in ("gfa1", "gfa2", "fvc")}
    timeouts = {"docker_connect": 0.5, "docker_request": 1, "device_connect": 0.5}
    path = write_config(
        tmp_path / "fliswarm.yaml", free_port(), ports, list(ports), timeouts=timeouts,
        ping_timeout=0.5,
    )  # fmt: skip
    actor = FLISwarmActor.from_config(str(path))
    await actor.start()
    try:
        yield actor
    finally:
        await actor.stop()


async def wait_offline(actor: FLISwarmActor, client: ActorClient, names: list[str]) -> None:
    """Until the supervisor has seen each node offline (its nodeState broadcast)."""

    for name in names:
        if actor.supervisor.state(name).state.value == "offline":
            continue
        await client.wait_for(
            lambda line, name=name: line.values("nodeState")[:2] == [name, "offline"], 20
        )


async def test_actor_texts_name_the_node_and_say_what_to_do(actor: FLISwarmActor):
    client = await ActorClient.connect("127.0.0.1", actor.port)
    try:
        await wait_offline(actor, client, ["gfa1", "gfa2", "fvc"])
        status = await client.command("status", 20)
        reconnect = await client.command("reconnect -n gfa1", 20)
        talk = await client.command("talk -n gfa2 status", 20)
    finally:
        await client.close()
    assert status.code == ":" and reconnect.code == "f" and talk.code == "f"
    texts = assert_plain(client.lines)
    # The supervisor's reason: the engine, what happened, what to check.
    reasons = [line.values("nodeState")[3] for line in status.with_keyword("nodeState")]
    assert len(reasons) == 3 and all("connection refused" in r for r in reasons), reasons
    assert all("check that dockerd runs on the node" in r for r in reasons), reasons
    # 0.7's line kept word for word, then the node by name and why.
    assert "Docker client on node 127.0.0.1 is not connected." in status.texts()
    for name in ("gfa1", "gfa2", "fvc"):
        assert any(t.startswith(f"{name}: offline. Docker engine at") for t in texts), texts
    assert any(t.startswith("gfa1: Docker engine at tcp://127.0.0.1:") for t in reconnect.texts())
    assert any(
        t.startswith("gfa2: flicamera is not connected (") and "the node is offline" in t
        for t in talk.texts()
    ), talk.texts()


async def test_no_nodestate_broadcast_when_the_actor_stops(tmp_path: Path):
    """disable broadcasts the node's new state; stopping the actor broadcasts nothing per
    node (it used to broadcast every node `disabled,"not supervised"`)."""

    ports = {name: free_port() for name in ("gfa1", "gfa2", "fvc", "gfa6")}
    path = write_config(
        tmp_path / "fliswarm.yaml", free_port(), ports, list(ports),
        timeouts={"docker_connect": 0.5, "docker_request": 1}, ping_timeout=0.5,
    )  # fmt: skip
    actor = FLISwarmActor.from_config(str(path))
    await actor.start()
    client = await ActorClient.connect("127.0.0.1", actor.port)
    try:
        await wait_offline(actor, client, list(ports))
        disabled = await client.command("disable gfa6", 10)
        assert disabled.code == ":"
        [line] = [
            line for line in client.lines if line.values("nodeState")[:2] == ["gfa6", "disabled"]
        ]
        assert "fliswarm enable gfa6" in line.values("nodeState")[3]
        assert len(actor.supervisor.reconcilers) == 3
        index = len(client.lines)
    finally:
        await actor.stop()
    try:  # The actor closed the connection: everything it wrote during its stop has come.
        await asyncio.wait_for(asyncio.shield(client._task), 10)
        during_stop = client.lines[index:]
    finally:
        await client.close()
    assert not [line.raw for line in during_stop if "nodeState" in line.keywords]
    assert not [line.raw for line in during_stop if "containerEvent" in line.keywords]
