"""A fast path for relayed replies: the LegacyActor line, formatted once and written directly.

CLU's ``Command.write`` -> ``LegacyActor.write`` -> ``BaseActor.write`` -> ``_write_internal``
chain re-checks and re-builds everything for each reply. For the keywords fliswarm relays from
flicamera (never validated, never exceptions, never ``>``/``:``/``f``), `write_reply` produces
exactly the bytes CLU would write, to the same transports, records the same `~clu.base.Reply`
in ``command.replies`` and logs the same line to the actor's log. Anything it does not cover
(another actor class, a message processor, a keyword store, exception values, codes a child
command would remap) goes through the target's own ``write``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from clu.base import MessageCode, Reply
from clu.command import BaseCommand
from clu.legacy.actor import BaseLegacyActor
from clu.tools import REPLY


__all__ = [
    "format_value",
    "format_keywords",
    "write_reply",
    "write_status",
    "same_output_as_clu",
]

# Codes written as they are (a child command remaps ``>``, ``:`` and ``f``).
_DIRECT_CODES = {code: MessageCode(code) for code in "iwde!"}
# A command's own start and end, without keywords (`write_status`).
_STATUS_CODES = {code: MessageCode(code) for code in ">:"}
_WRITE = BaseLegacyActor.write
_WRITE_INTERNAL = BaseLegacyActor._write_internal


def format_value(value: Any) -> str:
    """Formats a keyword value as `clu.tools.format_value` does (same output, same errors)."""

    cls = value.__class__
    if cls is str:
        if " " in value and not (value.startswith("'") or value.startswith('"')):
            return _quote(value)
        return value
    if cls is list or cls is tuple:
        return _format_items(value)
    if cls is int or cls is float:
        return str(value)
    if value is True:
        return "T"
    if value is False:
        return "F"
    if isinstance(value, str):
        if " " in value and not (value.startswith("'") or value.startswith('"')):
            return json.dumps(value)
        return value
    if isinstance(value, bool):
        return "T" if value else "F"
    if isinstance(value, (tuple, list)):
        return _format_items(value)
    if isinstance(value, dict):
        values = list(value.values())
        for item in values:  # CLU's depth > 1: some value is itself a dictionary.
            if isinstance(item, dict):
                raise ValueError("Cannot format a dictionary with depth > 1.")
        return _format_items(values)
    return str(value)


# What ``json.dumps`` does with a plain ``str`` (ensure_ascii), without its layers.
_quote = json.encoder.encode_basestring_ascii


def _format_items(items: Any) -> str:
    """``",".join(format_value(item) for item in items)``, with plain strings and numbers
    (most items) formatted inline."""

    parts = []
    for item in items:
        cls = item.__class__
        if cls is str:
            if " " in item and not (item.startswith("'") or item.startswith('"')):
                item = _quote(item)
            parts.append(item)
        elif cls is int or cls is float:
            parts.append(str(item))
        else:
            parts.append(format_value(item))
    return ",".join(parts)


def format_keywords(message: dict[str, Any]) -> str:
    """The ``key=value; key2=value2`` body of a LegacyActor reply, as CLU writes it.

    Raises
    ------
    TypeError
        If a value cannot be formatted (CLU's message).
    """

    parts = []
    for keyword, value in message.items():
        try:
            text = format_value(value)
        except BaseException as err:
            raise TypeError(f"Cannot format keyword {keyword!r} " + str(err)) from None
        parts.append(f"{keyword}={text}" if text.strip() else f"{keyword}")
    return "; ".join(parts)


def _fallback(target: Any, code: str, message: dict[str, Any]) -> None:
    target.write(code, message, validate=False)


def write_reply(target: Any, code: str, message: dict[str, Any]) -> None:
    """Writes ``message`` with ``code`` through ``target`` without validation.

    ``target`` is a CLU command (the reply goes to its commander) or a LegacyActor (the reply is
    broadcast), or anything with CLU's ``write(code, message, validate=False)``. The result is
    what ``target.write(code, message, validate=False)`` does, only cheaper.

    Raises
    ------
    TypeError
        If a value cannot be formatted, as CLU raises it.
    """

    if isinstance(target, BaseCommand):
        actor = target.actor
        command: Any = target.parent or target
        silent, write_to_log = target.silent, target.write_to_log
    elif isinstance(target, BaseLegacyActor):
        actor, command, silent, write_to_log = target, None, False, True
    else:
        _fallback(target, code, message)
        return

    cls = actor.__class__
    message_code = _DIRECT_CODES.get(code)
    if (
        message_code is None
        or not isinstance(actor, BaseLegacyActor)
        or (cls.write is not _WRITE and not getattr(cls.write, "same_output_as_clu", False))
        or cls._write_internal is not _WRITE_INTERNAL
        or actor._message_processor is not None
        or actor.store is not None
        or any(isinstance(value, Exception) for value in message.values())
        or ("error" in message and isinstance(message["error"], dict))
        or ("exception" in message and isinstance(message["exception"], dict))
    ):
        _fallback(target, code, message)
        return

    if command is not None:
        command.replies.append(Reply(message_code, message, command=command))
    if not silent:
        _emit(actor, command, code, format_keywords(message), write_to_log)


def write_status(
    actor: BaseLegacyActor,
    code: Any,
    command: BaseCommand,
    internal: bool = False,
    write_to_log: bool = True,
    validate: bool = True,
) -> bool:
    """Writes the keyword-less ``>`` or ``:`` of a top-level command as CLU's ``write`` does.

    For ``actor.write(code, None, command, ...)`` when ``code`` is ``>`` or ``:`` and
    ``command`` has no parent: the same `~clu.base.Reply` (an empty message always validates),
    the same line ``"{user_id} {command_id} {code} "`` to the command's user and the same log
    line. Returns `False`, having done nothing, for any other case.
    """

    value = code if code.__class__ is str else getattr(code, "value", None)
    message_code = _STATUS_CODES.get(value)  # type: ignore[arg-type]
    if (
        message_code is None
        or command.parent is not None
        or actor._message_processor is not None
        or actor.store is not None
    ):
        return False
    reply = Reply(message_code, {}, command=command, internal=internal)
    if validate and actor.model is not None:
        reply.use_validation = True
        reply.validated = True
    command.replies.append(reply)
    _emit(actor, command, message_code.value, "", write_to_log)
    return True


def same_output_as_clu(method: Any) -> Any:
    """Marks an override of ``LegacyActor.write`` that writes exactly what CLU's does (so
    `write_reply` may keep its fast path for that actor class)."""

    method.same_output_as_clu = True
    return method


def _emit(actor: Any, command: Any, code: str, body: str, write_to_log: bool) -> None:
    """Writes a formatted reply line to its user (or everyone) and to the actor's log."""

    transport = command.transport if command is not None else None
    user_id = (transport.user_id if transport else None) or 0
    command_id = (command.command_id if command is not None else 0) or 0
    line = f"{user_id} {command_id:d} {code} {body}"
    data = (line + "\n").encode()

    transports = actor.transports
    if user_id == 0 or transport is None:
        for each in transports.values():
            each.write(data)
    elif transports.get(transport.user_id, None) == transport:
        transport.write(data)

    log = actor.log
    if log and write_to_log:
        log.log(REPLY if REPLY in logging._levelToName else logging.DEBUG, line)
