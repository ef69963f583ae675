"""The relay's reply fast path (`fliswarm.reply`) writes exactly what CLU's write path writes."""

from __future__ import annotations

import logging
from logging.handlers import TimedRotatingFileHandler
from pathlib import Path
from typing import Any
from unittest import mock

import clu
import pytest
from clu.base import MessageCode
from clu.command import Command
from clu.legacy.actor import BaseLegacyActor
from clu.tools import REPLY
from helpers_inprocess import UserTransport as Transport
from hypothesis import given, settings
from hypothesis import strategies as st

from fliswarm.actor import FLISwarmActor
from fliswarm.reply import format_keywords, format_value, write_reply


VALUES: list[Any] = [
    "",
    " ",
    "word",
    "two words",
    'say "hi" now',
    "semi;colon",
    "a; b",
    "'quoted already'",
    '"double quoted"',
    "comma,separated",
    "key=value",
    "unicode é ü",
    "tab\tinside",
    0,
    -3,
    2**70,
    1.5,
    -0.0,
    1e-300,
    float("inf"),
    float("nan"),
    True,
    False,
    None,
    [],
    [""],
    ["gfa1", "two words", True, None, 3, 2.5],
    ["gfa1", ["nested", "list with space"], (1, 2)],
    ("tuple", False),
    {},
    {"camera": "gfa1", "state": "integrating", "n": 3, "ok": True, "x": None},
    ["gfa1", {"camera": "gfa1", "filename": "/data/x y.fits"}],
    ["gfa1", {"a": [1, {"b": 2}]}],
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=12,
)


def clu_format(value: Any) -> str | type[Exception]:
    try:
        return clu.format_value(value)
    except Exception as err:
        return type(err)


def ours(value: Any) -> str | type[Exception]:
    try:
        return format_value(value)
    except Exception as err:
        return type(err)


@pytest.mark.parametrize("value", VALUES, ids=range(len(VALUES)))
def test_format_value_matches_clu(value: Any):
    assert ours(value) == clu_format(value)


def test_too_deep_dict_fails_like_clu():
    with pytest.raises(ValueError):
        clu.format_value({"a": {"b": {"c": 1}}})
    with pytest.raises(TypeError, match="Cannot format keyword 'k'"):
        format_keywords({"k": ["gfa1", {"a": {"b": {"c": 1}}}]})


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_format_value_matches_clu_fuzzed(value: Any):
    assert ours(value) == clu_format(value)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=REPLY)
        self.lines: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelno, record.getMessage()))


def talk_command(actor: Any) -> Command:
    transport = actor.transports[1]
    return Command("talk", commander_id=1, command_id=7, actor=actor, transport=transport)


@pytest.fixture
def actor(tmp_path: Path):
    config = {"actor": {"name": "fliswarm", "host": "127.0.0.1", "port": 0}, "status_interval": 0}
    actor = FLISwarmActor.from_config(config, log_dir=tmp_path)
    actor.transports = {1: Transport(1), 2: Transport(2)}
    records = Records()
    actor.log.addHandler(records)
    yield actor, records
    actor.log.removeHandler(records)
    for handler in list(actor.log.handlers):
        handler.close()


def outputs(actor: Any, records: Records) -> tuple[list[list[bytes]], list[tuple[int, str]]]:
    out = [list(transport.data) for transport in actor.transports.values()]
    lines = list(records.lines)
    for transport in actor.transports.values():
        transport.data.clear()
    records.lines.clear()
    return out, lines


MESSAGES: list[dict[str, Any]] = [
    {"status": ["gfa1", {"camera": "gfa1", "temperature": -25.0, "cooling": True}]},
    {"text": ["gfa1", "a; b \"c\" 'd'"], "flag": ["gfa1", False], "none": ["gfa1", None]},
    {"empty": ["", " "], "list": ["gfa1", 1, 2.5, "x y"]},
    {"help": "  talk  Sends a command."},
]


@pytest.mark.parametrize("code", ["i", "w", "d", "e", ">", ":", "f"])
@pytest.mark.parametrize("how", ["command", "child", "actor", "silent", "nolog", "other user"])
def test_write_reply_same_bytes_as_clu(actor: Any, code: str, how: str):
    actor, records = actor
    parent = talk_command(actor)
    if how == "child":
        target: Any = Command("status", parent=parent, actor=actor)
    elif how == "actor":
        target = actor
    elif how == "silent":
        target = Command("talk", command_id=8, actor=actor, transport=actor.transports[2])
        target.silent = True
    elif how == "nolog":
        target = parent
        target.write_to_log = False
    elif how == "other user":  # A transport that is no longer the user's: nothing is written.
        target = Command("talk", command_id=9, actor=actor, transport=Transport(2))
    else:
        target = parent

    def replies() -> list[tuple[Any, dict[str, Any], Any]]:
        found = [(r.message_code, r.message, r.command) for r in parent.replies]
        if target is not parent and target is not actor:
            found += [(r.message_code, r.message, r.command) for r in target.replies]
            target.replies.clear()
        parent.replies.clear()
        return found

    for message in MESSAGES:
        target.write(code, dict(message), validate=False)
        expected = outputs(actor, records)
        expected_replies = replies()
        write_reply(target, code, dict(message))
        assert outputs(actor, records) == expected
        assert replies() == expected_replies
    if how in ("command", "actor"):
        assert any(expected[0]) and expected[1]  # The comparison was not of nothing.


@pytest.mark.parametrize("broadcast", [False, True])
def test_write_reply_takes_the_fast_path(actor: Any, broadcast: bool):
    """The fast path does not go through CLU's write (else the figures would not move)."""

    actor, records = actor
    command = talk_command(actor)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("CLU's write was called")

    command.write = refuse  # type: ignore[method-assign]
    actor.write = refuse  # type: ignore[method-assign]
    write_reply(actor if broadcast else command, "i", {"status": ["gfa1", "x y", True]})
    out, lines = outputs(actor, records)
    ids = "0 0" if broadcast else "1 7"
    line = f'{ids} i status=gfa1,"x y",T'
    assert out == ([[f"{line}\n".encode()]] * 2 if broadcast else [[f"{line}\n".encode()], []])
    assert lines == [(REPLY, line)]


def log_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_actor_log_file_same_lines_as_clu(tmp_path: Path):
    """Relayed replies reach the actor's log file as CLU's own writes do."""

    config = {"actor": {"name": "fliswarm", "host": "127.0.0.1", "port": 0}, "status_interval": 0}
    actor = FLISwarmActor.from_config(config, log_dir=tmp_path)
    try:
        actor.transports = {1: Transport(1)}
        [handler] = [h for h in actor.log.handlers if isinstance(h, TimedRotatingFileHandler)]
        path = Path(handler.baseFilename)
        command = talk_command(actor)
        messages = [*MESSAGES, {"ansi": ["gfa1", "\x1b[31mred\x1b[0m"]}, {"pct": ["50%s %d"]}]
        for message in messages:
            start = len(log_lines(path))
            command.write("i", dict(message), validate=False)
            write_reply(command, "i", dict(message))
            write_reply(actor, "w", dict(message))
            actor.write("w", dict(message), validate=False)
            handler.flush()
            clu_line, ours, ours_actor, clu_actor = log_lines(path)[start:]
            assert ours.split(" - ", 1)[1] == clu_line.split(" - ", 1)[1]
            assert ours_actor.split(" - ", 1)[1] == clu_actor.split(" - ", 1)[1]
            assert ours.split(" - ", 1)[1].startswith("REPLY - 1 7 i ")
    finally:
        for handler in list(actor.log.handlers):
            handler.close()


@pytest.mark.parametrize("code", [">", ":", MessageCode.STARTED, MessageCode.DONE, "i", "f"])
@pytest.mark.parametrize("how", ["command", "child", "silent", "internal", "nolog", "novalidate"])
def test_status_lines_same_as_clu(actor: Any, code: Any, how: str):
    """A command's keyword-less ``>`` / ``:`` (`write_status`, taken by the actor's ``write``)
    give the bytes, log lines and replies of CLU's ``LegacyActor.write``."""

    actor, records = actor
    parent = talk_command(actor)
    command = Command("status", parent=parent, actor=actor) if how == "child" else parent
    command.silent = how == "silent"
    kwargs: dict[str, Any] = {"silent": command.silent}
    if how == "internal":
        kwargs["internal"] = True
    if how == "nolog":
        kwargs["write_to_log"] = False
    if how == "novalidate":
        kwargs["validate"] = False

    def replies() -> list[tuple[Any, ...]]:
        found = [
            (r.message_code, r.message, r.command, r.internal, r.use_validation, r.validated)
            for r in command.replies
        ]
        command.replies.clear()
        return found

    BaseLegacyActor.write(actor, code, None, command, **kwargs)
    expected = outputs(actor, records), replies()
    actor.write(code, None, command, **kwargs)
    assert (outputs(actor, records), replies()) == expected
    if how == "command":
        assert expected[0][0][0] == [f"1 7 {MessageCode(code).value} \n".encode()]


def test_command_status_lines_take_the_fast_path(actor: Any):
    actor, records = actor
    command = talk_command(actor)
    with mock.patch.object(BaseLegacyActor, "write", side_effect=AssertionError("CLU's write")):
        command.set_status(command.status.RUNNING, internal=True)
        command.finish()
        out, lines = outputs(actor, records)
        # Anything else (keywords, another code) is still CLU's.
        with pytest.raises(AssertionError, match="CLU's write"):
            command.write("i", {"text": "x"})
    assert out == [[b"1 7 > \n", b"1 7 : \n"], []]
    assert lines == [(REPLY, "1 7 > "), (REPLY, "1 7 : ")]
