"""The ``logs`` actor command against the real daemon and the real engines of the test bed.

The simulated flicamera writes nothing to its output, so the tests write lines into the
output of the container's main process (its standard output and error, from the host: the
bed's nodes share its kernel) and read back, with the engine's own API (raw HTTP, not
fliswarm's code), what the engine keeps. A powered-off node (the bed's fault: its packets
vanish) in the selection does not delay the others.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
import uuid
from collections.abc import Iterator

import pytest
from helpers_actor import ActorClient, ActorLine
from test_client import BedDaemon, bed_image, lines_of, running_daemon

from fliswarm.commands.logs import MAX_BYTES, cap_lines, keyword_text
from fliswarm_testbed import Testbed
from fliswarm_testbed.engine import http_request


#: The Docker connect timeout of the daemon here: a powered-off node takes about that long.
CONNECT_TIMEOUT = 5


def engine_log(daemon: BedDaemon, node: str, tail: int) -> list[str]:
    """The last lines of a node's flicamera container, from the engine API (raw HTTP)."""

    addr = daemon.bed.node(node).addr
    path = f"/containers/flicamera-{node}/logs?stdout=1&stderr=1&tail={tail}"
    status, body = http_request(addr, path, timeout=10)
    assert status == 200, body
    data = b""
    while body:  # The engine's multiplexed stream: 8-byte headers, then the frame.
        _, size = struct.unpack(">BxxxL", body[:8])
        data += body[8 : 8 + size]
        body = body[8 + size :]
    lines = data.decode().split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def write_output(daemon: BedDaemon, node: str, stdout: list[str], stderr: list[str]) -> None:
    """Writes lines to the container's output (its main process's stderr, then its stdout),
    each time waiting until the engine keeps them: the engine's order is the writes' order."""

    info = daemon.container(node)
    assert info is not None and info["State"]["Running"], info
    pid = info["State"]["Pid"]
    for fd, lines in ((2, stderr), (1, stdout)):
        if not lines:
            continue
        with open(f"/proc/{pid}/fd/{fd}", "w", encoding="utf-8") as output:
            output.write("".join(line + "\n" for line in lines))
        deadline = time.monotonic() + 30
        while (kept := engine_log(daemon, node, len(lines))) != lines:
            assert time.monotonic() < deadline, f"the engine does not show the lines: {kept}"
            time.sleep(0.05)  # Polling the engine until it shows them, not waiting blindly.


def relayed(lines: list[ActorLine], node: str) -> list[str]:
    """The log lines of ``node`` in ``containerLog`` keywords, as written (JSON strings)."""

    found = []
    for line in lines:
        if "containerLog=" in line.raw:
            name, _, value = line.raw.split("containerLog=", 1)[1].partition(",")
            if name == node:
                found.append(json.loads(value))
    return found


@pytest.fixture(scope="module")
def daemon(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BedDaemon]:
    """The daemon on the three nodes, their cameras answering; self-healing off, so that
    what a test does to a container stays done."""

    from fliswarm_testbed.fixtures import cleanup_node

    tmp = tmp_path_factory.mktemp("logs")
    timeouts = {"docker_connect": CONNECT_TIMEOUT, "docker_request": 15, "talk": 15}
    try:
        with running_daemon(
            testbed, bed_image(testbed), tmp, self_healing=False, timeouts=timeouts
        ) as d:
            ready = d.send("reconnect", timeout=300)
            assert ready.returncode == 0, ready.stdout + ready.stderr
            yield d
    finally:
        testbed._parallel(lambda node: cleanup_node(testbed, node))


@pytest.mark.root
@pytest.mark.testbed
async def test_tail_relays_exactly_the_engines_last_lines(daemon: BedDaemon):
    tag = uuid.uuid4().hex[:8]
    written = [
        f"{tag} first",
        f"{tag} semicolon;and=equals",
        f'{tag} "quoted" and \\ backslash',
        "",
        f"{tag}\ttab",
        f"{tag} unicode été ✓",
        f"{tag} ,comma,first",
        f"{tag} last",
    ]
    await asyncio.to_thread(write_output, daemon, "gfa2", written, [f"{tag} on stderr"])
    before = await asyncio.to_thread(engine_log, daemon, "gfa2", 50)

    client = await ActorClient.connect("127.0.0.1", daemon.port)
    try:
        reply = await client.command("logs -n gfa2 --tail 5", 60)
    finally:
        await client.close()
    assert reply.code == ":", str(reply)
    after = await asyncio.to_thread(engine_log, daemon, "gfa2", 5)

    lines = relayed(reply.lines, "gfa2")
    assert lines == after == before[-5:] == written[-5:]
    assert "gfa2: flicamera-gfa2 (running): its last 5 log lines." in reply.texts()
    assert [line.code for line in reply.lines if "containerLog" in line.keywords] == ["i"] * 5

    # The same through the command-line client, readable.
    done = await asyncio.to_thread(daemon.send, "logs", "-n", "gfa2", "--tail", "3")
    assert done.returncode == 0, done.stdout + done.stderr
    assert lines_of(done)[-4:] == [
        f"i containerLog=gfa2,{tag} unicode été ✓",
        f'i containerLog=gfa2,"{tag} ,comma,first"',
        f"i containerLog=gfa2,{tag} last",
        ": done",
    ]


@pytest.mark.root
@pytest.mark.testbed
async def test_since_reaches_the_engine(daemon: BedDaemon):
    tag = uuid.uuid4().hex[:8]
    written = [f"{tag} recent {i}" for i in range(3)]
    await asyncio.to_thread(write_output, daemon, "gfa2", written, [])
    client = await ActorClient.connect("127.0.0.1", daemon.port)
    try:
        hour = await client.command("logs -n gfa2 --tail 3 --since 3600", 60)
        none = await client.command("logs -n gfa2 --since 0.001", 60)
    finally:
        await client.close()
    assert hour.code == ":" and relayed(hour.lines, "gfa2") == written, str(hour)
    assert "gfa2: flicamera-gfa2 (running): its last 3 log lines in the last 3600 s." in (
        hour.texts()
    )
    # The lines were all written before the last millisecond.
    assert none.code == ":" and relayed(none.lines, "gfa2") == [], str(none)
    assert none.texts() == [
        "gfa2: flicamera-gfa2 (running) has written no log lines in the last 0.001 s."
    ]


@pytest.mark.root
@pytest.mark.testbed
async def test_a_powered_off_node_does_not_delay_the_others(daemon: BedDaemon):
    bed = daemon.bed
    tag = uuid.uuid4().hex[:8]
    written = [f"{tag} line {i}" for i in range(6)]
    await asyncio.to_thread(write_output, daemon, "gfa2", written, [])
    client = await ActorClient.connect("127.0.0.1", daemon.port)
    await asyncio.to_thread(bed.power_off, "gfa1")
    try:
        reply = await client.command("logs -n gfa1,gfa2 --tail 5", 120)
    finally:
        await client.close()
        await asyncio.to_thread(bed.power_on, "gfa1")

    assert reply.code == ":", str(reply)  # gfa2 was read.
    assert relayed(reply.lines, "gfa2") == written[-5:]
    texts = [(i, line.values("text")) for i, line in enumerate(reply.lines) if line.code == "w"]
    [(failure, [text])] = [
        (i, values)
        for i, values in texts
        if values and values[0].startswith("gfa1: cannot read the log of flicamera-gfa1: ")
    ]
    last_gfa2 = max(
        index
        for index, line in enumerate(reply.lines)
        if line.values("containerLog")[:1] == ["gfa2"]
    )
    # gfa1 comes first in the selection: its lines would come first if it were waited for.
    assert last_gfa2 < failure, str(reply)
    assert f"Docker engine at tcp://{bed.node('gfa1').addr}:2375 is not answering" in text


@pytest.mark.root
@pytest.mark.testbed
async def test_stopped_and_missing_containers(daemon: BedDaemon):
    tag = uuid.uuid4().hex[:8]
    await asyncio.to_thread(write_output, daemon, "gfa2", [f"{tag} before the stop"], [])
    addr = daemon.bed.node("gfa2").addr
    status, body = await asyncio.to_thread(
        http_request, addr, "/containers/flicamera-gfa2/stop?t=5", "POST", 30
    )
    assert status in (204, 304), body
    fvc = daemon.bed.node("fvc").addr
    status, body = await asyncio.to_thread(
        http_request, fvc, "/containers/flicamera-fvc?force=1", "DELETE", 30
    )
    assert status == 204, body
    kept = await asyncio.to_thread(engine_log, daemon, "gfa2", 3)
    assert f"{tag} before the stop" in kept

    client = await ActorClient.connect("127.0.0.1", daemon.port)
    try:
        stopped = await client.command("logs -n gfa2 --tail 3", 60)
        missing = await client.command("logs -n fvc", 60)
    finally:
        await client.close()

    # A stopped container: its last lines, as the engine keeps them, after a warning.
    assert stopped.code == ":", str(stopped)
    assert relayed(stopped.lines, "gfa2") == kept
    [head] = [t for t in stopped.texts() if t.startswith("gfa2: flicamera-gfa2 (")]
    assert head.startswith("gfa2: flicamera-gfa2 (exited with code "), head
    assert head.endswith("): its last 3 log lines."), head
    # A missing one: why there is nothing.
    assert missing.code == "f", str(missing)
    assert missing.texts() == [
        "fvc: there is no container flicamera-fvc on the node, so no log: it was removed or "
        "never created (fliswarm reconnect -n fvc creates it)."
    ]
    assert missing.lines[-1].values("error") == ["Could not read the log of fvc."]


# ----------------------------------------------------------------------- size and format


def test_the_newest_lines_are_kept_within_the_byte_cap():
    lines = [f"{i:05d} " + "x" * 94 for i in range(1000)]  # 101 bytes with the line end
    kept, dropped, shortened = cap_lines(lines)
    assert kept == lines[-(MAX_BYTES // 101) :]
    assert dropped == 1000 - len(kept) and shortened == 0

    long = ["a" * 5000, "b"]
    kept, dropped, shortened = cap_lines(long, max_line=100)
    assert kept == ["a" * 100 + " [... 4900 more characters]", "b"]
    assert (dropped, shortened) == (0, 1)


@pytest.mark.parametrize(
    "line", ["", "plain", 'a;b="c" d', "tab\there", "\x1b[31mred\x1b[0m", "été ✓", "back\\slash"]
)
def test_a_log_line_is_one_json_string(line: str):
    value = keyword_text(line)
    assert value.startswith('"') and "\n" not in value
    assert json.loads(value) == line
