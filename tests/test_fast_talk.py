"""`fliswarm.fast_talk`: whenever it parses a ``talk`` line, click parses it the same way."""

from __future__ import annotations

import asyncio
import logging
import shlex
from pathlib import Path
from typing import Any
from unittest import mock

import click
import pytest
from clu.legacy.actor import BaseLegacyActor
from helpers_inprocess import UserTransport, offline_actor
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


async def test_actor_runs_talk_without_click_and_the_same_replies(tmp_path: Path):
    """A plain talk line never reaches click; the same line through click (fast path off)
    writes the same lines."""

    transport = UserTransport()
    line = b"5 talk -n nosuch,gfa9 -t 3 status"
    with offline_actor(tmp_path) as actor:
        actor.transports = {1: transport}
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


@pytest.mark.parametrize("line", [b"7 ping", b"tron.tron 8 ping", b"ping", b"9 talk -n x status"])
async def test_new_command_logs_and_answers_as_clu(tmp_path: Path, line: bytes):
    """``new_command`` builds and logs the command itself: same log record, same replies."""

    class Records(logging.Handler):
        def __init__(self) -> None:
            super().__init__(level=logging.DEBUG)
            self.lines: list[tuple[int, str]] = []

        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("New command"):
                self.lines.append((record.levelno, record.getMessage()))

    records, transport = Records(), UserTransport()
    with offline_actor(tmp_path) as actor:
        actor.log.addHandler(records)
        actor.transports = {1: transport}
        results = []
        for new_command in (BaseLegacyActor.new_command, FLISwarmActor.new_command):
            command = new_command(actor, transport, line)
            await asyncio.wait_for(command, 5)
            results.append((list(records.lines), list(transport.data), command.commander_id))
            records.lines.clear()
            transport.data.clear()
        actor.log.removeHandler(records)
    assert results[0] == results[1]
    assert len(results[0][0]) == 1 and results[0][0][0][0] == logging.INFO
