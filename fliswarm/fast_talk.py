"""A fast path for the most frequent command line: ``talk [-n N] [-c C] [-t T] CAMERA_COMMAND``.

CLU runs every command through click (two contexts, option objects, type conversion) and two
tasks; for a ``talk`` round trip to one camera that was about half of fliswarm's CPU time and
two extra iterations of the event loop. `parse_talk` reads the plain forms of a ``talk`` line
itself and returns what click would pass to the command; anything else (help, unknown or
repeated options, ``--name=value``, ``--``, a value that is not a plain number, ...) returns
`None` and click parses the line as before, with its own messages. `run_talk` then starts the
command as CLU's parser does: ``>``, one task, the same error handling.

``tests/test_fast_talk.py`` checks, for generated lines, that whenever `parse_talk` answers,
its answer is what click parses.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import time
from typing import Any


__all__ = ["parse_talk", "run_talk"]

_OPTIONS = {
    "-n": "names",
    "--names": "names",
    "-c": "category",
    "--category": "category",
    "-t": "timeout",
    "--timeout": "timeout",
}
_running: set[asyncio.Task[None]] = set()
# Timeouts click's FloatRange(min=0, min_open=True) takes as they are: plain decimals.
_PLAIN_NUMBER = re.compile(r"\d{1,9}(\.\d{0,9})?|\.\d{1,9}")


def parse_talk(body: str) -> dict[str, Any] | None:
    """The parameters click would give ``talk`` for this command line, or `None`.

    `None` means "not a plain ``talk`` line": let click parse it (and report its errors).
    """

    if not body.startswith("talk ") or "--help" in body:  # CLU turns --help into help.
        return None
    try:
        words = shlex.split(body)
    except ValueError:
        return None
    params: dict[str, Any] = {"names": None, "category": None, "timeout": None}
    seen: set[str] = set()
    index = 1
    while index < len(words) and words[index].startswith("-"):
        name = _OPTIONS.get(words[index])
        if name is None or name in seen or index + 1 >= len(words):
            return None
        value = words[index + 1]
        if value.startswith("-"):
            return None
        if name == "timeout":
            if not _PLAIN_NUMBER.fullmatch(value) or float(value) <= 0:
                return None
            params[name] = float(value)
        else:
            params[name] = value
        seen.add(name)
        index += 2
    if words[0] != "talk" or index >= len(words):
        return None
    params["camera_command"] = tuple(words[index:])
    return params


def run_talk(actor: Any, command: Any, params: dict[str, Any]) -> Any:
    """Starts ``talk`` for a parsed line as CLU's click parser would, with one task.

    The command goes to running (``>``); the task is named like CLU's (``talk``) for
    ``cancel_command``; an exception fails the command through the parser's own handler, a
    cancellation marks it cancelled, as CLU does.
    """

    callback = actor.parser.commands["talk"].callback
    command.set_status(command.status.RUNNING, internal=True)
    task = asyncio.create_task(_run(actor, command, callback(command, actor.nodes, **params)))
    task._command_name = "talk"  # type: ignore[attr-defined]  # As CLU's tasks.
    task._date = time.time()  # type: ignore[attr-defined]
    _running.add(task)  # The loop keeps only weak references to tasks.
    task.add_done_callback(_running.discard)
    return command


async def _run(actor: Any, command: Any, coro: Any) -> None:
    try:
        await coro
    except asyncio.CancelledError:
        if not command.status.is_done:
            command.set_status(command.status.CANCELLED, "This command has been cancelled.")
    except Exception as err:
        actor._handle_command_exception(command, err)
