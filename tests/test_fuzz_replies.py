"""Fuzzed flicamera reply lines through the REAL actor (extends test_device.py's fake peer).

test_device.py feeds a fixed list of malformed lines to a `FlicameraDevice` alone. Here the
device belongs to a running `FLISwarmActor`: node gfa1 is a fake JSON peer that answers
``talk`` with hypothesis-generated lines (malformed JSON, missing or mistyped header fields,
unknown command ids, odd keyword names and values, invalid UTF-8, huge numbers), pushes
floods and huge lines; node gfa2 is a real flicamera. Whatever gfa1 sends:

- the actor's output stays well-formed: every line parses, carries a valid code and either
  the broadcast ids ``0 0`` or the ids of the client's own command (no injected lines);
- the ``talk`` ends with ``:`` or ``f``, the connection to gfa1 stays up, its command ids
  are all returned, and gfa2 and the actor itself (``ping``) are unaffected.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers_actor import FlicameraProcesses, free_port, write_config
from helpers_hardening import VALID_CODES, ActorThread, LineClient, LoopThread
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
    cameras = FlicameraProcesses(tmp).start(["gfa2"])
    peer_loop = LoopThread()
    peer = Peer()
    peer_loop.call(peer.fake.__aenter__())
    path = write_config(
        tmp / "fliswarm.yaml",
        free_port(),
        {"gfa1": peer.fake.port, "gfa2": cameras.ports["gfa2"]},
        ["gfa1", "gfa2"],
        status_interval=3600,
        timeouts={"talk": 5, "docker_connect": 0.5, "docker_request": 1},
    )
    actor = ActorThread(load_config(path), str(tmp / "logs"), supervise=False)
    try:
        yield actor, peer, peer_loop
    finally:
        actor.stop()
        peer_loop.call(peer.fake.__aexit__(None, None, None))
        peer_loop.close()
        cameras.stop()


@pytest.fixture(scope="module")
def client(site: Site) -> Iterator[LineClient]:
    actor, _, _ = site
    client = LineClient(actor.port)
    yield client
    client.close()


def check_stream(client: LineClient, mids: set[int]) -> None:
    """Every line is well-formed: a valid code, and broadcast ids or one of ours."""

    assert not client.bad, f"malformed lines from the actor: {client.bad[:3]!r}"
    for line in client.lines:
        assert line.code in VALID_CODES, line.raw
        assert (line.user_id, line.command_id) == (0, 0) or (
            line.user_id == client.user_id and line.command_id in mids | {0}
        ), f"unexpected ids: {line.raw[:200]!r}"
        assert "injected" not in line.keywords, line.raw[:200]


def device_state(actor: ActorThread, name: str) -> tuple[bool, int, int]:
    def read() -> tuple[bool, int, int]:
        device = actor.actor.flicameras[name]
        return device.is_connected(), device.id_pool.in_use, len(device.running)

    return actor.sync(read)


@FUZZ
@given(script=st.lists(lines, min_size=1, max_size=12))
def test_fuzzed_reply_lines(site: Site, client: LineClient, script: list[Any]):
    actor, peer, _ = site
    peer.script = script
    mid = client.send("talk -n gfa1 -t 3 fuzz")
    final = client.finish(mid, timeout=10)[-1]
    assert final.code in ":f"
    if final.code == "f":
        assert final.values("error")
    pong = client.command("ping", timeout=5)
    assert pong[-1].code == ":"
    check_stream(client, {line.command_id for line in client.lines if line.user_id})
    connected, in_use, running = device_state(actor, "gfa1")
    assert connected and in_use == 0 and running == 0


def test_other_node_and_actor_unaffected(site: Site, client: LineClient):
    """After all the fuzz: gfa1 answers plainly, gfa2 (real flicamera) reports its status."""

    actor, peer, _ = site
    peer.script = []
    lines = client.command("talk -n gfa1 ping")
    assert lines[-1].code == ":" and ["gfa1", "ping done"] in [x.values("text") for x in lines]
    lines = client.command("talk -n gfa2 status")
    assert lines[-1].code == ":"
    assert any(line.values("status")[:1] == ["gfa2"] for line in lines)
    assert device_state(actor, "gfa2")[0]


def test_flood_and_huge_lines(site: Site, client: LineClient):
    """20 000 unsolicited lines, 20 000 for unknown ids and 3 MB lines: the actor keeps
    answering (ping and a real camera), nothing leaks, the connection to gfa1 stays."""

    actor, peer, peer_loop = site
    assert client.command("talk -n gfa1 ping")[-1].code == ":"  # Connected.
    flood = [reply(None, "d", {"text": f"flood {index}"}) for index in range(20_000)]
    flood += [reply(50_000 + index, "i", {"text": "nobody's"}) for index in range(20_000)]
    flood += [b'{"header": {"command_id": null, "message_code": "i"}, "data": {"x": "'
              + b"y" * 3_000_000 + b'"}}\n'] * 2  # fmt: skip

    async def push() -> None:
        for start in range(0, len(flood), 500):
            peer.fake.push(b"".join(flood[start : start + 500]))
            await asyncio.sleep(0)

    t0 = time.monotonic()
    future = asyncio.run_coroutine_threadsafe(push(), peer_loop.loop)
    worst = 0.0
    while not future.done() or time.monotonic() - t0 < 1:
        t1 = time.monotonic()
        assert client.command("ping", timeout=10)[-1].code == ":"
        worst = max(worst, time.monotonic() - t1)
    future.result(10)
    lines = client.command("talk -n gfa2 status", timeout=20)
    assert lines[-1].code == ":"
    lines = client.command("talk -n gfa1 ping", timeout=20)
    assert lines[-1].code == ":"
    print(f"flood of {len(flood)} lines: worst ping {worst * 1e3:.0f} ms")
    assert worst < 5
    connected, in_use, running = device_state(actor, "gfa1")
    assert connected and in_use == 0 and running == 0
    assert not any(len(line.raw) > 2_000_000 for line in client.lines)


def test_no_traceback_logged(site: Site, client: LineClient):
    actor, _, _ = site
    assert client.command("ping")[-1].code == ":"
    text = "".join(path.read_text(errors="replace") for path in Path(actor.log_dir).glob("*.log"))
    assert "Traceback" not in text, text[text.find("Traceback") - 300 :][:3000]
