"""Fuzzed flicamera reply lines through the REAL actor (extends test_device.py's fake peer).

test_device.py feeds a fixed list of malformed lines to a `FlicameraDevice` alone. Here the
device belongs to a running `FLISwarmActor`: node gfa1 is a fake JSON peer that answers
``talk`` with hypothesis-generated lines (malformed JSON, missing or mistyped header fields,
unknown command ids, odd keyword names and values, invalid UTF-8, huge numbers), pushes
floods and huge lines; node gfa2 is a real flicamera. Whatever gfa1 sends:

- the actor's output stays well-formed: every line parses, carries a valid code and either
  the broadcast ids ``0 0`` or this client's user id and a command id this client SENT
  (`helpers_hardening.check_stream`; no injected lines). A second client runs its own
  commands (on gfa1, gfa2 and the actor) while the fuzz is relayed, and its stream is
  checked against its own sent ids the same way: nothing is misrouted between the two;
- the ``talk`` ends with ``:`` or ``f``, the connection to gfa1 stays up, its command ids
  are all returned, and gfa2 and the actor itself (``ping``) are unaffected;
- the actor logs no traceback (checked after every test, for that test).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from helpers_actor import FlicameraProcesses, free_port, write_config
from helpers_hardening import (
    ActorThread,
    LineClient,
    LoopThread,
    check_stream,
    log_offsets,
    logged_since,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_device import FakePeer, reply

from fliswarm.config import load_config


pytestmark = pytest.mark.timeout(120)

FUZZ = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

OWN = "<own command id>"  # Replaced by the peer with the id of the command it answers.

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(["a\n0 0 : injected=1", "x;y=2", "\r\n", "\u2028", "\x00", "é" * 50]),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=12,
)
keyword_names = st.one_of(
    st.sampled_from(["text", "error", "status", "filename", "help", "exposure_state"]),
    st.sampled_from(["bad key", "x=1", "a;b", "", "\n", "0", "é", "k" * 300]),
    st.text(max_size=12),
)
command_ids = st.one_of(
    st.just(OWN), st.none(), st.integers(-5, 10**6), st.text(max_size=5), st.booleans()
)
codes = st.one_of(st.sampled_from(list(">:fe!iwd")), st.text(max_size=2))
headers = st.fixed_dictionaries(
    {},
    optional={
        "command_id": command_ids,
        "message_code": codes,
        "commander_id": json_values,
        "internal": st.booleans(),
        "sender": st.text(max_size=10),
    },
)
messages = st.fixed_dictionaries(
    {"header": st.one_of(headers, json_values)},
    optional={"data": st.one_of(st.dictionaries(keyword_names, json_values), json_values)},
)
lines = st.one_of(
    messages.map(lambda message: ("json", message)),
    json_values.map(lambda value: ("json", value)),
    st.binary(max_size=200).map(lambda data: ("raw", data)),
    st.sampled_from(
        [
            ("raw", b'{"header": {"command_id": 1, "message_code": "i"}, "data": {"t": "\xff"}}'),
            ("raw", b'{"header": {"message_code": "i"}, "data": {"n": ' + b"9" * 5000 + b"}}"),
            ("raw", b"{" * 10000),
            ("raw", b'{"header": {"command_id": null, "message_code": "i"}}'),
            ("raw", b'{"header": {"command_id": 1e400, "message_code": ":"}}'),
        ]
    ),
)


def encode(kind: str, payload: Any, command_id: int) -> bytes:
    if kind == "raw":
        return payload.replace(b"\n", b" ") + b"\n"

    def own(value: Any) -> Any:
        if value == OWN:
            return command_id
        if isinstance(value, dict):
            return {key: own(item) for key, item in value.items()}
        return value

    return json.dumps(own(payload)).encode() + b"\n"


class Peer:
    """The fake flicamera of gfa1: ``fuzz`` is answered with the lines set in ``script``."""

    def __init__(self) -> None:
        self.script: list[tuple[str, Any]] = []
        self.fake = FakePeer(self.answer)

    def answer(self, command_id: int, command: str) -> list[bytes]:
        if command == "fuzz":
            out = [encode(kind, payload, command_id) for kind, payload in self.script]
            return out + [reply(command_id, ":", {"text": "end of fuzz"})]
        return [reply(command_id, ":", {"text": f"{command} done"})]


Site = tuple[ActorThread, Peer, LoopThread]


@pytest.fixture(scope="module")
def site(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("fuzz-replies")
    with contextlib.ExitStack() as stack:  # Whatever fails, what was started is stopped.
        cameras = FlicameraProcesses(tmp).start(["gfa2"])
        stack.callback(cameras.stop)
        peer_loop = LoopThread()
        stack.callback(peer_loop.close)
        peer = Peer()
        peer_loop.call(peer.fake.__aenter__())
        stack.callback(lambda: peer_loop.call(peer.fake.__aexit__(None, None, None)))
        path = write_config(
            tmp / "fliswarm.yaml",
            free_port(),
            {"gfa1": peer.fake.port, "gfa2": cameras.ports["gfa2"]},
            ["gfa1", "gfa2"],
            status_interval=3600,
            timeouts={"talk": 5, "docker_connect": 0.5, "docker_request": 1},
        )
        actor = ActorThread(load_config(path), str(tmp / "logs"), supervise=False)
        stack.callback(actor.stop)
        yield actor, peer, peer_loop


@pytest.fixture(scope="module")
def client(site: Site) -> Iterator[LineClient]:
    actor, _, _ = site
    client = LineClient(actor.port)
    yield client
    client.close()


@pytest.fixture(scope="module")
def other(site: Site) -> Iterator[LineClient]:
    """A second client, with its own commands in flight while the fuzz is relayed."""

    actor, _, _ = site
    other = LineClient(actor.port)
    yield other
    other.close()


@pytest.fixture(autouse=True)
def no_traceback_logged(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test: the actor logged no traceback during it (and still answers)."""

    actor, _, _ = request.getfixturevalue("site")
    logs = actor.log_files()
    assert logs, "the actor has no log file"
    offsets = log_offsets(logs)
    yield
    probe = LineClient(actor.port)  # Whatever the test did has been handled by now.
    try:
        assert probe.command("ping")[-1].code == ":"
    finally:
        probe.close()
    text = logged_since(offsets)
    assert "Traceback" not in text, text[max(0, text.find("Traceback") - 300) :][:3000]


def check_own_stream(client: LineClient) -> None:
    """`check_stream`, and no line injected by a fuzzed value."""

    for line in client.lines[client.checked :]:
        assert "injected" not in line.keywords, line.raw[:200]
    check_stream(client)


def device_state(actor: ActorThread, name: str) -> tuple[bool, int, int]:
    def read() -> tuple[bool, int, int]:
        device = actor.actor.flicameras[name]
        return device.is_connected(), device.id_pool.in_use, len(device.running)

    return actor.sync(read)


@FUZZ
@given(script=st.lists(lines, min_size=1, max_size=12))
def test_fuzzed_reply_lines(site: Site, client: LineClient, other: LineClient, script: list[Any]):
    actor, peer, _ = site
    peer.script = script
    mid = client.send("talk -n gfa1 -t 3 fuzz")
    # The other client's commands, in flight at the same time: one to the fuzzing peer (its
    # replies come on the same connection as the fuzz), one to gfa2, one to the actor.
    on_gfa1 = other.send("talk -n gfa1 ping")
    on_gfa2 = other.send("talk -n gfa2 status")
    ping = other.send("ping")
    final = client.finish(mid, timeout=10)[-1]
    assert final.code in ":f"
    if final.code == "f":
        assert final.values("error")
    # A fuzzed line may carry the device id of the other client's gfa1 command and end it.
    assert other.finish(on_gfa1, timeout=10)[-1].code in ":f"
    status = other.finish(on_gfa2, timeout=10)
    assert status[-1].code == ":" and any(x.values("status")[:1] == ["gfa2"] for x in status)
    assert other.finish(ping, timeout=5)[-1].code == ":"
    pong = client.command("ping", timeout=5)
    assert pong[-1].code == ":"
    check_own_stream(client)
    check_own_stream(other)
    connected, in_use, running = device_state(actor, "gfa1")
    assert connected and in_use == 0 and running == 0


#: A fixed script of bad lines (the fuzz's kinds), answered to one ``fuzz`` command.
NASTY_SCRIPT: list[tuple[str, Any]] = [
    ("raw", b"not json at all"),
    ("raw", b"\xff\xfe\x00"),
    ("raw", b"{" * 10000),
    ("raw", b'{"header": {"command_id": 1e400, "message_code": ":"}}'),
    ("json", {"header": {"command_id": OWN, "message_code": "i"}, "data": {"bad key": 1}}),
    ("json", {"header": {"command_id": OWN, "message_code": "i"}, "data": {"t": "a\n0 0 :"}}),
    ("json", {"header": {"command_id": OWN, "message_code": "f"}, "data": {"error": "bad"}}),
]


def test_other_node_and_actor_unaffected(site: Site, client: LineClient):
    """After bad reply lines from gfa1: gfa1 answers plainly, gfa2 (real flicamera) reports
    its status."""

    actor, peer, _ = site
    peer.script = NASTY_SCRIPT
    nasty = client.command("talk -n gfa1 -t 3 fuzz")
    assert nasty[-1].code == "f", [line.raw for line in nasty]
    assert ["gfa1: bad"] in [line.values("text") for line in nasty], [x.raw for x in nasty]
    peer.script = []
    lines = client.command("talk -n gfa1 ping")
    assert lines[-1].code == ":" and ["gfa1", "ping done"] in [x.values("text") for x in lines]
    lines = client.command("talk -n gfa2 status")
    assert lines[-1].code == ":"
    assert any(line.values("status")[:1] == ["gfa2"] for line in lines)
    assert device_state(actor, "gfa2")[0]
    check_own_stream(client)


def test_flood_and_huge_lines(site: Site, client: LineClient):
    """20 000 unsolicited lines, 20 000 for unknown ids and 3 MB lines: the actor keeps
    answering (ping and a real camera), nothing leaks, the connection to gfa1 stays."""

    actor, peer, peer_loop = site
    assert client.command("talk -n gfa1 ping")[-1].code == ":"  # Connected.
    flood = [reply(None, "d", {"text": f"flood {index}"}) for index in range(20_000)]
    flood += [reply(50_000 + index, "i", {"text": "nobody's"}) for index in range(20_000)]
    flood += [b'{"header": {"command_id": null, "message_code": "i"}, "data": {"x": "'
              + b"y" * 3_000_000 + b'"}}\n'] * 2  # fmt: skip
    flood += [reply(None, "i", {"text": "end of flood"})]  # Relayed once all the rest was read.

    async def push() -> None:
        for start in range(0, len(flood), 500):
            peer.fake.push(b"".join(flood[start : start + 500]))
            await asyncio.sleep(0)

    start = len(client.lines)
    future = asyncio.run_coroutine_threadsafe(push(), peer_loop.loop)
    # The actor keeps answering while it relays the flood: pings until the last line of the
    # flood is relayed, each within 10 s (a starved actor fails one; how fast it answers
    # is not checked).
    pings, deadline = 0, time.monotonic() + 120
    while not any(x.values("text") == ["gfa1", "end of flood"] for x in client.lines[start:]):
        assert time.monotonic() < deadline, "the end of the flood was not relayed in 120 s"
        start = max(start, len(client.lines) - 1)
        assert client.command("ping", timeout=10)[-1].code == ":"
        pings += 1
    future.result(10)
    lines = client.command("talk -n gfa2 status", timeout=20)
    assert lines[-1].code == ":"
    lines = client.command("talk -n gfa1 ping", timeout=20)
    assert lines[-1].code == ":"
    print(f"flood of {len(flood)} lines: {pings} pings answered while it was relayed")
    connected, in_use, running = device_state(actor, "gfa1")
    assert connected and in_use == 0 and running == 0
    assert not any(len(line.raw) > 2_000_000 for line in client.lines)
    check_own_stream(client)
