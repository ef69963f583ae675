"""The CLU bugs `fliswarm.compat` works around, reproduced with plain CLU.

Each test here runs plain CLU (no fliswarm class) and asserts that the bug is still there.
When a CLU release fixes one, its test fails: set that work-around's ``fixed_in`` to the
release (the work-around then turns itself off) and drop the test. The same reproducers are
in the patch proposals of ``docs/upstream-clu.md``. That fliswarm's actor does not have these
bugs is checked by ``test_fuzz_commands.py`` (lines, leaks) and ``test_actor_commands.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import click
import pytest
from clu.legacy import LegacyActor
from clu.parsers.click import CluGroup, command_parser
from clu.protocol import TCPStreamServer

from fliswarm import compat
from fliswarm.actor import KEYWORDS_SCHEMA


pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def clean_click_stack() -> Iterator[None]:
    """Plain CLU leaves the click context of each command on click's global stack (the bug
    reproduced here): drop them after each test, or they keep their commands alive for the
    rest of the session."""

    outer = click.get_current_context(silent=True)
    yield
    while (ctx := click.get_current_context(silent=True)) is not None and ctx is not outer:
        click.globals.pop_context()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    "workaround",
    [
        compat.SERVER_LEAK,
        compat.COMMAND_LINES,
        compat.CONTEXT_LEAK,
        compat.BUILTIN_COMMANDS,
        compat.VERSION_LOOKUP,
    ],
)
def test_every_workaround_is_active_for_the_installed_clu(workaround: compat.Workaround):
    assert workaround.fixed_in is None and workaround.active
    assert compat.Workaround("x", fixed_in="0.1").active is False
    assert compat.Workaround("x", fixed_in="999.0").active is True


async def test_server_leak_a_failing_data_callback_keeps_the_transport():
    """SERVER_LEAK: a data callback that raises ends CLU's handler; the transport stays."""

    def failing(transport: Any, data: bytes) -> None:
        raise ValueError("a command handler bug")

    server = TCPStreamServer("127.0.0.1", free_port(), data_received_callback=failing)
    await server.start()
    loop = asyncio.get_running_loop()
    failed = asyncio.Event()  # The loop's exception handler gets the handler's end.
    loop.set_exception_handler(lambda loop, context: failed.set())
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"1 ping\n")
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        await asyncio.wait_for(failed.wait(), 5)
        assert len(server.transports) == 1  # The client is gone; its transport is not.
    finally:
        loop.set_exception_handler(None)
        server.stop()
        for transport in list(server.transports):
            transport.close()


class PlainActor:
    """A plain CLU LegacyActor on loopback, with a raw client."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.actor = LegacyActor(
            "plain", "127.0.0.1", self.port, log_dir=tmp_path, schema=str(KEYWORDS_SCHEMA)
        )

    async def client(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        await asyncio.wait_for(reader.readline(), 5)  # The greeting.
        return reader, writer


@contextlib.asynccontextmanager
async def plain_actor(tmp_path: Path) -> AsyncIterator[PlainActor]:
    plain = PlainActor(tmp_path)
    await plain.actor.start()
    try:
        yield plain
    finally:
        await plain.actor.stop()


async def lines_until(reader: asyncio.StreamReader, ending: str, timeout: float) -> list[str]:
    """Lines read until one contains ``ending``; what came if ``timeout`` runs out first."""

    lines: list[str] = []

    async def read() -> None:
        while not lines or ending not in lines[-1]:
            line = (await reader.readline()).decode(errors="replace")
            if not line:
                return
            lines.append(line)

    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(read(), timeout)
    return lines


async def test_command_lines_an_unparsed_line_fails_for_everyone(tmp_path: Path):
    """COMMAND_LINES: a line CLU cannot parse (an id and no command) is failed with id 0, to
    EVERY user."""

    async with plain_actor(tmp_path) as plain:
        _, sender = await plain.client()
        bystander, other = await plain.client()
        sender.write(b"7\n")
        lines = await lines_until(bystander, " f ", 5)
        assert any(line.startswith("0 0 f ") for line in lines), lines
        sender.close()
        other.close()


async def test_command_lines_an_unbalanced_quote_never_ends(tmp_path: Path):
    """COMMAND_LINES: ``1 ping "x`` raises in parse_command: command 1 never ends."""

    async with plain_actor(tmp_path) as plain:
        plain.actor.set_loop_exception_handler = lambda: None  # type: ignore[method-assign]
        reader, writer = await plain.client()
        writer.write(b'1 ping "x\n')
        lines = await lines_until(reader, " 1 :", 1.5)
        assert not any(" 1 :" in line or " 1 f" in line for line in lines), lines
        writer.close()


async def test_command_lines_invalid_utf8_drops_the_line_unanswered(tmp_path: Path):
    """COMMAND_LINES: a line that is not UTF-8 raises in new_command: no answer at all."""

    async with plain_actor(tmp_path) as plain:
        reader, writer = await plain.client()
        writer.write(b"1 ping \xff\n")
        lines = await lines_until(reader, " 1 ", 1.5)
        assert not any(" 1 " in line for line in lines), lines
        writer.close()


def test_context_leak_each_command_leaves_its_click_context():
    """CONTEXT_LEAK: CLU's parse_command pushes the command's context and never pops it."""

    @click.group(cls=CluGroup)
    def group() -> None:
        pass

    @group.command()
    async def hello(*args: Any) -> None:
        pass

    class Parser(LegacyActor):
        parser = group

    async def run() -> click.Context | None:
        actor = Parser("plain", "127.0.0.1", 0)  # In the loop: it takes the running one.
        before = click.get_current_context(silent=True)
        command = _command(actor, "hello")
        actor.parse_command(command)
        await asyncio.sleep(0)
        leaked = click.get_current_context(silent=True)
        assert leaked is not before
        click.globals.pop_context()  # Clean up after the reproducer.
        return leaked

    leaked = asyncio.run(run())
    assert leaked is not None and leaked.command is group


def _version_lookups(group_class: type[click.Group], words: list[str]) -> tuple[int, list]:
    """How often parsing and running ``words`` with a group of ``group_class`` reads a
    package's version from its metadata, and what the sub-command got."""

    @click.group(cls=group_class)
    def group() -> None:
        pass

    got: list = []

    @group.command(cls=click.Command)
    @click.option("-n", "--names")
    @click.argument("rest", nargs=-1)
    def hello(names: str | None, rest: tuple[str, ...]) -> None:
        got.append((names, rest))

    lookups = []
    real = importlib.metadata.version

    def counted(name: str) -> str:
        lookups.append(name)
        return real(name)

    with mock.patch("importlib.metadata.version", counted):
        ctx = group.make_context("parser", list(words))
        with ctx:
            group.invoke(ctx)
    return len(lookups), got


def test_version_lookup_clu_reads_click_metadata_at_every_command():
    """VERSION_LOOKUP: CluGroup.parse_args reads click's version from the metadata."""

    lookups, _ = _version_lookups(CluGroup, ["hello", "-n", "gfa1"])
    assert lookups == 1


def test_version_lookup_the_group_parses_as_clu_without_the_lookup():
    for words in (["hello"], ["hello", "-n", "gfa1", "a", "b"], ["hello", "--names=x"]):
        lookups, got = _version_lookups(compat.CluGroupOnce, words)
        assert lookups == 0
        assert got and got == _version_lookups(CluGroup, words)[1]
    with pytest.raises(click.exceptions.Exit):  # No arguments: CLU's quiet exit.
        _version_lookups(compat.CluGroupOnce, [])


def _command(actor: Any, body: str) -> Any:
    from clu.command import Command

    class Silent:
        user_id = 1

        def write(self, data: bytes) -> None:
            pass

        def is_closing(self) -> bool:
            return False

    return Command(body, commander_id=1, command_id=1, actor=actor, transport=Silent())


async def test_builtin_help_fails_on_a_command_line(tmp_path: Path):
    """BUILTIN_COMMANDS: CLU's help walks every word as a sub-command."""

    async with plain_actor(tmp_path) as plain:
        assert plain.actor.parser is command_parser
        reader, writer = await plain.client()
        writer.write(b'1 help "ping -x y"\n')
        lines = await lines_until(reader, " 1 f", 5)
        assert lines and " 1 f " in lines[-1] and "AttributeError" in lines[-1], lines
        writer.close()


async def test_builtin_get_command_model_never_ends(tmp_path: Path):
    """BUILTIN_COMMANDS: with a keyword schema, get-command-model's reply fails validation:
    an ``e`` line instead of the final one."""

    async with plain_actor(tmp_path) as plain:
        reader, writer = await plain.client()
        writer.write(b"1 get-command-model ping\n")
        lines = await lines_until(reader, " 1 e ", 5)
        assert lines and " 1 e " in lines[-1], lines
        more = await lines_until(reader, " 1 :", 1)
        assert not any(" 1 :" in line for line in more), more
        writer.close()
