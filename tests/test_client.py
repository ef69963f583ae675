"""``fliswarm send``, the actor's command-line client, run as operators run it.

Against the real daemon (``fliswarm start`` with a configuration of the Docker test bed, real
flicamera containers): a camera's ``status`` exits 0, a failing command exits 1 with its failure
text, and so through a real tron hub too. Without anything listening, exit status 2 within 5 s
(the issue's bound). What needs commands of its own (a broadcast, a command that never ends)
uses a real CLU ``LegacyActor`` on loopback; the prompt runs in a real pseudo-terminal.

`BedDaemon` and `running_daemon` are shared with ``test_logs.py`` and
``test_persisted_state.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import pytest
import yaml
from clu import LegacyActor
from clu.parsers.click import CluGroup, ping, version
from helpers_actor import plain_actor, tron_ready
from helpers_net import free_port

from fliswarm.client import parse_keywords, render
from fliswarm_testbed import Testbed
from fliswarm_testbed.engine import http_request
from fliswarm_testbed.image import ensure_flicamera_image


if TYPE_CHECKING:
    from fliswarm_testbed.tron_fixtures import ClientFactory, HubFactory


#: The issue's bound for "no daemon running exits 2".
UNREACHABLE_BOUND = 5.0


# ------------------------------------------------------------------ the daemon on the bed


def run_fliswarm(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120, stdin: str | None = None
) -> subprocess.CompletedProcess:
    """``python -m fliswarm ARGS`` in a subprocess (the real command line)."""

    return subprocess.run(
        [sys.executable, "-m", "fliswarm", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
    )


@dataclass
class BedDaemon:
    """A fliswarm daemon of a test-bed configuration, driven with the real CLI."""

    bed: Testbed
    tmp: Path
    config_path: Path
    config: dict[str, Any]
    env: dict[str, str]

    @property
    def port(self) -> int:
        return int(self.config["actor"]["port"])

    @property
    def log_dir(self) -> Path:
        return Path(self.config["actor"]["log_dir"])

    @property
    def state_file(self) -> Path:
        return self.log_dir / "fliswarm-state.json"

    def cli(self, *args: str, timeout: float = 120, stdin: str | None = None):
        """``fliswarm -c <config> ARGS``."""

        return run_fliswarm(
            "-c", str(self.config_path), *args, env=self.env, timeout=timeout, stdin=stdin
        )

    def send(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """``fliswarm -c <config> send ARGS`` (the process's own bound is ``timeout``)."""

        return self.cli("send", "--timeout", str(timeout - 10), *args, timeout=timeout)

    def start(self) -> None:
        done = self.cli("start", "--log", str(self.tmp / "daemon.log"), timeout=180)
        assert done.returncode == 0, done.stdout + done.stderr

    def restart(self) -> None:
        done = self.cli("restart", "--log", str(self.tmp / "daemon.log"), timeout=180)
        assert done.returncode == 0, done.stdout + done.stderr

    def stop(self) -> None:
        done = self.cli("stop", timeout=90)
        assert done.returncode == 0, done.stdout + done.stderr

    def kill(self) -> None:
        """Never leaves a daemon behind (SIGKILL if ``stop`` did not end it)."""

        pid_file = Path(self.env["FLISWARM_PID_FILE"])
        with contextlib.suppress(Exception):
            self.cli("stop", timeout=60)
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)

    def container(self, node: str) -> dict[str, Any] | None:
        """The engine's inspect of a node's flicamera container (`None` if missing)."""

        addr = self.bed.node(node).addr
        status, body = http_request(addr, f"/containers/flicamera-{node}/json", timeout=10)
        if status == 404:
            return None
        assert status == 200, body
        return json.loads(body)


def bed_config(bed: Testbed, image: str, tmp: Path, **changes: Any) -> dict[str, Any]:
    """A configuration of the bed with its own port and log directory."""

    config = bed.fliswarm_config(image, port=free_port())
    config["actor"]["log_dir"] = str(tmp / "logs")
    config["timeouts"] = {"docker_connect": 2, "docker_request": 15, "talk": 15}
    config["ping_timeout"] = 0.5
    for node in config["nodes"].values():
        node.update({"docker-uid": 0, "docker-gid": 0})
    for key, value in changes.items():
        if key == "actor":
            config["actor"].update(value)
        else:
            config[key] = value
    return config


@contextlib.contextmanager
def running_daemon(bed: Testbed, image: str, tmp: Path, **changes: Any) -> Iterator[BedDaemon]:
    """Starts a daemon with a configuration of the bed; stops it (or kills it) at the end."""

    tmp.mkdir(parents=True, exist_ok=True)
    config = bed_config(bed, image, tmp, **changes)
    path = tmp / "fliswarm.yaml"
    path.write_text(yaml.safe_dump(config))
    env = dict(os.environ, FLISWARM_PID_FILE=str(tmp / "fliswarm.pid"))
    env.pop("FLISWARM_CONFIG", None)
    daemon = BedDaemon(bed, tmp, path, config, env)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.kill()


def bed_image(bed: Testbed) -> str:
    return ensure_flicamera_image(bed.registry)


def lines_of(done: subprocess.CompletedProcess) -> list[str]:
    return done.stdout.splitlines()


@pytest.fixture(scope="module")
def daemon(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BedDaemon]:
    """The daemon on gfa1 and gfa2 of the bed, their cameras answering."""

    from fliswarm_testbed.fixtures import cleanup_node

    tmp = tmp_path_factory.mktemp("send")
    try:
        with running_daemon(testbed, bed_image(testbed), tmp, enabled_nodes=["gfa1", "gfa2"]) as d:
            ready = d.send("reconnect", timeout=300)  # Joins the supervisor's first work.
            assert ready.returncode == 0, ready.stdout + ready.stderr
            yield d
    finally:
        testbed._parallel(lambda node: cleanup_node(testbed, node))


# ------------------------------------------------------------------------ the daemon


@pytest.mark.root
@pytest.mark.testbed
def test_send_talk_status_prints_the_status_keyword(daemon: BedDaemon):
    done = daemon.send("talk", "-n", "gfa1", "status")
    lines = lines_of(done)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""
    [status] = [line for line in lines if line.startswith("i status=")]
    # flicamera's status of its camera, with the node name first.
    assert status.startswith("i status=gfa1,gfa1,MicroLine ML4240,"), status
    assert lines[-1] == ": done"


@pytest.mark.root
@pytest.mark.testbed
def test_send_a_failing_command_exits_1_with_its_failure_text(daemon: BedDaemon):
    done = daemon.send("talk", "-n", "nosuch", "status")
    assert done.returncode == 1, done.stdout + done.stderr
    assert lines_of(done) == [
        "w text=nosuch: no such node.",
        "f error=No enabled camera matches the selection.",
    ]
    assert done.stderr == ""


@pytest.mark.root
@pytest.mark.testbed
def test_send_raw_prints_the_wire_lines(daemon: BedDaemon):
    done = daemon.send("--raw", "talk", "-n", "gfa1", "status")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = lines_of(done)
    assert all(re.match(r"\d+ 1 [>i:]( |$)", line) for line in lines), lines
    assert any(" i status=gfa1,gfa1," in line for line in lines), lines
    assert lines[-1].split(" ")[2] == ":"


@pytest.mark.root
@pytest.mark.testbed
@pytest.mark.tron
async def test_send_through_tron(
    daemon: BedDaemon, tron_hub_factory: HubFactory, tron_client_factory: ClientFactory
):
    hub = await tron_hub_factory({"fliswarm": ("127.0.0.1", daemon.port)})
    client = await tron_client_factory(hub)
    await client.start_nubs("fliswarm")
    await tron_ready(client, "fliswarm", 30)
    tron = f"127.0.0.1:{hub.commander_port}"

    done = await asyncio.to_thread(daemon.send, "--tron", tron, "talk", "-n", "gfa1", "status")
    assert done.returncode == 0, done.stdout + done.stderr
    assert any(line.startswith("i status=gfa1,gfa1,") for line in lines_of(done)), done.stdout
    assert lines_of(done)[-1] == ": done"
    # What tron received: <program>.<user> <id> fliswarm COMMAND, from this client.
    [received] = [c for c in hub.received_commands() if c.command == "talk -n gfa1 status"]
    assert re.fullmatch(r"fliswarm\.\w+_p\d+", received.cid), received
    assert (received.mid, received.actor) == ("1", "fliswarm")

    failed = await asyncio.to_thread(daemon.send, "--tron", tron, "talk", "-n", "nosuch", "status")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "w text=nosuch: no such node." in lines_of(failed)
    assert lines_of(failed)[-1] == "f error=No enabled camera matches the selection."

    raw = await asyncio.to_thread(daemon.send, "--tron", tron, "--raw", "ping")
    assert raw.returncode == 0, raw.stdout + raw.stderr
    assert re.fullmatch(r"fliswarm\.\w+_p\d+ 1 fliswarm : text=Pong\.", lines_of(raw)[-1])

    # --all: the broadcasts of the command's moment, marked; then back as configured.
    disabled = await asyncio.to_thread(daemon.send, "--tron", tron, "--all", "disable", "gfa2")
    assert disabled.returncode == 0, disabled.stdout + disabled.stderr
    assert any(line.startswith("* i nodeState=gfa2,disabled,") for line in lines_of(disabled)), (
        disabled.stdout
    )
    enabled = await asyncio.to_thread(daemon.send, "--tron", tron, "enable", "gfa2")
    assert enabled.returncode == 0, enabled.stdout + enabled.stderr
    assert "i text=gfa2: enabled; camera connected." in lines_of(enabled)


@pytest.mark.tron
async def test_tron_that_cannot_reach_fliswarm_exits_2(tron_hub_factory: HubFactory):
    hub = await tron_hub_factory({"fliswarm": ("127.0.0.1", free_port())})  # Never started.
    tron = f"127.0.0.1:{hub.commander_port}"
    done = await asyncio.to_thread(
        run_fliswarm, "send", "--tron", tron, "--timeout", "60", "status", timeout=90
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith(f"ERROR: tron at {tron} cannot reach fliswarm: "), line


def test_nothing_listening_exits_2_quickly(tmp_path: Path):
    port = free_port()
    config = tmp_path / "fliswarm.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "actor": {"name": "fliswarm", "host": "0.0.0.0", "port": port},
                "image": "sdss/flicamera:latest",
                "nodes": {"gfa1": {"host": "127.0.0.1", "port": free_port()}},
                "enabled_nodes": ["gfa1"],
            }
        )
    )
    cases = {
        ("-c", str(config), "send", "status"): (
            f"ERROR: cannot reach fliswarm at 127.0.0.1:{port}: connection refused"
        ),
        ("send", "--port", str(port), "talk", "-n", "gfa1", "status"): (
            f"ERROR: cannot reach fliswarm at 127.0.0.1:{port}: connection refused"
        ),
        ("send", "--tron", f"127.0.0.1:{port}", "status"): (
            f"ERROR: cannot reach tron at 127.0.0.1:{port}: connection refused"
        ),
        ("send", "--tron", "127.0.0.1:notaport", "status"): "ERROR: --tron '127.0.0.1:notaport'",
    }
    env = dict(os.environ)
    env.pop("FLISWARM_CONFIG", None)
    for args, expected in cases.items():
        start = time.monotonic()
        done = run_fliswarm(*args, env=env, timeout=60)
        took = time.monotonic() - start
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert took < UNREACHABLE_BOUND, (args, took)
        assert done.stdout == ""
        [line] = done.stderr.splitlines()  # One clear line.
        assert line.startswith(expected), line


# ---------------------------------------------------------------- a real CLU actor


@click.group(cls=CluGroup)
def _parser(*args):
    """Commands of the test actor."""


_parser.add_command(ping)
_parser.add_command(version)


@_parser.command()
@click.argument("words", nargs=-1)
async def echo(command, words: tuple[str, ...]):
    """Writes the words back."""

    command.info(echoed=" ".join(words), count=[len(words), "a, b", ""])
    return command.finish()


@_parser.command()
async def beat(command):
    """Broadcasts a keyword while it runs, then finishes."""

    command.actor.write("i", {"heartbeat": 42})
    return command.finish()


@_parser.command()
async def hang(command):
    """Does not end within the client's patience."""

    await asyncio.sleep(60)
    return command.finish()


@pytest.fixture
async def actor() -> AsyncIterator[LegacyActor]:
    """A real CLU LegacyActor on a free loopback port."""

    async with plain_actor("echoer", _parser) as actor:
        yield actor


async def client(port: int, *args: str, stdin: str | None = None, timeout: float = 60):
    """``fliswarm send --port PORT ARGS`` while this event loop serves the actor."""

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fliswarm",
        "send",
        "--port",
        str(port),
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    start = time.monotonic()
    try:
        out, err = await asyncio.wait_for(
            proc.communicate(stdin.encode() if stdin is not None else b""), timeout
        )
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode, out.decode(), err.decode(), time.monotonic() - start


async def test_all_prints_the_broadcasts_of_the_moment(actor: LegacyActor):
    code, out, err, _ = await client(actor.port, "--all", "beat")
    assert (code, err) == (0, ""), out + err
    assert out.splitlines() == ["* i heartbeat=42", ": done"]

    code, out, err, _ = await client(actor.port, "beat")
    assert (code, out.splitlines(), err) == (0, [": done"], "")


async def test_readable_values(actor: LegacyActor):
    code, out, err, _ = await client(actor.port, "echo", "hello", "world")
    assert code == 0, out + err
    # One line per keyword; one value as it is; in a list, a value with a comma (or an
    # empty one) quoted.
    assert out.splitlines() == ["i echoed=hello world", 'i count=2,"a, b",""', ": done"]


async def test_a_command_that_does_not_end_in_time_exits_2(actor: LegacyActor):
    code, out, err, took = await client(actor.port, "--timeout", "1", "hang")
    assert code == 2, out + err
    [line] = err.splitlines()
    assert line == (
        f"ERROR: 'hang' did not end within 1 s (fliswarm at 127.0.0.1:{actor.port}); it may "
        "still be running (--timeout gives it longer)."
    )
    assert took < 30  # Only "it never hangs": the bound is --timeout.


async def test_a_port_that_is_not_an_actor_exits_2():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()  # Connections complete in the backlog; nothing is ever written.
        port = server.getsockname()[1]
        code, out, err, took = await client(port, "--timeout", "1", "status")
    assert code == 2, out + err
    [line] = err.splitlines()
    assert re.fullmatch(
        rf"ERROR: 127\.0\.0\.1:{port} does not answer as a fliswarm actor would \(no "
        r"yourUserID line within [\d.]+ s\): is it the actor's port \(actor\.port\), and is "
        r"the actor not hung\?",
        line,
    ), line
    assert took < 30


async def test_commands_from_the_standard_input(actor: LegacyActor):
    code, out, err, _ = await client(actor.port, stdin="ping\n\necho one two\nversion\n")
    assert (code, err) == (0, ""), out + err
    assert out.splitlines() == [
        ": text=Pong.",
        "i echoed=one two",
        'i count=2,"a, b",""',
        ": done",
        ": version=1.2.3",
    ]


def _read_until(fd: int, pattern: str, timeout: float) -> str:
    """Reads a pseudo-terminal until ``pattern`` (a regex) shows up."""

    seen = ""
    deadline = time.monotonic() + timeout
    while not re.search(pattern, seen):
        left = deadline - time.monotonic()
        assert left > 0, f"no {pattern!r} in {seen!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                data = os.read(fd, 4096)
            except OSError:  # The child closed the terminal.
                break
            seen += data.decode(errors="replace")
    return seen


def _prompt_session(port: int, env: dict[str, str]) -> tuple[int, str]:
    """``fliswarm send`` in a pseudo-terminal: ping, then Ctrl-D; (status, output)."""

    main, child = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fliswarm", "send", "--port", str(port)],
        stdin=child,
        stdout=child,
        stderr=child,
        env=env,
        close_fds=True,
    )
    os.close(child)
    try:
        seen = _read_until(main, r"fliswarm> ", 30)
        os.write(main, b"ping\r")
        seen += _read_until(main, r"Pong\.[\s\S]*fliswarm> ", 30)
        os.write(main, b"\x04")  # Ctrl-D: the end of the input.
        return proc.wait(30), seen
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(main)


async def test_prompt_with_history(actor: LegacyActor, tmp_path: Path):
    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path / "state"), HOME=str(tmp_path))
    code, seen = await asyncio.to_thread(_prompt_session, actor.port, env)
    assert code == 0, seen
    assert f"Connected to fliswarm at 127.0.0.1:{actor.port}" in seen
    assert ": text=Pong." in seen
    history = tmp_path / "state" / "fliswarm" / "send_history"
    assert "ping" in history.read_text().splitlines()


# --------------------------------------------------------------------- the format


def test_parse_and_render():
    body = 'a=1; text="gfa1: x; \\"y\\""; flag; log=gfa2,"tab\\tand, comma",""'
    assert parse_keywords(body) == [
        ("a", ["1"]),
        ("text", ['gfa1: x; "y"']),
        ("flag", None),
        ("log", ["gfa2", "tab\tand, comma", ""]),
    ]
    assert render("w", body) == [
        "w a=1",
        'w text=gfa1: x; "y"',
        "w flag",
        'w log=gfa2,"tab\\tand, comma",""',
    ]
    assert render(":", "") == [": done"]
    assert render("f", "") == ["f failed"]
    assert render(">", "") == []
