"""Liveness of the cameras: a camera that is up but does not answer is found and repaired.

Unit tests of the pure logic first; then, on the real test bed, a frozen camera (its container
paused through the engine API) that fliswarm repairs by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_asyncio
import yaml
from test_operator_text import assert_plain
from test_supervision import Swarm, recover_all, running_swarm

from fliswarm.camera.device import NO_CAMERA, FlicameraDevice
from fliswarm.camera.subcommand import SubCommand
from fliswarm.commands.talk import default_timeout
from fliswarm.config.settings import LivenessSettings, Settings
from fliswarm.supervision import NodeState
from fliswarm.supervision.liveness import LivenessCounter, LivenessProbe
from fliswarm_testbed.bed import Testbed
from fliswarm_testbed.fixtures import restored_bed
from fliswarm_testbed.image import ensure_flicamera_image


TIMEOUTS = Settings.from_config({}).timeouts


async def test_busy_while_a_command_is_in_flight():
    device = FlicameraDevice("gfa1", "127.0.0.1", 1)
    assert device.busy is False
    command_id = device.id_pool.get()
    sub = SubCommand("gfa1", command_id, "status", None)
    device.running[command_id] = sub
    assert device.busy is True
    sub._finish(False, "no answer from gfa1 after 10 s.")  # Timed out: kept for its id only.
    assert device.busy is False
    device._end(sub, False)
    assert device.busy is False and not device.running


async def test_fail_running_fails_what_is_in_flight_at_once():
    device = FlicameraDevice("gfa1", "127.0.0.1", 1)
    command_id = device.id_pool.get()
    sub = SubCommand("gfa1", command_id, "status", None)
    device.running[command_id] = sub
    device.fail_running("the camera does not answer.")
    assert sub.done and sub.ok is False
    assert sub.error == "gfa1: the camera does not answer."
    assert command_id in device.running  # Its id stays taken until flicamera ends it.


async def test_timed_out_commands_are_counted_as_unanswered():
    device = FlicameraDevice("gfa1", "127.0.0.1", 1)
    command_id = device.id_pool.get()
    sub = SubCommand("gfa1", command_id, "status", None)
    device.running[command_id] = sub
    sub.add_listener(device._count_unanswered)
    await sub.wait(0.01)
    assert sub.timed_out and device.unanswered == 1
    assert device.overdue(0.0) is None  # Ended: no longer in flight.


def test_talk_default_limits():
    assert default_timeout(TIMEOUTS, ["status"]) == 10
    assert default_timeout(TIMEOUTS, ["expose", "5"]) == 35
    assert default_timeout(TIMEOUTS, ["expose", "2", "-c", "3"]) == 36


def test_counter_declares_hung_after_failures_in_a_row():
    counter = LivenessCounter(3)
    assert not counter.failed("a") and not counter.failed("b")
    counter.ok()
    assert not counter.failed("a") and not counter.failed("b")
    assert counter.failed("c")
    assert counter.failures == 0  # Counting starts again after a declaration.
    assert counter.last_reason == "c"


class FakeDevice:
    """What the probe reads of a `FlicameraDevice` (pure logic; no connection)."""

    def __init__(self) -> None:
        self.connected = True
        self.busy = False
        self.unanswered = 0
        self.late: Any = None
        self.answer: bool | None = True  # None: no answer (time-out).
        self.sent: list[tuple[str, float]] = []
        self.overran: Any = None
        self.camera_known = True
        self.camera_missing: str | None = None
        self.cameras: list[str] = ["gfa1"]  # What ``list`` answers.

    def is_connected(self) -> bool:
        return self.connected

    def overdue(self, limit: float) -> Any:
        return self.late

    def overrun(self, readout: float, margin: float) -> Any:
        return self.overran

    async def run(self, command: str, parent: Any, timeout: float) -> Any:
        self.sent.append((command, timeout))
        if command == "list" and self.answer:
            self.camera_known = True
            self.camera_missing = None if self.cameras else "no camera"
        if self.answer is None:
            self.unanswered += 1
        return SimpleNamespace(
            ok=bool(self.answer), timed_out=self.answer is None, command_string=command
        )


def probe_of(
    device: FakeDevice,
    hung: list[str],
    cameras: list[str | None] | None = None,
    **settings: Any,
) -> LivenessProbe:
    values = {"enabled": True, "command": "ping", "interval": 5, "timeout": 4, "failures": 3}
    values.update(readout=5, margin=10)
    values.update(settings)
    return LivenessProbe(
        "gfa1",
        device=lambda: device,  # type: ignore[arg-type,return-value]
        settings=lambda: LivenessSettings(**values),
        may_check=lambda: True,
        on_hung=hung.append,
        on_camera=None if cameras is None else cameras.append,
    )


async def test_probe_declares_a_silent_camera_hung_after_three_checks():
    device, hung = FakeDevice(), []
    probe = probe_of(device, hung)
    await probe.look()
    assert device.sent == [("ping", 4)] and not hung
    device.answer = None
    await probe.look()
    await probe.look()
    assert not hung
    await probe.look()
    assert len(hung) == 1 and "3 liveness checks" in hung[0] and "'ping'" in hung[0]


async def test_probe_sends_nothing_while_a_command_runs_but_counts_its_time_out():
    device, hung = FakeDevice(), []
    probe = probe_of(device, hung)
    await probe.look()  # Knows the count of unanswered commands from now on.
    device.busy = True
    await probe.look()
    assert len(device.sent) == 1  # Nothing sent while busy.
    for _ in range(3):
        device.unanswered += 1  # A talk timed out meanwhile.
        await probe.look()
    assert len(device.sent) == 1
    assert len(hung) == 1 and "no answer within its time limit" in hung[0]


async def test_probe_counts_an_overdue_command_and_ignores_an_error_answer():
    device, hung = FakeDevice(), []
    probe = probe_of(device, hung, failures=2)
    device.busy = True
    device.late = SimpleNamespace(command_string="status")
    await probe.look()
    device.late = None
    device.busy = False
    device.answer = False  # flicamera answers, with an error: alive.
    await probe.look()
    device.busy = True
    device.late = SimpleNamespace(command_string="status")
    await probe.look()
    assert not hung  # The answer in between reset the count.
    await probe.look()
    assert len(hung) == 1 and "'status' has had no answer" in hung[0]


async def test_probe_checks_nothing_when_disconnected_or_disabled():
    device, hung = FakeDevice(), []
    probe = probe_of(device, hung, enabled=False, failures=1)
    device.answer = None
    await probe.look()
    device.connected = False
    probe = probe_of(device, hung, failures=1)
    await probe.look()
    assert device.sent == [] and not hung


async def test_probe_counts_an_overrun_exposure():
    device, hung = FakeDevice(), []
    probe = probe_of(device, hung, failures=2)
    device.busy = True
    device.overran = (SimpleNamespace(command_string="expose 3"), 6.0)
    await probe.look()
    assert not hung
    await probe.look()
    assert device.sent == []  # Nothing sent to a busy camera.
    assert len(hung) == 1 and "the exposure 'expose 3' has run for more than 6 s" in hung[0]


async def test_the_device_finds_an_exposure_that_overran():
    device = FlicameraDevice("gfa1", "127.0.0.1", 1)
    for command in ("status", "expose 3"):
        command_id = device.id_pool.get()
        device.running[command_id] = SubCommand("gfa1", command_id, command, None)
    assert device.overrun(1, 2) is None  # 3 + 1 + 2 s: not yet.
    for sub in device.running.values():
        sub.started -= 7  # Started 7 s ago.
    overran = device.overrun(1, 2)
    assert overran is not None and overran[0].command_string == "expose 3"
    assert overran[1] == 6
    overran[0]._finish(True)
    assert device.overrun(1, 2) is None  # Ended: no longer in flight.


def test_overrun_limit_of_an_exposure():
    limit = SubCommand.overrun_limit
    assert limit(SimpleNamespace(command_string="status", is_exposure=False), 5, 10) is None  # type: ignore[arg-type]

    def of(command: str) -> float | None:
        sub = SimpleNamespace(command_string=command, is_exposure=command.startswith("expose"))
        return limit(sub, 5, 10)  # type: ignore[arg-type]

    assert of("expose 3") == 3 + 5 + 10
    assert of("expose gfa1 2 -c 3") == 2 * 3 + 5 * 3 + 10
    assert of("expose --dark 2 -s 2 -c 2") == 2 * 4 + 5 * 4 + 10
    assert of("expose 'unbalanced") == 0 + 5 + 10


async def test_the_device_learns_whether_flicamera_has_its_camera():
    device = FlicameraDevice("gfa1", "127.0.0.1", 1)
    assert not device.camera_known and device.camera_missing is None

    def line(code: str, data: dict[str, Any], command_id: int | None = None) -> bytes:
        header = {"command_id": command_id, "message_code": code, "commander_id": None}
        return json.dumps({"header": header, "data": data}).encode() + b"\n"

    device.handle_line(line("i", {"text": "Camera disconnected: gfa1"}))
    assert not device.camera_known  # Another camera may be left: list tells.
    device.handle_line(line(":", {"cameras": [], "default_cameras": None}))
    assert device.camera_known and device.camera_missing == NO_CAMERA
    device.handle_line(line("i", {"text": "Camera connected: gfa1"}))
    assert device.camera_known and device.camera_missing is None
    device.handle_line(line("f", {"text": "no cameras connected."}))
    assert device.camera_missing == NO_CAMERA
    device.handle_line(line(":", {"cameras": ["gfa1"], "default_cameras": None}))
    assert device.camera_missing is None
    device.handle_line(line("i", {"text": "no cameras connected."}))  # Not a failure.
    assert device.camera_missing is None


async def test_probe_reports_a_missing_camera_without_counting_a_failure():
    device, hung, cameras = FakeDevice(), [], []
    probe = probe_of(device, hung, cameras, failures=1)
    device.camera_known = False  # A new connection: list asked once.
    await probe.look()
    assert device.sent == [("ping", 4), ("list", 4)] and cameras == [None]
    await probe.look()
    assert device.sent[2:] == [("ping", 4)]  # Known: no list.
    device.camera_known, device.cameras = False, []  # "Camera disconnected: gfa1".
    await probe.look()
    await probe.look()  # Missing: list asked at each look, until it is back.
    assert cameras == [None, None, "no camera", "no camera"]
    assert not hung and probe.counter.failures == 0
    device.cameras = ["gfa1"]
    await probe.look()
    assert cameras[-1] is None and not hung
    device.connected = False
    await probe.look()
    assert cameras[-1] is None


# ------------------------------------------------------------------------------ the test bed


@pytest.fixture(scope="module")
def bed() -> Iterator[Testbed]:
    yield from restored_bed()


@pytest.fixture(scope="module")
def config_path(bed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bed's configuration with the default limits of talk and liveness."""

    image = ensure_flicamera_image(bed.registry)
    config = bed.fliswarm_config(image)
    config["timeouts"] = {"docker_connect": 1.0, "docker_request": 10}
    config.pop("liveness", None)
    path = tmp_path_factory.mktemp("liveness") / "fliswarm.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def swarm(bed: Testbed, config_path: Path) -> AsyncIterator[Swarm]:
    async with running_swarm(bed, config_path) as swarm:
        yield swarm


async def set_paused(swarm: Swarm, name: str, paused: bool) -> None:
    """Pauses (freezes) or unpauses the flicamera container of a node, through the engine."""

    async with swarm.docker(name) as docker:
        container = await asyncio.wait_for(docker.containers.get(f"flicamera-{name}"), 10)
        await asyncio.wait_for(container.pause() if paused else container.unpause(), 10)


async def timed(awaitable: Awaitable[Any]) -> tuple[float, Any]:
    """How long an awaitable took, and its result."""

    start = time.monotonic()
    result = await awaitable
    return time.monotonic() - start, result


async def write_output(swarm: Swarm, name: str, line: str) -> None:
    """Writes a line to the output of the container's main process (the simulated flicamera
    writes none; the bed's nodes share this kernel) and waits until the engine keeps it."""

    info = await swarm.inspect(name)
    output = Path(f"/proc/{info['State']['Pid']}/fd/1")
    await asyncio.to_thread(output.write_text, line + "\n", encoding="utf-8")
    assert swarm.actor is not None
    engine = swarm.actor.nodes[name].engine
    deadline = time.monotonic() + 30
    while line not in (await engine.container_logs(f"flicamera-{name}", tail=5) or []):
        assert time.monotonic() < deadline, f"{name}: the engine does not show {line!r}"
        await asyncio.sleep(0.05)  # Polling the engine until it shows it.


def evidence_records(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.name.startswith("fliswarm")
        and record.levelno == logging.WARNING
        and f"lines of the output of flicamera-{name}" in record.getMessage()
    ]


@pytest.mark.root
@pytest.mark.testbed
@pytest.mark.timeout(240)
@pytest.mark.asyncio(loop_scope="module")
async def test_a_paused_camera_answers_again_without_an_operator(
    swarm: Swarm, caplog: pytest.LogCaptureFixture
) -> None:
    """A frozen camera: every talk to it ends within its 10 s limit, other cameras answer,
    and with no operator command it answers again within 45 s (container restarted)."""

    caplog.set_level(logging.INFO, logger="fliswarm")
    assert swarm.client is not None and swarm.actor is not None
    await recover_all(swarm)
    client = swarm.client
    before = await swarm.inspect("gfa1")
    index, mark = len(client.lines), swarm.mark()
    marker = f"last words of gfa1 {uuid.uuid4()}"
    await write_output(swarm, "gfa1", marker)

    await set_paused(swarm, "gfa1", True)
    paused_at = time.monotonic()
    talks: list[tuple[float, str, float]] = []  # (since the pause, code, seconds taken)
    others: list[float] = []
    answered: float | None = None
    try:
        while time.monotonic() - paused_at < 45 + 15:  # Wide: the bound is asserted below.
            start = time.monotonic()
            other = asyncio.ensure_future(timed(swarm.command("talk -n gfa2 status", 20)))
            reply = await swarm.command("talk -n gfa1 status", 20)
            took = time.monotonic() - start
            talks.append((start - paused_at, reply.code, took))
            other_took, other_reply = await other
            assert other_reply.code == ":", [line.raw for line in other_reply.lines]
            others.append(other_took)
            if reply.code == ":":
                answered = time.monotonic() - paused_at
                break
            assert reply.code == "f"
            assert any("gfa1" in " ".join(line.values("text")) for line in reply.lines), [
                line.raw for line in reply.lines
            ]
            if took < 1.0:  # Failed at once (being restarted): wait for news of the node.
                with contextlib.suppress(TimeoutError):
                    await client.wait_for(
                        lambda line: line.values("nodeState")[:1] == ["gfa1"], 3, len(client.lines)
                    )
    finally:
        with contextlib.suppress(Exception):
            await set_paused(swarm, "gfa1", False)  # Whatever happened: not left frozen.

    print(
        "gfa1 paused: talks (at s, code, took s):",
        [(round(at, 1), code, round(took, 2)) for at, code, took in talks],
    )
    print(
        f"gfa1 paused -> answers talk again after {answered} s; gfa2 talks took up to "
        f"{max(others):.2f} s"
    )
    assert answered is not None and answered < 45, talks
    # Each talk ends within the 10 s limit of a command other than an exposure (+ margin for
    # the relay on a loaded machine); no 30 s wait.
    assert all(took < 10 + 2 for _, _, took in talks), talks
    assert max(others) < 10, others  # Other cameras are unaffected.

    after = await swarm.inspect("gfa1")
    assert after["Id"] == before["Id"]  # Restarted, not recreated.
    assert after["State"]["Running"] and not after["State"]["Paused"]
    assert after["State"]["StartedAt"] != before["State"]["StartedAt"]
    states = [line.values("nodeState") for line in client.lines[index:]]
    degraded = [s for s in states if s[:2] == ["gfa1", "degraded"]]
    assert degraded and "liveness" in degraded[0][3], states
    assert swarm.state("gfa1") is NodeState.ONLINE
    texts = swarm.texts(index)
    assert any("fliswarm send logs -n gfa1" in text for text in texts), texts
    [record] = evidence_records(caplog, "gfa1")
    assert f"\n  | {marker}" in record.getMessage()
    assert_plain(swarm.lines_since(mark))


@pytest.mark.root
@pytest.mark.testbed
@pytest.mark.timeout(120)
@pytest.mark.asyncio(loop_scope="module")
async def test_a_crashed_container_leaves_its_last_lines_in_the_log(
    swarm: Swarm, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fliswarm")
    assert swarm.client is not None
    await recover_all(swarm)
    marker = f"last words of gfa2 {uuid.uuid4()}"
    await write_output(swarm, "gfa2", marker)
    index = len(swarm.client.lines)
    await swarm.kill("gfa2")
    await swarm.client.wait_for(
        lambda line: "fliswarm send logs -n gfa2" in " ".join(line.values("text")), 30, index
    )
    # Its state may still say online before the repair begins: wait until it answers.
    deadline = time.monotonic() + 60
    while not await swarm.talk_ok("gfa2"):
        assert time.monotonic() < deadline, "gfa2 does not answer 60 s after its crash"
        await asyncio.sleep(0.2)  # Asking again until the restarted camera answers.
    await recover_all(swarm)
    [record] = evidence_records(caplog, "gfa2")
    assert f"\n  | {marker}" in record.getMessage()  # Logged before the repair.
    texts = swarm.texts(index)
    assert any("fliswarm send logs -n gfa2" in text for text in texts), texts


async def signal_camera(swarm: Swarm, name: str, plugged: bool) -> None:
    """Unplugs (``SIGUSR1``) or plugs back (``SIGUSR2``) the simulated camera of a node: the
    signal goes to flicamera through the engine (see the bed's flicamera launcher)."""

    fault = swarm.bed.camera_plug if plugged else swarm.bed.camera_unplug
    await asyncio.wait_for(asyncio.to_thread(fault, name), 20)


@pytest.mark.root
@pytest.mark.testbed
@pytest.mark.timeout(180)
@pytest.mark.asyncio(loop_scope="module")
async def test_a_camera_unplugged_degrades_its_node_without_a_restart(swarm: Swarm) -> None:
    """flicamera answers but has no camera: the node is degraded with that reason, talk to it
    says so and relays flicamera's answer, nothing is restarted nor counted as a failed
    check; the camera back, the node is online again."""

    assert swarm.client is not None and swarm.actor is not None
    await recover_all(swarm)
    client = swarm.client
    before = await swarm.inspect("gfa1")
    probe = swarm.actor.supervisor.reconcilers["gfa1"].liveness
    hangs = probe.hangs
    index, mark = len(client.lines), swarm.mark()
    try:
        await signal_camera(swarm, "gfa1", plugged=False)
        # A liveness look every 5 s: wide margin on 2 loaded cores.
        took = await swarm.wait_state("gfa1", {NodeState.DEGRADED}, 30, since=index)
        states = [line.values("nodeState") for line in client.lines[index:]]
        degraded = [s for s in states if s[:2] == ["gfa1", "degraded"]]
        assert degraded and degraded[0][3] == NO_CAMERA, states
        print(f"gfa1 unplugged -> degraded after {took:.1f} s")

        reply = await swarm.command("talk -n gfa1 status", 20)
        texts = [" ".join(line.values("text")) for line in reply.lines]
        warned = [text for text in texts if text.startswith("gfa1: ") and NO_CAMERA in text]
        assert len(warned) == 1, texts  # One clear line naming the node.
        assert any("no cameras connected." in text for text in texts), texts  # flicamera's.
        assert reply.code == "f"

        # It stays degraded, with nothing restarted, over more looks than a hang takes.
        checks, deadline = probe.checks, time.monotonic() + 40
        while probe.checks < checks + 4:
            assert time.monotonic() < deadline, (probe.checks, checks)
            await asyncio.sleep(0.1)  # Polling the probe's count of checks.
        assert swarm.state("gfa1") is NodeState.DEGRADED
        assert probe.hangs == hangs and probe.counter.failures == 0
        other = await swarm.command("talk -n gfa2 status", 20)
        assert other.code == ":"  # Other cameras unaffected.
    finally:
        with contextlib.suppress(Exception):
            await signal_camera(swarm, "gfa1", plugged=True)

    back_index = len(client.lines)
    took = await swarm.wait_state("gfa1", {NodeState.ONLINE}, 30, since=back_index)
    print(f"gfa1 plugged -> online after {took:.1f} s")
    assert await swarm.talk_ok("gfa1")
    reply = await swarm.command("talk -n gfa1 status", 20)
    assert not [t for t in swarm.texts(back_index) if NO_CAMERA in t and "sending" in t]
    assert reply.code == ":"
    after = await swarm.inspect("gfa1")
    assert after["State"]["StartedAt"] == before["State"]["StartedAt"]  # Never restarted.
    assert after["Id"] == before["Id"]
    states = [line.values("nodeState")[:2] for line in client.lines[index:]]
    assert ["gfa1", "recovering"] not in states, states
    assert_plain(swarm.lines_since(mark))


@pytest.mark.root
@pytest.mark.testbed
@pytest.mark.timeout(180)
@pytest.mark.asyncio(loop_scope="module")
async def test_an_exposure_that_overruns_is_a_hung_camera(swarm: Swarm) -> None:
    """A camera frozen during an exposure (its container paused): once the exposure overran
    its exposure time + readout + margin, liveness counts failed checks, the exposure's talk
    finishes f naming the node, and the camera answers again without an operator."""

    assert swarm.client is not None and swarm.actor is not None
    await recover_all(swarm)
    actor = swarm.actor
    settings = actor.settings
    # Exposure 3 s, readout 1 s, margin 2 s: overrun after 6 s; declared hung after the
    # failures (3 looks, 5 s apart); talk's own limit is 30 + 3 s, later.
    actor.settings = dataclasses.replace(
        settings, liveness=dataclasses.replace(settings.liveness, readout=1.0, margin=2.0)
    )
    client = swarm.client
    before = await swarm.inspect("gfa1")
    index = len(client.lines)
    try:
        exposure = asyncio.ensure_future(timed(swarm.command("talk -n gfa1 expose 3", 60)))
        await client.wait_for(
            lambda line: "exposure_state" in line.raw and "integrating" in line.raw,
            15,
            index,
        )
        await set_paused(swarm, "gfa1", True)  # Hung in the exposure.
        took, reply = await asyncio.wait_for(exposure, 45)
        texts = [" ".join(line.values("text")) for line in reply.lines]
        print(f"gfa1 hung in expose 3 -> talk ended {reply.code} after {took:.1f} s: {texts}")
        assert reply.code == "f", [line.raw for line in reply.lines]
        assert took < 30 + 3, took  # Before talk's own limit: liveness ended it.
        overran = "the exposure 'expose 3' has run for more than 6 s"
        assert any(text.startswith("gfa1: ") and overran in text for text in texts), texts
        states = [line.values("nodeState") for line in client.lines[index:]]
        degraded = [s for s in states if s[:2] == ["gfa1", "degraded"]]
        assert degraded and "exposure" in degraded[0][3], states
        # Left paused: the repair unpauses and restarts it, no operator.
        await swarm.wait_state("gfa1", {NodeState.ONLINE}, 45, since=index)
    finally:
        with contextlib.suppress(Exception):
            if (await swarm.inspect("gfa1"))["State"]["Paused"]:
                await set_paused(swarm, "gfa1", False)  # Whatever happened: not left frozen.
        actor.settings = settings
    assert await swarm.talk_ok("gfa1")  # Answers again.
    after = await swarm.inspect("gfa1")
    assert after["State"]["StartedAt"] != before["State"]["StartedAt"]  # Restarted.
    assert not after["State"]["Paused"]


@pytest.mark.root
@pytest.mark.testbed
@pytest.mark.timeout(150)
@pytest.mark.asyncio(loop_scope="module")
async def test_a_frozen_flicamera_process_is_restarted(swarm: Swarm) -> None:
    """flicamera frozen (SIGSTOP through the engine; the container itself is not paused):
    with no operator command, it answers again within 45 s."""

    assert swarm.client is not None
    await recover_all(swarm)
    before = await swarm.inspect("gfa2")
    async with swarm.docker("gfa2") as docker:
        container = await asyncio.wait_for(docker.containers.get("flicamera-gfa2"), 10)
        await asyncio.wait_for(container.kill(signal="SIGSTOP"), 10)
    frozen_at = time.monotonic()
    answered: float | None = None
    try:
        while time.monotonic() - frozen_at < 45:
            if await swarm.talk_ok("gfa2"):
                answered = time.monotonic() - frozen_at
                break
            await asyncio.sleep(0.5)  # Asking again until the restarted camera answers.
    finally:
        with contextlib.suppress(Exception):
            async with swarm.docker("gfa2") as docker:
                container = await asyncio.wait_for(docker.containers.get("flicamera-gfa2"), 10)
                await asyncio.wait_for(container.kill(signal="SIGCONT"), 10)
    print(f"gfa2 frozen -> answers again after {answered} s")
    assert answered is not None and answered < 45
    after = await swarm.inspect("gfa2")
    assert after["State"]["StartedAt"] != before["State"]["StartedAt"]  # Restarted.
