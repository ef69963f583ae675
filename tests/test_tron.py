"""A real tron hub on loopback, started by project code, relaying to a real CLU actor."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click
import pytest
from clu import LegacyActor
from clu.parsers.click import CluGroup, ping, version
from helpers_actor import plain_actor, tron_ready, write_config

from fliswarm.actor import FLISwarmActor
from fliswarm_testbed.tron import (
    TronClient,
    TronError,
    TronHub,
    TronTimeoutError,
    free_port,
    parse_keywords,
)


if TYPE_CHECKING:
    from fliswarm_testbed.tron_fixtures import ClientFactory, HubFactory

pytestmark = [pytest.mark.tron, pytest.mark.timeout(60)]

ACTOR = "echoer"


@click.group(cls=CluGroup)
def echo_parser(*args):
    """Commands of the test actor (its own group: CLU's default parser is global)."""


echo_parser.add_command(ping)
echo_parser.add_command(version)


@echo_parser.command()
async def status(command):
    """Tron sends ping and status when it connects."""

    return command.finish(text="all good")


@echo_parser.command()
@click.argument("words", nargs=-1)
async def echo(command, words: tuple[str, ...]):
    """Writes the words back as one keyword, plus a list keyword."""

    command.info(echoed=" ".join(words), count=[len(words), "a; b"])
    return command.finish()


@echo_parser.command()
async def hang(command):
    """Never finishes within the test's patience."""

    await asyncio.sleep(30)
    return command.finish()


@echo_parser.command()
async def beat(command):
    """Writes an unsolicited (broadcast) keyword, then finishes."""

    command.actor.write("i", {"heartbeat": 42})
    return command.finish()


@pytest.fixture
async def echo_actor() -> AsyncIterator[LegacyActor]:
    """A real LegacyActor on a free loopback port, without its own tron connection."""

    async with plain_actor(ACTOR, echo_parser) as actor:
        yield actor


@pytest.fixture
async def hub(echo_actor: LegacyActor, tron_hub_factory: HubFactory) -> TronHub:
    return await tron_hub_factory({ACTOR: ("127.0.0.1", echo_actor.port)})


def test_parse_keywords():
    body = 'a=1; b="x; y",2,"q\\"z"; flag; text="hi, there"; e=; NoTarget="the target"'
    assert parse_keywords(body) == {
        "a": "1",
        "b": ["x; y", "2", 'q"z'],
        "flag": None,
        "text": "hi, there",
        "e": "",
        "NoTarget": "the target",
    }
    assert parse_keywords("") == {}
    assert parse_keywords("  ;; k=v ;") == {"k": "v"}


def test_rejects_non_loopback():
    with pytest.raises(ValueError):
        TronHub(host="0.0.0.0")
    with pytest.raises(ValueError):
        TronHub(actors={"fliswarm": ("192.168.1.10", 19996)})
    TronHub(actors={"fliswarm": ("10.250.1.2", 19996)})  # A test-bed node is fine.
    with pytest.raises(ValueError, match="not among the actors"):
        TronHub(actors={"fliswarm": ("127.0.0.1", 19996)}, nubs=["ghost"])


async def test_command_through_tron(hub: TronHub, tron_client_factory: ClientFactory):
    client = await tron_client_factory(hub)
    other = await tron_client_factory(hub)

    started = await client.start_nubs(ACTOR)
    assert started.ok

    watcher = other.watch()
    reply, other_reply = await asyncio.gather(
        client.send("echo hello tron world", actor=ACTOR, timeout=10),
        other.send("echo second client", actor=ACTOR, timeout=10),
    )

    assert reply.code == ":"
    assert [line.code for line in reply.lines] == [">", "i", ":"]
    assert all(line.cid == client.cid and line.actor == ACTOR for line in reply.lines)
    assert reply["echoed"] == "hello tron world"
    assert reply.values("count") == ["3", "a; b"]
    assert other_reply["echoed"] == "second client"

    # Every client sees all traffic, including the first client's reply.
    seen = await other.wait_line(
        lambda line: line.cid == client.cid and "echoed" in line.keywords, 5, watcher
    )
    assert seen.keywords["echoed"] == "hello tron world"


async def test_actor_not_connected(hub: TronHub, tron_client_factory: ClientFactory):
    client = await tron_client_factory(hub)

    reply = await client.send("echo nobody", actor=ACTOR, timeout=10)  # Nub not started.
    assert reply.code == "f"
    assert reply.lines[-1].actor == "hub"
    assert "is not connected" in str(reply["NoTarget"])

    reply = await client.send("ping", actor="nosuchactor", timeout=10)
    assert reply.code == "f" and "NoTarget" in reply


async def test_start_nubs_actor_down(tron_hub_factory: HubFactory, tron_client_factory):
    hub = await tron_hub_factory({"ghost": ("127.0.0.1", free_port())})
    client = await tron_client_factory(hub)

    with pytest.raises(TronError, match="Connection refused"):
        await client.start_nubs("ghost")
    reply = await client.start_nubs("ghost", check=False)
    assert any(line.code == "w" for line in reply.lines)


async def test_timeout_lists_lines(hub: TronHub, tron_client_factory: ClientFactory):
    client = await tron_client_factory(hub)
    await client.start_nubs(ACTOR)

    with pytest.raises(TronTimeoutError, match=f"{client.cid} 2 {ACTOR} >"):
        await client.send("hang", actor=ACTOR, timeout=1.0)


async def test_broadcast_keyword(hub: TronHub, tron_client_factory: ClientFactory):
    client = await tron_client_factory(hub)
    await client.start_nubs(ACTOR)

    queue = client.watch()
    reply = await client.send("beat", actor=ACTOR, timeout=10)
    assert reply.ok and "heartbeat" not in reply

    line = await client.wait_line(lambda line: "heartbeat" in line.keywords, 5, queue)
    assert line.actor == ACTOR and line.keywords["heartbeat"] == "42"


async def test_restart(hub: TronHub, tron_client_factory: ClientFactory):
    client = await tron_client_factory(hub)
    await client.start_nubs(ACTOR)
    assert (await client.send("echo before", actor=ACTOR, timeout=10)).ok
    port, pid = hub.commander_port, hub.pid

    await hub.restart()

    assert hub.running and hub.pid != pid and hub.commander_port == port
    with pytest.raises(TronError):  # The old connection is gone.
        await client.send("echo stale", actor=ACTOR, timeout=5)

    client = await tron_client_factory(hub)
    reply = await client.send("echo lost", actor=ACTOR, timeout=10)
    assert reply.code == "f" and "NoTarget" in reply

    await client.start_nubs(ACTOR)
    reply = await client.send("echo after restart", actor=ACTOR, timeout=10)
    assert reply.ok and reply["echoed"] == "after restart"


async def test_stop_is_final(tron_hub_factory: HubFactory):
    hub = await tron_hub_factory()
    host, port = hub.host, hub.commander_port
    assert await hub.stop() is not None
    assert not hub.running
    with pytest.raises(OSError):
        await asyncio.wait_for(asyncio.open_connection(host, port), 5)


async def test_shipped_fliswarm_nub(
    echo_actor: LegacyActor, tron_hub_factory: HubFactory, tron_client_factory: ClientFactory
):
    # tron ships a "fliswarm" nub (sends ping and status on connect); it must work as well.
    hub = await tron_hub_factory({"fliswarm": ("127.0.0.1", echo_actor.port)})
    client = await tron_client_factory(hub)
    await client.start_nubs("fliswarm")

    reply = await client.send("echo via the shipped nub", timeout=10)
    assert reply.ok and reply["echoed"] == "via the shipped nub"
    assert {line.actor for line in reply.lines} == {"fliswarm"}


async def test_port_in_use_fails_clearly(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(TronError, match="(?s)could not listen.*Address already in use"):
            await TronHub.start(log_dir=tmp_path, port=port, timeout=20)


async def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Waits until ``condition()`` is true, checking every 10 ms; `TimeoutError` after."""

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.01)


async def test_nubs_started_by_tron_itself(
    echo_actor: LegacyActor, tron_hub_factory: HubFactory, tron_client_factory: ClientFactory
):
    # An actor in tron's "nubs" list is connected by tron when it starts, and when it restarts.
    hub = await tron_hub_factory({ACTOR: ("127.0.0.1", echo_actor.port)}, nubs=[ACTOR])
    client = await tron_client_factory(hub)
    reply = await client.send("echo no startNubs", actor=ACTOR, timeout=10)
    assert reply.ok and reply["echoed"] == "no startNubs"

    await hub.restart()
    client = await tron_client_factory(hub)
    reply = await client.send("echo still none", actor=ACTOR, timeout=10)
    assert reply.ok and reply["echoed"] == "still none"

    received = hub.received_commands()  # Since the restart: wait_ready's hub version, ours.
    assert {c.command for c in received if c.actor == "hub"} == {"version"}
    assert [(c.cid, c.actor, c.command) for c in received if c.actor != "hub"] == [
        (client.cid, ACTOR, "echo still none")
    ]
    assert hub.hub_log().count(f"starting Nub {ACTOR}...") == 1


async def test_fliswarm_across_tron_restart(
    tmp_path: Path, tron_hub_factory: HubFactory, tron_client_factory: ClientFactory
):
    """tron restarts and connects to fliswarm by itself (fliswarm is in its nubs list, as at
    APO) while users keep sending commands through it: fliswarm does not ask tron to connect
    again (``hub startNubs`` would drop that connection and the commands in flight on it), and
    every command sent once tron is back finishes with ``:``."""

    actor_port = free_port()
    # tron starts before fliswarm listens: its own connection fails and fliswarm registers.
    hub = await tron_hub_factory({"fliswarm": ("127.0.0.1", actor_port)}, nubs=["fliswarm"])
    path = write_config(
        tmp_path / "fliswarm.yaml",
        actor_port,
        {"gfa1": free_port()},
        ["gfa1"],
        actor={"tron_host": hub.host, "tron_port": hub.commander_port},
    )
    actor = FLISwarmActor.from_config(str(path))
    actor.tron_max_delay = 1.0
    await actor.start()
    try:
        client = await tron_client_factory(hub)
        await tron_ready(client, "fliswarm", 20)
        assert (actor.tron_start_nubs_sent, actor.tron_found_connected) == (1, 0)
        commander = actor.tron.commander
        assert (commander, "hub", "startNubs fliswarm") in [
            (c.cid, c.actor, c.command) for c in hub.received_commands()
        ]

        await hub.restart()
        back = time.monotonic()
        client = await tron_client_factory(hub)
        sent: list[tuple[float, str]] = []  # (sent after tron was back, "lost" or final code)
        done = asyncio.Event()

        async def user(client: TronClient) -> None:
            while not done.is_set():
                at = time.monotonic() - back
                try:
                    reply = await client.send("ping", actor="fliswarm", timeout=10)
                    sent.append((at, reply.code))
                except TronTimeoutError:
                    sent.append((at, "lost"))

        users = [asyncio.create_task(user(client)) for _ in range(3)]
        try:
            # fliswarm reconnects to tron (its own back-off) and finds tron connected to it.
            await wait_until(
                lambda: actor.tron_found_connected + actor.tron_start_nubs_sent > 1,
                30,
                "fliswarm connected to tron again",
            )
            reconnected = time.monotonic() - back
            answered = len(sent)
            await wait_until(lambda: len(sent) >= answered + 30, 30, "30 more commands")
        finally:
            done.set()
            await asyncio.gather(*users)

        failed = [(round(at, 2), code) for at, code in sent if code != ":"]
        print(
            f"{len(sent)} commands through tron from its restart; fliswarm reconnected to tron "
            f"{reconnected:.2f} s after tron was back; commands work again "
            f"{max((at for at, _ in failed), default=0.0):.2f} s after tron is back"
        )
        assert failed == [], f"commands sent after tron was back that did not finish: {failed}"
        assert (actor.tron_start_nubs_sent, actor.tron_found_connected) == (1, 1)
        from_fliswarm = [
            (c.actor, c.command) for c in hub.received_commands() if c.cid == commander
        ]
        assert from_fliswarm == [("fliswarm", "ping")]  # Its check only: no hub startNubs.
        assert hub.hub_log().count("starting Nub fliswarm...") == 1  # tron's own, at start.
    finally:
        await actor.stop()
