"""`fliswarm.fast_talk`: whenever it parses a ``talk`` line, click parses it the same way."""

from __future__ import annotations

import asyncio
import logging
import shlex
import tempfile
from typing import Any
from unittest import mock

import click
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fliswarm.actor import FLISwarmActor
from fliswarm.commands import parser
from fliswarm.fast_talk import parse_talk


WORDS = [
    "-n", "--names", "-c", "--category", "-t", "--timeout", "--help", "--", "-x", "-nc",
    "--names=gfa1", "-n=gfa1", "gfa1", "gfa1,gfa2", "gfa", "fvc", "status", "expose", "0.1",
    "1", "-1", "0", "0.0", "nan", "inf", "1e3", ".5", "5.", "'a b'", '"x y"', "--count", "-c2",
    "talk", "'", "000000000001.5",
]  # fmt: skip


def click_params(body: str) -> dict[str, Any]:
    talk = parser.commands["talk"]
    words = shlex.split(body)
    assert words[0] == "talk"
    with talk.make_context("talk", words[1:]) as ctx:
        return dict(ctx.params)


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(WORDS), min_size=0, max_size=7))
def test_fast_parse_is_clicks_parse(words: list[str]):
    body = "talk " + " ".join(words)
    fast = parse_talk(body)
    if fast is None:
        return  # Click parses it, as before.
    assert fast == click_params(body)


@pytest.mark.parametrize(
    "body",
    [
        "talk status",
        "talk -n gfa1 status",
        "talk -n gfa1,gfa2 -c gfa -t 2.5 expose 0.1",
        "talk --names gfa1 --timeout 10 expose 1 --count 2",
        "talk -c fvc 'set temperature' -20",
    ],
)
def test_the_usual_lines_take_the_fast_path(body: str):
    fast = parse_talk(body)
    assert fast is not None and fast == click_params(body)


@pytest.mark.parametrize(
    "body",
    [
        "talk",
        "talk -n gfa1",  # No camera command: click's error.
        "talk --help",
        "talk -n gfa1 status --help",
        "talk -t 0 status",
        "talk -t -1 status",
        "talk -t nan status",
        "talk -n gfa1 -n gfa2 status",
        "talk --names=gfa1 status",
        "talk -- status",
        "talk -x status",
        "talk 'unbalanced status",
        "talkative status",
        "status",
    ],
)
def test_anything_else_goes_to_click(body: str):
    assert parse_talk(body) is None


async def test_actor_runs_talk_without_click_and_the_same_replies():
    """A plain talk line never reaches click; the same line through click (fast path off)
    writes the same lines."""

    class Transport:
        def __init__(self) -> None:
            self.user_id = 1
            self.data: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.data.append(data)

        def is_closing(self) -> bool:
            return False

        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return default

    config = {"actor": {"name": "fliswarm", "host": "127.0.0.1", "port": 0}, "status_interval": 0}
    actor = FLISwarmActor.from_config(config, log_dir=tempfile.mkdtemp())
    transport = Transport()
    actor.transports = {1: transport}
    line = b"5 talk -n nosuch,gfa9 -t 3 status"
    try:
        with mock.patch.object(click.Command, "make_context", side_effect=AssertionError):
            command = actor.new_command(transport, line)
            await asyncio.wait_for(command, 5)
        fast = list(transport.data)
        transport.data.clear()
        with mock.patch("fliswarm.actor_lines.parse_talk", return_value=None):
            command = actor.new_command(transport, line)
            await asyncio.wait_for(command, 5)
        assert transport.data == fast
        assert fast[0] == b"1 5 > \n" and fast[-1].startswith(b"1 5 f error=")
        assert b"nosuch: no such node" in b"".join(fast)
    finally:
        for handler in list(actor.log.handlers):
            handler.close()


@pytest.mark.parametrize("line", [b"7 ping", b"tron.tron 8 ping", b"ping", b"9 talk -n x status"])
async def test_new_command_logs_and_answers_as_clu(line: bytes):
    """``new_command`` builds and logs the command itself: same log record, same replies."""

    from clu.legacy.actor import BaseLegacyActor

    class Records(logging.Handler):
        def __init__(self) -> None:
            super().__init__(level=logging.DEBUG)
            self.lines: list[tuple[int, str]] = []

        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("New command"):
                self.lines.append((record.levelno, record.getMessage()))

    class Transport:
        def __init__(self) -> None:
            self.user_id = 1
            self.data: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.data.append(data)

        def is_closing(self) -> bool:
            return False

        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return default

    config = {"actor": {"name": "fliswarm", "host": "127.0.0.1", "port": 0}, "status_interval": 0}
    actor = FLISwarmActor.from_config(config, log_dir=tempfile.mkdtemp())
    records = Records()
    actor.log.addHandler(records)
    transport = Transport()
    actor.transports = {1: transport}
    try:
        results = []
        for new_command in (BaseLegacyActor.new_command, FLISwarmActor.new_command):
            command = new_command(actor, transport, line)
            await asyncio.wait_for(command, 5)
            results.append((list(records.lines), list(transport.data), command.commander_id))
            records.lines.clear()
            transport.data.clear()
        assert results[0] == results[1]
        assert len(results[0][0]) == 1 and results[0][0][0][0] == logging.INFO
    finally:
        actor.log.removeHandler(records)
        for handler in list(actor.log.handlers):
            handler.close()
